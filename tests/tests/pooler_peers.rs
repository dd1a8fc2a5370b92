//! Cancel requests across pooler pods (PgBouncer's peering): three poolers stand for the pods
//! of a Deployment, each on its own loopback address (127.0.0.2 to .4, as pod IPs) and one
//! shared port, with the `[peers]` the operator renders from their addresses. A client's
//! CancelRequest sent to the wrong pod reaches the pod holding the client, which cancels the
//! query: the sleeping client sees ErrorResponse 57014. The same scenario runs against
//! PgBouncer 1.25.2 on the same `[peers]` (each given its `peer_id`, which it cannot find by
//! itself), so the expected behaviour is PgBouncer's.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use weir_operator::api::{from_yaml, ConnectionPool};
use weir_operator::render::{render, Observed, Rendered};
use weir_tests::k8s::localize_pgbouncer_ini;
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster};
use weir_tests::raw::RawClient;
use weir_tests::weir::{Signal, WeirProcess};

/// The pods' IP addresses.
const PODS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];
const PASSWORD: &str = "app-pw";
/// Bound on waiting for a state that arrives in milliseconds (a reload, a backend starting).
const SETTLE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooler {
    Weir,
    PgBouncer,
}

fn pool(pg: &PgCluster) -> ConnectionPool {
    let yaml = format!(
        "apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: peers
  namespace: default
  uid: 0c0ffee0-0000-4000-8000-000000000002
spec:
  database:
    host: {}
    port: {}
    dbname: shop
    credentialsSecret:
      name: shop-app
    maxConnections: 100
  replicas: 3
",
        pg.host(),
        pg.port()
    );
    from_yaml(&yaml).expect("a valid ConnectionPool")
}

/// What the operator renders when `pods` are the pool's pods and `in_force` the peer ids of
/// the ConfigMap in force.
fn rendered(pg: &PgCluster, pods: &[Ipv4Addr], in_force: BTreeMap<u16, String>) -> Rendered {
    let secret = [("username", "app"), ("password", PASSWORD)]
        .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
        .into();
    let observed = Observed {
        secrets: [("shop-app".to_owned(), secret)].into(),
        pod_ips: pods.iter().map(ToString::to_string).collect(),
        peers_in_force: in_force,
        ..Observed::default()
    };
    render(&pool(pg), &observed).expect("renders")
}

fn config_text(r: &Rendered, key: &str) -> String {
    match r.config_map.data.as_ref().and_then(|d| d.get(key)) {
        Some(text) => text.clone(),
        None => {
            let data = r.auth_secret.data.as_ref().expect("secret data");
            String::from_utf8(data[key].0.clone()).expect("utf-8")
        }
    }
}

/// The `[peers]` section of the rendered pgbouncer.ini, for pods listening on `port` instead
/// of the container port (all pods share one host here).
fn peers_section(r: &Rendered, port: u16) -> String {
    let ini = config_text(r, "pgbouncer.ini");
    let start = ini.find("[peers]\n").expect("the rendering has [peers]");
    let section = &ini[start..];
    let section = &section[..section.find("\n\n").expect("[peers] ends") + 1];
    let container_port = r.config.pgbouncer.listen_port;
    section.replace(
        &format!(" port={container_port}\n"),
        &format!(" port={port}\n"),
    )
}

/// The peer id the rendering gave `pod`.
fn peer_id(r: &Rendered, pod: Ipv4Addr) -> u16 {
    let host = pod.to_string();
    let (id, _) = r
        .config
        .peers
        .iter()
        .find(|(_, p)| p.host == host)
        .expect("pod has a peer id");
    *id
}

/// One pod's configuration: Weir runs the rendered pgbouncer.ini, localized; PgBouncer gets
/// the same `[databases]` target and `[peers]`, plus its `peer_id`.
fn pod_ini(
    kind: Pooler,
    pg: &PgCluster,
    r: &Rendered,
    pod: Ipv4Addr,
    port: u16,
    http: u16,
) -> String {
    match kind {
        Pooler::Weir => {
            let ini = localize_pgbouncer_ini(&config_text(r, "pgbouncer.ini"), http).expect("ini");
            let ini = ini
                .replace("\nlisten_addr = *\n", &format!("\nlisten_addr = {pod}\n"))
                .replace("\nadmin_users =\n", "\nadmin_users = app\n");
            let peers = peers_section(r, port);
            let start = ini.find("[peers]\n").expect("[peers]");
            let end = start + ini[start..].find("\n\n").expect("[peers] ends") + 1;
            format!("{}{peers}{}", &ini[..start], &ini[end..])
        }
        Pooler::PgBouncer => format!(
            "[databases]\nshop = host={} port={} dbname=shop\n\n{}\n[pgbouncer]\n\
             listen_addr = {pod}\nlisten_port = {{port}}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {{dir}}/userlist.txt\n\
             admin_users = app\npeer_id = {}\n",
            pg.host(),
            pg.port(),
            peers_section(r, port),
            peer_id(r, pod)
        ),
    }
}

struct Pod {
    addr: Ipv4Addr,
    http: u16,
    process: WeirProcess,
}

async fn start_pod(kind: Pooler, pg: &PgCluster, r: &Rendered, pod: Ipv4Addr, port: u16) -> Pod {
    let http = net::free_port();
    // Each pod is told its own IP, as the downward API tells it in Kubernetes.
    let args = match kind {
        Pooler::Weir => vec!["--peer-address".to_owned(), pod.to_string()],
        Pooler::PgBouncer => Vec::new(),
    };
    let ini = pod_ini(kind, pg, r, pod, port, http);
    let process = WeirProcess::start_pod(
        kind == Pooler::PgBouncer,
        pod,
        port,
        &args,
        &ini,
        &config_text(r, "userlist.txt"),
    )
    .await
    .unwrap_or_else(|e| panic!("{kind:?} pod {pod} starts: {e:#}"));
    Pod {
        addr: pod,
        http,
        process,
    }
}

impl Pod {
    fn at(&self) -> SocketAddr {
        SocketAddr::from((self.addr, self.process.port()))
    }

    /// Rewrites the pod's configuration from a new rendering and reloads it.
    fn reconfigure(&self, kind: Pooler, pg: &PgCluster, r: &Rendered) {
        let ini = pod_ini(kind, pg, r, self.addr, self.process.port(), self.http);
        self.process.rewrite_config(&ini).expect("config rewritten");
        self.process.signal(Signal::SIGHUP).expect("reload signal");
    }

    /// A SHOW command on the pod's admin console: the rows as (column, value) pairs.
    async fn show(&self, what: &str) -> Vec<Vec<(String, String)>> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.addr.to_string())
            .port(self.process.port())
            .user("app")
            .password(PASSWORD)
            .dbname("pgbouncer");
        let (client, connection) = config.connect(NoTls).await.expect("admin console");
        tokio::spawn(connection);
        let rows = client
            .simple_query(&format!("SHOW {what}"))
            .await
            .expect("SHOW");
        rows.iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    r.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("NULL").to_owned()))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// SHOW PEERS: the peer ids.
    async fn peer_ids(&self) -> Vec<String> {
        self.show("PEERS")
            .await
            .into_iter()
            .map(|row| row[0].1.clone())
            .collect()
    }

    /// Waits until SHOW PEERS lists `ids`.
    async fn wait_for_peers(&self, ids: &[u16]) {
        let want: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let have = self.peer_ids().await;
            if have == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {} lists peers {have:?}, not {want:?}; log:\n{}",
                self.addr,
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn http_get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect((net::HOST, self.http))
            .await
            .expect("HTTP port");
        let request = format!("GET {path} HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("response");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (status, body)
    }

    /// The value of a metric line that starts with `series`.
    async fn metric(&self, series: &str) -> Option<String> {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }
}

/// A client of one pod running `pg_sleep`, and the cancel key it was given.
struct Sleeper {
    client: RawClient,
    key: [u8; 8],
}

impl Sleeper {
    async fn start(pg: &PgCluster, pod: &Pod) -> Sleeper {
        let mut client = RawClient::connect_to(pod.at()).await.expect("connects");
        client.send_startup("app", "shop").await.expect("startup");
        client
            .authenticate("app", PASSWORD)
            .await
            .expect("authentication")
            .expect("logged in");
        let mut key = None;
        loop {
            let reply = client.next().await.expect("login reply").expect("open");
            match reply.tag {
                b'K' => key = Some(<[u8; 8]>::try_from(&reply.body[..8]).expect("8 bytes")),
                b'Z' => break,
                b'E' => panic!("login refused: {:?}", reply.error_field(b'M')),
                _ => {}
            }
        }
        client
            .send(b'Q', b"SELECT pg_sleep(60)\0")
            .await
            .expect("query sent");
        wait_for_sleep(pg).await;
        Sleeper {
            client,
            key: key.expect("BackendKeyData"),
        }
    }

    /// The ErrorResponse ending the query.
    async fn sqlstate(mut self) -> String {
        loop {
            let reply = self.client.next().await.expect("reply").expect("open");
            if reply.tag == b'E' {
                return reply.error_field(b'C').unwrap_or_default();
            }
            assert_ne!(reply.tag, b'Z', "the query ended without an error");
        }
    }
}

/// Waits until a backend runs the sleep, so a cancel has something to stop.
async fn wait_for_sleep(pg: &PgCluster) {
    let su = pg.superuser().await.expect("superuser");
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let row = su
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND state = 'active' \
                 AND starts_with(query, 'SELECT pg_sleep')",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        if row.is_some() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no backend sleeps");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a CancelRequest with `key` to `pod` and returns what came back before the pod
/// closed the connection (PostgreSQL's protocol: nothing).
async fn cancel(pod: &Pod, key: [u8; 8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(pod.at()).await.expect("connects");
    let mut packet = 16u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102u32.to_be_bytes());
    packet.extend_from_slice(&key);
    stream.write_all(&packet).await.expect("CancelRequest sent");
    let mut answer = Vec::new();
    tokio::time::timeout(SETTLE, stream.read_to_end(&mut answer))
        .await
        .expect("the pod closes the connection")
        .expect("read");
    answer
}

async fn cancels_reach_the_pod_holding_the_client(kind: Pooler) {
    let pg = PgCluster::start().await.expect("PostgreSQL");
    pg.create_role("app", PASSWORD, PasswordMethod::Scram)
        .await
        .expect("role");
    pg.create_database("shop", "app").await.expect("database");
    let port = net::free_port();

    // Two pods; the operator numbers them.
    let first = rendered(&pg, &PODS[..2], BTreeMap::new());
    let a = start_pod(kind, &pg, &first, PODS[0], port).await;
    let b = start_pod(kind, &pg, &first, PODS[1], port).await;

    // A client of pod A, its cancel sent to pod B: B forwards it to A.
    let sleeper = Sleeper::start(&pg, &a).await;
    assert_eq!(
        cancel(&b, sleeper.key).await,
        b"",
        "a CancelRequest gets no answer"
    );
    assert_eq!(sleeper.sqlstate().await, "57014");
    // SHOW PEERS lists every entry, the pod's own included; SHOW PEER_POOLS the peers a
    // cancel was forwarded to, nothing in flight once it is done.
    let peers = b.show("PEERS").await;
    let columns: Vec<&str> = peers[0].iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(columns, ["peer_id", "host", "port", "pool_size"]);
    let rows: Vec<(&str, &str, &str)> = peers
        .iter()
        .map(|r| (r[0].1.as_str(), r[1].1.as_str(), r[2].1.as_str()))
        .collect();
    let port_text = port.to_string();
    assert_eq!(
        rows,
        [
            ("1", "127.0.0.2", port_text.as_str()),
            ("2", "127.0.0.3", port_text.as_str())
        ]
    );
    assert!(
        a.show("PEER_POOLS").await.is_empty(),
        "pod A forwarded nothing"
    );
    let pools = b.show("PEER_POOLS").await;
    let expected: Vec<Vec<(String, String)>> = vec![[
        ("peer_id", "1"),
        ("cl_active_cancel_req", "0"),
        ("cl_waiting_cancel_req", "0"),
        ("sv_active_cancel", "0"),
        ("sv_login", "0"),
    ]
    .iter()
    .map(|(c, v)| ((*c).to_owned(), (*v).to_owned()))
    .collect()];
    assert_eq!(pools, expected);
    if kind == Pooler::Weir {
        let series = format!(
            "weir_peer_cancels_forwarded_total{{peer=\"{}\"}}",
            peer_id(&first, PODS[0])
        );
        assert_eq!(b.metric(&series).await.as_deref(), Some("1"));
    }

    // A third pod arrives; the operator keeps the first two ids and gives it a new one.
    let in_force = first
        .config
        .peers
        .iter()
        .map(|(id, p)| (*id, p.host.clone()))
        .collect();
    let second = rendered(&pg, &PODS, in_force);
    for pod in &PODS[..2] {
        assert_eq!(peer_id(&second, *pod), peer_id(&first, *pod));
    }
    let ids: Vec<u16> = second.config.peers.keys().copied().collect();
    assert_eq!(ids.len(), 3, "three distinct peer ids");
    let c = match kind {
        Pooler::Weir => {
            // Started before the ConfigMap names it, the pod is not ready: keys it gave out
            // would name no peer. It becomes ready once its entry arrives.
            let c = start_pod(kind, &pg, &first, PODS[2], port).await;
            assert_eq!(c.http_get("/readyz").await.0, 503);
            c.reconfigure(kind, &pg, &second);
            c.wait_for_peers(&ids).await;
            assert_eq!(c.http_get("/readyz").await.0, 200);
            c
        }
        Pooler::PgBouncer => start_pod(kind, &pg, &second, PODS[2], port).await,
    };
    // The first pods learn the new peer on reload.
    for pod in [&a, &b] {
        pod.reconfigure(kind, &pg, &second);
        pod.wait_for_peers(&ids).await;
    }

    let sleeper = Sleeper::start(&pg, &c).await;
    // A cancel some peer already forwarded (its forwarding bits cleared) is never forwarded
    // again: pod A drops it.
    let mut forwarded = sleeper.key;
    forwarded[7] &= !0x03;
    assert_eq!(cancel(&a, forwarded).await, b"");
    if kind == Pooler::Weir {
        let series = "weir_peer_cancels_dropped_total{reason=\"already_forwarded\"}";
        assert_eq!(a.metric(series).await.as_deref(), Some("1"));
    }
    // The real cancel, sent to pod A, reaches pod C through the reloaded [peers].
    assert_eq!(cancel(&a, sleeper.key).await, b"");
    assert_eq!(sleeper.sqlstate().await, "57014");

    // A key naming a peer nobody configured is dropped quietly, as PostgreSQL drops an
    // unknown key: the connection closes without a word.
    let mut unknown = sleeper_key_for_peer(999);
    unknown[7] |= 0x03;
    assert_eq!(cancel(&b, unknown).await, b"");
    if kind == Pooler::Weir {
        let series = "weir_peer_cancels_dropped_total{reason=\"unknown_peer\"}";
        assert_eq!(b.metric(series).await.as_deref(), Some("1"));
    }
}

/// A cancel key laid out as PgBouncer lays it out for peer `peer` (bytes 1 and 2, low byte
/// first), with an arbitrary process id and secret.
fn sleeper_key_for_peer(peer: u16) -> [u8; 8] {
    let [low, high] = peer.to_le_bytes();
    [0x12, low, high, 0x34, 0x56, 0x78, 0x9a, 0xbc]
}

#[tokio::test]
async fn a_cancel_sent_to_the_wrong_pod_cancels_the_query_on_the_right_one() {
    cancels_reach_the_pod_holding_the_client(Pooler::Weir).await;
}

#[tokio::test]
async fn pgbouncer_forwards_cancels_between_peers_the_same_way() {
    cancels_reach_the_pod_holding_the_client(Pooler::PgBouncer).await;
}
