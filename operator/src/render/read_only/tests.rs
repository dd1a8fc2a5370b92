use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use weir_pooler::config::Config;

use super::*;
use crate::api::from_yaml;
use crate::render::{render as render_primary, ObservedDatabase};

const POOL: &str = "\
apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: orders
  namespace: shop
  uid: 0d9c7d5e-1111-4222-8333-444455556666
spec:
  database:
    host: orders-db-rw
    dbname: orders
    credentialsSecret:
      name: orders-db-app
    maxConnections: 500
  replicas: 3
  readReplicas:
    hosts:
      - host: standby-a
      - host: standby-b
        port: 5433
    replicas: 2
";

fn pool(text: &str) -> ConnectionPool {
    from_yaml(text).expect("valid pool")
}

fn limits(max_connections: u32) -> ObservedDatabase {
    ObservedDatabase {
        max_connections,
        superuser_reserved_connections: 3,
        reserved_connections: 0,
    }
}

fn observed() -> Observed {
    let creds = BTreeMap::from([
        ("username".to_owned(), b"app".to_vec()),
        ("password".to_owned(), b"pw".to_vec()),
    ]);
    Observed {
        secrets: BTreeMap::from([("orders-db-app".to_owned(), creds)]),
        standbys: BTreeMap::from([
            (standby_key("standby-a", 5432), limits(200)),
            (standby_key("standby-b", 5433), limits(100)),
        ]),
        ..Observed::default()
    }
}

fn rendered() -> Rendered {
    render(&pool(POOL), &observed())
        .expect("renders")
        .expect("asked for")
}

fn text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("data");
    String::from_utf8(data[key].0.clone()).expect("utf-8")
}

#[test]
fn the_database_entry_lists_the_standbys_for_standby_sessions_round_robin() {
    let r = rendered();
    let ini = &r.config_map.data.as_ref().expect("data")["pgbouncer.ini"];
    let line = ini
        .lines()
        .find(|l| l.starts_with("orders = "))
        .expect("the database entry");
    let mut keys: Vec<&str> = line["orders = ".len()..].split(' ').collect();
    keys.sort_unstable();
    let per_pod = r.sizing.max_db_connections();
    let mut want = vec![
        "host=standby-a,standby-b".to_owned(),
        "port=5432,5433".to_owned(),
        "dbname=orders".to_owned(),
        "target_session_attrs=standby".to_owned(),
        "load_balance_hosts=round-robin".to_owned(),
        format!("max_db_connections={per_pod}"),
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    let parsed = Config::parse(ini, Path::new("pgbouncer.ini")).expect("the pooler accepts it");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(parsed.config, r.config);
}

#[test]
fn the_budget_comes_from_the_tightest_standby_over_read_only_pods_with_surge() {
    let r = rendered();
    let b = r.sizing.budget;
    // standby-b: 100 − 3 − 15 headroom = 82, over 2 read-only pods + 1 surge → 27 each.
    assert_eq!((b.max_connections, b.database, b.pool), (100, 82, 82));
    assert_eq!((b.pods_max, b.per_pod), (3, 27));
    assert!(r.sizing.committed() <= 82);
    // The primary keeps its own budget from its own max_connections.
    let primary = render_primary(&pool(POOL), &observed()).expect("renders");
    assert_eq!(primary.sizing.budget.max_connections, 500);
    assert_eq!(primary.sizing.budget.pods_max, 4);
}

#[test]
fn objects_are_named_ro_owned_by_the_pool_and_select_their_own_pods() {
    let r = rendered();
    let owner = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let refs = meta.owner_references.as_ref().expect("owned");
        (refs[0].name.clone(), refs[0].kind.clone())
    };
    assert_eq!(r.deployment.metadata.name.as_deref(), Some("orders-ro"));
    assert_eq!(r.service.metadata.name.as_deref(), Some("orders-ro"));
    assert_eq!(r.app_secret.metadata.name.as_deref(), Some("orders-ro-app"));
    assert_eq!(
        r.config_map.metadata.name.as_deref(),
        Some("orders-ro-config")
    );
    assert_eq!(
        r.pod_disruption_budget.metadata.name.as_deref(),
        Some("orders-ro")
    );
    for meta in [
        &r.deployment.metadata,
        &r.service.metadata,
        &r.app_secret.metadata,
        &r.config_map.metadata,
    ] {
        assert_eq!(
            owner(meta),
            ("orders".to_owned(), "ConnectionPool".to_owned())
        );
    }
    let spec = r.deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let selector = spec.selector.match_labels.as_ref().expect("labels");
    assert_eq!(selector["weir.dev/pool"], "orders-ro");
    assert!(r.network_policy.is_none());
    assert!(r.token_review_binding.is_none());
}

#[test]
fn the_app_secret_points_at_the_ro_service_as_the_same_user() {
    let r = rendered();
    assert_eq!(text(&r.app_secret, "host"), "orders-ro.shop.svc");
    assert_eq!(text(&r.app_secret, "user"), "app");
    assert!(text(&r.app_secret, "uri")
        .starts_with("postgresql://app:pw@orders-ro.shop.svc:5432/orders"));
    assert_eq!(
        r.status(&derived(
            &pool(POOL),
            &pool(POOL).spec.read_replicas.clone().expect("set")
        ))
        .endpoint
        .as_deref(),
        Some("orders-ro.shop.svc:5432")
    );
}

#[test]
fn no_read_replicas_renders_nothing_and_a_missing_standby_is_named() {
    let without = POOL.split("  readReplicas:").next().expect("head");
    assert!(render(&pool(without), &observed())
        .expect("renders")
        .is_none());
    let mut partial = observed();
    partial.standbys.remove(&standby_key("standby-b", 5433));
    match render(&pool(POOL), &partial) {
        Err(RenderError::StandbyNotObserved(key)) => assert_eq!(key, "standby-b:5433"),
        other => panic!("expected StandbyNotObserved, got {other:?}"),
    }
}

#[test]
fn fixed_standby_limits_need_no_observation_and_zero_replicas_size_as_one() {
    let text = POOL.replace(
        "    replicas: 2\n",
        "    replicas: 0\n    maxConnections: 50\n",
    );
    let r = render(
        &pool(&text),
        &Observed {
            standbys: BTreeMap::new(),
            ..observed()
        },
    )
    .expect("renders")
    .expect("asked for");
    // 50 − 3 − 8 headroom = 39 over 1 + 1 pods.
    assert_eq!(
        (r.sizing.budget.database, r.sizing.budget.per_pod),
        (39, 19)
    );
    assert_eq!(r.deployment.spec.as_ref().and_then(|s| s.replicas), Some(0));
}

#[test]
fn token_reviews_bind_the_read_only_service_account_too() {
    let text = POOL.replace(
        "    maxConnections: 500\n",
        "    maxConnections: 500\n  users:\n    - user: app\n      credentialsSecret:\n        name: app-pw\n      serviceAccounts:\n        - name: web\n  tls:\n    client:\n      secretName: orders-tls\n",
    );
    let mut o = observed();
    o.secrets.insert(
        "app-pw".to_owned(),
        BTreeMap::from([("password".to_owned(), b"pw".to_vec())]),
    );
    o.secrets.insert(
        "orders-tls".to_owned(),
        BTreeMap::from([
            ("tls.crt".to_owned(), b"pem".to_vec()),
            ("tls.key".to_owned(), b"pem".to_vec()),
        ]),
    );
    let primary = render_primary(&pool(&text), &o).expect("renders");
    let binding = primary.token_review_binding.expect("tokens are reviewed");
    let names: Vec<String> = binding
        .subjects
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["orders", "orders-ro"]);
}
