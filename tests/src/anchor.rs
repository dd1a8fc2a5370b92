//! PgBouncer, the pooler Weir is compared with: where a test checks PgBouncer-compatible
//! behaviour, it runs the same steps against PgBouncer so the expectation is PgBouncer's own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context as _};

/// The PgBouncer binary `scripts/ensure-pgbouncer.sh` provides (1.25.2, built once and cached
/// under `~/.cache/weir/anchors`), or `$WEIR_PGBOUNCER` when set. Debian's older package is
/// refused: the tests expect 1.25's behaviour, and a missing release should say so once
/// rather than as a mismatch in every comparison.
pub fn pgbouncer() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| locate().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEIR_PGBOUNCER") {
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-pgbouncer.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("PGBOUNCER_ALLOW_DEBIAN", "0")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .last()
        .context("ensure-pgbouncer.sh printed no path")?;
    Ok(PathBuf::from(path.trim()))
}
