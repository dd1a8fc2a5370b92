//! Rendering a Redis pool: its budget, `[redis]` section, Service, pods and app Secret.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_pooler::config::{parse_userlist, Config};

use super::*;
use crate::api::from_yaml;

const POOL: &str = "\
apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: cache
  namespace: shop
  uid: 0d9c7d5e-1111-4222-8333-444455556666
spec:
  redis:
    host: cache-redis
    credentialsSecret:
      name: cache-redis-auth
    privatePool:
      enabled: true
      idleTimeSeconds: 30
      maxIdlePerDb: 50
      minIdlePerDb: 4
  replicas: 3
";

fn pool(extra: &str) -> ConnectionPool {
    from_yaml(&format!("{POOL}{extra}")).expect("valid pool")
}

fn observed() -> Observed {
    let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    };
    Observed {
        max_clients: Some(1000),
        secrets: BTreeMap::from([
            (
                "cache-redis-auth".to_owned(),
                data(&[("username", "app"), ("password", "p@ss w:rd")]),
            ),
            ("ops-pw".to_owned(), data(&[("password", "0ps")])),
        ]),
        ..Observed::default()
    }
}

fn text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("data");
    String::from_utf8(data[key].0.clone()).expect("utf-8")
}

fn ini(r: &Rendered) -> String {
    r.config_map.data.as_ref().expect("data")[config::CONFIG_FILE].clone()
}

#[test]
fn maxclients_is_divided_over_every_pod_that_can_exist() {
    let r = render(&pool(""), &observed()).expect("renders");
    let b = r.sizing.budget;
    // 1000 − 150 headroom (15 %) = 850 for 3 replicas + 1 surge → 212 each.
    assert_eq!(
        (b.max_connections, b.superuser_reserved, b.reserved_headroom),
        (1000, 0, 150)
    );
    assert_eq!(
        (b.database, b.pool, b.pods_max, b.per_pod),
        (850, 850, 4, 212)
    );
    assert!(u64::from(b.pods_max) * u64::from(b.per_pod) <= u64::from(b.pool));
    assert!(
        ini(&r).contains("\nmax_server_connections = 212\n"),
        "{}",
        ini(&r)
    );
    let status = r.status(&pool(""));
    assert_eq!(status.budget.map(|b| b.per_pod), Some(212));
    assert!(status.users.is_empty());
    assert_eq!(status.endpoint.as_deref(), Some("cache.shop.svc:6379"));
}

#[test]
fn the_redis_section_carries_the_contract_keys() {
    let r = render(&pool(""), &observed()).expect("renders");
    let ini = ini(&r);
    let (pgbouncer, redis) = ini.split_once("\n[redis]\n").expect("a [redis] section");
    let expected = "listen_addr = *\nlisten_port = 6379\nserver = cache-redis:6379\n\
                    auth_file = /etc/weir/auth/userlist.txt\nshared_connections = 2\n\
                    max_server_connections = 212\nprivate_conn_pool_enabled = 1\n\
                    private_conn_idle_time_sec = 30\nprivate_conn_pool_max_idle_per_db = 50\n\
                    private_conn_pool_min_idle_per_db = 4\n";
    assert_eq!(redis, expected);
    // What precedes it is a pooler configuration with no PostgreSQL database.
    let loaded = Config::parse(pgbouncer, Path::new("pgbouncer.ini")).expect("parses");
    assert!(loaded.config.databases.is_empty());
    assert_eq!(loaded.config.pgbouncer.http_port, config::HTTP_PORT);
    let users = parse_userlist(
        &text(&r.auth_secret, config::AUTH_FILE),
        Path::new("userlist.txt"),
    )
    .expect("userlist");
    assert_eq!(users.get("app").map(String::as_str), Some("p@ss w:rd"));
}

#[test]
fn cluster_seed_nodes_replace_the_server_and_the_budget_is_per_master() {
    let spec = POOL.replace(
        "    host: cache-redis\n",
        "    host: cache-redis-0\n    clusterNodes: [\"cache-redis-1:6379\", \"cache-redis-0:6379\"]\n",
    );
    let pool: ConnectionPool = from_yaml(&spec).expect("valid pool");
    let r = render(&pool, &observed()).expect("renders");
    let ini = ini(&r);
    let redis = ini.split_once("\n[redis]\n").expect("a [redis] section").1;
    assert!(
        redis.contains("\ncluster_nodes = cache-redis-0:6379,cache-redis-1:6379\n"),
        "{redis}"
    );
    assert!(!redis.contains("server ="), "{redis}");
    // maxclients is each node's and each pod's cap applies per master: the same division.
    assert!(
        redis.contains("\nmax_server_connections = 212\n"),
        "{redis}"
    );
    let loaded = Config::parse(&ini, Path::new("pgbouncer.ini")).expect("the pooler reads it");
    let settings = loaded.config.redis.expect("[redis]");
    assert_eq!(
        settings.cluster_nodes,
        ["cache-redis-0:6379", "cache-redis-1:6379"]
    );
    assert!(settings.server.is_none());

    let bad = POOL.replace(
        "    host: cache-redis\n",
        "    host: cache-redis\n    clusterNodes: [\"no-port\"]\n",
    );
    let refused = from_yaml(&bad).expect_err("refused");
    assert!(
        refused
            .to_string()
            .contains("clusterNodes must be host:port"),
        "{refused}"
    );
}

#[test]
fn the_spec_maxclients_wins_and_one_is_needed() {
    let r = render(&pool(""), &observed()).expect("renders");
    assert_eq!(r.sizing.budget.max_connections, 1000);
    let given = pool("").spec.redis.expect("redis").host;
    let fixed = POOL.replace(
        &format!("host: {given}\n"),
        &format!("host: {given}\n    maxClients: 200\n"),
    );
    let fixed = from_yaml(&fixed).expect("valid");
    let r = render(&fixed, &observed()).expect("renders");
    // 200 − 30 = 170 over 4 pods.
    assert_eq!(r.sizing.budget.per_pod, 42);
    let unknown = Observed {
        max_clients: None,
        ..observed()
    };
    assert!(matches!(
        render(&pool(""), &unknown),
        Err(RenderError::MaxClientsNotObserved)
    ));
    assert!(render(&fixed, &unknown).is_ok());
}

#[test]
fn a_budget_that_cannot_hold_the_shared_connections_is_refused() {
    // Each pod needs 2 shared + 4 warm exclusive connections: 24 for 4 pods.
    let mut seen = observed();
    seen.max_clients = Some(27);
    match render(&pool(""), &seen) {
        Err(RenderError::Sizing(SizingError::Infeasible(i))) => {
            assert_eq!(i.reason(), "BudgetTooSmall")
        }
        other => panic!("expected an infeasible budget, got {other:?}"),
    }
    seen.max_clients = Some(29);
    let r = render(&pool(""), &seen).expect("29 − 5 headroom = 24 fits");
    assert_eq!(r.sizing.budget.per_pod, 6);
}

#[test]
fn the_service_and_pods_expose_the_resp_port() {
    let r = render(&pool(""), &observed()).expect("renders");
    let ports = r.service.spec.as_ref().and_then(|s| s.ports.clone());
    let ports = ports.expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("redis"));
    assert_eq!(ports[0].port, 6379);
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("redis".into()))
    );
    let pod = r
        .deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .clone();
    let container = pod.expect("pod").containers[0].clone();
    let redis_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("redis"))
        .expect("a redis container port");
    assert_eq!(redis_port.container_port, 6379);
    let probe = container.readiness_probe.expect("readiness probe");
    assert_eq!(
        probe.http_get.and_then(|h| h.path).as_deref(),
        Some("/readyz")
    );
    assert!(container.liveness_probe.is_some());
}

#[test]
fn the_app_secret_holds_a_redis_uri() {
    let r = render(&pool(""), &observed()).expect("renders");
    let keys: Vec<&String> = r.app_secret.data.as_ref().expect("data").keys().collect();
    assert_eq!(keys, ["host", "password", "port", "uri", "username"]);
    assert_eq!(
        text(&r.app_secret, "uri"),
        "redis://app:p%40ss%20w%3Ard@cache.shop.svc:6379/0"
    );
    assert_eq!(text(&r.app_secret, "port"), "6379");
    assert_eq!(text(&r.app_secret, "username"), "app");
    assert_eq!(r.app_secret.metadata.name.as_deref(), Some("cache-app"));
}

#[test]
fn without_credentials_clients_need_no_auth() {
    let open =
        from_yaml(&POOL.replace("    credentialsSecret:\n      name: cache-redis-auth\n", ""))
            .expect("valid");
    let r = render(&open, &observed()).expect("renders");
    assert!(!ini(&r).contains("auth_file = /etc/weir/auth/userlist.txt\nshared"));
    assert_eq!(text(&r.app_secret, "uri"), "redis://cache.shop.svc:6379/0");
    assert_eq!(text(&r.app_secret, "username"), "");
}

#[test]
fn listed_users_share_the_cap_and_all_authenticate() {
    let users = from_yaml(
        &POOL.replace(
            "    credentialsSecret:\n      name: cache-redis-auth\n",
            "",
        )
        .replace(
            "  replicas: 3\n",
            "  replicas: 3\n  users:\n    - user: app\n      credentialsSecret: {name: cache-redis-auth}\n    \
             - user: ops\n      credentialsSecret: {name: ops-pw}\n",
        ),
    )
    .expect("valid");
    let r = render(&users, &observed()).expect("renders");
    let list = parse_userlist(
        &text(&r.auth_secret, config::AUTH_FILE),
        Path::new("userlist.txt"),
    )
    .expect("userlist");
    assert_eq!(list.len(), 2);
    assert_eq!(list.get("ops").map(String::as_str), Some("0ps"));
    assert_eq!(text(&r.app_secret, "username"), "app");
    // 2 users × 2 shared + 4 warm per pod is the least each pod needs.
    let inputs = sizing_inputs(&users, &observed()).expect("inputs");
    assert_eq!(inputs.users[0].minimum_share(), 8);
}
