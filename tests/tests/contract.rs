//! The operator–pooler contract, field by field: a ConnectionPool with every field set to a
//! value other than its default is rendered, a real `weir` runs on the rendered ConfigMap
//! and Secret in front of a real PostgreSQL, and each field's effect is checked where it
//! lands — the console, `/status`, `pg_stat_activity` — or, for fields that shape only the
//! Kubernetes objects, in those objects. [`FIELDS`] has one row per field of the CRD's spec;
//! a field added to the CRD without a row fails `every_crd_field_has_a_row`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::CustomResourceExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_postgres::{Client, SimpleQueryMessage};
use weir_operator::api::{from_yaml, ConnectionPool};
use weir_operator::render::{render, Observed, Rendered};
use weir_tests::fixture::Fixture;
use weir_tests::k8s::localize_pgbouncer_ini;
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster};
use weir_tests::weir::WeirProcess;

/// Where a field's effect is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lands {
    /// `SHOW CONFIG` of the running pooler shows this key with this value.
    Console(&'static str, &'static str),
    /// Checked on the running pooler by `running_pooler_follows_the_spec` (named assert).
    Pooler,
    /// Changes the rendered pool settings; checked by `sizing_fields_change_the_pools`.
    Sizing,
    /// Shapes only Kubernetes objects (pods, Service); checked in the rendered objects by
    /// `kubernetes_fields_reach_their_objects`.
    Kubernetes(&'static str),
    /// TLS: mounted sources and pgbouncer.ini lines, checked in the objects rendered from the
    /// spec with [`TLS_VARIANTS`] by `tls_fields_reach_their_objects` (the running pooler's
    /// TLS is the pooler's own tests' concern: the files do not exist outside a pod).
    Tls(&'static str),
    /// ServiceAccount-token logins: checked in the objects rendered with TLS and
    /// [`SERVICE_ACCOUNTS`] by `service_account_fields_reach_their_objects`.
    Tokens(&'static str),
    /// Monitoring and network objects: checked in the rendered PodMonitor and
    /// NetworkPolicy by `operations_fields_reach_their_objects`.
    Operations(&'static str),
    /// Cloud server credentials: checked in the pgbouncer.ini (which the pooler must parse
    /// without a warning) and the ServiceAccount rendered with [`SERVER_AUTH`] by
    /// `server_auth_fields_reach_their_objects`.
    ServerAuth(&'static str),
    /// Redis pools: checked in the `[redis]` section and the app Secret rendered from
    /// [`REDIS_SPEC`] by `redis_fields_reach_their_objects` (the pooler's Redis data path
    /// tests what it does with them).
    Redis(&'static str),
    /// The read-only pool: checked in the `<name>-ro` objects rendered from the spec with
    /// [`READ_REPLICAS`] by `read_replica_fields_reach_their_objects`.
    ReadOnly(&'static str),
}

/// Every spec field (dotted path below `spec`, `[]` for list items) and where it lands.
const FIELDS: &[(&str, Lands)] = &[
    ("database.host", Lands::Pooler),
    ("database.port", Lands::Pooler),
    ("database.dbname", Lands::Pooler),
    ("database.credentialsSecret.name", Lands::Sizing),
    ("database.credentialsSecret.usernameKey", Lands::Sizing),
    ("database.credentialsSecret.passwordKey", Lands::Sizing),
    ("database.maxConnections", Lands::Pooler),
    ("database.superuserReservedConnections", Lands::Pooler),
    ("database.reservedPercent", Lands::Pooler),
    ("database.usedByOthers", Lands::Pooler),
    (
        "database.serverAuth.provider",
        Lands::ServerAuth("server_auth=rds-iam"),
    ),
    (
        "database.serverAuth.region",
        Lands::ServerAuth("server_auth_region=ap-south-1"),
    ),
    (
        "database.serverAuth.serviceAccount.annotations",
        Lands::ServerAuth("eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/contract"),
    ),
    (
        "redis.host",
        Lands::Redis("cluster_nodes = redis.example:6380,"),
    ),
    (
        "redis.port",
        Lands::Redis("cluster_nodes = redis.example:6380,"),
    ),
    (
        "redis.clusterNodes",
        Lands::Redis("cluster_nodes = redis.example:6380,redis-b.example:6381\n"),
    ),
    // 1000 − 200 headroom (20 %) − 100 used by others = 700 over 3 + 1 pods: each of the
    // three fields changes the result.
    (
        "redis.maxClients",
        Lands::Redis("max_server_connections = 175"),
    ),
    (
        "redis.reservedPercent",
        Lands::Redis("max_server_connections = 175"),
    ),
    (
        "redis.usedByOthers",
        Lands::Redis("max_server_connections = 175"),
    ),
    (
        "redis.credentialsSecret.name",
        Lands::Redis("redis://cacheuser:cache-pw@contract.default.svc:6379/0"),
    ),
    (
        "redis.credentialsSecret.usernameKey",
        Lands::Redis("redis://cacheuser:"),
    ),
    (
        "redis.credentialsSecret.passwordKey",
        Lands::Redis(":cache-pw@"),
    ),
    (
        "redis.sharedConnections",
        Lands::Redis("shared_connections = 5"),
    ),
    (
        "redis.privatePool.enabled",
        Lands::Redis("private_conn_pool_enabled = 1"),
    ),
    (
        "redis.privatePool.idleTimeSeconds",
        Lands::Redis("private_conn_idle_time_sec = 7"),
    ),
    (
        "redis.privatePool.maxIdlePerDb",
        Lands::Redis("private_conn_pool_max_idle_per_db = 30"),
    ),
    (
        "redis.privatePool.minIdlePerDb",
        Lands::Redis("private_conn_pool_min_idle_per_db = 3"),
    ),
    (
        "readReplicas.hosts[].host",
        Lands::ReadOnly("host=standby-1.example,standby-2.example"),
    ),
    (
        "readReplicas.hosts[].port",
        Lands::ReadOnly("port=5433,5434"),
    ),
    ("readReplicas.replicas", Lands::ReadOnly("replicas: 4")),
    // 200 − 5 superuser − 20 headroom (10 %) − 15 used by others = 160 over 4 + 2 pods: each
    // of the four fields changes the result.
    (
        "readReplicas.maxConnections",
        Lands::ReadOnly("max_db_connections=26"),
    ),
    (
        "readReplicas.superuserReservedConnections",
        Lands::ReadOnly("max_db_connections=26"),
    ),
    (
        "readReplicas.reservedPercent",
        Lands::ReadOnly("max_db_connections=26"),
    ),
    (
        "readReplicas.usedByOthers",
        Lands::ReadOnly("max_db_connections=26"),
    ),
    ("poolMode", Lands::Console("pool_mode", "session")),
    ("replicas", Lands::Pooler),
    ("maxConnectionsPercent", Lands::Pooler),
    ("maxServerConnections", Lands::Sizing),
    ("users[].user", Lands::Pooler),
    ("users[].credentialsSecret.name", Lands::Pooler),
    ("users[].credentialsSecret.passwordKey", Lands::Pooler),
    ("users[].weight", Lands::Pooler),
    ("users[].minPoolSize", Lands::Pooler),
    ("users[].reservePoolSize", Lands::Pooler),
    (
        "users[].serviceAccounts[].name",
        Lands::Tokens("service_accounts=default/reports-job,"),
    ),
    (
        "users[].serviceAccounts[].namespace",
        Lands::Tokens(",batch/exporter"),
    ),
    (
        "limits.maxClientConnections",
        Lands::Console("max_client_conn", "321"),
    ),
    (
        "limits.queryWaitTimeout",
        Lands::Console("query_wait_timeout", "45"),
    ),
    (
        "limits.serverIdleTimeout",
        Lands::Console("server_idle_timeout", "301"),
    ),
    (
        "limits.serverLifetime",
        Lands::Console("server_lifetime", "1801"),
    ),
    (
        "limits.clientIdleTimeout",
        Lands::Console("client_idle_timeout", "901"),
    ),
    (
        "limits.idleTransactionTimeout",
        Lands::Console("idle_transaction_timeout", "61"),
    ),
    (
        "parameters",
        Lands::Console("max_prepared_statements", "77"),
    ),
    ("rollout.maxSurge", Lands::Pooler),
    ("autoscaling.maxReplicas", Lands::Sizing),
    ("pod.resources", Lands::Kubernetes("cpu: 250m")),
    ("pod.nodeSelector", Lands::Kubernetes("disktype: ssd")),
    ("pod.affinity", Lands::Kubernetes("zone-a")),
    ("pod.tolerations", Lands::Kubernetes("key: dedicated")),
    (
        "pod.topologySpreadConstraints",
        Lands::Kubernetes("topologyKey: kubernetes.io/hostname"),
    ),
    (
        "pod.priorityClassName",
        Lands::Kubernetes("priorityClassName: pooler-high"),
    ),
    ("pod.labels", Lands::Kubernetes("team: payments")),
    (
        "pod.annotations",
        Lands::Kubernetes("contract/pod: annotated"),
    ),
    ("service.type", Lands::Kubernetes("type: NodePort")),
    (
        "service.annotations",
        Lands::Kubernetes("contract/service: annotated"),
    ),
    (
        "image",
        Lands::Kubernetes("image: registry.example/weir:contract"),
    ),
    (
        "tls.client.secretName",
        Lands::Tls("secretName: contract-tls"),
    ),
    (
        "tls.client.mode",
        Lands::Tls("client_tls_sslmode = verify-full"),
    ),
    (
        "tls.client.ca.secret.name",
        Lands::Tls("secretName: clients-ca"),
    ),
    (
        "tls.client.ca.secret.key",
        Lands::Tls("client_tls_ca_file = /etc/weir/tls/client-ca/clients.pem"),
    ),
    (
        "tls.client.ca.configMap.name",
        Lands::Tls("name: clients-bundle"),
    ),
    (
        "tls.client.ca.configMap.key",
        Lands::Tls("client_tls_ca_file = /etc/weir/tls/client-ca/bundle.pem"),
    ),
    (
        "tls.server.mode",
        Lands::Tls("server_tls_sslmode = verify-ca"),
    ),
    (
        "tls.server.ca.secret.name",
        Lands::Tls("secretName: db-ca-secret"),
    ),
    (
        "tls.server.ca.secret.key",
        Lands::Tls("server_tls_ca_file = /etc/weir/tls/server-ca/db.pem"),
    ),
    (
        "tls.server.ca.configMap.name",
        Lands::Tls("name: db-ca-bundle"),
    ),
    (
        "tls.server.ca.configMap.key",
        Lands::Tls("server_tls_ca_file = /etc/weir/tls/server-ca/db-bundle.pem"),
    ),
    (
        "tls.server.clientCertificateSecretName",
        Lands::Tls("secretName: contract-db-client"),
    ),
    (
        "monitoring.podMonitor.enabled",
        Lands::Operations("kind: PodMonitor"),
    ),
    (
        "monitoring.podMonitor.labels",
        Lands::Operations("release: contract-prometheus"),
    ),
    (
        "monitoring.podMonitor.interval",
        Lands::Operations("interval: 17s"),
    ),
    (
        "networkPolicy.clients",
        Lands::Operations("app: contract-client"),
    ),
    (
        "networkPolicy.metrics",
        Lands::Operations("app: contract-scraper"),
    ),
    (
        "networkPolicy.operator",
        Lands::Operations("app: contract-operator"),
    ),
    (
        "networkPolicy.databaseCIDR",
        Lands::Operations("cidr: 10.99.0.0/16"),
    ),
];

/// Spec fields of Kubernetes' own types, one field each like those under `pod`.
const KUBERNETES_TYPED: &[&str] = &[
    "networkPolicy.clients",
    "networkPolicy.metrics",
    "networkPolicy.operator",
];

/// `spec.tls` in two variants, since a CA comes from a Secret or a ConfigMap, not both.
const TLS_VARIANTS: [&str; 2] = [
    "  tls:
    client:
      secretName: contract-tls
      mode: verify-full
      ca: {secret: {name: clients-ca, key: clients.pem}}
    server:
      mode: verify-ca
      ca: {configMap: {name: db-ca-bundle, key: db-bundle.pem}}
      clientCertificateSecretName: contract-db-client
",
    "  tls:
    client:
      secretName: contract-tls
      mode: verify-full
      ca: {configMap: {name: clients-bundle, key: bundle.pem}}
    server:
      mode: verify-ca
      ca: {secret: {name: db-ca-secret, key: db.pem}}
",
];

const APP_PASSWORD: &str = "app-contract-pw";
const REPORTS_PASSWORD: &str = "reports-contract-pw";

/// The spec under test. Budget by hand: 100 − 3 superuser − 10 headroom (10 %) − 7 used by
/// others = 80; 50 % of it is 40 for the pool; 3 replicas + 2 surge = 5 pods → 8 per pod.
fn spec(host: &str, port: u16) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: contract
  namespace: default
  uid: 0c0ffee0-0000-4000-8000-000000000001
spec:
  database:
    host: {host}
    port: {port}
    dbname: shop
    credentialsSecret:
      name: shop-owner
      usernameKey: login
      passwordKey: secret
    maxConnections: 100
    superuserReservedConnections: 3
    reservedPercent: 10
    usedByOthers: 7
  poolMode: session
  replicas: 3
  maxConnectionsPercent: 50
  users:
    - user: app
      credentialsSecret:
        name: app-creds
        passwordKey: pw
      weight: 3
      minPoolSize: 2
      reservePoolSize: 1
    - user: reports
      credentialsSecret:
        name: reports-creds
  limits:
    maxClientConnections: 321
    queryWaitTimeout: 45s
    serverIdleTimeout: 301s
    serverLifetime: 1801s
    clientIdleTimeout: 901s
    idleTransactionTimeout: 61s
  parameters:
    max_prepared_statements: \"77\"
    stats_users: app
  rollout:
    maxSurge: 2
  pod:
    resources:
      requests:
        cpu: 250m
    nodeSelector:
      disktype: ssd
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms:
            - matchExpressions:
                - key: zone
                  operator: In
                  values: [zone-a]
    tolerations:
      - key: dedicated
        operator: Exists
    topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: ScheduleAnyway
    priorityClassName: pooler-high
    labels:
      team: payments
    annotations:
      contract/pod: annotated
  service:
    type: NodePort
    annotations:
      contract/service: annotated
  image: registry.example/weir:contract
  monitoring:
    podMonitor:
      enabled: true
      labels:
        release: contract-prometheus
      interval: 17s
  networkPolicy:
    clients:
      - podSelector:
          matchLabels:
            app: contract-client
    metrics:
      - podSelector:
          matchLabels:
            app: contract-scraper
    operator:
      podSelector:
        matchLabels:
          app: contract-operator
    databaseCIDR: 10.99.0.0/16
"
    )
}

fn observed() -> Observed {
    let secret = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    };
    Observed {
        database: None,
        others_claimed: 0,
        secrets: BTreeMap::from([
            (
                "shop-owner".to_owned(),
                secret(&[("login", "owner"), ("secret", "owner-pw")]),
            ),
            ("app-creds".to_owned(), secret(&[("pw", APP_PASSWORD)])),
            (
                "reports-creds".to_owned(),
                secret(&[("password", REPORTS_PASSWORD)]),
            ),
        ]),
        config_maps: BTreeMap::new(),
        ..Observed::default()
    }
}

fn rendered(yaml: &str) -> Rendered {
    let pool: ConnectionPool = from_yaml(yaml).expect("a valid ConnectionPool");
    render(&pool, &observed()).expect("renders")
}

fn data_text(rendered: &Rendered, key: &str) -> String {
    let from_config = rendered.config_map.data.as_ref().and_then(|d| d.get(key));
    match from_config {
        Some(text) => text.clone(),
        None => {
            let data = rendered.auth_secret.data.as_ref().expect("secret data");
            String::from_utf8(data[key].0.clone()).expect("utf-8")
        }
    }
}

/// The CRD's spec fields as dotted paths. Kubernetes' own types under `pod` (resources,
/// affinity…) are one field each: their insides are Kubernetes', not Weir's.
fn crd_fields() -> BTreeSet<String> {
    let crd = serde_json::to_value(ConnectionPool::crd()).expect("CRD as JSON");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut out = BTreeSet::new();
    walk(spec, "", &mut out);
    out
}

fn walk(node: &serde_json::Value, path: &str, out: &mut BTreeSet<String>) {
    let opaque =
        path.starts_with("pod.") || path == "parameters" || KUBERNETES_TYPED.contains(&path);
    if !opaque {
        if let Some(props) = node["properties"].as_object() {
            for (name, child) in props {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                walk(child, &child_path, out);
            }
            return;
        }
        if node["items"]["properties"].is_object() {
            walk(&node["items"], &format!("{path}[]"), out);
            return;
        }
    }
    out.insert(path.to_owned());
}

#[test]
fn every_crd_field_has_a_row() {
    let rows: BTreeSet<String> = FIELDS.iter().map(|(p, _)| (*p).to_owned()).collect();
    let fields = crd_fields();
    let missing: Vec<_> = fields.difference(&rows).collect();
    let stale: Vec<_> = rows.difference(&fields).collect();
    assert!(missing.is_empty(), "CRD fields without a row: {missing:?}");
    assert!(stale.is_empty(), "rows for fields the CRD lacks: {stale:?}");
}

#[test]
fn kubernetes_fields_reach_their_objects() {
    let r = rendered(&spec("db.example", 5432));
    let objects = format!(
        "{}\n{}",
        weir_operator::yaml::to_string(&r.deployment).expect("yaml"),
        weir_operator::yaml::to_string(&r.service).expect("yaml")
    );
    for (path, lands) in FIELDS {
        if let Lands::Kubernetes(text) = lands {
            assert!(objects.contains(text), "{path}: {text:?} not in\n{objects}");
        }
    }
}

#[test]
fn operations_fields_reach_their_objects() {
    let r = rendered(&spec("db.example", 5432));
    let objects = format!(
        "{}\n{}",
        weir_operator::yaml::to_string(&r.network_policy).expect("yaml"),
        weir_operator::yaml::to_string(&r.pod_monitor).expect("yaml")
    );
    for (path, lands) in FIELDS {
        if let Lands::Operations(text) = lands {
            assert!(objects.contains(text), "{path}: {text:?} not in\n{objects}");
        }
    }
}

#[test]
fn tls_fields_reach_their_objects() {
    let mut objects = String::new();
    for tls in TLS_VARIANTS {
        let pool: ConnectionPool =
            from_yaml(&format!("{}{tls}", spec("db.example", 5432))).expect("valid");
        let mut facts = observed();
        for (name, key) in weir_operator::render::tls::secret_keys(&pool.spec) {
            facts
                .secrets
                .entry(name)
                .or_default()
                .insert(key, b"PEM".to_vec());
        }
        for (name, key) in weir_operator::render::tls::config_map_keys(&pool.spec) {
            facts
                .config_maps
                .entry(name)
                .or_default()
                .insert(key, "PEM".to_owned());
        }
        let r = render(&pool, &facts).expect("renders");
        objects.push_str(&weir_operator::yaml::to_string(&r.deployment).expect("yaml"));
        objects.push_str(&data_text(&r, "pgbouncer.ini"));
    }
    for (path, lands) in FIELDS {
        if let Lands::Tls(text) = lands {
            assert!(objects.contains(text), "{path}: {text:?} not in\n{objects}");
        }
    }
}

/// A Redis pool with every `spec.redis` field set to a value other than its default.
const REDIS_SPEC: &str = "apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: contract
  namespace: default
  uid: 0c0ffee0-0000-4000-8000-000000000002
spec:
  redis:
    host: redis.example
    port: 6380
    clusterNodes:
      - redis-b.example:6381
    maxClients: 1000
    credentialsSecret:
      name: cache-auth
      usernameKey: login
      passwordKey: pw
    reservedPercent: 20
    usedByOthers: 100
    sharedConnections: 5
    privatePool:
      enabled: true
      idleTimeSeconds: 7
      maxIdlePerDb: 30
      minIdlePerDb: 3
  replicas: 3
";

#[test]
fn redis_fields_reach_their_objects() {
    let pool: ConnectionPool = from_yaml(REDIS_SPEC).expect("valid");
    let mut facts = observed();
    facts.max_clients = Some(500);
    facts.secrets.insert(
        "cache-auth".to_owned(),
        BTreeMap::from([
            ("login".to_owned(), b"cacheuser".to_vec()),
            ("pw".to_owned(), b"cache-pw".to_vec()),
        ]),
    );
    let r = render(&pool, &facts).expect("renders");
    let ini = data_text(&r, "pgbouncer.ini");
    let redis = ini.split_once("\n[redis]\n").expect("a [redis] section").1;
    let app = r.app_secret.data.as_ref().expect("app Secret data");
    let uri = String::from_utf8(app["uri"].0.clone()).expect("utf-8");
    let objects = format!("{redis}\n{uri}\n");
    for (path, lands) in FIELDS {
        if let Lands::Redis(text) = lands {
            assert!(objects.contains(text), "{path}: {text:?} not in\n{objects}");
        }
    }
}

/// `spec.readReplicas` with every field set to a value other than its default.
const READ_REPLICAS: &str = "  readReplicas:
    hosts:
      - host: standby-1.example
        port: 5433
      - host: standby-2.example
        port: 5434
    replicas: 4
    maxConnections: 200
    superuserReservedConnections: 5
    reservedPercent: 10
    usedByOthers: 15
";

#[test]
fn read_replica_fields_reach_their_objects() {
    let pool: ConnectionPool =
        from_yaml(&format!("{}{READ_REPLICAS}", spec("db.example", 5432))).expect("valid");
    let r = weir_operator::render::read_only::render(&pool, &observed())
        .expect("renders")
        .expect("a read-only pool");
    let objects = format!(
        "{}\n{}",
        weir_operator::yaml::to_string(&r.deployment).expect("yaml"),
        data_text(&r, "pgbouncer.ini")
    );
    for (path, lands) in FIELDS {
        if let Lands::ReadOnly(text) = lands {
            assert!(objects.contains(text), "{path}: {text:?} not in\n{objects}");
        }
    }
}

/// `serviceAccounts` of the `reports` user, which need `tls.client`.
const SERVICE_ACCOUNTS: &str = "        name: reports-creds
      serviceAccounts:
        - name: reports-job
        - name: exporter
          namespace: batch
";

#[test]
fn service_account_fields_reach_their_objects() {
    let text = format!("{}{}", spec("db.example", 5432), TLS_VARIANTS[1])
        .replace("        name: reports-creds\n", SERVICE_ACCOUNTS);
    let pool: ConnectionPool = from_yaml(&text).expect("valid");
    let mut facts = observed();
    for (name, key) in weir_operator::render::tls::secret_keys(&pool.spec) {
        facts
            .secrets
            .entry(name)
            .or_default()
            .insert(key, b"PEM".to_vec());
    }
    for (name, key) in weir_operator::render::tls::config_map_keys(&pool.spec) {
        facts
            .config_maps
            .entry(name)
            .or_default()
            .insert(key, "PEM".to_owned());
    }
    let r = render(&pool, &facts).expect("renders");
    let binding = r
        .token_review_binding
        .as_ref()
        .expect("a TokenReview binding");
    let objects = format!(
        "{}{}",
        data_text(&r, "pgbouncer.ini"),
        weir_operator::yaml::to_string(binding).expect("yaml")
    );
    for (path, lands) in FIELDS {
        if let Lands::Tokens(text) = lands {
            assert!(objects.contains(text), "{path}: {text:?} not in\n{objects}");
        }
    }
    assert!(
        objects.contains("name: weir-token-review\n") && objects.contains("name: contract\n"),
        "the pool's ServiceAccount bound to the TokenReview role:\n{objects}"
    );
    let pod = r
        .deployment
        .spec
        .as_ref()
        .and_then(|d| d.template.spec.as_ref());
    assert_eq!(
        pod.and_then(|p| p.automount_service_account_token),
        Some(true)
    );
    // Without token users the pods get no API token and nothing is bound.
    let plain = rendered(&spec("db.example", 5432));
    assert!(plain.token_review_binding.is_none());
    let pod = plain
        .deployment
        .spec
        .as_ref()
        .and_then(|d| d.template.spec.as_ref());
    assert_eq!(
        pod.and_then(|p| p.automount_service_account_token),
        Some(false)
    );
}

/// `serverAuth` spliced into the main spec's database.
const SERVER_AUTH: &str = "    usedByOthers: 7
    serverAuth:
      provider: rdsIam
      region: ap-south-1
      serviceAccount:
        annotations:
          eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/contract
";

#[test]
fn server_auth_fields_reach_their_objects() {
    let text = spec("db.example", 5432).replace("    usedByOthers: 7\n", SERVER_AUTH);
    let r = rendered(&text);
    let ini = data_text(&r, "pgbouncer.ini");
    let parsed = weir_pooler::config::Config::parse(&ini, std::path::Path::new("pgbouncer.ini"))
        .expect("the pooler accepts the server_auth keys");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let objects = format!(
        "{ini}{}",
        weir_operator::yaml::to_string(&r.service_account).expect("yaml")
    );
    for (path, lands) in FIELDS {
        if let Lands::ServerAuth(text) = lands {
            assert!(objects.contains(text), "{path}: {text:?} not in\n{objects}");
        }
    }
    // The pooler logs in with tokens: no password reaches the database entry.
    assert!(!ini.contains("password="), "{ini}");
}

/// Fields whose value the main spec cannot show at the same time (one of two ways to say
/// the same thing, or the default user used only without `users`) change the pools when
/// set alone.
#[test]
fn sizing_fields_change_the_pools() {
    let base = spec("db.example", 5432);
    let per_pod = |yaml: &str| rendered(yaml).sizing.max_db_connections();
    assert_eq!(per_pod(&base), 8);

    // maxServerConnections in place of the percentage: 30 over 5 pods.
    let absolute = base.replace("maxConnectionsPercent: 50", "maxServerConnections: 30");
    assert_eq!(per_pod(&absolute), 6);

    // autoscaling.maxReplicas: the budget is divided for 7 + 2 pods up front.
    let scaling = base.replace(
        "  rollout:\n",
        "  autoscaling:\n    maxReplicas: 7\n  rollout:\n",
    );
    assert_eq!(per_pod(&scaling), 4);

    // Without users, the database Secret's user (under its custom keys) is the one user.
    let start = base.find("  users:\n").expect("users");
    let end = base.find("  limits:\n").expect("limits");
    let no_users = format!("{}{}", &base[..start], &base[end..]);
    let r = rendered(&no_users);
    assert_eq!(r.users, ["owner"]);
    assert!(
        data_text(&r, "userlist.txt").contains("\"owner\""),
        "the owner is not in the auth file"
    );
    let owner = r.config.pool_settings("shop", "owner").expect("served");
    assert_eq!(owner.size + owner.reserve_size, 8);
}

async fn show(client: &Client, sql: &str) -> Vec<BTreeMap<String, String>> {
    let mut rows = Vec::new();
    for msg in client.simple_query(sql).await.expect(sql) {
        if let SimpleQueryMessage::Row(row) = msg {
            let mut map = BTreeMap::new();
            for (i, col) in row.columns().iter().enumerate() {
                map.insert(
                    col.name().to_owned(),
                    row.get(i).unwrap_or_default().to_owned(),
                );
            }
            rows.push(map);
        }
    }
    rows
}

async fn http_get(port: u16, path: &str) -> serde_json::Value {
    let mut stream = tokio::net::TcpStream::connect((net::HOST, port))
        .await
        .expect("HTTP port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).expect("JSON")
}

#[tokio::test]
async fn running_pooler_follows_the_spec() {
    let pg = PgCluster::start().await.expect("PostgreSQL");
    pg.create_role("app", APP_PASSWORD, PasswordMethod::Scram)
        .await
        .expect("role app");
    pg.create_role("reports", REPORTS_PASSWORD, PasswordMethod::Scram)
        .await
        .expect("role reports");
    pg.create_database("shop", "app").await.expect("database");

    let r = rendered(&spec(pg.host(), pg.port()));
    let http_port = net::free_port();
    let ini = localize_pgbouncer_ini(&data_text(&r, "pgbouncer.ini"), http_port).expect("ini");
    let weir = WeirProcess::start(&ini, &data_text(&r, "userlist.txt"))
        .await
        .expect("weir starts on the rendered configuration");

    // users[]: each user logs in with its Secret's password (custom key for app) and is
    // served by database host, port and dbname.
    let app = net::connect(weir.port(), "app", APP_PASSWORD, "shop")
        .await
        .expect("app logs in");
    let reports = net::connect(weir.port(), "reports", REPORTS_PASSWORD, "shop")
        .await
        .expect("reports logs in");
    let row = app
        .query_one("SELECT current_database(), inet_server_port()", &[])
        .await
        .expect("query through weir");
    assert_eq!(row.get::<_, String>(0), "shop");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(i32::from(pg.port())));
    reports.batch_execute("SELECT 1").await.expect("reports");

    // Sizing (database.*, replicas, maxConnectionsPercent, rollout.maxSurge): 8 per pod.
    let console = net::connect(weir.port(), "app", APP_PASSWORD, "pgbouncer")
        .await
        .expect("app is a stats user (parameters)");
    let dbs = show(&console, "SHOW DATABASES").await;
    let shop = dbs.iter().find(|d| d["name"] == "shop").expect("shop");
    assert_eq!(shop["max_connections"], "8");

    // users[].weight, minPoolSize, reservePoolSize: each pool as rendered, in /status.
    let status = http_get(http_port, "/status").await;
    let pools = status["pools"].as_array().expect("pools");
    let mut per_pod = 0;
    for (user, rendered_pool) in r.users.iter().zip(&r.sizing.users) {
        let pool = pools
            .iter()
            .find(|p| p["user"] == user.as_str())
            .unwrap_or_else(|| panic!("no pool of {user} in {status}"));
        assert_eq!(pool["mode"], "session", "{user}");
        assert_eq!(pool["size"], rendered_pool.pool_size, "{user}");
        assert_eq!(
            pool["reserve_size"], rendered_pool.reserve_pool_size,
            "{user}"
        );
        assert_eq!(pool["min_size"], rendered_pool.min_pool_size, "{user}");
        per_pod += rendered_pool.pool_size + rendered_pool.reserve_pool_size;
    }
    assert_eq!(per_pod, 8);
    let app_pool = &r.sizing.users[0];
    let reports_pool = &r.sizing.users[1];
    assert!(
        app_pool.pool_size > 2 * reports_pool.pool_size,
        "weight 3:1 not reflected"
    );
    assert_eq!((app_pool.min_pool_size, app_pool.reserve_pool_size), (2, 1));
    let users = show(&console, "SHOW USERS").await;
    let app_row = users.iter().find(|u| u["name"] == "app").expect("app");
    assert_eq!(app_row["reserve_pool_size"], "1");

    // minPoolSize: app's pool keeps two connections of its own open.
    let superuser = pg.superuser().await.expect("superuser");
    let warm = Fixture::eventually(Duration::from_secs(10), || async {
        let n: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND datname = 'shop'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        n == 2
    })
    .await;
    assert!(warm, "users[].minPoolSize = 2 was not kept open");

    // limits.*, poolMode and parameters, as the console shows them.
    let config = show(&console, "SHOW CONFIG").await;
    for (path, lands) in FIELDS {
        if let Lands::Console(key, value) = lands {
            let row = config
                .iter()
                .find(|c| c["key"] == *key)
                .unwrap_or_else(|| panic!("{path}: no {key} in SHOW CONFIG"));
            assert_eq!(row["value"], *value, "{path} ({key})");
        }
    }
    drop(weir);
}
