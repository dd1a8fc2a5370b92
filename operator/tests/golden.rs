//! Golden tests: the objects rendered for each example pool, compared with the YAML under
//! `tests/golden/`. After an intended change, regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p weir-operator --test golden` and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weir_operator::api::{self, UserSource};
use weir_operator::render::{self, Observed, ObservedDatabase};

/// The facts a controller would have observed: a database with max_connections 200 and
/// PostgreSQL's default reserved slots (or a Redis server with maxclients 1000), fake
/// credentials in every referenced Secret, and the pods of a rolling update (peer ids 4 and 5
/// in force, one pod gone, one new), an operator in weir-system and one API server endpoint.
fn facts(spec: &api::ConnectionPoolSpec) -> Observed {
    let mut secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for source in spec.user_sources() {
        match source {
            UserSource::Listed(u) => {
                let s = &u.credentials_secret;
                secrets.entry(s.name.clone()).or_default().insert(
                    s.password_key.clone(),
                    format!("pw-{}", u.user).into_bytes(),
                );
            }
            UserSource::Database(c) => {
                let data = secrets.entry(c.name.clone()).or_default();
                data.insert(c.username_key.clone(), b"app".to_vec());
                data.insert(c.password_key.clone(), b"s3cret/pw".to_vec());
            }
        }
    }
    // Certificates and CAs: placeholders, only their presence matters to rendering.
    for (name, key) in weir_operator::render::tls::secret_keys(spec) {
        let pem = format!("<pem:{name}/{key}>").into_bytes();
        secrets.entry(name).or_default().insert(key, pem);
    }
    let mut config_maps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (name, key) in weir_operator::render::tls::config_map_keys(spec) {
        let pem = format!("<pem:{name}/{key}>");
        config_maps.entry(name).or_default().insert(key, pem);
    }
    Observed {
        database: Some(ObservedDatabase {
            max_connections: 200,
            superuser_reserved_connections: 3,
            reserved_connections: 0,
        }),
        max_clients: Some(1000),
        others_claimed: 0,
        secrets,
        config_maps,
        pod_ips: ["10.244.1.7", "10.244.2.9", "10.244.3.4"]
            .map(str::to_owned)
            .into(),
        peers_in_force: [(3, "10.244.0.5"), (4, "10.244.1.7"), (5, "10.244.2.9")]
            .map(|(id, ip)| (id, ip.to_owned()))
            .into(),
        operator_namespace: Some("weir-system".to_owned()),
        api_server: [("172.18.0.2".to_owned(), vec![6443])].into(),
        // Standbys with max_connections auto: the second has the least room.
        standbys: spec
            .read_replicas
            .iter()
            .flat_map(|r| &r.hosts)
            .enumerate()
            .map(|(i, h)| {
                let seen = ObservedDatabase {
                    max_connections: if i == 1 { 150 } else { 200 },
                    superuser_reserved_connections: 3,
                    reserved_connections: 0,
                };
                (render::read_only::standby_key(&h.host, h.port), seen)
            })
            .collect(),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(example: &str) {
    let input = root().join("../examples").join(format!("{example}.yaml"));
    let text = std::fs::read_to_string(&input).expect("example readable");
    let mut pool = api::from_yaml(&text).expect("example is valid");
    pool.metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    pool.metadata.uid = Some("7d3f0c1e-5b1a-4c2e-9f00-000000000001".to_owned());
    let rendered = render::render(&pool, &facts(&pool.spec)).expect("renders");
    let mut actual = rendered.to_yaml_stream().expect("serializes");
    let read_only = render::read_only::render(&pool, &facts(&pool.spec)).expect("renders");
    if let Some(read_only) = read_only {
        actual.push_str(&render::read_only::to_yaml_stream(&read_only).expect("serializes"));
    }
    let golden = root().join("tests/golden").join(format!("{example}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &actual).expect("golden file written");
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            show(&golden)
        )
    });
    if actual != expected {
        let first = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "{} differs from the rendered objects from line {}:\n  rendered: {:?}\n  golden:   {:?}\n\
             rerun with UPDATE_GOLDEN=1 if the change is intended",
            show(&golden),
            first + 1,
            actual.lines().nth(first),
            expected.lines().nth(first),
        );
    }
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn minimal() {
    check("minimal");
}

#[test]
fn production() {
    check("production");
}

#[test]
fn read_replicas() {
    check("read-replicas");
}

#[test]
fn redis() {
    check("redis");
}

#[test]
fn server_auth() {
    check("server-auth");
}
