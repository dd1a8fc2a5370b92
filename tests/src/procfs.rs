//! What the kernel says of a process under `/proc`.

/// The value of `field` (e.g. `VmHWM`, `THP_enabled`) in `/proc/PID/status`, trimmed, without
/// a unit; `None` when the process is gone or the kernel has no such field.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        Some(value.trim().trim_end_matches("kB").trim_end().to_owned())
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...) in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    status_field(pid, field)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_status() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmRSS").is_some_and(|kib| kib > 0));
        assert_eq!(status_field(pid, "Pid"), Some(pid.to_string()));
        assert_eq!(status_field(pid, "NoSuchField"), None);
    }
}
