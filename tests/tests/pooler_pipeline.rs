//! Pipelined extended protocol through transaction pooling, as drivers send it: several
//! Parse/Bind/Execute before one Sync, errors in the middle, Flush without Sync, a late Sync,
//! statements evicted from a server connection's cache mid-pipeline, messages larger than
//! `pkt_buf`, Close and Describe inside pipelines, and several pipelining clients sharing one
//! server connection. Every read is bounded: a pipeline that hangs fails the test. The raw
//! sequences are followed by real drivers' pipelines (psycopg pipeline mode, pgx batches, JDBC
//! batches: programs under `tests/drivers/`), run through weir and through PgBouncer.

use std::time::Duration;

use weir_tests::fixture::{self, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::raw::{RawClient, Reply};
use weir_tests::weir::WeirProcess;

/// Bound on waiting for an answer; weir answers in milliseconds, so this only catches hangs.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// A weir in transaction mode trusting the application user.
async fn trusting(opts: Options) -> Fixture {
    Fixture::start(Options {
        auth_type: "trust",
        ..opts
    })
    .await
    .expect("starting PostgreSQL and weir")
}

async fn login(f: &Fixture) -> RawClient {
    login_at(f.weir.port()).await
}

async fn login_at(port: u16) -> RawClient {
    RawClient::trust_login(port, USER, DATABASE)
        .await
        .expect("logging in")
}

/// PgBouncer on the same configuration as the fixture's weir, for side-by-side checks.
async fn pgbouncer(f: &Fixture, opts: &Options) -> WeirProcess {
    let opts = Options {
        auth_type: "trust",
        ..opts.clone()
    };
    WeirProcess::start_pgbouncer(
        &fixture::ini(&f.pg, &opts),
        &format!("\"{USER}\" \"{PASSWORD}\"\n"),
    )
    .await
    .expect("starting PgBouncer")
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// One frontend message to send.
enum Msg<'a> {
    Parse(&'a str, &'a str),
    /// Portal, statement, text parameters.
    Bind(&'a str, &'a str, &'a [&'a str]),
    Execute(&'a str),
    /// `S`tatement or `P`ortal, name.
    Describe(u8, &'a str),
    Close(u8, &'a str),
    Flush,
    Sync,
}

impl Msg<'_> {
    fn encode(&self) -> (u8, Vec<u8>) {
        let mut b = Vec::new();
        let tag = match self {
            Msg::Parse(name, sql) => {
                cstr(&mut b, name);
                cstr(&mut b, sql);
                b.extend_from_slice(&0u16.to_be_bytes());
                b'P'
            }
            Msg::Bind(portal, statement, params) => {
                cstr(&mut b, portal);
                cstr(&mut b, statement);
                b.extend_from_slice(&0u16.to_be_bytes());
                let n = u16::try_from(params.len()).expect("few parameters");
                b.extend_from_slice(&n.to_be_bytes());
                for p in *params {
                    let len = i32::try_from(p.len()).expect("a parameter under 2 GiB");
                    b.extend_from_slice(&len.to_be_bytes());
                    b.extend_from_slice(p.as_bytes());
                }
                b.extend_from_slice(&0u16.to_be_bytes());
                b'B'
            }
            Msg::Execute(portal) => {
                cstr(&mut b, portal);
                b.extend_from_slice(&0u32.to_be_bytes());
                b'E'
            }
            Msg::Describe(kind, name) | Msg::Close(kind, name) => {
                b.push(*kind);
                cstr(&mut b, name);
                if matches!(self, Msg::Describe(..)) {
                    b'D'
                } else {
                    b'C'
                }
            }
            Msg::Flush => b'H',
            Msg::Sync => b'S',
        };
        (tag, b)
    }
}

/// Sends `msgs` back to back, without reading.
async fn send(c: &mut RawClient, msgs: &[Msg<'_>]) {
    for m in msgs {
        let (tag, body) = m.encode();
        c.send(tag, &body).await.expect("sending to weir");
    }
}

/// The next message, failing the test if none comes within [`ANSWER_LIMIT`].
async fn next(c: &mut RawClient) -> Reply {
    tokio::time::timeout(ANSWER_LIMIT, c.next())
        .await
        .unwrap_or_else(|_| panic!("no answer within {ANSWER_LIMIT:?}: the pipeline hangs"))
        .expect("reading from weir")
        .expect("weir closed the connection")
}

/// Reads `n` messages and gives a compact picture of them: the type bytes, with an error's
/// SQLSTATE and a DataRow's first column.
async fn read(c: &mut RawClient, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(describe(&next(c).await));
    }
    out
}

/// Reads messages up to and including the `syncs`-th ReadyForQuery.
async fn until_ready(c: &mut RawClient, syncs: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < syncs {
        let reply = next(c).await;
        if reply.tag == b'Z' {
            seen += 1;
        }
        out.push(describe(&reply));
    }
    out
}

fn describe(r: &Reply) -> String {
    match r.tag {
        b'E' => format!("E:{}", r.error_field(b'C').unwrap_or_default()),
        b'D' => {
            let len = i32::from_be_bytes([r.body[2], r.body[3], r.body[4], r.body[5]]);
            match usize::try_from(len) {
                Ok(len) => format!("D:{}", String::from_utf8_lossy(&r.body[6..6 + len.min(40)])),
                Err(_) => "D:NULL".into(),
            }
        }
        tag => char::from(tag).to_string(),
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn an_error_mid_pipeline_skips_to_sync_and_the_next_pipeline_works() {
    let opts = Options::mode("transaction", 1);
    let f = trusting(opts.clone()).await;
    let bouncer = pgbouncer(&f, &opts).await;
    for port in [bouncer.port(), f.weir.port()] {
        error_mid_pipeline(login_at(port).await).await;
    }
}

async fn error_mid_pipeline(mut c: RawClient) {
    send(
        &mut c,
        &[
            Msg::Parse("a", "SELECT $1::int"),
            Msg::Parse("z", "SELECT 1/$1::int"),
            Msg::Bind("", "a", &["1"]),
            Msg::Execute(""),
            Msg::Bind("", "z", &["0"]),
            Msg::Execute(""),
            Msg::Bind("", "a", &["3"]),
            Msg::Execute(""),
            Msg::Sync,
            Msg::Bind("", "a", &["4"]),
            Msg::Execute(""),
            Msg::Sync,
        ],
    )
    .await;
    assert_eq!(
        until_ready(&mut c, 2).await,
        // Bind plans the query (constants folded): the division fails there.
        strs(&["1", "1", "2", "D:1", "C", "E:22012", "Z", "2", "D:4", "C", "Z"])
    );
}

#[tokio::test]
async fn flush_without_sync_answers_and_a_late_sync_releases() {
    let f = trusting(Options::mode("transaction", 1)).await;
    let mut c = login(&f).await;
    let mut other = login(&f).await;
    send(
        &mut c,
        &[
            Msg::Parse("a", "SELECT $1::int"),
            Msg::Bind("", "a", &["7"]),
            Msg::Execute(""),
            Msg::Flush,
        ],
    )
    .await;
    assert_eq!(read(&mut c, 4).await, strs(&["1", "2", "D:7", "C"]));
    // Known statement, answered by weir itself, then Flush.
    send(
        &mut c,
        &[
            Msg::Parse("a", "SELECT $1::int"),
            Msg::Describe(b'S', "a"),
            Msg::Flush,
        ],
    )
    .await;
    assert_eq!(read(&mut c, 3).await, strs(&["1", "t", "T"]));
    send(&mut c, &[Msg::Close(b'S', "a"), Msg::Flush]).await;
    assert_eq!(read(&mut c, 1).await, strs(&["3"]));
    // The other client waits for the only server connection until the late Sync.
    send(
        &mut other,
        &[
            Msg::Parse("", "SELECT 5"),
            Msg::Bind("", "", &[]),
            Msg::Execute(""),
            Msg::Sync,
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut c, &[Msg::Sync]).await;
    assert_eq!(until_ready(&mut c, 1).await, strs(&["Z"]));
    assert_eq!(
        until_ready(&mut other, 1).await,
        strs(&["1", "2", "D:5", "C", "Z"])
    );
}

#[tokio::test]
async fn close_and_describe_inside_a_pipeline() {
    let f = trusting(Options::mode("transaction", 1)).await;
    let mut c = login(&f).await;
    send(
        &mut c,
        &[
            Msg::Parse("a", "SELECT $1::int AS x"),
            Msg::Describe(b'S', "a"),
            Msg::Bind("p", "a", &["1"]),
            Msg::Describe(b'P', "p"),
            Msg::Execute("p"),
            Msg::Close(b'P', "p"),
            Msg::Close(b'S', "a"),
            Msg::Describe(b'S', "a"),
            Msg::Bind("", "a", &["2"]),
            Msg::Execute(""),
            Msg::Sync,
            Msg::Parse("a", "SELECT $1::int + 1"),
            Msg::Bind("", "a", &["2"]),
            Msg::Execute(""),
            Msg::Close(b'S', "a"),
            Msg::Close(b'S', "nonexistent"),
            Msg::Sync,
        ],
    )
    .await;
    assert_eq!(
        until_ready(&mut c, 2).await,
        strs(&[
            "1", "t", "T", "2", "T", "D:1", "C", "3", "3", "E:26000", "Z", //
            "1", "2", "D:3", "C", "3", "3", "Z"
        ])
    );
}

#[tokio::test]
async fn eviction_skipped_by_an_error_leaves_the_cache_true() {
    let f = trusting(Options::mode("transaction", 1).with("max_prepared_statements = 2")).await;
    let mut c = login(&f).await;
    send(
        &mut c,
        &[
            Msg::Parse("s1", "SELECT 1"),
            Msg::Parse("s2", "SELECT 2"),
            Msg::Sync,
        ],
    )
    .await;
    assert_eq!(until_ready(&mut c, 1).await, strs(&["1", "1", "Z"]));
    // An error, then a Parse that evicts s1: the server skips both the Parse and the Close
    // weir adds for the eviction.
    send(
        &mut c,
        &[
            Msg::Parse("", "SELECT 1/0"),
            Msg::Bind("", "", &[]),
            Msg::Parse("s3", "SELECT 3"),
            Msg::Sync,
        ],
    )
    .await;
    assert_eq!(until_ready(&mut c, 1).await, strs(&["1", "E:22012", "Z"]));
    for (name, sql, want) in [
        ("s1", "SELECT 1", "D:1"),
        ("s3", "SELECT 3", "D:3"),
        ("s2", "SELECT 2", "D:2"),
        ("s1", "SELECT 1", "D:1"),
    ] {
        if name == "s3" {
            send(&mut c, &[Msg::Parse(name, sql)]).await;
        }
        send(
            &mut c,
            &[Msg::Bind("", name, &[]), Msg::Execute(""), Msg::Sync],
        )
        .await;
        let mut got = until_ready(&mut c, 1).await;
        if name == "s3" {
            got.remove(0);
        }
        assert_eq!(got, strs(&["2", want, "C", "Z"]), "{name}");
    }
}

#[tokio::test]
async fn eviction_inside_one_pipeline() {
    let f = trusting(Options::mode("transaction", 1).with("max_prepared_statements = 1")).await;
    let mut c = login(&f).await;
    send(
        &mut c,
        &[
            Msg::Parse("s1", "SELECT 1"),
            Msg::Parse("s2", "SELECT 2"),
            Msg::Bind("p1", "s1", &[]),
            Msg::Bind("p2", "s2", &[]),
            Msg::Execute("p1"),
            Msg::Execute("p2"),
            Msg::Describe(b'S', "s1"),
            Msg::Bind("", "s1", &[]),
            Msg::Execute(""),
            Msg::Sync,
        ],
    )
    .await;
    assert_eq!(
        until_ready(&mut c, 1).await,
        strs(&["1", "1", "2", "2", "D:1", "C", "D:2", "C", "t", "T", "2", "D:1", "C", "Z"])
    );
}

#[tokio::test]
async fn messages_larger_than_pkt_buf_in_a_pipeline() {
    let opts = Options::mode("transaction", 1).with("pkt_buf = 4096");
    let f = trusting(opts.clone()).await;
    let bouncer = pgbouncer(&f, &opts).await;
    for port in [bouncer.port(), f.weir.port()] {
        large_messages(login_at(port).await).await;
    }
}

async fn large_messages(mut c: RawClient) {
    let big = "x".repeat(300_000);
    let sql = format!("SELECT length($1::text) + 0 * length('{big}')");
    let params = [big.as_str()];
    let mut msgs = Vec::new();
    msgs.push(Msg::Parse("big", &sql));
    for _ in 0..5 {
        msgs.push(Msg::Bind("", "big", &params));
        msgs.push(Msg::Execute(""));
    }
    msgs.push(Msg::Sync);
    send(&mut c, &msgs).await;
    let got = until_ready(&mut c, 1).await;
    assert_eq!(got.len(), 1 + 5 * 3 + 1, "{got:?}");
    assert_eq!(got[2], "D:300000");
}

#[tokio::test]
async fn pipelining_clients_share_one_server_connection() {
    let f = trusting(Options::mode("transaction", 1)).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = login(&f).await;
        tasks.push(tokio::spawn(async move {
            for round in 0..30 {
                let v = format!("{}", i * 1000 + round);
                let bad = round % 7 == 3;
                send(
                    &mut c,
                    &[
                        Msg::Parse("a", "SELECT $1::int"),
                        Msg::Bind("", "a", &[&v]),
                        Msg::Execute(""),
                        Msg::Parse("", if bad { "SELECT 1/0" } else { "SELECT 1" }),
                        Msg::Bind("", "", &[]),
                        Msg::Execute(""),
                        Msg::Sync,
                        Msg::Bind("", "a", &[&v]),
                        Msg::Execute(""),
                        Msg::Flush,
                    ],
                )
                .await;
                let got = until_ready(&mut c, 1).await;
                assert_eq!(got[2], format!("D:{v}"));
                assert_eq!(read(&mut c, 3).await, strs(&["2", &format!("D:{v}"), "C"]));
                send(&mut c, &[Msg::Sync]).await;
                assert_eq!(until_ready(&mut c, 1).await, strs(&["Z"]));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

/// A Flush with nothing pending (here after a finished pipeline) asks the server for
/// nothing: it must not keep a server connection from the clients waiting for one.
/// PgBouncer 1.25.2 holds the connection until the client's next Sync (the other client
/// waits `query_wait_timeout`, 2 minutes by default); weir gives it back.
#[tokio::test]
async fn a_flush_with_nothing_pending_does_not_hold_the_server_connection() {
    let f = trusting(Options::mode("transaction", 1)).await;
    let port = f.weir.port();
    let pooler = "weir";
    {
        let mut a = login_at(port).await;
        let mut b = login_at(port).await;
        send(
            &mut a,
            &[
                Msg::Parse("", "SELECT 1"),
                Msg::Bind("", "", &[]),
                Msg::Execute(""),
                Msg::Sync,
            ],
        )
        .await;
        assert_eq!(
            until_ready(&mut a, 1).await,
            strs(&["1", "2", "D:1", "C", "Z"]),
            "{pooler}"
        );
        send(&mut a, &[Msg::Flush]).await;
        // Once weir has the Flush, it is holding the only server connection, if any.
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(
            &mut b,
            &[
                Msg::Parse("", "SELECT 2"),
                Msg::Bind("", "", &[]),
                Msg::Execute(""),
                Msg::Sync,
            ],
        )
        .await;
        assert_eq!(
            until_ready(&mut b, 1).await,
            strs(&["1", "2", "D:2", "C", "Z"]),
            "{pooler}"
        );
        send(
            &mut a,
            &[
                Msg::Parse("", "SELECT 3"),
                Msg::Bind("", "", &[]),
                Msg::Execute(""),
                Msg::Sync,
            ],
        )
        .await;
        assert_eq!(
            until_ready(&mut a, 1).await,
            strs(&["1", "2", "D:3", "C", "Z"]),
            "{pooler}"
        );
    }
}

/// A message weir refuses itself (here LISTEN with `pinning = refuse`) in the middle of a
/// pipeline, followed by a Flush: the client waits for the answers so far and the error, and
/// gets them, without sending Sync.
#[tokio::test]
async fn a_refusal_mid_pipeline_then_flush_answers_without_sync() {
    let f = trusting(Options::mode("transaction", 1).with("pinning = refuse")).await;
    let mut c = login(&f).await;
    send(
        &mut c,
        &[
            Msg::Parse("", "SELECT 1"),
            Msg::Bind("", "", &[]),
            Msg::Execute(""),
            Msg::Parse("", "LISTEN x"),
            Msg::Bind("", "", &[]),
            Msg::Execute(""),
            Msg::Flush,
        ],
    )
    .await;
    assert_eq!(
        read(&mut c, 5).await,
        strs(&["1", "2", "D:1", "C", "E:0A000"])
    );
    send(&mut c, &[Msg::Sync]).await;
    assert_eq!(until_ready(&mut c, 1).await, strs(&["Z"]));
    // The same refusal with no Flush at all: the error comes at the Sync, in order.
    send(
        &mut c,
        &[
            Msg::Parse("", "SELECT 2"),
            Msg::Bind("", "", &[]),
            Msg::Execute(""),
            Msg::Parse("", "LISTEN x"),
            Msg::Sync,
        ],
    )
    .await;
    assert_eq!(
        until_ready(&mut c, 1).await,
        strs(&["1", "2", "D:2", "C", "E:0A000", "Z"])
    );
}

/// Whether a driver program's run through PgBouncer must pass too.
#[derive(Clone, Copy, PartialEq)]
enum PgBouncerRun {
    Asserted,
    /// Printed for comparison only: PgBouncer 1.25.2's run of pgx and JDBC batches was not
    /// yet shown to be stable.
    Printed,
}

/// Runs one driver program through PgBouncer, then through weir; weir's run must pass, and
/// PgBouncer's too when `bouncer_run` says so.
async fn through_both(
    dir: &str,
    argv: &[&str],
    driver: &str,
    (bouncer, weir): (u16, u16),
    bouncer_run: PgBouncerRun,
) {
    match driver_program(dir, argv, driver, bouncer).await {
        Ok(()) => eprintln!("{driver} through PgBouncer 1.25.2: passed"),
        Err(e) if bouncer_run == PgBouncerRun::Asserted => {
            panic!("{driver} through PgBouncer 1.25.2: {e}")
        }
        Err(e) => eprintln!("{driver} through PgBouncer 1.25.2 failed (not asserted): {e}"),
    }
    if let Err(e) = driver_program(dir, argv, driver, weir).await {
        panic!("{driver} through weir: {e}");
    }
}

/// Runs a driver program under `tests/drivers/<dir>` (installed by
/// `scripts/install-drivers.sh`) against the pooler on `port`; it must print
/// `ok <driver> …`. Err: why not, with its output.
async fn driver_program(dir: &str, argv: &[&str], driver: &str, port: u16) -> Result<(), String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("drivers")
        .join(dir);
    // A bare name (`java`) is looked up on PATH; a path is inside the driver's folder.
    let program = if argv[0].contains('/') {
        dir.join(argv[0])
    } else {
        std::path::PathBuf::from(argv[0])
    };
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(&program)
            .args(&argv[1..])
            .current_dir(&dir)
            .env("WEIR_HOST", weir_tests::net::HOST)
            .env("WEIR_PORT", port.to_string())
            .env("WEIR_USER", USER)
            .env("WEIR_PASSWORD", PASSWORD)
            .env("WEIR_DB", DATABASE)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{driver} did not finish within 180 s"))?
    .map_err(|e| {
        format!(
            "cannot run {}: {e}; run scripts/install-drivers.sh",
            program.display()
        )
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() && stdout.starts_with(&format!("ok {driver} ")) {
        Ok(())
    } else {
        Err(format!("{}\n{stdout}{stderr}", output.status))
    }
}

/// Weir and PgBouncer in front of one PostgreSQL, in transaction mode with two server
/// connections, a server-side statement cache of two and the default packet buffer.
async fn pipelining_poolers() -> (Fixture, WeirProcess) {
    let opts = Options::mode("transaction", 2)
        .with("max_prepared_statements = 2")
        .with("pkt_buf = 4096");
    let f = Fixture::start(opts.clone()).await.expect("fixture");
    let bouncer = WeirProcess::start_pgbouncer(
        &fixture::ini(&f.pg, &opts),
        &format!("\"{USER}\" \"{PASSWORD}\"\n"),
    )
    .await
    .expect("starting PgBouncer");
    (f, bouncer)
}

/// psycopg 3's pipeline mode, as applications use it, from several clients over two server
/// connections with a server-side statement cache of two: the same program passes through
/// PgBouncer and through weir.
#[tokio::test]
async fn psycopg_pipeline_mode_through_weir_and_pgbouncer() {
    let (f, bouncer) = pipelining_poolers().await;
    let argv = [".venv/bin/python", "psycopg_pipeline.py"];
    let ports = (bouncer.port(), f.weir.port());
    through_both(
        "python",
        &argv,
        "psycopg-pipeline",
        ports,
        PgBouncerRun::Asserted,
    )
    .await;
}

/// pgx v5 batches (`SendBatch`: the queries of a batch, then one Sync), with pgx's statement
/// cache of two closing statements between batches: through PgBouncer and through weir.
#[tokio::test]
async fn pgx_batches_through_weir_and_pgbouncer() {
    let (f, bouncer) = pipelining_poolers().await;
    let ports = (bouncer.port(), f.weir.port());
    through_both(
        "go",
        &["bin/pgxbatch"],
        "pgx-batch",
        ports,
        PgBouncerRun::Printed,
    )
    .await;
}

/// Messages sent after the server failed one and before the client's Sync are skipped by the
/// server; weir must not expect answers to them (or answer them itself), or every later
/// answer is matched to the wrong request: psycopg's pipeline mode lost a CloseComplete so.
/// (PgBouncer 1.25.2 drops the client connection at the second step.)
#[tokio::test]
async fn messages_sent_between_an_error_and_sync_are_owed_nothing() {
    let f = trusting(Options::mode("transaction", 1)).await;
    {
        let mut c = login(&f).await;
        send(&mut c, &[Msg::Parse("a", "SELECT $1::int"), Msg::Sync]).await;
        assert_eq!(until_ready(&mut c, 1).await, strs(&["1", "Z"]));
        send(
            &mut c,
            &[
                Msg::Parse("", "SELECT 1/0"),
                Msg::Bind("", "", &[]),
                Msg::Flush,
            ],
        )
        .await;
        assert_eq!(read(&mut c, 2).await, strs(&["1", "E:22012"]));
        // Sent once the error is out: all skipped, up to the Sync.
        send(
            &mut c,
            &[
                Msg::Parse("a", "SELECT $1::int"),
                Msg::Bind("", "a", &["5"]),
                Msg::Execute(""),
                Msg::Close(b'S', "b"),
                Msg::Sync,
            ],
        )
        .await;
        assert_eq!(until_ready(&mut c, 1).await, strs(&["Z"]));
        // Nothing is owed any more: the only server connection is free for another client
        // while this one idles.
        let mut other = login(&f).await;
        send(
            &mut other,
            &[
                Msg::Parse("", "SELECT 2"),
                Msg::Bind("", "", &[]),
                Msg::Execute(""),
                Msg::Sync,
            ],
        )
        .await;
        assert_eq!(
            until_ready(&mut other, 1).await,
            strs(&["1", "2", "D:2", "C", "Z"])
        );
        send(&mut c, &[Msg::Close(b'S', "b"), Msg::Sync]).await;
        assert_eq!(until_ready(&mut c, 1).await, strs(&["3", "Z"]));
        send(
            &mut c,
            &[Msg::Bind("", "a", &["6"]), Msg::Execute(""), Msg::Sync],
        )
        .await;
        assert_eq!(until_ready(&mut c, 1).await, strs(&["2", "D:6", "C", "Z"]));
    }
}

/// JDBC batches (`executeBatch`: the statements of a batch pipelined before one Sync),
/// including a batch failing in the middle, with the driver's statement cache of two:
/// through PgBouncer and through weir.
#[tokio::test]
async fn jdbc_batches_through_weir_and_pgbouncer() {
    let (f, bouncer) = pipelining_poolers().await;
    let argv = [
        "java",
        "-cp",
        "target/jdbc-check.jar",
        "dev.weir.drivers.JdbcBatch",
    ];
    let ports = (bouncer.port(), f.weir.port());
    through_both("java", &argv, "jdbc-batch", ports, PgBouncerRun::Printed).await;
}
