use super::*;
use crate::api::{rules, MaxConnections};

const BASE: &str = "\
apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: orders
spec:
  database:
    host: db
    dbname: orders
    credentialsSecret:
      name: creds
    maxConnections: 100
  users:
    - user: app
      credentialsSecret:
        name: app-creds
";

/// A change to a valid pool, for table-driven cases.
type Change = Box<dyn Fn(&mut ConnectionPool)>;

fn base() -> ConnectionPool {
    from_yaml(BASE).expect("the base pool is valid")
}

/// The violations after `change`, as "path: message" lines.
fn violations(change: impl FnOnce(&mut ConnectionPool)) -> Vec<String> {
    let mut pool = base();
    change(&mut pool);
    match pool.validate() {
        Ok(()) => Vec::new(),
        Err(Violations(v)) => v.iter().map(Violation::to_string).collect(),
    }
}

fn assert_refused(change: impl FnOnce(&mut ConnectionPool), expected: &str) {
    let found = violations(change);
    assert_eq!(found, vec![expected.to_owned()]);
}

#[test]
fn defaults_are_filled_in() {
    let pool = base();
    let spec = &pool.spec;
    let database = spec.database.as_ref().expect("a database");
    assert_eq!(spec.replicas, 2);
    assert_eq!(spec.pool_mode, crate::api::PoolMode::Transaction);
    assert_eq!(database.port, 5432);
    assert_eq!(database.reserved_percent, 15);
    assert_eq!(database.superuser_reserved_connections, 3);
    assert_eq!(database.credentials_secret.username_key, "username");
    assert_eq!(database.credentials_secret.password_key, "password");
    assert_eq!(spec.limits.max_client_connections, 5000);
    assert_eq!(spec.rollout.max_surge, 1);
    let users = spec.users.as_ref().expect("users");
    assert_eq!((users[0].weight, users[0].min_pool_size), (1, 0));
}

#[test]
fn spec_rules() {
    assert_refused(
        |p| {
            p.spec.max_connections_percent = Some(50);
            p.spec.max_server_connections = Some(10);
        },
        &format!("spec: {}", rules::BOTH_BUDGET_FORMS),
    );
    assert_refused(
        |p| p.spec.max_connections_percent = Some(0),
        "spec.maxConnectionsPercent: maxConnectionsPercent must be between 1 and 100",
    );
    assert_refused(
        |p| p.spec.max_connections_percent = Some(101),
        "spec.maxConnectionsPercent: maxConnectionsPercent must be between 1 and 100",
    );
    assert_refused(
        |p| p.spec.max_server_connections = Some(0),
        "spec.maxServerConnections: maxServerConnections must be at least 1",
    );
    assert_refused(
        |p| p.spec.replicas = 0,
        "spec.replicas: replicas must be at least 1",
    );
    assert_refused(
        |p| {
            p.spec.replicas = 4;
            p.spec.autoscaling = Some(crate::api::Autoscaling { max_replicas: 3 });
        },
        &format!("spec.replicas: {}", rules::REPLICAS_ABOVE_MAX),
    );
    assert_eq!(
        violations(|p| p.spec.autoscaling = Some(crate::api::Autoscaling { max_replicas: 0 })),
        vec![
            format!("spec.replicas: {}", rules::REPLICAS_ABOVE_MAX),
            "spec.autoscaling.maxReplicas: maxReplicas must be at least 1".to_owned(),
        ]
    );
    assert_refused(
        |p| p.spec.image = Some(String::new()),
        "spec.image: image must not be empty",
    );
}

/// The pool's database, which `base` has.
fn db(p: &mut ConnectionPool) -> &mut crate::api::DatabaseSpec {
    p.spec.database.as_mut().expect("a database")
}

#[test]
fn database_rules() {
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|p| db(p).host.clear()), "spec.database.host: host must not be empty"),
        (Box::new(|p| db(p).port = 0), "spec.database.port: port must be between 1 and 65535"),
        (Box::new(|p| db(p).port = 65536), "spec.database.port: port must be between 1 and 65535"),
        (Box::new(|p| db(p).dbname.clear()), "spec.database.dbname: dbname must not be empty"),
        (
            Box::new(|p| db(p).dbname = "pgbouncer".into()),
            "spec.database.dbname: dbname pgbouncer is reserved for the pooler's admin console",
        ),
        (
            Box::new(|p| db(p).max_connections = crate::api::MaxConnections::Count(0)),
            "spec.database.maxConnections: maxConnections must be a number of at least 1, or auto",
        ),
        (
            Box::new(|p| db(p).superuser_reserved_connections = -1),
            "spec.database.superuserReservedConnections: superuserReservedConnections must not be negative",
        ),
        (
            Box::new(|p| db(p).reserved_percent = 51),
            "spec.database.reservedPercent: reservedPercent must be between 0 and 50",
        ),
        (
            Box::new(|p| db(p).used_by_others = -1),
            "spec.database.usedByOthers: usedByOthers must not be negative",
        ),
        (
            Box::new(|p| db(p).credentials_secret.name.clear()),
            "spec.database.credentialsSecret.name: the Secret name must not be empty",
        ),
        (
            Box::new(|p| db(p).credentials_secret.username_key.clear()),
            "spec.database.credentialsSecret.usernameKey: usernameKey must not be empty",
        ),
        (
            Box::new(|p| db(p).credentials_secret.password_key.clear()),
            "spec.database.credentialsSecret.passwordKey: passwordKey must not be empty",
        ),
    ];
    for (change, expected) in cases {
        assert_refused(change, expected);
    }
}

#[test]
fn user_rules() {
    fn user(p: &mut ConnectionPool) -> &mut crate::api::UserSpec {
        &mut p.spec.users.as_mut().expect("users")[0]
    }
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|p| p.spec.users = Some(Vec::new())),
            rules::NO_USERS,
        ),
        (Box::new(|p| user(p).user.clear()), "user must not be empty"),
        (
            Box::new(|p| user(p).weight = 0),
            "weight must be between 1 and 1000",
        ),
        (
            Box::new(|p| user(p).weight = 1001),
            "weight must be between 1 and 1000",
        ),
        (
            Box::new(|p| user(p).min_pool_size = -1),
            "minPoolSize must not be negative",
        ),
        (
            Box::new(|p| user(p).reserve_pool_size = -1),
            "reservePoolSize must not be negative",
        ),
        (
            Box::new(|p| user(p).credentials_secret.name.clear()),
            "the Secret name must not be empty",
        ),
        (
            Box::new(|p| user(p).credentials_secret.password_key.clear()),
            "passwordKey must not be empty",
        ),
    ];
    for (change, expected) in cases {
        let found = violations(change);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with(expected), "{found:?}");
        assert!(found[0].starts_with("spec.users"), "{found:?}");
    }
    assert_eq!(
        violations(|p| user(p).weight = 0),
        vec!["spec.users[0].weight: weight must be between 1 and 1000"]
    );
}

#[test]
fn limits_rollout_and_durations() {
    assert_refused(
        |p| p.spec.limits.max_client_connections = 0,
        "spec.limits.maxClientConnections: maxClientConnections must be at least 1",
    );
    assert_refused(
        |p| p.spec.rollout.max_surge = 0,
        "spec.rollout.maxSurge: maxSurge must be at least 1: old pods stop only after new \
         ones are ready, so a rollout needs room for one more pod",
    );
    assert_refused(
        |p| p.spec.limits.server_lifetime = Some(crate::api::DurationSpec("1 hour".into())),
        "spec.limits.serverLifetime: must be a duration like 30s, 5m or 1h30m (units h, m, s, ms)",
    );
    assert!(violations(|p| {
        p.spec.limits.query_wait_timeout = Some(crate::api::DurationSpec("1h30m".into()))
    })
    .is_empty());
}

#[test]
fn parameters_rules() {
    let set = |pairs: &[(&str, &str)]| {
        let map: std::collections::BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        violations(move |p| p.spec.parameters = Some(map))
    };
    assert!(set(&[
        ("server_reset_query", "DISCARD ALL"),
        ("shutdown_timeout", "45")
    ])
    .is_empty());
    let unknown = set(&[("Server_Reset_Query", "x"), ("nonsense", "1")]);
    assert_eq!(unknown.len(), 1);
    assert!(unknown[0].starts_with(&format!(
        "spec.parameters: {}",
        rules::unknown_parameters_message()
    )));
    assert!(
        unknown[0].ends_with("(found: Server_Reset_Query, nonsense)"),
        "{unknown:?}"
    );
    let owned = set(&[("pool_mode", "session"), ("listen_port", "1")]);
    assert_eq!(
        owned,
        vec![format!(
            "spec.parameters: {} (listen_port: fixed by the operator; pool_mode: spec.poolMode)",
            rules::OWNED_PARAMETERS
        )]
    );
    assert_eq!(
        set(&[("server_reset_query", "a\nb")]),
        vec!["spec.parameters: parameter values must be a single line"]
    );
    // Every key is either settable or owned (TLS settings come from spec.tls), and the
    // pooler knows every owned key.
    let settable: Vec<&str> = rules::settable_keys().collect();
    for key in weir_pooler::config::Settings::KEYS {
        assert!(
            settable.contains(key)
                != (rules::operator_owned_keys().any(|o| o == *key)
                    || rules::TLS_KEYS.contains(key)),
            "{key}"
        );
    }
    for key in rules::operator_owned_keys() {
        assert!(weir_pooler::config::Settings::KEYS.contains(&key), "{key}");
    }
}

#[test]
fn pod_metadata_rules() {
    let labels = violations(|p| {
        p.spec.pod = Some(crate::api::PodSettings {
            labels: Some([("app.kubernetes.io/name".to_owned(), "x".to_owned())].into()),
            annotations: Some([("weir.dev/restart-hash".to_owned(), "x".to_owned())].into()),
            ..Default::default()
        })
    });
    assert_eq!(
        labels,
        vec![
            format!("spec.pod.labels: {}", rules::RESERVED_LABELS),
            format!("spec.pod.annotations: {}", rules::RESERVED_ANNOTATIONS),
        ]
    );
    assert!(violations(|p| {
        p.spec.pod = Some(crate::api::PodSettings {
            labels: Some([("team".to_owned(), "x".to_owned())].into()),
            ..Default::default()
        })
    })
    .is_empty());
}

#[test]
fn names_must_fit_a_service() {
    for bad in ["1orders", "orders-", "Orders", "a.b", &"a".repeat(64)] {
        let found = violations(|p| p.metadata.name = Some(bad.to_owned()));
        assert_eq!(
            found,
            vec![format!("metadata.name: {}", rules::NAME_MESSAGE)],
            "{bad}"
        );
    }
    for good in ["o", "orders-2", &"a".repeat(63)] {
        assert!(
            violations(|p| p.metadata.name = Some(good.to_owned())).is_empty(),
            "{good}"
        );
    }
}

#[test]
fn loading_refuses_what_the_api_server_refuses() {
    let err = from_yaml("a: [").expect_err("not yaml");
    assert!(matches!(err, LoadError::Yaml(_)), "{err}");
    let err = from_yaml("apiVersion: v1\nkind: Pod\n").expect_err("wrong kind");
    assert_eq!(
        err.to_string(),
        "expected apiVersion weir.dev/v1alpha1 and kind ConnectionPool, found v1 Pod"
    );
    let typo = BASE.replace("  users:", "  poolmode: session\n  users:");
    let err = from_yaml(&typo).expect_err("unknown field");
    assert_eq!(err.to_string(), "unknown fields: spec.poolmode");
    let nested = BASE.replace("      name: creds", "      name: creds\n      key: x");
    let err = from_yaml(&nested).expect_err("unknown field");
    assert_eq!(
        err.to_string(),
        "unknown fields: spec.database.credentialsSecret.key"
    );
    let wrong_enum = BASE.replace("  users:", "  poolMode: batch\n  users:");
    assert!(matches!(from_yaml(&wrong_enum), Err(LoadError::Shape(_))));
    let wrong_max = BASE.replace("maxConnections: 100", "maxConnections: lots");
    let err = from_yaml(&wrong_max).expect_err("bad maxConnections");
    assert!(
        err.to_string().contains(rules::MAX_CONNECTIONS_FORM),
        "{err}"
    );
    let auto = BASE.replace("maxConnections: 100", "maxConnections: auto");
    assert_eq!(
        from_yaml(&auto)
            .expect("auto")
            .spec
            .database
            .map(|db| db.max_connections),
        Some(crate::api::MaxConnections::Auto)
    );
    let nulls = BASE.replace("  users:", "  autoscaling: null\n  users:");
    assert!(from_yaml(&nulls).is_ok());
    let invalid = BASE.replace("  users:", "  replicas: 0\n  users:");
    assert_eq!(
        from_yaml(&invalid).expect_err("invalid").to_string(),
        "spec.replicas: replicas must be at least 1"
    );
}

/// `BASE` with `tls` (YAML at the `spec.tls` level) added.
fn with_tls(tls: &str) -> Result<ConnectionPool, LoadError> {
    let indented: String = tls.lines().map(|l| format!("    {l}\n")).collect();
    from_yaml(&format!("{BASE}  tls:\n{indented}"))
}

fn tls_violations(tls: &str) -> Vec<String> {
    match with_tls(tls) {
        Ok(_) => Vec::new(),
        Err(LoadError::Invalid(Violations(v))) => v.iter().map(Violation::to_string).collect(),
        Err(e) => panic!("{tls}: {e}"),
    }
}

#[test]
fn tls_defaults() {
    use crate::api::SslMode;
    let pool = with_tls("client: {secretName: cert}\nserver: {}").expect("valid");
    let tls = pool.spec.tls.expect("tls");
    let client = tls.client.expect("client");
    assert_eq!(client.effective_mode(), SslMode::Prefer);
    assert_eq!(
        tls.server.expect("server").effective_mode(),
        SslMode::Prefer
    );
    let pool = with_tls("server: {ca: {configMap: {name: db-ca}}}").expect("valid");
    let server = pool.spec.tls.and_then(|t| t.server).expect("server");
    assert_eq!(server.effective_mode(), SslMode::VerifyFull);
    let ca = server.ca.expect("ca");
    assert_eq!(ca.selector().map(|s| s.key.as_str()), Some("ca.crt"));
    let client = crate::api::ClientTls::default();
    assert_eq!(client.effective_mode(), SslMode::Disable);
}

#[test]
fn tls_rules() {
    let cases: &[(&str, &[String])] = &[
        (
            "client: {mode: require}",
            &[format!(
                "spec.tls.client.secretName: {}",
                rules::CLIENT_MODE_NEEDS_CERTIFICATE
            )],
        ),
        (
            "client: {mode: prefer}",
            &[format!(
                "spec.tls.client.secretName: {}",
                rules::CLIENT_MODE_NEEDS_CERTIFICATE
            )],
        ),
        (
            "client: {secretName: ''}",
            &["spec.tls.client.secretName: secretName must not be empty".to_owned()],
        ),
        (
            "client: {secretName: cert, mode: verify-full}",
            &[format!(
                "spec.tls.client.ca: {}",
                rules::CLIENT_VERIFY_NEEDS_CA
            )],
        ),
        (
            "client: {secretName: cert, mode: verify-ca}",
            &[format!(
                "spec.tls.client.ca: {}",
                rules::CLIENT_VERIFY_NEEDS_CA
            )],
        ),
        (
            "client: {secretName: cert, ca: {secret: {name: ca}}}",
            &[format!(
                "spec.tls.client.mode: {}",
                rules::CLIENT_CA_NEEDS_VERIFY
            )],
        ),
        (
            "server: {mode: verify-full}",
            &[format!(
                "spec.tls.server.ca: {}",
                rules::SERVER_VERIFY_NEEDS_CA
            )],
        ),
        (
            "server: {mode: verify-ca}",
            &[format!(
                "spec.tls.server.ca: {}",
                rules::SERVER_VERIFY_NEEDS_CA
            )],
        ),
        (
            "server: {clientCertificateSecretName: ''}",
            &[
                "spec.tls.server.clientCertificateSecretName: clientCertificateSecretName \
                 must not be empty"
                    .to_owned(),
            ],
        ),
        (
            "server: {ca: {secret: {name: a}, configMap: {name: b}}}",
            &[format!("spec.tls.server.ca: {}", rules::ONE_CA_SOURCE)],
        ),
        (
            "server: {mode: require, ca: {}}",
            &[format!("spec.tls.server.ca: {}", rules::ONE_CA_SOURCE)],
        ),
        (
            "server: {ca: {configMap: {name: '', key: 'a/b'}}}",
            &[
                "spec.tls.server.ca.configMap.name: name must not be empty".to_owned(),
                format!("spec.tls.server.ca.configMap.key: {}", rules::KEY_FORM),
            ],
        ),
    ];
    for (tls, expected) in cases {
        assert_eq!(&tls_violations(tls), expected, "{tls}");
    }
    for good in [
        "client: {}",
        "client: {mode: disable}",
        "client: {secretName: cert, mode: require}",
        "client: {secretName: cert, mode: verify-full, ca: {configMap: {name: ca, key: bundle.pem}}}",
        "server: {mode: disable}",
        "server: {mode: verify-ca, ca: {secret: {name: db-ca}}, clientCertificateSecretName: c}",
    ] {
        assert!(tls_violations(good).is_empty(), "{good}");
    }
    let bad_mode = with_tls("client: {mode: required}").expect_err("not a mode");
    assert!(matches!(bad_mode, LoadError::Shape(_)), "{bad_mode}");
}

#[test]
fn tls_settings_cannot_be_parameters() {
    let found = violations(|p| {
        p.spec.parameters = Some([("client_tls_sslmode".to_owned(), "require".to_owned())].into())
    });
    let expected = format!(
        "spec.parameters: {} (found: client_tls_sslmode)",
        rules::TLS_PARAMETERS
    );
    assert!(found.contains(&expected), "{found:?}");
    assert!(!rules::settable_keys().any(|k| rules::TLS_KEYS.contains(&k)));
}

const REDIS: &str = "\
apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: cache
spec:
  redis:
    host: cache-redis
";

fn redis_violations(extra: &str) -> Vec<String> {
    match from_yaml(&format!("{REDIS}{extra}")) {
        Ok(_) => Vec::new(),
        Err(LoadError::Invalid(Violations(v))) => v.iter().map(Violation::to_string).collect(),
        Err(e) => panic!("{extra}: {e}"),
    }
}

#[test]
fn redis_defaults_are_filled_in() {
    let pool = from_yaml(REDIS).expect("a minimal redis pool is valid");
    let redis = pool.spec.redis.as_ref().expect("redis");
    assert_eq!((redis.port, redis.reserved_percent), (6379, 15));
    assert_eq!((redis.max_clients, redis.shared_connections), (None, 2));
    let p = &redis.private_pool;
    assert_eq!(
        (
            p.enabled,
            p.idle_time_seconds,
            p.max_idle_per_db,
            p.min_idle_per_db
        ),
        (false, 60, 1000, 0)
    );
    assert!(pool.spec.database.is_none());
    assert!(pool.spec.user_sources().is_empty());
}

#[test]
fn exactly_one_backend() {
    let neither = "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  \
                   name: x\nspec:\n  replicas: 1\n";
    let expected = format!("spec: {}", rules::ONE_BACKEND);
    match from_yaml(neither) {
        Err(LoadError::Invalid(Violations(v))) => {
            let found: Vec<String> = v.iter().map(Violation::to_string).collect();
            assert_eq!(found, [expected.as_str()]);
        }
        other => panic!("neither backend: {other:?}"),
    }
    assert_refused(
        |p| p.spec.redis = from_yaml(REDIS).expect("valid").spec.redis,
        &expected,
    );
}

#[test]
fn redis_rules() {
    let cases = [
        (
            "    port: 0\n",
            "spec.redis.port: port must be between 1 and 65535",
        ),
        (
            "    maxClients: 0\n",
            "spec.redis.maxClients: maxClients must be at least 1",
        ),
        (
            "    reservedPercent: 60\n",
            "spec.redis.reservedPercent: reservedPercent must be between 0 and 50",
        ),
        (
            "    usedByOthers: -1\n",
            "spec.redis.usedByOthers: usedByOthers must not be negative",
        ),
        (
            "    sharedConnections: 0\n",
            "spec.redis.sharedConnections: sharedConnections must be at least 1",
        ),
        (
            "    privatePool: {idleTimeSeconds: -1}\n",
            "spec.redis.privatePool.idleTimeSeconds: idleTimeSeconds must not be negative",
        ),
        (
            "    privatePool: {maxIdlePerDb: 2, minIdlePerDb: 3}\n",
            "spec.redis.privatePool.minIdlePerDb: minIdlePerDb must be between 0 and \
             maxIdlePerDb: connections above maxIdlePerDb are closed",
        ),
        (
            "    credentialsSecret: {name: ''}\n",
            "spec.redis.credentialsSecret.name: the Secret name must not be empty",
        ),
        (
            "    clusterNodes: ['node-a:0']\n",
            "spec.redis.clusterNodes: clusterNodes must be host:port entries, port 1 to 65535",
        ),
        (
            "    clusterNodes: ['node-a:7000', 'node-b:99999']\n",
            "spec.redis.clusterNodes: clusterNodes must be host:port entries, port 1 to 65535",
        ),
        (
            "    clusterNodes: ['node-a:07000']\n",
            "spec.redis.clusterNodes: clusterNodes must be host:port entries, port 1 to 65535",
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(redis_violations(extra), [expected], "{extra}");
    }
    let host = REDIS.replace("host: cache-redis", "host: 'cache redis'");
    match from_yaml(&host) {
        Err(LoadError::Invalid(Violations(v))) => assert_eq!(
            v[0].to_string(),
            "spec.redis.host: host must be a host name or an IP address"
        ),
        other => panic!("a host with a blank: {other:?}"),
    }
}

#[test]
fn redis_refuses_postgres_only_settings() {
    let users = "  users:\n    - user: app\n      credentialsSecret: {name: app}\n";
    assert!(redis_violations(users).is_empty(), "plain users are fine");
    assert_eq!(
        redis_violations(&format!("{users}      weight: 2\n")),
        [format!("spec.users: {}", rules::REDIS_USERS)]
    );
    assert_eq!(
        redis_violations(&format!("    credentialsSecret: {{name: c}}\n{users}")),
        [format!("spec.users: {}", rules::REDIS_CREDENTIALS_TWICE)]
    );
    assert_eq!(
        redis_violations("  tls:\n    server: {mode: require}\n"),
        [format!("spec.tls: {}", rules::REDIS_TLS)]
    );
}

fn with_read_replicas(p: &mut ConnectionPool) -> &mut crate::api::ReadReplicas {
    p.spec.read_replicas.get_or_insert_with(|| {
        serde_json::from_value(serde_json::json!({ "hosts": [{ "host": "standby" }] }))
            .expect("a read-replicas spec")
    })
}

#[test]
fn read_replicas_defaults_are_filled_in() {
    let mut pool = base();
    let r = with_read_replicas(&mut pool);
    assert_eq!(r.replicas, 2);
    assert_eq!(r.max_connections, MaxConnections::Auto);
    assert_eq!(
        (r.superuser_reserved_connections, r.reserved_percent),
        (3, 15)
    );
    assert_eq!((r.used_by_others, r.hosts[0].port), (0, 5432));
    assert_eq!(pool.validate(), Ok(()));
}

#[test]
fn read_replicas_rules() {
    assert_refused(
        |p| with_read_replicas(p).hosts.clear(),
        "spec.readReplicas.hosts: hosts must list at least one standby",
    );
    assert_refused(
        |p| with_read_replicas(p).replicas = -1,
        "spec.readReplicas.replicas: replicas must not be negative",
    );
    assert_eq!(
        violations(|p| with_read_replicas(p).replicas = 0),
        Vec::<String>::new()
    );
    assert_refused(
        |p| with_read_replicas(p).max_connections = MaxConnections::Count(0),
        &format!(
            "spec.readReplicas.maxConnections: {}",
            rules::MAX_CONNECTIONS_FORM
        ),
    );
    assert_refused(
        |p| with_read_replicas(p).reserved_percent = 51,
        "spec.readReplicas.reservedPercent: reservedPercent must be between 0 and 50",
    );
    assert_refused(
        |p| with_read_replicas(p).superuser_reserved_connections = -1,
        "spec.readReplicas.superuserReservedConnections: superuserReservedConnections must \
         not be negative",
    );
    assert_refused(
        |p| with_read_replicas(p).used_by_others = -1,
        "spec.readReplicas.usedByOthers: usedByOthers must not be negative",
    );
    for bad in ["", "a,b", "a b"] {
        assert_refused(
            |p| with_read_replicas(p).hosts[0].host = bad.to_owned(),
            "spec.readReplicas.hosts[0].host: host must be a host name or an address, without \
             blanks or commas (it joins a host list)",
        );
    }
    for port in [0, 65536] {
        assert_refused(
            |p| with_read_replicas(p).hosts[0].port = port,
            "spec.readReplicas.hosts[0].port: port must be between 1 and 65535",
        );
    }
}

#[test]
fn read_replicas_need_a_database_and_a_name_that_fits_ro() {
    let redis = redis_violations("  readReplicas:\n    hosts:\n      - host: standby\n");
    assert!(
        redis.contains(&format!(
            "spec.readReplicas: {}",
            rules::READ_REPLICAS_NEED_DATABASE
        )),
        "{redis:?}"
    );
    assert_refused(
        |p| {
            p.metadata.name = Some("a".repeat(61));
            with_read_replicas(p);
        },
        &format!("metadata.name: {}", rules::READ_ONLY_NAME_MESSAGE),
    );
    assert_eq!(
        violations(|p| {
            p.metadata.name = Some("a".repeat(60));
            with_read_replicas(p);
        }),
        Vec::<String>::new()
    );
}

fn server_auth_violations(server_auth: &str, rest: &str) -> Vec<String> {
    let text = BASE.replace(
        "    maxConnections: 100\n",
        &format!("    maxConnections: 100\n    serverAuth:\n{server_auth}"),
    ) + rest;
    match from_yaml(&text) {
        Ok(_) => Vec::new(),
        Err(LoadError::Invalid(Violations(v))) => v.iter().map(Violation::to_string).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn server_auth_rules() {
    use crate::api::server_auth::{
        MAX_CONNECTIONS_NEEDS_NUMBER, PLAIN_SERVER_TLS, RDS_NEEDS_REGION, REGION_FORM,
        REGION_RDS_ONLY,
    };
    let gcp = "      provider: gcpIam\n";
    assert_eq!(server_auth_violations(gcp, ""), Vec::<String>::new());
    assert_eq!(
        server_auth_violations("      provider: rdsIam\n      region: eu-west-1\n", ""),
        Vec::<String>::new()
    );
    assert_eq!(
        server_auth_violations("      provider: rdsIam\n", ""),
        vec![format!("spec.database.serverAuth: {RDS_NEEDS_REGION}")]
    );
    assert_eq!(
        server_auth_violations("      provider: rdsIam\n      region: eu-west\n", ""),
        vec![format!("spec.database.serverAuth.region: {REGION_FORM}")]
    );
    assert_eq!(
        server_auth_violations("      provider: azureAd\n      region: eu-west-1\n", ""),
        vec![format!(
            "spec.database.serverAuth.region: {REGION_RDS_ONLY}"
        )]
    );
    assert_eq!(
        server_auth_violations(gcp, "  tls:\n    server: {mode: allow}\n"),
        vec![format!("spec.tls.server.mode: {PLAIN_SERVER_TLS}")]
    );
    assert_eq!(
        server_auth_violations(gcp, "  tls:\n    server: {mode: require}\n"),
        Vec::<String>::new()
    );
    let annotated =
        format!("{gcp}      serviceAccount:\n        annotations:\n          weir.dev/x: z\n");
    assert_eq!(
        server_auth_violations(&annotated, ""),
        vec![format!(
            "spec.database.serverAuth.serviceAccount.annotations: {}",
            rules::RESERVED_ANNOTATIONS
        )]
    );
    let auto = BASE.replace(
        "    maxConnections: 100\n",
        "    maxConnections: auto\n    serverAuth: {provider: gcpIam}\n",
    );
    match from_yaml(&auto) {
        Err(LoadError::Invalid(Violations(v))) => assert_eq!(
            v.iter().map(Violation::to_string).collect::<Vec<_>>(),
            vec![format!(
                "spec.database.maxConnections: {MAX_CONNECTIONS_NEEDS_NUMBER}"
            )]
        ),
        other => panic!("{other:?}"),
    }
    // The same rules without serverAuth: plain server TLS and auto stay allowed.
    let plain = BASE.replace("    maxConnections: 100\n", "    maxConnections: auto\n")
        + "  tls:\n    server: {mode: disable}\n";
    assert!(from_yaml(&plain).is_ok());
}
