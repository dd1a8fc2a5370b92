//! Real Redis clients through weir: `redis-cli` (Debian's redis-tools) and redis-py (pinned in
//! tests/drivers/python/requirements.txt, installed by scripts/install-drivers.sh).

use std::path::Path;
use std::process::Command;

use weir_tests::redis::Pair;

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

#[tokio::test]
async fn redis_py_through_weir() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers/python");
    let python = dir.join(".venv/bin/python");
    assert!(
        Command::new(&python)
            .args(["-c", "import redis"])
            .status()
            .is_ok_and(|s| s.success()),
        "redis-py is not installed: run scripts/install-drivers.sh"
    );
    let pair = Pair::start(&[], "private_conn_pool_enabled = 1\n", "")
        .await
        .expect("start");
    let out = run(Command::new(&python)
        .arg(dir.join("redis_check.py"))
        .arg(pair.port.to_string()));
    assert!(
        out.contains("resp2: ok") && out.contains("resp3: ok"),
        "{out}"
    );
}
