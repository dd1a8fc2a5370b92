//! Noticing configuration changes on disk: the configuration, the auth file and the TLS
//! certificate, key and CA files (a rotated certificate is reloaded like a changed setting).
//! Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink, so the files are
//! compared by what the path resolves to (inode, size, modification time) rather than watched
//! for writes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::app::Pooler;

/// How often the files are looked at.
const PERIOD: Duration = Duration::from_secs(1);

/// What identifies one version of a file.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

fn watched(pooler: &Pooler) -> Vec<PathBuf> {
    let mut paths = vec![pooler.config_path().to_owned()];
    let config = pooler.config();
    if let Some(auth) = &config.pgbouncer.auth_file {
        paths.push(auth.clone());
    }
    paths.extend(
        crate::tls::Tls::files(&config.pgbouncer)
            .into_iter()
            .map(Path::to_path_buf),
    );
    paths
}

/// Reloads the configuration whenever the configuration file, the auth file or a TLS file
/// changes, until the pooler starts draining. A TLS file that cannot be used makes the reload
/// fail: the error is logged and the material in force stays.
pub async fn watch_files(pooler: Arc<Pooler>) {
    let mut paths = watched(&pooler);
    let mut stamps: Vec<Stamp> = paths.iter().map(|p| stamp(p)).collect();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = pooler.drained() => return,
        }
        let now: Vec<Stamp> = paths.iter().map(|p| stamp(p)).collect();
        if now == stamps {
            continue;
        }
        tracing::info!("configuration files changed on disk; reloading");
        match pooler.reload() {
            Ok((_, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
            }
            Err(e) => tracing::error!("reload failed, keeping the old configuration: {e}"),
        }
        // The auth and TLS files may have moved with the configuration.
        paths = watched(&pooler);
        stamps = paths.iter().map(|p| stamp(p)).collect();
    }
}
