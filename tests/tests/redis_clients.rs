//! Real Redis clients through weir: `redis-cli` (Debian's redis-tools), redis-py, node-redis,
//! go-redis, Jedis (pinned in tests/drivers/, installed by scripts/install-drivers.sh) and
//! redis-rs (a dev-dependency, run in this process).
//!
//! Every library runs the same checks, over RESP2 and over RESP3, with several clients at once
//! through weir with the exclusive pool on: log in as an ACL user, a hash read back as a RESP3
//! map over RESP3 only (the protocol really is in use), a pipeline of 300 commands
//! answered in order, WATCH/MULTI/EXEC that a second connection breaks (EXEC answers nil) and
//! one it does not, a BLPOP woken by a producer once INFO shows it blocked, a Pub/Sub message,
//! a key in database 2 that database 0 does not see, and a wrong password refused with
//! WRONGPASS. Afterwards no exclusive or Pub/Sub connection is left in use.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use futures::StreamExt as _;
use tokio::task::JoinSet;
use weir_tests::drivers::{check_installed, drivers_dir};
use weir_tests::redis::Pair;

/// The ACL user every library logs in as, and its password.
const USER: &str = "alice";
const PASSWORD: &str = "apw";
/// Clients each library runs at once, per protocol.
const CLIENTS: usize = 4;
/// Keys in the pipeline: a SET, a GET and an INCR each.
const PIPELINED: usize = 100;
const OTHER_DB: u8 = 2;
/// The longest BLPOP waits; the producer pushes long before.
const POP_TIMEOUT_SECS: f64 = 30.0;
/// How often a producer looks at INFO for a blocked consumer.
const POLL: Duration = Duration::from_millis(5);

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// redis-server with `requirepass` for `default` and the ACL user [`USER`], and weir with the
/// same users in its `auth_file` and the exclusive pool on.
async fn authenticated_pair() -> Pair {
    let acl_password = format!(">{PASSWORD}");
    Pair::start(
        &[
            "--requirepass",
            "dpw",
            "--user",
            USER,
            "on",
            &acl_password,
            "~*",
            "&*",
            "+@all",
        ],
        "private_conn_pool_enabled = 1\nauth_file = {dir}/userlist.txt\n",
        &format!("\"default\" \"dpw\"\n\"{USER}\" \"{PASSWORD}\"\n"),
    )
    .await
    .expect("start")
}

/// Once every client has gone: nothing exclusive or subscribed is left, and the exclusive
/// pool was used.
async fn assert_clean_afterwards(pair: &Pair) {
    let b = pair
        .wait_backend(|b| b["exclusive_in_use"] == 0 && b["pubsub"] == 0)
        .await
        .expect("connections given back");
    assert!(b["pool_hits"].as_u64() > Some(0), "{b}");
}

#[tokio::test]
async fn redis_cli_through_weir() {
    let pair = Pair::start(&[], "private_conn_pool_enabled = 1\n", "")
        .await
        .expect("start");
    let port = pair.port.to_string();
    let cli = |args: &[&str]| {
        let mut c = Command::new("redis-cli");
        c.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        run(&mut c)
    };
    assert_eq!(cli(&["SET", "greeting", "hello"]).trim(), "OK");
    assert_eq!(cli(&["GET", "greeting"]).trim(), "hello");
    assert_eq!(cli(&["-3", "HSET", "h", "f", "1"]).trim(), "1");
    assert!(cli(&["-n", "2", "SET", "only-in-2", "x"]).contains("OK"));
    assert!(cli(&["-n", "2", "DBSIZE"]).contains('1'));
    assert!(cli(&["GET", "only-in-2"]).trim().is_empty());
    assert_eq!(cli(&["BLPOP", "nothing", "0.05"]).trim(), "");
    // Many pipelined commands from redis-cli's --pipe mode.
    let mass: String = (0..1000).map(|i| format!("SET mass:{i} {i}\r\n")).collect();
    let mut pipe = Command::new("sh");
    pipe.arg("-c").arg(format!(
        "printf '%s' \"$MASS\" | redis-cli -h 127.0.0.1 -p {port} --pipe"
    ));
    pipe.env("MASS", mass);
    let report = run(&mut pipe);
    assert!(report.contains("errors: 0, replies: 1000"), "{report}");
    assert_eq!(cli(&["GET", "mass:999"]).trim(), "999");
}

/// A client program under `tests/drivers/` and what `scripts/install-drivers.sh` builds it
/// into; it prints `ok <client> resp2` and `ok <client> resp3`.
struct Program {
    client: &'static str,
    /// Its folder under `tests/drivers/`, where it runs.
    dir: &'static str,
    /// Program and arguments; a program with a `/` is a path inside `dir`.
    argv: &'static [&'static str],
    artifact: &'static str,
    /// What the artifact is made from, inside `dir`.
    inputs: &'static [&'static str],
}

const PROGRAMS: &[Program] = &[
    Program {
        client: "redis-py",
        dir: "python",
        argv: &[".venv/bin/python", "redis_check.py"],
        artifact: ".venv/.installed",
        inputs: &["requirements.txt"],
    },
    Program {
        client: "node-redis",
        dir: "node",
        argv: &["node", "redis-check.js"],
        artifact: "node_modules/.installed",
        inputs: &["package.json", "package-lock.json"],
    },
    Program {
        client: "go-redis",
        dir: "go",
        argv: &["bin/goredischeck"],
        artifact: "bin/goredischeck",
        inputs: &["go.mod", "go.sum", "redis"],
    },
    Program {
        client: "jedis",
        dir: "java",
        argv: &[
            "java",
            "-cp",
            "target/jdbc-check.jar",
            "dev.weir.drivers.JedisCheck",
        ],
        artifact: "target/jdbc-check.jar",
        inputs: &["pom.xml", "src"],
    },
];

fn program(client: &str) -> &'static Program {
    PROGRAMS
        .iter()
        .find(|p| p.client == client)
        .expect("a known client")
}

/// Runs `program` (several clients per protocol) against weir's RESP `port`.
async fn run_program(program: &'static Program, port: u16) {
    let dir = drivers_dir().join(program.dir);
    if let Err(err) = check_installed(&dir, program.artifact, program.inputs) {
        panic!("{}: {err}", program.client);
    }
    let (first, rest) = program.argv.split_first().expect("a program");
    let mut cmd = if first.contains('/') {
        Command::new(dir.join(first))
    } else {
        Command::new(first)
    };
    cmd.args(rest)
        .current_dir(&dir)
        .env("WEIR_HOST", "127.0.0.1")
        .env("WEIR_PORT", port.to_string())
        .env("WEIR_USER", USER)
        .env("WEIR_PASSWORD", PASSWORD);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("the client program");
    for protocol in ["resp2", "resp3"] {
        let ok = format!("ok {} {protocol}", program.client);
        assert!(out.lines().any(|l| l == ok), "no `{ok}` line:\n{out}");
    }
}

/// One library against a weir of its own.
async fn check_alone(client: &str) {
    let pair = authenticated_pair().await;
    run_program(program(client), pair.port).await;
    assert_clean_afterwards(&pair).await;
}

#[tokio::test]
async fn redis_py_through_weir() {
    check_alone("redis-py").await;
}

#[tokio::test]
async fn node_redis_through_weir() {
    check_alone("node-redis").await;
}

#[tokio::test]
async fn go_redis_through_weir() {
    check_alone("go-redis").await;
}

#[tokio::test]
async fn jedis_through_weir() {
    check_alone("jedis").await;
}

/// Every library at once through one weir: RESP2 and RESP3 clients of five libraries share its
/// connections, each still sees only its own transactions, databases and messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_library_at_once_through_one_weir() {
    let pair = authenticated_pair().await;
    let mut runs = JoinSet::new();
    for program in PROGRAMS {
        runs.spawn(run_program(program, pair.port));
    }
    runs.spawn(run_redis_rs(pair.port));
    while let Some(done) = runs.join_next().await {
        if let Err(err) = done {
            std::panic::resume_unwind(err.into_panic());
        }
    }
    assert_clean_afterwards(&pair).await;
}

// ---------------------------------------------------------------------------------------------
// redis-rs, in this process

#[tokio::test]
async fn redis_rs_through_weir() {
    let pair = authenticated_pair().await;
    run_redis_rs(pair.port).await;
    assert_clean_afterwards(&pair).await;
}

/// [`CLIENTS`] redis-rs clients over RESP2, then over RESP3, against weir's RESP `port`.
async fn run_redis_rs(port: u16) {
    for protocol in ["resp2", "resp3"] {
        let mut clients = JoinSet::new();
        for i in 0..CLIENTS {
            let url = |password: &str, db: u8| {
                format!("redis://{USER}:{password}@127.0.0.1:{port}/{db}?protocol={protocol}")
            };
            let target = RsTarget {
                url: url(PASSWORD, 0),
                other_db: url(PASSWORD, OTHER_DB),
                wrong: url("wrong", 0),
                resp3: protocol == "resp3",
            };
            let tag = format!("redis-rs:{protocol}:{i}");
            clients.spawn(async move { redis_rs_check(&target, &tag).await.with_context(|| tag) });
        }
        while let Some(done) = clients.join_next().await {
            done.expect("client task").expect("redis-rs check");
        }
    }
}

/// Where one redis-rs client connects.
struct RsTarget {
    url: String,
    other_db: String,
    /// The same user with a wrong password.
    wrong: String,
    resp3: bool,
}

async fn redis_rs_connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

async fn redis_rs_check(target: &RsTarget, tag: &str) -> anyhow::Result<()> {
    let mut con = redis_rs_connect(&target.url)
        .await
        .context("AUTH as an ACL user")?;
    let pong: String = redis::cmd("PING").query_async(&mut con).await?;
    ensure!(pong == "PONG", "PING answered {pong}");

    // A hash comes back as a RESP3 map over RESP3 and as a flat array over RESP2.
    let hash = format!("{tag}:h");
    redis::cmd("HSET")
        .arg(&hash)
        .arg("f")
        .arg("v")
        .exec_async(&mut con)
        .await?;
    let reply: redis::Value = redis::cmd("HGETALL")
        .arg(&hash)
        .query_async(&mut con)
        .await?;
    ensure!(
        matches!(reply, redis::Value::Map(_)) == target.resp3,
        "HGETALL answered {reply:?}"
    );

    // A pipeline of SET, GET and INCR for 100 keys, each reply in order.
    let mut pipe = redis::pipe();
    for i in 0..PIPELINED {
        let key = format!("{tag}:p{i}");
        pipe.set(&key, i)
            .ignore()
            .get(&key)
            .incr(format!("{tag}:n"), 1);
    }
    let replies: Vec<usize> = pipe.query_async(&mut con).await.context("pipeline")?;
    let expected: Vec<usize> = (0..PIPELINED).flat_map(|i| [i, i + 1]).collect();
    ensure!(replies == expected, "pipeline answered {replies:?}");

    // WATCH/MULTI/EXEC broken by a write from another connection: EXEC answers nil.
    let key = format!("{tag}:w");
    redis::cmd("SET")
        .arg(&key)
        .arg("0")
        .exec_async(&mut con)
        .await?;
    redis::cmd("WATCH").arg(&key).exec_async(&mut con).await?;
    let mut writer = redis_rs_connect(&target.url).await?;
    redis::cmd("SET")
        .arg(&key)
        .arg("writer")
        .exec_async(&mut writer)
        .await?;
    let aborted: Option<(String,)> = redis::pipe()
        .atomic()
        .set(&key, "tx")
        .query_async(&mut con)
        .await?;
    ensure!(
        aborted.is_none(),
        "EXEC after a conflicting write answered {aborted:?}"
    );
    let value: String = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
    ensure!(
        value == "writer",
        "after the aborted EXEC the key is {value}"
    );
    redis::cmd("WATCH").arg(&key).exec_async(&mut con).await?;
    let done: Option<(String,)> = redis::pipe()
        .atomic()
        .set(&key, "tx")
        .query_async(&mut con)
        .await?;
    ensure!(
        done == Some(("OK".into(),)),
        "EXEC without a conflict answered {done:?}"
    );

    // A BLPOP, blocked as INFO shows, woken by a producer.
    let queue = format!("{tag}:q");
    let mut consumer = redis_rs_connect(&target.url).await?;
    let blpop = {
        let queue = queue.clone();
        tokio::spawn(async move {
            redis::cmd("BLPOP")
                .arg(&queue)
                .arg(POP_TIMEOUT_SECS)
                .query_async::<Option<(String, String)>>(&mut consumer)
                .await
        })
    };
    while blocked_clients(&mut con).await? == 0 && !blpop.is_finished() {
        tokio::time::sleep(POLL).await;
    }
    redis::cmd("RPUSH")
        .arg(&queue)
        .arg("job")
        .exec_async(&mut con)
        .await?;
    let popped = blpop.await?.context("BLPOP")?;
    ensure!(
        popped == Some((queue.clone(), "job".into())),
        "BLPOP answered {popped:?}"
    );

    // Pub/Sub: a message published once the subscription is confirmed.
    let channel = format!("{tag}:chan");
    let mut pubsub = redis::Client::open(target.url.as_str())?
        .get_async_pubsub()
        .await?;
    pubsub.subscribe(&channel).await.context("SUBSCRIBE")?;
    let receivers: usize = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("hello")
        .query_async(&mut con)
        .await?;
    ensure!(receivers == 1, "PUBLISH reached {receivers} subscribers");
    let message = tokio::time::timeout(Duration::from_secs(30), pubsub.on_message().next())
        .await
        .context("no Pub/Sub message")?
        .context("the subscription ended")?;
    let payload: String = message.get_payload()?;
    ensure!(
        message.get_channel_name() == channel && payload == "hello",
        "received {message:?}"
    );
    drop(pubsub);

    // Database 2 holds a key that database 0 does not see.
    let key = format!("{tag}:db");
    let mut db2 = redis_rs_connect(&target.other_db).await?;
    redis::cmd("SET")
        .arg(&key)
        .arg("in-2")
        .exec_async(&mut db2)
        .await?;
    let there: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut db2).await?;
    let here: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
    ensure!(
        there.as_deref() == Some("in-2") && here.is_none(),
        "GET in database 2: {there:?}, in 0: {here:?}"
    );

    // A wrong password: Redis's WRONGPASS, which redis-rs reports over RESP2 as its own
    // AuthenticationFailed without the code.
    match redis_rs_connect(&target.wrong).await {
        Ok(_) => bail!("a wrong password was accepted"),
        Err(err)
            if err.code() == Some("WRONGPASS")
                || err.kind() == redis::ErrorKind::AuthenticationFailed =>
        {
            Ok(())
        }
        Err(err) => bail!("want WRONGPASS, got {err}"),
    }
}

/// `blocked_clients` from INFO clients.
async fn blocked_clients(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("clients").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no blocked_clients in INFO clients")
}
