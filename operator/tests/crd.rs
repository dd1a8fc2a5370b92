//! The committed CRD must be exactly what `weir-operator crd` prints.

use std::path::PathBuf;

#[test]
fn committed_crd_matches_the_generated_one() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/connectionpools.weir.dev.yaml");
    let committed = std::fs::read_to_string(&path).expect("crds/connectionpools.weir.dev.yaml");
    let generated = weir_operator::crd::crd_yaml().expect("serializes");
    assert!(
        committed == generated,
        "{} is out of date: regenerate it with \
         `cargo run -p weir-operator -- crd > crds/connectionpools.weir.dev.yaml`",
        path.display()
    );
}

#[test]
fn the_binary_prints_the_same_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir-operator"))
        .arg("crd")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let generated = weir_operator::crd::crd_yaml().expect("serializes");
    assert_eq!(String::from_utf8_lossy(&out.stdout), generated);
}
