//! The process settings of PgBouncer's `src/main.c`, side by side with PgBouncer 1.25.2 on
//! the same configuration: `pidfile` (a running holder refuses the start, a stale file is
//! replaced, the file goes at exit), `-d` (needs a pidfile, detaches), `user` and
//! `unix_socket_group`; and, weir's own, that its heap stays on small pages. No PostgreSQL is
//! needed: nothing here reaches a server.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use weir_tests::anchor;
use weir_tests::fixture::Fixture;
use weir_tests::net;
use weir_tests::procfs;
use weir_tests::weir::{self, Signal, WeirProcess};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Weir,
    PgBouncer,
}

const KINDS: [Kind; 2] = [Kind::Weir, Kind::PgBouncer];

/// How long a pooler may take to start, stop or write its pid file.
const LIMIT: Duration = Duration::from_secs(15);

async fn start(kind: Kind, ini: &str) -> anyhow::Result<WeirProcess> {
    match kind {
        Kind::Weir => WeirProcess::start(ini, "").await,
        Kind::PgBouncer => WeirProcess::start_pgbouncer(ini, "").await,
    }
}

/// A directory every OS user may write to, for pid files made before the pooler starts.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

fn ini(extra: &str) -> String {
    format!(
        "[databases]\n\
         app = host=127.0.0.1 port=1 dbname=app user=app\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         auth_type = any\n\
         {extra}"
    )
}

/// A pid no process has: a child that has been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

#[tokio::test]
async fn a_pidfile_naming_a_running_process_refuses_the_start() {
    for kind in KINDS {
        let dir = shared_dir();
        let pidfile = dir.path().join("pooler.pid");
        let holder = format!("{}\n", std::process::id());
        std::fs::write(&pidfile, &holder).expect("pidfile");
        let ini = ini(&format!(
            "unix_socket_dir =\npidfile = {}\n",
            pidfile.display()
        ));
        let err = match start(kind, &ini).await {
            Ok(_) => panic!("{kind:?} started over a live pidfile"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("exists, another instance running?"),
            "{kind:?}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(&pidfile).unwrap(),
            holder,
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn a_stale_pidfile_is_replaced_and_the_pidfile_goes_at_exit() {
    for kind in KINDS {
        let dir = shared_dir();
        let pidfile = dir.path().join("pooler.pid");
        std::fs::write(&pidfile, format!("{}\n", dead_pid())).expect("pidfile");
        let ini = ini(&format!(
            "unix_socket_dir =\npidfile = {}\n",
            pidfile.display()
        ));
        let mut p = start(kind, &ini)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
        assert_eq!(
            std::fs::read_to_string(&pidfile).unwrap(),
            format!("{}\n", p.pid()),
            "{kind:?}"
        );
        p.signal(Signal::SIGTERM).expect("SIGTERM");
        assert_eq!(p.wait_exit(LIMIT).await.expect("exit"), Some(0), "{kind:?}");
        assert!(!pidfile.exists(), "{kind:?}: pidfile left behind");
    }
}

/// Runs the pooler of `kind` with `-d` on `ini` (written to `dir`); its exit status and
/// what it printed.
async fn run_daemon(kind: Kind, dir: &Path, ini: &str) -> (std::process::ExitStatus, String) {
    let config = dir.join("pooler.ini");
    std::fs::write(&config, ini).expect("ini");
    let mut cmd = match kind {
        Kind::Weir => tokio::process::Command::new(weir::weir_binary().expect("weir")),
        Kind::PgBouncer => {
            // As the harness runs it: setpriv, as runuser cannot reach the cached binary.
            let mut c = tokio::process::Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(anchor::pgbouncer().expect("pgbouncer"));
            c
        }
    };
    let out = cmd
        .arg("-d")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running the pooler");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status, text)
}

#[tokio::test]
async fn daemon_mode_needs_a_pidfile_and_runs_detached() {
    for kind in KINDS {
        let dir = shared_dir();
        let port = net::free_port();
        let base = ini("unix_socket_dir =\n").replace("{port}", &port.to_string());
        let (status, out) = run_daemon(kind, dir.path(), &base).await;
        assert!(!status.success(), "{kind:?}: -d without pidfile started");
        assert!(
            out.contains("daemon needs pidfile configured"),
            "{kind:?}: {out}"
        );

        let pidfile = dir.path().join("pooler.pid");
        let with_pidfile = format!("{base}pidfile = {}\n", pidfile.display());
        let (status, out) = run_daemon(kind, dir.path(), &with_pidfile).await;
        assert!(status.success(), "{kind:?}: {out}");
        let written = Fixture::eventually(LIMIT, || async {
            std::fs::read_to_string(&pidfile).is_ok_and(|t| t.ends_with('\n'))
        })
        .await;
        assert!(written, "{kind:?}: no pidfile from the daemon");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .expect("a pid");
        // Whatever the assertions below say, the daemon does not outlive the test.
        let _stop = Kill(pid);
        net::wait_for_port(port, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: the daemon does not listen: {e:#}"));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
        let removed = Fixture::eventually(LIMIT, || async { !pidfile.exists() }).await;
        assert!(removed, "{kind:?}: the daemon left its pidfile");
    }
}

/// Kills a process that is not a child of the test when dropped.
struct Kill(i32);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// The OS user `user = ...` switches to: `postgres` when the test runs as root (the harness
/// starts PgBouncer as `postgres`, so for it this is "already that user", which PgBouncer
/// also accepts).
fn target_user() -> nix::unistd::User {
    let name = if nix::unistd::geteuid().is_root() {
        "postgres".to_owned()
    } else {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .expect("the test's OS user")
            .name
    };
    nix::unistd::User::from_name(&name)
        .ok()
        .flatten()
        .expect("target user")
}

/// The real and effective uids of process `pid`.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace()
        .skip(1)
        .take(2)
        .map(|n| n.parse().expect("uid"))
        .collect()
}

/// The metadata of a file the pooler makes as it starts (its unix socket, its pid file).
/// Weir makes them before its TCP port accepts, which is what starting waits for; PgBouncer
/// listens first, so for it they are waited for.
async fn made(path: &Path, kind: Kind) -> std::fs::Metadata {
    if kind == Kind::PgBouncer {
        let found = Fixture::eventually(Duration::from_secs(10), || async { path.exists() }).await;
        assert!(found, "{kind:?}: {} was not made", path.display());
    }
    std::fs::metadata(path).unwrap_or_else(|e| {
        panic!(
            "{kind:?}: {} not there once the TCP port accepts: {e}",
            path.display()
        )
    })
}

#[tokio::test]
async fn user_switches_identity_before_listening() {
    let user = target_user();
    for kind in KINDS {
        let dir = shared_dir();
        let ini = ini(&format!(
            "unix_socket_dir = {dir}\npidfile = {dir}/pooler.pid\nuser = {name}\n",
            dir = dir.path().display(),
            name = user.name
        ));
        let p = start(kind, &ini)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
        let uid = user.uid.as_raw();
        assert_eq!(uids(p.pid()), vec![uid, uid], "{kind:?}");
        // The socket and the pid file are made after the switch.
        let socket = dir.path().join(format!(".s.PGSQL.{}", p.port()));
        assert_eq!(made(&socket, kind).await.uid(), uid, "{kind:?}");
        let pidfile = dir.path().join("pooler.pid");
        assert_eq!(made(&pidfile, kind).await.uid(), uid, "{kind:?}");

        let err = match start(kind, &ini.replace(&user.name, "no-such-os-user")).await {
            Ok(_) => panic!("{kind:?} started as an unknown user"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("could not find user 'no-such-os-user' to switch to"),
            "{kind:?}: {err}"
        );
    }
}

#[tokio::test]
async fn the_unix_socket_gets_unix_socket_group_and_mode() {
    let group = nix::unistd::Group::from_name("postgres")
        .ok()
        .flatten()
        .expect("group postgres");
    for kind in KINDS {
        let ini = ini("unix_socket_dir = {dir}\n\
             unix_socket_mode = 0770\n\
             unix_socket_group = postgres\n");
        let p = start(kind, &ini)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
        let socket = p.dir().join(format!(".s.PGSQL.{}", p.port()));
        let meta = made(&socket, kind).await;
        assert_eq!(meta.gid(), group.gid.as_raw(), "{kind:?}");
        assert_eq!(meta.mode() & 0o777, 0o770, "{kind:?}");
    }
}

/// `THP_enabled` of a process, from its /proc status: "0" once `PR_SET_THP_DISABLE` is set.
fn thp_enabled(pid: u32) -> String {
    procfs::status_field(pid, "THP_enabled")
        .expect("THP_enabled in /proc status (Linux 5.0 and later)")
}

#[tokio::test]
async fn the_heap_stays_on_small_pages_unless_mimalloc_is_told_otherwise() {
    // The switch is inherited: a test process without huge pages would prove nothing.
    assert_eq!(
        thp_enabled(std::process::id()),
        "1",
        "the test process has THP off"
    );
    let weir = WeirProcess::start(&ini(""), "").await.expect("weir starts");
    assert_eq!(
        thp_enabled(weir.pid()),
        "0",
        "weir left transparent huge pages on"
    );

    let env = [("MIMALLOC_ALLOW_THP".to_owned(), "1".to_owned())];
    let told = WeirProcess::start_with_env(&ini(""), "", &env)
        .await
        .expect("weir starts");
    assert_eq!(
        thp_enabled(told.pid()),
        "1",
        "weir turned huge pages off although MIMALLOC_ALLOW_THP asks for them"
    );
}
