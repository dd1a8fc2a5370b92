//! The real `weir` pooler binary, run as a child process of the test.
//!
//! Tests hand over the whole PgBouncer-format configuration as text, with two placeholders the
//! harness fills in: `{port}` (a free loopback port for `listen_port`) and `{dir}` (the
//! process's own temporary directory, for log, pid or socket paths).

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

pub use crate::net::{client_config, connect};
pub use nix::sys::signal::Signal;

use crate::child::{self, Supervised};
use crate::net;

/// Environment variable naming the pooler binary to test, overriding the build output.
pub const WEIR_BIN_ENV: &str = "WEIR_BIN";

/// How long the pooler may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts at a fresh port when another process grabbed the chosen one first.
const PORT_ATTEMPTS: usize = 3;

/// A running pooler process with its own configuration directory.
///
/// Dropping it kills the process (SIGKILL) and waits for it, then removes the directory; tests
/// of graceful shutdown send a signal themselves and use [`WeirProcess::wait_exit`].
pub struct WeirProcess {
    port: u16,
    child: Supervised,
    dir: TempDir,
}

impl WeirProcess {
    /// Starts the binary found by [`weir_binary`] with configuration `ini` and `userlist`.
    ///
    /// `ini` is written to `weir.ini` with `{port}` and `{dir}` filled in, `userlist` to
    /// `userlist.txt` in the same directory; returns once the port accepts TCP connections
    /// and fails with the process's output if it exits first or does not listen within 15 s.
    pub async fn start(ini: &str, userlist: &str) -> anyhow::Result<WeirProcess> {
        Self::start_binary(&weir_binary()?, ini, userlist).await
    }

    /// Like [`WeirProcess::start`] with an explicit binary, e.g. an older build to compare with.
    pub async fn start_binary(
        binary: &Path,
        ini: &str,
        userlist: &str,
    ) -> anyhow::Result<WeirProcess> {
        Self::start_as(binary, None, ini, userlist, &[]).await
    }

    /// Like [`WeirProcess::start`] with `env` added to the pooler's environment (e.g. the
    /// variables a cloud's workload identity sets).
    pub async fn start_with_env(
        ini: &str,
        userlist: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<WeirProcess> {
        Self::start_as(&weir_binary()?, None, ini, userlist, env).await
    }

    /// Starts PgBouncer ([`crate::anchor::pgbouncer`]) on the same configuration, as the
    /// `postgres` OS user because PgBouncer refuses to run as root: the behaviour Weir's is
    /// compared with.
    pub async fn start_pgbouncer(ini: &str, userlist: &str) -> anyhow::Result<WeirProcess> {
        let binary = crate::anchor::pgbouncer()?;
        Self::start_as(&binary, Some(crate::postgres::OS_USER), ini, userlist, &[]).await
    }

    /// Starts one pooler of a peered group as a pod would run: listening on its own loopback
    /// address `pod` (127.0.0.2 and up stand for pod IPs) on `port`, which the group shares,
    /// with `args` before the configuration path. `{port}` is `port`; the caller's listen_addr
    /// must name `pod`. PgBouncer when `pgbouncer` is set (and then `args` must be empty).
    pub async fn start_pod(
        pgbouncer: bool,
        pod: Ipv4Addr,
        port: u16,
        args: &[String],
        ini: &str,
        userlist: &str,
    ) -> anyhow::Result<WeirProcess> {
        let (binary, run_as) = if pgbouncer {
            (crate::anchor::pgbouncer()?, Some(crate::postgres::OS_USER))
        } else {
            (weir_binary()?, None)
        };
        let dir = pooler_dir(run_as, userlist)?;
        let at = SocketAddrV4::new(pod, port);
        let child = start_once(&binary, run_as, dir.path(), ini, at, args, &[]).await?;
        Ok(WeirProcess { port, child, dir })
    }

    async fn start_as(
        binary: &Path,
        run_as: Option<&str>,
        ini: &str,
        userlist: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<WeirProcess> {
        let dir = pooler_dir(run_as, userlist)?;
        let mut attempt = 1;
        loop {
            let port = net::free_port();
            let at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            match start_once(binary, run_as, dir.path(), ini, at, &[], env).await {
                Ok(child) => return Ok(WeirProcess { port, child, dir }),
                Err(err)
                    if attempt < PORT_ATTEMPTS
                        && format!("{err:#}")
                            .to_lowercase()
                            .contains("address already in use") =>
                {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// TCP port the pooler listens on (the value substituted for `{port}`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding `weir.ini`, `userlist.txt` and `weir.log` (substituted for `{dir}`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the configuration file, for reload tests that edit it in place.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("weir.ini")
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("weir.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The process id, e.g. to compare before and after a restart.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends `sig` to the process (SIGHUP to reload, SIGTERM to drain, SIGINT, ...); fails once
    /// the process has exited.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        self.child.signal(sig)
    }

    /// Waits up to `timeout` for the process to exit: `Some(code)` once it exited normally,
    /// `None` if it is still running when the time is up, an error (with the log) if it was
    /// ended by a signal.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        match self.child.wait(timeout).await {
            None => Ok(None),
            Some(exit) => match exit.code() {
                Some(code) => Ok(Some(code)),
                None => bail!("weir ended abnormally ({exit}); log:\n{}", self.log()),
            },
        }
    }

    /// Atomically replaces `weir.ini` with `ini` (same placeholders as at start), so a reload
    /// never sees a half-written file.
    pub fn rewrite_config(&self, ini: &str) -> anyhow::Result<()> {
        let text = fill_placeholders(ini, self.port, self.dir.path());
        let staging = self.dir.path().join("weir.ini.new");
        std::fs::write(&staging, text).context("writing the new configuration")?;
        std::fs::rename(&staging, self.config_path()).context("replacing weir.ini")
    }
}

/// A fresh pooler directory holding `userlist`, owned by `run_as` if given.
fn pooler_dir(run_as: Option<&str>, userlist: &str) -> anyhow::Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("weir-")
        .tempdir()
        .context("creating the pooler directory")?;
    std::fs::write(dir.path().join("userlist.txt"), userlist).context("writing userlist")?;
    if let Some(user) = run_as {
        child::give_to(dir.path(), user)?;
    }
    Ok(dir)
}

/// Writes the configuration for `at`'s port, spawns `binary` with `args` and `env` and waits
/// until it listens on `at`.
async fn start_once(
    binary: &Path,
    run_as: Option<&str>,
    dir: &Path,
    ini: &str,
    at: SocketAddrV4,
    args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Supervised> {
    let port = at.port();
    let config_path = dir.join("weir.ini");
    std::fs::write(&config_path, fill_placeholders(ini, port, dir)).context("writing weir.ini")?;
    let log_path = dir.join("weir.log");
    let log = File::create(&log_path).context("creating weir.log")?;
    let mut cmd = child::command(binary, run_as);
    cmd.args(args)
        .arg(&config_path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log);
    let process =
        Supervised::spawn(cmd).with_context(|| format!("starting {}", binary.display()))?;

    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        if let Some(exit) = process.exit() {
            bail!(
                "{} exited ({exit}) before listening on port {port}; log:\n{}",
                binary.display(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if net::wait_for_addr(at.into(), Duration::from_millis(100))
            .await
            .is_ok()
        {
            return Ok(process);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not listen on {at} within {LISTEN_TIMEOUT:?}; log:\n{}",
                binary.display(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    }
}

/// Substitutes the `{port}` and `{dir}` placeholders of a configuration text.
fn fill_placeholders(text: &str, port: u16, dir: &Path) -> String {
    text.replace("{port}", &port.to_string())
        .replace("{dir}", &dir.to_string_lossy())
}

/// The pooler binary under test: `$WEIR_BIN` if set, else the newer of
/// `target/release/weir` and `target/debug/weir` in the workspace (or `$CARGO_TARGET_DIR`).
pub fn weir_binary() -> anyhow::Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    find_binary(std::env::var_os(WEIR_BIN_ENV), &target)
}

/// Picks the binary from an explicit override or the build outputs under `target`.
fn find_binary(explicit: Option<OsString>, target: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{WEIR_BIN_ENV}={} does not name a file", path.display());
        }
        return Ok(path);
    }
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("weir"))
        .filter_map(|path| {
            let modified = path.metadata().and_then(|m| m.modified()).ok()?;
            path.is_file().then_some((modified, path))
        })
        .max_by_key(|(modified, _): &(SystemTime, PathBuf)| *modified);
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no weir binary in {}/{{release,debug}}: run `cargo build -p weir-pooler` first \
             (or set {WEIR_BIN_ENV})",
            target.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_everywhere() {
        let text = "listen_port = {port}\nlogfile = {dir}/weir.log\nunix_socket_dir = {dir}\n";
        let filled = fill_placeholders(text, 6543, Path::new("/tmp/w"));
        assert_eq!(
            filled,
            "listen_port = 6543\nlogfile = /tmp/w/weir.log\nunix_socket_dir = /tmp/w\n"
        );
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let target = tempfile::tempdir().unwrap();
        let err = find_binary(None, target.path()).unwrap_err().to_string();
        assert!(err.contains("cargo build -p weir-pooler"), "{err}");
    }

    #[test]
    fn explicit_binary_must_exist() {
        let err = find_binary(Some("/nonexistent/weir".into()), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("WEIR_BIN=/nonexistent/weir"), "{err}");
        let found = find_binary(Some("/bin/sh".into()), Path::new("/nonexistent")).unwrap();
        assert_eq!(found, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn newest_build_wins() {
        let target = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for profile in ["release", "debug"] {
            std::fs::create_dir(target.path().join(profile)).unwrap();
            let path = target.path().join(profile).join("weir");
            std::fs::write(&path, "").unwrap();
            paths.push(path);
        }
        let old = SystemTime::now() - Duration::from_secs(3600);
        let set = |path: &Path, time: SystemTime| {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(time)
                .unwrap();
        };
        set(&paths[0], old);
        set(&paths[1], SystemTime::now());
        assert_eq!(find_binary(None, target.path()).unwrap(), paths[1]);
        set(&paths[1], old - Duration::from_secs(60));
        assert_eq!(find_binary(None, target.path()).unwrap(), paths[0]);
    }

    #[test]
    fn only_one_profile_built() {
        let target = tempfile::tempdir().unwrap();
        std::fs::create_dir(target.path().join("debug")).unwrap();
        let path = target.path().join("debug").join("weir");
        std::fs::write(&path, "").unwrap();
        assert_eq!(find_binary(None, target.path()).unwrap(), path);
    }
}
