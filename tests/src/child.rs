//! Long-lived child processes that cannot outlive the test process.
//!
//! The kernel's parent-death signal (`PR_SET_PDEATHSIG`, set here through `setpriv
//! --pdeathsig KILL`) fires when the *thread* that spawned the child exits, not when the process
//! does. So each child is spawned from its own thread, which then blocks in `wait()` until the
//! child is gone: that thread dies before the child only when the whole process dies, which is
//! exactly when the signal should fire. The thread also reaps the child and publishes its exit
//! status, so callers can wait with a timeout from sync (`Drop`) and async code alike.
//!
//! Limits: the child must not daemonise (a grandchild does not inherit the death signal), which
//! is why PostgreSQL is run in the foreground rather than through `pg_ctl start`; PostgreSQL's
//! own backends notice their postmaster's death by themselves.

use std::fmt;
use std::process::{Command, ExitStatus};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

/// How long `Drop` waits for a child to die after SIGKILL before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// How a supervised child ended.
#[derive(Clone, Debug)]
pub(crate) enum Exit {
    /// The child was reaped with this status.
    Status(ExitStatus),
    /// `wait()` itself failed, so the status is unknown.
    WaitFailed(String),
}

impl Exit {
    /// The exit code if the child exited normally (not through a signal).
    pub(crate) fn code(&self) -> Option<i32> {
        match self {
            Exit::Status(status) => status.code(),
            Exit::WaitFailed(_) => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Status(status) => write!(f, "{status}"),
            Exit::WaitFailed(err) => write!(f, "unknown exit (wait failed: {err})"),
        }
    }
}

/// Exit status slot filled in by the supervising thread.
#[derive(Default)]
struct ExitSlot {
    exit: Mutex<Option<Exit>>,
    changed: Condvar,
}

impl ExitSlot {
    fn lock(&self) -> MutexGuard<'_, Option<Exit>> {
        // The slot holds plain data, so a panic elsewhere cannot leave it inconsistent.
        self.exit.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A child process spawned from a dedicated thread with a parent-death signal.
///
/// Dropping it kills the child with SIGKILL and waits for it, so a test never leaks one.
pub(crate) struct Supervised {
    pid: u32,
    slot: Arc<ExitSlot>,
}

impl Supervised {
    /// Spawns `cmd` (normally built by [`command`]) on its own supervising thread.
    pub(crate) fn spawn(mut cmd: Command) -> anyhow::Result<Supervised> {
        let program = format!("{:?}", cmd.get_program());
        let slot = Arc::new(ExitSlot::default());
        let thread_slot = Arc::clone(&slot);
        let (spawned_tx, spawned_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("supervise-child".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(child) => child,
                    Err(err) => {
                        let _ = spawned_tx.send(Err(err));
                        return;
                    }
                };
                let _ = spawned_tx.send(Ok(child.id()));
                let exit = match child.wait() {
                    Ok(status) => Exit::Status(status),
                    Err(err) => Exit::WaitFailed(err.to_string()),
                };
                *thread_slot.lock() = Some(exit);
                thread_slot.changed.notify_all();
            })
            .context("spawning a supervising thread")?;
        // Blocks only for the fork/exec; the thread reports before it starts waiting.
        let pid = spawned_rx
            .recv()
            .context("supervising thread ended before spawning")?
            .with_context(|| format!("spawning {program}"))?;
        Ok(Supervised { pid, slot })
    }

    /// The child's process id (valid until [`Supervised::exit`] reports an exit).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the child has already been reaped.
    pub(crate) fn exit(&self) -> Option<Exit> {
        self.slot.lock().clone()
    }

    /// Sends `sig` to the child, refusing once it has been reaped (its pid may be reused).
    pub(crate) fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if let Some(exit) = self.exit() {
            bail!("process {} already exited ({exit})", self.pid);
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("sending {sig} to {}", self.pid))
    }

    /// Blocks until the child exits or `timeout` passes; for `Drop`, where awaiting is impossible.
    pub(crate) fn wait_blocking(&self, timeout: Duration) -> Option<Exit> {
        let guard = self.slot.lock();
        let (guard, _) = self
            .slot
            .changed
            .wait_timeout_while(guard, timeout, |exit| exit.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        guard.clone()
    }

    /// Waits until the child exits or `timeout` passes, without blocking the runtime.
    pub(crate) async fn wait(&self, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.exit() {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `first` and waits up to `grace`, then falls back to SIGKILL; blocking, for `Drop`.
    pub(crate) fn shutdown_blocking(&self, first: Signal, grace: Duration) {
        if self.signal(first).is_ok() && self.wait_blocking(grace).is_some() {
            return;
        }
        if self.signal(Signal::SIGKILL).is_ok() {
            self.wait_blocking(KILL_GRACE);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.shutdown_blocking(Signal::SIGKILL, KILL_GRACE);
    }
}

/// Builds a command that runs `program` with a parent-death SIGKILL, as OS user `run_as` when
/// given and the test process is root (PostgreSQL refuses to run as root).
pub(crate) fn command(program: impl AsRef<std::ffi::OsStr>, run_as: Option<&str>) -> Command {
    command_in(None, program, run_as)
}

/// As [`command`], inside network namespace `netns` when given (`ip netns exec` execs
/// `setpriv` in place, so the parent-death signal still reaches the program).
pub(crate) fn command_in(
    netns: Option<&str>,
    program: impl AsRef<std::ffi::OsStr>,
    run_as: Option<&str>,
) -> Command {
    let mut cmd = match netns {
        Some(name) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", name, "setpriv"]);
            cmd
        }
        None => Command::new("setpriv"),
    };
    cmd.args(["--pdeathsig", "KILL"]);
    if let Some(user) = run_as.filter(|_| nix::unistd::geteuid().is_root()) {
        cmd.args([
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--init-groups".to_string(),
        ]);
    }
    cmd.arg("--").arg(program);
    cmd
}

/// Gives `path` to OS user `user` when running as root, so a process started as that user can
/// write there; a no-op for a non-root test process, which already owns what it creates.
pub(crate) fn give_to(path: &std::path::Path, user: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let account = User::from_name(user)
        .with_context(|| format!("looking up OS user {user}"))?
        .with_context(|| format!("OS user {user} does not exist"))?;
    std::os::unix::fs::chown(path, Some(account.uid.as_raw()), Some(account.gid.as_raw()))
        .with_context(|| format!("chown {} to {user}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_exit_code_and_refuses_signals_afterwards() {
        let mut cmd = command("/bin/sh", None);
        cmd.args(["-c", "exit 3"]);
        let child = Supervised::spawn(cmd).unwrap();
        let exit = child.wait_blocking(Duration::from_secs(10)).unwrap();
        assert_eq!(exit.code(), Some(3));
        assert!(child.signal(Signal::SIGTERM).is_err());
    }

    #[test]
    fn drop_kills_a_running_child() {
        let mut cmd = command("/bin/sleep", None);
        cmd.arg("600");
        let child = Supervised::spawn(cmd).unwrap();
        let slot = Arc::clone(&child.slot);
        assert!(child.exit().is_none());
        drop(child);
        let exit = slot.lock().clone().unwrap();
        assert_eq!(
            exit.code(),
            None,
            "killed by a signal, so no exit code: {exit}"
        );
    }

    #[test]
    fn shutdown_uses_the_polite_signal_first() {
        let mut cmd = command("/bin/sh", None);
        cmd.args(["-c", "trap 'exit 5' TERM; while :; do sleep 0.05; done"]);
        let child = Supervised::spawn(cmd).unwrap();
        // Give the shell time to install its trap before signalling.
        std::thread::sleep(Duration::from_millis(300));
        child.shutdown_blocking(Signal::SIGTERM, Duration::from_secs(10));
        assert_eq!(child.exit().and_then(|e| e.code()), Some(5));
    }

    #[test]
    fn spawn_failure_is_an_error() {
        let mut cmd = Command::new("/nonexistent/program");
        cmd.arg("x");
        let err = Supervised::spawn(cmd).err().unwrap();
        assert!(format!("{err:#}").contains("nonexistent"), "{err:#}");
    }

    #[tokio::test]
    async fn async_wait_times_out_then_sees_the_exit() {
        let mut cmd = command("/bin/sleep", None);
        cmd.arg("0.5");
        let child = Supervised::spawn(cmd).unwrap();
        assert!(child.wait(Duration::from_millis(50)).await.is_none());
        let exit = child.wait(Duration::from_secs(10)).await.unwrap();
        assert_eq!(exit.code(), Some(0));
    }
}
