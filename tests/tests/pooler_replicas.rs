//! A read-only pool balanced over two streaming standbys of one primary, as the operator
//! renders it (`host=s1,s2 port=p1,p2 target_session_attrs=standby
//! load_balance_hosts=round-robin`): reads spread over both; a standby stopped under load is
//! taken out without failing clients between transactions and brought back when it starts
//! again; with `replica_max_lag` a standby whose replay is paused is taken out until it
//! catches up.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};
use weir_tests::fixture::{scalar, sqlstate, Fixture};
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};
use weir_tests::weir::WeirProcess;

const USER: &str = "app";
const PASSWORD: &str = "app-secret";
/// Clients reading in a loop.
const CLIENTS: usize = 4;
/// What a client whose transaction was in flight on a standby that went away may be told.
const IN_FLIGHT_CODES: &[&str] = &["57P01", "57P02", "57P03", "08006", "08000"];
/// The longest any state below is waited for (a bound for a broken build, not a timing).
const WAIT: Duration = Duration::from_secs(60);

/// A primary with the application role and a table, and two streaming standbys of it.
async fn primary_and_standbys() -> (PgCluster, PgCluster, PgCluster) {
    let opts = PgOptions {
        hba: Some(
            "local all postgres trust\nlocal all all md5\n\
             host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.0/8 md5\n\
             host replication postgres 127.0.0.1/32 trust\n"
                .into(),
        ),
        ..PgOptions::default()
    };
    let primary = PgCluster::start_with(opts).await.expect("primary");
    primary
        .create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("role");
    primary
        .execute("CREATE TABLE t (id serial PRIMARY KEY, v int); GRANT ALL ON t, t_id_seq TO app")
        .await
        .expect("table");
    let s1 = PgCluster::start_standby_of(&primary)
        .await
        .expect("standby 1");
    let s2 = PgCluster::start_standby_of(&primary)
        .await
        .expect("standby 2");
    (primary, s1, s2)
}

/// A pooler whose database `postgres` is the read-only pool over `s1` and `s2`, in
/// transaction mode; `extra` lines go to `[pgbouncer]`.
async fn pooler(s1: &PgCluster, s2: &PgCluster, extra: &str) -> WeirProcess {
    // A generous connect timeout: on a loaded machine a login to the healthy standby can take
    // seconds, and one that times out refuses clients for server_login_retry, as in PgBouncer.
    let ini = format!(
        "[databases]\npostgres = host=127.0.0.1,127.0.0.1 port={},{} dbname=postgres \
         target_session_attrs=standby load_balance_hosts=round-robin\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {{port}}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {{dir}}/userlist.txt\n\
         pool_mode = transaction\ndefault_pool_size = 6\n\
         server_connect_timeout = 10\n\
         server_login_retry = 1\nadmin_users = {USER}\n{extra}",
        s1.port(),
        s2.port(),
    );
    WeirProcess::start(&ini, &format!("\"{USER}\" \"{PASSWORD}\"\n"))
        .await
        .expect("pooler")
}

async fn client(weir: &WeirProcess) -> Client {
    net::connect(weir.port(), USER, PASSWORD, "postgres")
        .await
        .unwrap_or_else(|e| panic!("login through the pooler: {e}\n{}", weir.log()))
}

/// The port of the server a read through `client` ran on.
async fn port_of(client: &Client) -> u16 {
    scalar(client, "SELECT current_setting('port')")
        .await
        .parse()
        .expect("port")
}

/// `SHOW HOSTS` on the console: each host's row (column name to value) by `host:port`.
async fn show_hosts(weir: &WeirProcess) -> HashMap<u16, HashMap<String, String>> {
    let admin = net::connect(weir.port(), USER, PASSWORD, "pgbouncer")
        .await
        .expect("console login");
    let msgs = admin.simple_query("SHOW HOSTS").await.expect("SHOW HOSTS");
    let mut columns = Vec::new();
    let mut hosts = HashMap::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                let row: HashMap<String, String> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.clone(), row.get(i).unwrap_or("NULL").to_owned()))
                    .collect();
                let port = row["host"]
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("host:port");
                hosts.insert(port, row);
            }
            _ => {}
        }
    }
    hosts
}

/// The pooler's servers and clients and what each standby's backends are doing, for a
/// failure message.
async fn diagnose(weir: &WeirProcess, standbys: &[&PgCluster]) -> String {
    let rows = |msgs: Vec<SimpleQueryMessage>| -> Vec<String> {
        msgs.iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL"))
                        .collect::<Vec<_>>()
                        .join(" | "),
                ),
                _ => None,
            })
            .collect()
    };
    let mut out = Vec::new();
    if let Ok(admin) = net::connect(weir.port(), USER, PASSWORD, "pgbouncer").await {
        for q in ["SHOW SERVERS", "SHOW CLIENTS"] {
            out.push(format!("{q}:"));
            out.extend(admin.simple_query(q).await.map(rows).unwrap_or_default());
        }
    }
    for standby in standbys {
        out.push(format!("pg_stat_activity on {}:", standby.port()));
        if let Ok(c) = standby.superuser().await {
            let q = "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity \
                     WHERE backend_type = 'client backend'";
            out.extend(c.simple_query(q).await.map(rows).unwrap_or_default());
        }
    }
    out.join("\n")
}

/// What the reading clients saw.
#[derive(Default)]
struct Tally {
    /// Reads served, by the port of the server that answered.
    served: Mutex<BTreeMap<u16, u64>>,
    /// SQLSTATE (or the error text) of each failed read.
    failed: Mutex<Vec<String>>,
}

impl Tally {
    fn served(&self) -> BTreeMap<u16, u64> {
        self.served.lock().expect("tally").clone()
    }

    fn failed(&self) -> Vec<String> {
        self.failed.lock().expect("tally").clone()
    }
}

/// Reads in a loop until `stop`, each read its own transaction, tallying which server
/// answered; a failed read is tallied and the client reconnects.
async fn read_loop(port: u16, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut client = net::connect(port, USER, PASSWORD, "postgres")
        .await
        .expect("reading client");
    while !stop.load(Ordering::Relaxed) {
        // The simple protocol: one message per read, so a read cut off leaves nothing unsent.
        match client.simple_query("SELECT current_setting('port')").await {
            Ok(msgs) => {
                let server: u16 = msgs
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
                        _ => None,
                    })
                    .expect("a port");
                *tally
                    .served
                    .lock()
                    .expect("tally")
                    .entry(server)
                    .or_default() += 1;
            }
            Err(e) => {
                let code = sqlstate(&e).map_or_else(|| e.to_string(), str::to_owned);
                tally.failed.lock().expect("tally").push(code);
                client = loop {
                    match net::connect(port, USER, PASSWORD, "postgres").await {
                        Ok(c) => break c,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
            }
        }
    }
}

/// Starts the reading clients.
fn start_reads(
    weir: &WeirProcess,
) -> (
    Arc<Tally>,
    Arc<AtomicBool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loops = (0..CLIENTS)
        .map(|_| tokio::spawn(read_loop(weir.port(), tally.clone(), stop.clone())))
        .collect();
    (tally, stop, loops)
}

/// Waits until `port` has served `more` reads beyond `served`.
async fn reads_reach(tally: &Tally, port: u16, more: u64) -> bool {
    let from = tally.served().get(&port).copied().unwrap_or(0);
    Fixture::eventually(WAIT, || async {
        tally.served().get(&port).copied().unwrap_or(0) >= from + more
    })
    .await
}

/// Waits until SHOW HOSTS shows `port` in `state`.
async fn host_state(weir: &WeirProcess, port: u16, state: &str) -> bool {
    Fixture::eventually(WAIT, || async {
        show_hosts(weir)
            .await
            .get(&port)
            .is_some_and(|h| h["state"] == state)
    })
    .await
}

/// Reads served per port between two tallies.
fn since(before: &BTreeMap<u16, u64>, after: &BTreeMap<u16, u64>) -> BTreeMap<u16, u64> {
    after
        .iter()
        .map(|(port, n)| (*port, n - before.get(port).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_both_standbys_and_survive_one_stopping_and_coming_back() {
    let (_primary, s1, s2) = primary_and_standbys().await;
    let (p1, p2) = (s1.port(), s2.port());
    // As many connections kept open as there are reading clients, so that no read queues.
    let weir = pooler(&s1, &s2, &format!("min_pool_size = {CLIENTS}\n")).await;
    // The first login makes the pool.
    let (a, b) = (client(&weir).await, client(&weir).await);
    let warm = Fixture::eventually(WAIT, || async {
        let hosts = show_hosts(&weir).await;
        let open = |port| hosts.get(&port).map(|h| h["server_connections"].clone());
        open(p1).as_deref() == Some("2") && open(p2).as_deref() == Some("2")
    })
    .await;
    assert!(
        warm,
        "min_pool_size opens half on each standby: {:?}",
        show_hosts(&weir).await
    );

    // Two clients inside a transaction at once: one connection on each standby.
    let mut ports = Vec::new();
    for c in [&a, &b] {
        c.batch_execute("BEGIN").await.expect("begin");
        ports.push(port_of(c).await);
    }
    ports.sort_unstable();
    let mut both = vec![p1, p2];
    both.sort_unstable();
    assert_eq!(ports, both, "the two connections go to different standbys");
    for c in [&a, &b] {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    // One client reading alone is lent each standby's connection in turn, not the most
    // recently used one over and over.
    let mut alone = BTreeMap::<u16, u32>::new();
    for _ in 0..40 {
        *alone.entry(port_of(&a).await).or_default() += 1;
    }
    eprintln!("replicas: one client's reads {alone:?}");
    for port in [p1, p2] {
        assert!(alone.get(&port).copied().unwrap_or(0) >= 10, "{alone:?}");
    }
    drop((a, b));

    let (tally, stop, loops) = start_reads(&weir);

    // Spread: both standbys get a fair share of the reads and of the connections.
    let started = Fixture::eventually(WAIT, || async {
        tally.served().values().sum::<u64>() >= 100
    })
    .await;
    assert!(started, "reads through the pooler\n{}", weir.log());
    let before = tally.served();
    let spread = Fixture::eventually(WAIT, || async {
        since(&before, &tally.served()).values().sum::<u64>() >= 400
    })
    .await;
    assert!(spread, "{}", weir.log());
    let share = since(&before, &tally.served());
    let total: u64 = share.values().sum();
    let hosts = show_hosts(&weir).await;
    let connections: BTreeMap<u16, String> = hosts
        .iter()
        .map(|(port, h)| {
            let (state, open, active) = (&h["state"], &h["server_connections"], &h["active"]);
            (*port, format!("{state}, {open} open, {active} active"))
        })
        .collect();
    eprintln!(
        "replicas: {total} reads spread as {share:?} over connections {connections:?} \
         (ports {p1}, {p2})"
    );
    // Round-robin: each checkout starts at the other standby and takes the first with an
    // idle connection, so both serve; the one slower to answer on a busy machine serves
    // less (measured 20-50 % each), as its connections are idle less often.
    for port in [p1, p2] {
        let n = share.get(&port).copied().unwrap_or(0);
        if n * 10 < total {
            eprintln!("{}", diagnose(&weir, &[&s1, &s2]).await);
        }
        assert!(
            n * 10 >= total,
            "standby {port} served {n} of {total} reads: {share:?}\n{}",
            weir.log()
        );
    }
    let hosts = show_hosts(&weir).await;
    for standby in [&s1, &s2] {
        let h = &hosts[&standby.port()];
        assert_eq!(h["state"], "up", "{h:?}");
        assert_eq!(h["target_session_attrs"], "standby");
        let open: i64 = h["server_connections"].parse().expect("count");
        assert!(open >= 1, "{h:?}");
        // The standby's own view agrees: the pool's connections are there.
        let backends = standby.backends(USER, "postgres").await.expect("backends");
        assert!(backends >= 1, "{backends} backends on {}", standby.port());
    }
    assert!(tally.failed().is_empty(), "{:?}", tally.failed());

    // One standby stops under the read load: only reads in flight on it may fail; it is
    // taken out and the other serves every read.
    s1.stop().await.expect("stop standby 1");
    assert!(host_state(&weir, p1, "out").await, "{}", weir.log());
    let after_stop = tally.served();
    assert!(reads_reach(&tally, p2, 300).await, "{}", weir.log());
    let during = since(&after_stop, &tally.served());
    assert_eq!(
        during.keys().copied().collect::<Vec<_>>(),
        [p2],
        "reads after standby 1 was taken out: {during:?}"
    );
    let failed = tally.failed();
    eprintln!("replicas: standby stopped: failed reads {failed:?}");
    // In flight: one read per client on the stopping standby, plus one each lent a
    // connection that was dying as it was lent.
    assert!(failed.len() <= 2 * CLIENTS, "{failed:?}\n{}", weir.log());
    for code in &failed {
        assert!(
            IN_FLIGHT_CODES.contains(&code.as_str()),
            "a read in flight fails with a clear SQLSTATE, not {code:?}\n{}",
            weir.log()
        );
    }
    let out = &show_hosts(&weir).await[&p1];
    assert_eq!(out["server_connections"], "0", "{out:?}");
    assert_ne!(out["reason"], "NULL", "{out:?}");

    // It starts again: it is brought back and gets load again, nobody failing meanwhile.
    s1.start_again().await.expect("start standby 1 again");
    assert!(host_state(&weir, p1, "up").await, "{}", weir.log());
    assert!(reads_reach(&tally, p1, 100).await, "{}", weir.log());
    assert_eq!(
        tally.failed(),
        failed,
        "no read fails while a standby comes back"
    );

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("reading client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_lagging_beyond_replica_max_lag_is_taken_out_until_it_catches_up() {
    let (primary, s1, s2) = primary_and_standbys().await;
    let (p1, p2) = (s1.port(), s2.port());
    let weir = pooler(&s1, &s2, "replica_max_lag = 1\n").await;
    let (tally, stop, loops) = start_reads(&weir);

    // Both standbys serve and show a measured lag of (about) nothing: the primary is idle.
    assert!(reads_reach(&tally, p1, 20).await, "{}", weir.log());
    assert!(reads_reach(&tally, p2, 20).await, "{}", weir.log());
    let measured = Fixture::eventually(WAIT, || async {
        let hosts = show_hosts(&weir).await;
        [p1, p2]
            .iter()
            .all(|p| hosts.get(p).is_some_and(|h| h["lag"] != "NULL"))
    })
    .await;
    assert!(measured, "{:?}", show_hosts(&weir).await);
    let hosts = show_hosts(&weir).await;
    for port in [p1, p2] {
        assert_eq!(
            hosts[&port]["state"], "up",
            "an idle primary makes no standby lag"
        );
    }

    // Replay paused on standby 1 while the primary writes: it falls behind and is taken out.
    s1.execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    primary
        .execute("INSERT INTO t (v) SELECT generate_series(1, 100)")
        .await
        .expect("write on the primary");
    assert!(host_state(&weir, p1, "lagging").await, "{}", weir.log());
    let lagging = &show_hosts(&weir).await[&p1];
    let lag: f64 = lagging["lag"].parse().expect("lag");
    assert!(lag >= 1.0, "{lagging:?}");
    let after = tally.served();
    assert!(reads_reach(&tally, p2, 200).await, "{}", weir.log());
    let during = since(&after, &tally.served());
    // Only a read already lent a connection to it when it was taken out may end there.
    let on_lagging = during.get(&p1).copied().unwrap_or(0);
    assert!(
        on_lagging <= CLIENTS as u64,
        "no new read is served by the lagging standby: {during:?}"
    );

    // Replay resumes: it catches up and is brought back.
    s1.execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    assert!(host_state(&weir, p1, "up").await, "{}", weir.log());
    assert!(reads_reach(&tally, p1, 50).await, "{}", weir.log());
    assert!(
        tally.failed().is_empty(),
        "{:?}\n{}",
        tally.failed(),
        weir.log()
    );

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("reading client");
    }
}
