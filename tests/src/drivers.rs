//! Client programs under `tests/drivers/`, built by `scripts/install-drivers.sh`: whether one
//! is installed and up to date, by the rule the script uses to decide what to rebuild.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The folder holding the driver programs.
pub fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers")
}

/// Fails unless `artifact` (inside `dir`) exists and is newer than each of `inputs` (inside
/// `dir`; a folder stands for every file under it).
pub fn check_installed(dir: &Path, artifact: &str, inputs: &[&str]) -> Result<(), String> {
    let artifact = dir.join(artifact);
    let built = modified(&artifact).map_err(|_| {
        format!(
            "not installed ({} is missing): run scripts/install-drivers.sh",
            artifact.display()
        )
    })?;
    for input in inputs {
        for file in files_under(&dir.join(input)) {
            let changed = modified(&file).map_err(|err| format!("{}: {err}", file.display()))?;
            if changed > built {
                return Err(format!(
                    "out of date ({} is newer than {}): run scripts/install-drivers.sh",
                    file.display(),
                    artifact.display()
                ));
            }
        }
    }
    Ok(())
}

fn modified(path: &Path) -> std::io::Result<SystemTime> {
    path.metadata()?.modified()
}

/// `path` itself, or every file below it when it is a folder.
fn files_under(path: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .flat_map(|entry| files_under(&entry.path()))
            .collect(),
        Err(_) => vec![path.to_path_buf()],
    }
}
