//! The threads the pooler runs on (`worker_threads`).
//!
//! Several threads run tokio's work-stealing scheduler: a woken task may run on another
//! thread, and every wake-up goes through queues the threads share. One thread needs none of
//! that, and the current-thread scheduler runs it without: the same transactions cost 11–23 %
//! less user time there than on two workers (bench/RESULTS.md, "One thread"). So one thread,
//! whether asked for or all the process may use (a pod limited to one CPU), gets the
//! current-thread scheduler.

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// The environment variable tokio reads for its worker count, honoured the same way when
/// `worker_threads` is 0.
const TOKIO_WORKERS: &str = "TOKIO_WORKER_THREADS";

/// How many threads run the pooler: `setting` unless it is 0, else a positive
/// `TOKIO_WORKER_THREADS` (`env`), else `cpus`, the CPUs the process may use.
pub fn worker_threads(setting: u32, env: Option<&str>, cpus: usize) -> usize {
    if setting > 0 {
        return setting as usize;
    }
    env.and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(cpus.max(1))
}

/// The runtime for `setting` (`worker_threads`), and how many threads it runs.
pub fn build(setting: u32) -> std::io::Result<(Runtime, usize)> {
    // std counts what the cgroup's CPU quota and the affinity mask allow, as tokio does.
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let env = std::env::var(TOKIO_WORKERS).ok();
    let workers = worker_threads(setting, env.as_deref(), cpus);
    let mut builder = if workers == 1 {
        Builder::new_current_thread()
    } else {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder.enable_all().thread_name("weir-worker").build()?;
    Ok((runtime, workers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_wins_then_the_environment_then_the_cpus() {
        assert_eq!(worker_threads(3, Some("5"), 8), 3);
        assert_eq!(worker_threads(0, Some("5"), 8), 5);
        assert_eq!(worker_threads(0, None, 8), 8);
        // Unusable values of the variable fall back to the CPUs rather than fail the start.
        assert_eq!(worker_threads(0, Some("0"), 8), 8);
        assert_eq!(worker_threads(0, Some("many"), 2), 2);
        assert_eq!(worker_threads(0, None, 0), 1);
    }
}
