//! The process around the pooler, as PgBouncer's `src/main.c` sets it up: the pid file
//! (refused when another instance holds it, a stale one removed), `-d` (needs a pid file),
//! and `user` (switch to another OS user after reading the configuration, before listening).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::{Pid, User};

/// What a pid file found at start says.
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    /// A process that is (or may be) running: another instance.
    Running,
    /// A process that is gone: the file is stale.
    Gone,
}

/// Who holds a pid file with `contents`; `alive` tells whether a pid is in use. Empty or
/// unreadable contents count as running, as in PgBouncer, so a file being written is never
/// taken for stale.
pub fn holder(contents: &str, alive: impl Fn(i32) -> bool) -> Holder {
    match contents.trim().parse::<i32>() {
        Ok(pid) if pid > 0 && !alive(pid) => Holder::Gone,
        _ => Holder::Running,
    }
}

/// Whether process `pid` exists (kill 0; a permission error means it does).
fn alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Before starting: fails when `path` names a running instance, removes a stale file.
pub fn check_pidfile(path: &Path) -> Result<(), String> {
    let contents = match std::fs::read(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("could not open pidfile '{}': {e}", path.display())),
    };
    match holder(&String::from_utf8_lossy(&contents), alive) {
        Holder::Running => Err(format!(
            "pidfile '{}' exists, another instance running?",
            path.display()
        )),
        Holder::Gone => {
            tracing::info!(path = %path.display(), "stale pidfile, removing");
            std::fs::remove_file(path).map_err(|e| format!("could not remove stale pidfile: {e}"))
        }
    }
}

/// The pid file, written once the sockets are open and removed when dropped.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Creates `path` (it must not exist, mode 0644) with this process's id.
    pub fn write(path: &Path) -> Result<PidFile, String> {
        let fail = |e: std::io::Error| format!("could not write pidfile '{}': {e}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(fail)?;
        // Only a file we wrote is ours to remove.
        let pidfile = PidFile(path.to_owned());
        f.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(fail)?;
        Ok(pidfile)
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Switches to OS user `name`: its group only (when root), its gid, its uid.
pub fn change_user(name: &str) -> Result<(), String> {
    let user = match User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => return Err(format!("could not find user '{name}' to switch to")),
        Err(e) => return Err(format!("could not look up user '{name}': {e}")),
    };
    let failed = |e: Errno| format!("failed to assume identity of user '{name}': {e}");
    if nix::unistd::getuid().is_root() {
        nix::unistd::setgroups(&[user.gid]).map_err(|e| format!("failed to reset groups: {e}"))?;
    }
    nix::unistd::setgid(user.gid).map_err(failed)?;
    nix::unistd::setuid(user.uid).map_err(failed)?;
    if nix::unistd::getuid() != user.uid || nix::unistd::geteuid() != user.uid {
        return Err("setuid() failed to work".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-process-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn pid_file_holders() {
        assert_eq!(holder("123\n", |_| true), Holder::Running);
        assert_eq!(holder("123\n", |_| false), Holder::Gone);
        assert_eq!(holder("", |_| false), Holder::Running);
        assert_eq!(holder("0", |_| false), Holder::Running);
        assert_eq!(holder("-5", |_| false), Holder::Running);
        assert_eq!(holder("garbage", |_| false), Holder::Running);
    }

    #[test]
    fn a_running_pid_blocks_a_stale_one_is_removed() {
        let dir = scratch("check");
        let path = dir.join("weir.pid");
        assert_eq!(check_pidfile(&path), Ok(()));
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        let e = check_pidfile(&path).unwrap_err();
        assert!(e.contains("another instance running?"), "{e}");
        assert!(path.exists());

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        std::fs::write(&path, format!("{gone}\n")).unwrap();
        assert_eq!(check_pidfile(&path), Ok(()));
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_pid_file_is_ours_until_dropped() {
        let dir = scratch("write");
        let path = dir.join("weir.pid");
        let pidfile = PidFile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert!(PidFile::write(&path).is_err(), "never overwritten");
        drop(pidfile);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_user_is_an_error() {
        let e = change_user("no-such-user-here").unwrap_err();
        assert!(e.contains("could not find user"), "{e}");
    }
}
