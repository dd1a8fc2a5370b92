//! Tests of the harness itself, against real PostgreSQL processes and real child processes.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, BufReader};
use weir_tests::postgres::{parse_pgbench, PasswordMethod, PgCluster, PgOptions};
use weir_tests::tokio_postgres;
use weir_tests::weir::{Signal, WeirProcess};

/// Environment variable that tells `orphan_probe` it was started by its parent test.
const PROBE_ENV: &str = "WEIR_TESTS_ORPHAN_PROBE";

/// The SQLSTATE of a failed connection or query, if the server sent one.
fn sqlstate(err: &anyhow::Error) -> Option<String> {
    err.downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .map(|state| state.code().to_string())
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|(state, _)| state != "Z"),
        Err(_) => false,
    }
}

/// State and parent pid from a `/proc/<pid>/stat` line; the command name may contain spaces
/// and parentheses, so parsing starts after its last `)`.
fn stat_fields(stat: &str) -> Option<(String, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_string();
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// `pid` and all its live descendants.
fn process_tree(pid: u32) -> BTreeSet<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
    {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
            if let Some((state, ppid)) = stat_fields(&stat) {
                if state != "Z" {
                    parents.push((child, ppid));
                }
            }
        }
    }
    let mut tree = BTreeSet::from([pid]);
    loop {
        let before = tree.len();
        for (child, ppid) in &parents {
            if tree.contains(ppid) {
                tree.insert(*child);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy();
    std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| String::from_utf8_lossy(&cmd).contains(needle.as_ref()))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Polls until none of `pids` is alive, returning the survivors after `timeout`.
async fn wait_gone(pids: &BTreeSet<u32>, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let survivors: Vec<u32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
        if survivors.is_empty() || Instant::now() >= deadline {
            return survivors;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn md5_and_scram_roles_authenticate() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_role("md5_user", "md5 pass'word", PasswordMethod::Md5)
        .await
        .unwrap();
    pg.create_role("scram_user", "scram pass", PasswordMethod::Scram)
        .await
        .unwrap();

    let su = pg.superuser().await.unwrap();
    for (role, verifier) in [("md5_user", "md5"), ("scram_user", "SCRAM-SHA-256$")] {
        let stored: String = su
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        assert!(stored.starts_with(verifier), "{role}: {stored}");
    }

    for (role, password) in [("md5_user", "md5 pass'word"), ("scram_user", "scram pass")] {
        let client = pg.connect(role, password, "postgres").await.unwrap();
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, role);
        // The role may create tables, as pgbench -i needs.
        client
            .batch_execute(&format!("CREATE TABLE {role}_t (x int)"))
            .await
            .unwrap();

        let err = pg.connect(role, "wrong", "postgres").await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err:#}");

        // The log names the pg_hba method (md5), under which the server challenges SCRAM
        // verifiers with SCRAM; what matters here is that the role was not trusted.
        let expected = format!("identity=\"{role}\" method=md5");
        assert!(
            pg.log().contains(&expected),
            "no {expected:?} in log:\n{}",
            pg.log()
        );
    }
}

#[tokio::test]
async fn options_are_applied() {
    let pg = PgCluster::start_with(PgOptions {
        max_connections: 12,
        password_encryption: "md5",
        extra_conf: vec!["work_mem = '7MB'".into()],
        ..PgOptions::default()
    })
    .await
    .unwrap();
    let su = pg.superuser().await.unwrap();
    for (setting, expected) in [
        ("max_connections", "12"),
        ("password_encryption", "md5"),
        ("work_mem", "7MB"),
        ("listen_addresses", "127.0.0.1"),
        ("fsync", "off"),
        ("log_connections", "on"),
    ] {
        let value: String = su
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(value, expected, "{setting}");
    }
    let port: String = su.query_one("SHOW port", &[]).await.unwrap().get(0);
    assert_eq!(port, pg.port().to_string());
    assert_eq!(pg.host(), "127.0.0.1");
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port()))
        .exists());
    assert!(pg.data_dir().join("PG_VERSION").exists());
    assert!(pg.log_path().starts_with(pg.data_dir()));
}

#[tokio::test]
async fn restart_keeps_working() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_role("app", "app pass", PasswordMethod::Scram)
        .await
        .unwrap();
    pg.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    let held = pg.connect("app", "app pass", "postgres").await.unwrap();
    let pid_before = pg.postmaster_pid().unwrap();

    pg.restart().await.unwrap();
    assert!(
        held.query_one("SELECT 1", &[]).await.is_err(),
        "old connection survived"
    );
    assert_ne!(pg.postmaster_pid().unwrap(), pid_before);
    let su = pg.superuser().await.unwrap();
    let x: i32 = su
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
    pg.connect("app", "app pass", "postgres").await.unwrap();

    pg.stop().await.unwrap();
    assert_eq!(pg.postmaster_pid(), None);
    assert!(pg.superuser().await.is_err());
    assert!(pg.stop().await.is_err(), "stopping twice must fail");
    pg.start_again().await.unwrap();
    assert!(pg.start_again().await.is_err(), "starting twice must fail");
    pg.connect("app", "app pass", "postgres").await.unwrap();
    assert!(pg.log().contains("database system is shut down"));
}

#[tokio::test]
async fn backends_counts_held_connections() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_role("counted", "pw", PasswordMethod::Md5)
        .await
        .unwrap();
    pg.create_database("countdb", "counted").await.unwrap();
    assert_eq!(pg.backends("counted", "countdb").await.unwrap(), 0);

    let first = pg.connect("counted", "pw", "countdb").await.unwrap();
    let second = pg.connect("counted", "pw", "countdb").await.unwrap();
    let _other_db = pg.connect("counted", "pw", "postgres").await.unwrap();
    assert_eq!(pg.backends("counted", "countdb").await.unwrap(), 2);

    drop(first);
    // The backend exits after the client's Terminate arrives, so give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.backends("counted", "countdb").await.unwrap() != 1 {
        assert!(Instant::now() < deadline, "backend count stayed above 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn psql_and_pgbench_run_against_the_cluster() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_role("bench", "bench pw", PasswordMethod::Md5)
        .await
        .unwrap();
    pg.create_database("benchdb", "bench").await.unwrap();

    let out = pg
        .psql("bench", "bench pw", "benchdb", "SELECT 1 + 1")
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "2\n");
    let out = pg
        .psql("bench", "nope", "benchdb", "SELECT 1")
        .await
        .unwrap();
    assert!(!out.success());
    assert!(
        out.stderr.contains("password authentication failed"),
        "{out:?}"
    );
    let out = pg
        .psql("bench", "bench pw", "benchdb", "SELECT * FROM missing")
        .await
        .unwrap();
    assert!(
        !out.success(),
        "ON_ERROR_STOP must turn SQL errors into a failure"
    );

    let init = pg
        .pgbench("bench", "bench pw", "benchdb", &["-i", "-s", "1", "-q"])
        .await
        .unwrap();
    assert!(init.success(), "{init:?}");
    let run = pg
        .pgbench(
            "bench",
            "bench pw",
            "benchdb",
            &["-c", "2", "-j", "1", "-t", "50"],
        )
        .await
        .unwrap();
    assert!(run.success(), "{run:?}");
    let summary = parse_pgbench(&run.stdout).unwrap_or_else(|| panic!("{run:?}"));
    assert_eq!(summary.transactions, 100);
    assert_eq!(summary.failed, 0);
    assert!(summary.tps > 0.0, "{summary:?}");
}

#[tokio::test]
async fn drop_leaves_no_postgres_process() {
    let pg = PgCluster::start().await.unwrap();
    let client = pg.superuser().await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    let postmaster = pg.postmaster_pid().unwrap();
    let tree = process_tree(postmaster);
    // Checkpointer, background writer, walwriter, ... and the held backend.
    assert!(tree.len() > 3, "{tree:?}");
    let root = pg.root_dir().to_owned();
    let data_dir = pg.data_dir().to_owned();

    drop(pg);
    let survivors: Vec<u32> = tree.iter().copied().filter(|pid| alive(*pid)).collect();
    assert!(survivors.is_empty(), "still alive: {survivors:?}");
    assert!(processes_mentioning(&data_dir).is_empty());
    assert!(!root.exists(), "{} was not removed", root.display());
    assert!(client.query_one("SELECT 1", &[]).await.is_err());
}

#[tokio::test]
async fn killed_test_process_leaves_no_postmaster() {
    let mut probe = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "orphan_probe", "--ignored", "--nocapture"])
        .env(PROBE_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(probe.stdout.take().unwrap()).lines();
    let report = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(report) = line.strip_prefix("PROBE ") {
                return report.to_string();
            }
        }
        panic!("the probe ended without reporting");
    })
    .await
    .unwrap();
    let (pid, root) = report.split_once(' ').unwrap();
    let postmaster: u32 = pid.parse().unwrap();
    let root = PathBuf::from(root);
    let tree = process_tree(postmaster);
    assert!(tree.len() > 3, "{tree:?}");

    // SIGKILL: no unwinding, no Drop; only the parent-death signal can clean up.
    probe.kill().await.unwrap();
    let survivors = wait_gone(&tree, Duration::from_secs(30)).await;
    // A killed process leaves its directory behind by design; tidy up after the probe.
    let _ = std::fs::remove_dir_all(&root);
    assert!(survivors.is_empty(), "orphaned: {survivors:?}");
}

#[tokio::test]
#[ignore = "started as a child process by killed_test_process_leaves_no_postmaster"]
async fn orphan_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let pg = PgCluster::start().await.unwrap();
    let _held = pg.superuser().await.unwrap();
    println!(
        "PROBE {} {}",
        pg.postmaster_pid().unwrap(),
        pg.root_dir().display()
    );
    // The parent kills this process long before the sleep ends.
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// A stand-in pooler: reads `listen_port` from the ini file it is given, listens there, and
/// exits with status 7 on SIGTERM, like a pooler that drains and exits.
const FAKE_POOLER: &str = r##"#!/bin/sh
port=$(sed -n 's/^listen_port = //p' "$1")
exec python3 -c '
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("fake pooler listening on", sys.argv[1], flush=True)
while True:
    server.accept()[0].close()
' "$port"
"##;

fn fake_pooler(dir: &Path) -> PathBuf {
    let path = dir.join("fake-weir");
    std::fs::write(&path, FAKE_POOLER).expect("writing the fake pooler");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("making the fake pooler executable");
    path
}

#[tokio::test]
async fn weir_process_runs_signals_and_rewrites_config() {
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = fake_pooler(bin_dir.path());
    let ini = "[pgbouncer]\nlisten_port = {port}\nauth_file = {dir}/userlist.txt\n";
    let mut weir = WeirProcess::start_binary(&binary, ini, "\"app\" \"secret\"\n")
        .await
        .unwrap();

    let port = weir.port();
    let written = std::fs::read_to_string(weir.config_path()).unwrap();
    let dir = weir.dir().display().to_string();
    assert_eq!(
        written,
        format!("[pgbouncer]\nlisten_port = {port}\nauth_file = {dir}/userlist.txt\n")
    );
    assert_eq!(
        std::fs::read_to_string(weir.dir().join("userlist.txt")).unwrap(),
        "\"app\" \"secret\"\n"
    );
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert!(
        weir.log()
            .contains(&format!("fake pooler listening on {port}")),
        "{}",
        weir.log()
    );

    weir.rewrite_config("[pgbouncer]\nlisten_port = {port}\nmax_client_conn = 5\n")
        .unwrap();
    let rewritten = std::fs::read_to_string(weir.config_path()).unwrap();
    assert_eq!(
        rewritten,
        format!("[pgbouncer]\nlisten_port = {port}\nmax_client_conn = 5\n")
    );

    assert_eq!(
        weir.wait_exit(Duration::from_millis(100)).await.unwrap(),
        None
    );
    weir.signal(Signal::SIGTERM).unwrap();
    assert_eq!(
        weir.wait_exit(Duration::from_secs(10)).await.unwrap(),
        Some(7)
    );
    assert!(
        weir.signal(Signal::SIGHUP).is_err(),
        "signalling an exited process must fail"
    );
}

#[tokio::test]
async fn weir_process_drop_kills_it() {
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = fake_pooler(bin_dir.path());
    let weir = WeirProcess::start_binary(&binary, "listen_port = {port}\n", "")
        .await
        .unwrap();
    let pid = weir.pid();
    let dir = weir.dir().to_owned();
    assert!(alive(pid));
    drop(weir);
    assert!(!alive(pid));
    assert!(!dir.exists());
}

#[tokio::test]
async fn weir_process_exiting_before_listening_reports_its_output() {
    // `sleep` rejects the ini path as a duration and exits at once, like a pooler that
    // refuses its configuration.
    let err = WeirProcess::start_binary(Path::new("/bin/sleep"), "listen_port = {port}\n", "")
        .await
        .err()
        .unwrap();
    let message = format!("{err:#}");
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("before listening"), "{message}");
    assert!(
        message.contains("weir.ini"),
        "the log must be included: {message}"
    );
}

#[tokio::test]
async fn pgbouncer_anchor_serves_the_same_configuration_text() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_role("app", "secret", PasswordMethod::Scram)
        .await
        .unwrap();
    let ini = format!(
        "[databases]\npostgres = host=127.0.0.1 port={}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {{port}}\n\
         unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {{dir}}/userlist.txt\n",
        pg.port()
    );
    let bouncer = WeirProcess::start_pgbouncer(&ini, "\"app\" \"secret\"\n")
        .await
        .unwrap();
    let client = weir_tests::weir::connect(bouncer.port(), "app", "secret", "postgres")
        .await
        .unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let admin = weir_tests::weir::connect(bouncer.port(), "app", "secret", "pgbouncer").await;
    assert!(admin.is_err(), "app is no admin user of PgBouncer");
    let version = std::process::Command::new(weir_tests::anchor::pgbouncer().unwrap())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with("PgBouncer 1.25.2"), "{version}");
}

/// The binaries' nested build runs inside `cargo test`, which sets CARGO_PKG_NAME and the
/// like for the test; the nested build must not see them, or ring's build script reruns,
/// everything above it (rustls, kube, the operator) is rebuilt, and the next `cargo test` from
/// a shell rebuilds it all back: minutes per kwok suite. After a build with a shell's
/// environment, the nested build finds nothing to do.
#[tokio::test]
async fn the_nested_build_finds_the_binaries_of_a_shell_build_fresh() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut shell = std::process::Command::new(cargo);
    shell
        .args([
            "build",
            "-p",
            "weir-operator",
            "-p",
            "weir-pooler",
            "-p",
            "kubectl-weir",
        ])
        .arg("--bins")
        .current_dir(weir_tests::k8s::workspace());
    // A shell's environment: none of the CARGO_ variables cargo sets for a crate or a test.
    let configuration = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL"];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if (name.starts_with("CARGO_") && !configuration.contains(&name.as_ref()))
            || name == "OUT_DIR"
        {
            shell.env_remove(name.as_ref());
        }
    }
    let out = shell.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = weir_tests::k8s::cargo_build_binaries().await.unwrap();
    assert!(rebuilt.is_empty(), "the nested build rebuilt {rebuilt:?}");
}
