//! Every example renders; every bad example fails offline with exactly the error its
//! comment promises, and that error carries the message the API server gives at admission.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("examples directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs `weir-operator render` from the workspace root, as the examples' comments do.
fn render(relative: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir-operator"))
        .current_dir(workspace())
        .args(["render", "-f", relative, "--max-connections", "100"])
        .output()
        .expect("weir-operator runs")
}

#[test]
fn good_examples_render() {
    let files = yaml_files(&workspace().join("examples"));
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let out = render(&format!("examples/{name}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for kind in [
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
        ] {
            assert!(
                stdout.contains(&format!("\nkind: {kind}\n")),
                "{name}: no {kind}"
            );
        }
        assert!(stdout.contains("# Connection budget:"), "{name}");
    }
}

/// The indented comment line after the first line starting with `marker`.
fn quoted_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(marker));
    lines.next()?;
    lines.next()?.strip_prefix("#   ")
}

#[test]
fn bad_examples_fail_with_the_documented_error() {
    let files = yaml_files(&workspace().join("examples/bad"));
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let relative = format!("examples/bad/{name}");
        let text = std::fs::read_to_string(&file).expect("readable");
        let promised = quoted_after(
            &text,
            &format!("# weir-operator render -f {relative} says:"),
        )
        .unwrap_or_else(|| panic!("{name}: no documented render error"));
        let out = Command::new(env!("CARGO_BIN_EXE_weir-operator"))
            .current_dir(workspace())
            .args(["render", "-f", &relative])
            .output()
            .expect("weir-operator runs");
        assert!(!out.status.success(), "{name} rendered");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end(), promised, "{name}");
        if let Some(admission) = quoted_after(&text, "# kubectl apply refuses it:") {
            // `... is invalid: <path>: Invalid value: "<type>": <message>`
            let message = admission
                .split_once("Invalid value: ")
                .and_then(|(_, rest)| rest.split_once(": "))
                .map(|(_, message)| message)
                .unwrap_or_else(|| panic!("{name}: unexpected admission error {admission:?}"));
            assert!(
                promised.contains(message),
                "{name}: the offline error does not carry the admission message {message:?}"
            );
        }
    }
}
