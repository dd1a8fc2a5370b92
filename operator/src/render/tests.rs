use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_pooler::config::{parse_userlist, Config, PoolMode};

use super::*;
use crate::api::from_yaml;

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
    maxConnections: auto
  replicas: 3
  users:
    - user: app
      credentialsSecret:
        name: app-creds
      weight: 3
      reservePoolSize: 2
    - user: reports
      credentialsSecret:
        name: reports-creds
      minPoolSize: 1
";

fn pool() -> ConnectionPool {
    from_yaml(POOL).expect("valid pool")
}

fn secret_data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn observed() -> Observed {
    Observed {
        database: Some(ObservedDatabase {
            max_connections: 200,
            superuser_reserved_connections: 3,
            reserved_connections: 2,
        }),
        others_claimed: 0,
        secrets: BTreeMap::from([
            (
                "orders-db-app".to_owned(),
                secret_data(&[("username", "owner"), ("password", "owner-pw")]),
            ),
            (
                "app-creds".to_owned(),
                secret_data(&[("password", "p@ss w:rd")]),
            ),
            (
                "reports-creds".to_owned(),
                secret_data(&[("password", "r3ports")]),
            ),
        ]),
        config_maps: BTreeMap::new(),
        ..Observed::default()
    }
}

fn rendered() -> Rendered {
    render(&pool(), &observed()).expect("renders")
}

fn secret_text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("data");
    String::from_utf8(data[key].0.clone()).expect("utf-8")
}

#[test]
fn auto_uses_the_databases_own_reserved_slots() {
    let r = rendered();
    let b = r.sizing.budget;
    // 200 − (3 + 2) − 30 headroom = 165 for 3 + 1 pods → 41 each.
    assert_eq!((b.superuser_reserved, b.reserved_headroom), (5, 30));
    assert_eq!(
        (b.database, b.pool, b.pods_max, b.per_pod),
        (165, 165, 4, 41)
    );
    assert_eq!(r.users, vec!["app", "reports"]);
}

#[test]
fn the_config_is_what_the_pooler_parses() {
    let r = rendered();
    let ini = &r.config_map.data.as_ref().expect("data")["pgbouncer.ini"];
    let parsed = Config::parse(ini, Path::new("pgbouncer.ini")).expect("the pooler accepts it");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(parsed.config, r.config);
    let c = &parsed.config;
    assert_eq!(c.pgbouncer.pool_mode, PoolMode::Transaction);
    assert_eq!(c.pgbouncer.http_port, 8080);
    assert_eq!(c.pgbouncer.max_client_conn, 5000);
    // Read back through the function the pooler builds its pools with.
    let pool = |user: &str| c.pool_settings("orders", user).expect("orders is served");
    let (app, reports) = (pool("app"), pool("reports"));
    assert_eq!(app.max_db_connections, 41);
    // 41 split 3:1 with the reserve inside: app 31 = 29 + 2, reports 10.
    assert_eq!((app.size, app.reserve_size), (29, 2));
    assert_eq!(app.max_user_connections, 31);
    assert_eq!((reports.size, reports.reserve_size), (10, 0));
    // Each user keeps its own minimum (reports asks for 1; app for none).
    assert_eq!((app.min_size, reports.min_size), (0, 1));
    let total: usize = [&app, &reports]
        .iter()
        .map(|p| p.size + p.reserve_size)
        .sum();
    assert_eq!(total, 41);
}

#[test]
fn userlist_holds_every_users_password() {
    let r = rendered();
    let text = secret_text(&r.auth_secret, "userlist.txt");
    let users = parse_userlist(&text, Path::new("userlist.txt")).expect("parses");
    assert_eq!(users["app"], "p@ss w:rd");
    assert_eq!(users["reports"], "r3ports");
    assert_eq!(users.len(), 2);
}

#[test]
fn app_secret_connects_as_the_first_user() {
    let r = rendered();
    let s = &r.app_secret;
    assert_eq!(secret_text(s, "host"), "orders.shop.svc");
    assert_eq!(secret_text(s, "port"), "5432");
    assert_eq!(secret_text(s, "dbname"), "orders");
    assert_eq!(secret_text(s, "user"), "app");
    assert_eq!(secret_text(s, "password"), "p@ss w:rd");
    assert_eq!(
        secret_text(s, "uri"),
        "postgresql://app:p%40ss%20w%3Ard@orders.shop.svc:5432/orders?sslmode=prefer"
    );
    assert_eq!(
        secret_text(s, "jdbc-uri"),
        "jdbc:postgresql://orders.shop.svc:5432/orders?user=app&password=p%40ss%20w%3Ard\
         &sslmode=prefer"
    );
    let keys: Vec<&str> = s
        .data
        .as_ref()
        .expect("data")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = APP_SECRET_KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

#[test]
fn every_object_is_owned_and_labelled() {
    let r = rendered();
    let metas = [
        &r.service_account.metadata,
        &r.config_map.metadata,
        &r.auth_secret.metadata,
        &r.app_secret.metadata,
        &r.service.metadata,
        &r.deployment.metadata,
        &r.pod_disruption_budget.metadata,
    ];
    for meta in metas {
        let owner = &meta.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "ConnectionPool");
        assert_eq!(owner.uid, "0d9c7d5e-1111-4222-8333-444455556666");
        assert_eq!(owner.controller, Some(true));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/name"], "weir");
        assert_eq!(labels["app.kubernetes.io/instance"], "orders");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "weir-operator");
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
    }
    assert_eq!(r.objects().len(), metas.len());
}

#[test]
fn pods_are_locked_down_and_drain_before_being_killed() {
    let r = rendered();
    let spec = r.deployment.spec.as_ref().expect("spec");
    let strategy = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let strategy = strategy.expect("rolling update");
    assert_eq!(strategy.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(strategy.max_surge, Some(IntOrString::Int(1)));
    let pod = spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.automount_service_account_token, Some(false));
    // 5 s for endpoints to drop the pod + 30 s shutdown_timeout + 10 s margin.
    assert_eq!(pod.termination_grace_period_seconds, Some(45));
    let psc = pod.security_context.as_ref().expect("pod security");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().expect("container security");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    let spread = pod.topology_spread_constraints.as_ref().expect("spread");
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(
        r.service_account.automount_service_account_token,
        Some(false)
    );
}

fn pod_template(r: &Rendered) -> serde_json::Value {
    let spec = r.deployment.spec.as_ref().expect("spec");
    serde_json::to_value(&spec.template).expect("json")
}

#[test]
fn a_rotated_password_reaches_the_auth_file_with_a_grace_and_no_restart() {
    let before = rendered();
    assert_eq!(
        before.config.pgbouncer.auth_rotation_grace,
        config::ROTATION_GRACE
    );
    let mut facts = observed();
    facts.secrets.insert(
        "app-creds".to_owned(),
        secret_data(&[("password", "n3w p@ss")]),
    );
    let after = render(&pool(), &facts).expect("renders");
    let text = secret_text(&after.auth_secret, "userlist.txt");
    let users = parse_userlist(&text, Path::new("userlist.txt")).expect("parses");
    assert_eq!(users["app"], "n3w p@ss");
    // The pods reload the mounted auth file; the old password logs in for the grace.
    assert_eq!(pod_template(&before), pod_template(&after));
    assert_eq!(before.restart_hash, after.restart_hash);

    let mut short = pool();
    short.spec.parameters = Some(BTreeMap::from([(
        "auth_rotation_grace".to_owned(),
        "0".to_owned(),
    )]));
    let r = render(&short, &observed()).expect("renders");
    assert!(r.config.pgbouncer.auth_rotation_grace.is_zero());
}

#[test]
fn pool_size_changes_do_not_restart_pods() {
    let before = rendered();
    let mut facts = observed();
    facts.others_claimed = 40;
    facts.database = facts.database.map(|d| ObservedDatabase {
        max_connections: 400,
        ..d
    });
    let mut changed_pool = pool();
    changed_pool.spec.max_connections_percent = Some(50);
    if let Some(users) = changed_pool.spec.users.as_mut() {
        users[1].weight = 2;
    }
    let after = render(&changed_pool, &facts).expect("renders");
    assert_ne!(before.config_map, after.config_map);
    assert_eq!(pod_template(&before), pod_template(&after));
    assert_eq!(before.restart_hash, after.restart_hash);
}

#[test]
fn startup_settings_restart_pods() {
    let before = rendered();
    let mut changed = pool();
    changed.spec.parameters = Some(BTreeMap::from([("pkt_buf".to_owned(), "8192".to_owned())]));
    let after = render(&changed, &observed()).expect("renders");
    assert_ne!(before.restart_hash, after.restart_hash);
    assert_ne!(pod_template(&before), pod_template(&after));
    // A longer drain lengthens the grace period.
    let mut slow = pool();
    slow.spec.parameters = Some(BTreeMap::from([(
        "shutdown_timeout".to_owned(),
        "120".to_owned(),
    )]));
    let slow = render(&slow, &observed()).expect("renders");
    let pod = slow
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert_eq!(pod.termination_grace_period_seconds, Some(135));
}

#[test]
fn restart_keys_are_pooler_settings() {
    for key in config::RESTART_KEYS {
        assert!(weir_pooler::config::Settings::KEYS.contains(key), "{key}");
    }
}

#[test]
fn missing_facts_are_named() {
    let mut facts = observed();
    facts.database = None;
    assert!(matches!(
        render(&pool(), &facts),
        Err(RenderError::DatabaseNotObserved)
    ));
    let mut facts = observed();
    facts.secrets.remove("reports-creds");
    let err = render(&pool(), &facts).expect_err("missing secret");
    assert_eq!(err.to_string(), "Secret \"reports-creds\" not found");
    let mut facts = observed();
    facts
        .secrets
        .insert("app-creds".into(), secret_data(&[("pass", "x")]));
    let err = render(&pool(), &facts).expect_err("missing key");
    assert_eq!(
        err.to_string(),
        "Secret \"app-creds\" has no key \"password\""
    );
    let mut facts = observed();
    facts
        .secrets
        .insert("app-creds".into(), secret_data(&[("password", "a\nb")]));
    let err = render(&pool(), &facts).expect_err("bad value");
    assert!(err.to_string().contains("line break"), "{err}");
    let mut no_uid = pool();
    no_uid.metadata.uid = None;
    assert!(matches!(
        render(&no_uid, &observed()),
        Err(RenderError::MissingMetadata("uid"))
    ));
}

#[test]
fn default_user_comes_from_the_database_secret() {
    let mut p = pool();
    p.spec.users = None;
    let r = render(&p, &observed()).expect("renders");
    assert_eq!(r.users, vec!["owner"]);
    let owner = r.config.pool_settings("orders", "owner").expect("served");
    assert_eq!(owner.size, 41);
    assert_eq!(secret_text(&r.app_secret, "user"), "owner");
}

#[test]
fn bad_parameter_values_and_unbounded_drains_are_refused() {
    let mut p = pool();
    p.spec.parameters = Some(BTreeMap::from([("pkt_buf".to_owned(), "lots".to_owned())]));
    let err = render(&p, &observed()).expect_err("bad value");
    assert!(
        err.to_string().starts_with("spec.parameters.pkt_buf: "),
        "{err}"
    );
    p.spec.parameters = Some(BTreeMap::from([(
        "shutdown_timeout".to_owned(),
        "0".to_owned(),
    )]));
    assert!(matches!(
        render(&p, &observed()),
        Err(RenderError::UnboundedDrain)
    ));
}

#[test]
fn infeasible_budgets_are_errors_not_overcommitments() {
    let mut facts = observed();
    facts.others_claimed = 100;
    let err = render(&pool(), &facts).expect_err("overcommitted");
    assert!(matches!(
        err,
        RenderError::Sizing(SizingError::Infeasible(_))
    ));
    // 65 left, and 4 pods need 4 each: 10 % (16) to 39 % (64) of 165 fit.
    assert!(
        err.to_string()
            .ends_with("smallest fix: lower maxConnectionsPercent to between 10 and 39"),
        "{err}"
    );
    facts.others_claimed = 160;
    let err = render(&pool(), &facts).expect_err("overcommitted");
    assert!(
        err.to_string()
            .ends_with("no single setting can fix this on its own"),
        "{err}"
    );
}

#[test]
fn status_reports_the_computed_sizes() {
    let r = rendered();
    let status = r.status(&pool());
    let budget = status.budget.expect("budget");
    assert_eq!((budget.pool, budget.per_pod, budget.pods_max), (165, 41, 4));
    assert_eq!(status.users[0].user, "app");
    assert_eq!(status.users[0].pool_size, 29);
    assert_eq!(status.users[0].reserve_pool_size, 2);
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/name=weir,weir.dev/pool=orders")
    );
    assert_eq!(status.endpoint.as_deref(), Some("orders.shop.svc:5432"));
    assert_eq!(status.app_secret_name.as_deref(), Some("orders-app"));
}

/// `POOL` with `tls` (YAML at the `spec.tls` level).
fn tls_pool(tls: &str) -> ConnectionPool {
    let indented: String = tls.lines().map(|l| format!("    {l}\n")).collect();
    from_yaml(&format!("{POOL}  tls:\n{indented}")).expect("valid pool")
}

const FULL_TLS: &str = "\
client:
  secretName: orders-tls
  mode: verify-full
  ca: {secret: {name: clients-ca}}
server:
  ca: {configMap: {name: db-ca, key: bundle.pem}}
  clientCertificateSecretName: orders-db-client
";

/// `observed()` plus every TLS source `FULL_TLS` names, with `pem` as the contents.
fn tls_observed(pem: &str) -> Observed {
    let mut o = observed();
    let pair = secret_data(&[("tls.crt", pem), ("tls.key", pem), ("ca.crt", pem)]);
    for name in ["orders-tls", "orders-db-client"] {
        o.secrets.insert(name.to_owned(), pair.clone());
    }
    o.secrets
        .insert("clients-ca".to_owned(), secret_data(&[("ca.crt", pem)]));
    o.config_maps.insert(
        "db-ca".to_owned(),
        BTreeMap::from([("bundle.pem".to_owned(), pem.to_owned())]),
    );
    o
}

fn ini(r: &Rendered) -> &str {
    &r.config_map.data.as_ref().expect("data")["pgbouncer.ini"]
}

#[test]
fn tls_sources_are_mounted_whole_and_read_only() {
    let r = render(&tls_pool(FULL_TLS), &tls_observed("pem")).expect("renders");
    let pod = r
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    let volumes = pod.volumes.expect("volumes");
    let secret_volume = |name: &str| {
        let v = volumes.iter().find(|v| v.name == name).expect(name);
        v.secret.clone().expect("a Secret volume")
    };
    for (volume, secret) in [
        ("tls-client", "orders-tls"),
        ("tls-client-ca", "clients-ca"),
        ("tls-server-client", "orders-db-client"),
    ] {
        let source = secret_volume(volume);
        assert_eq!(source.secret_name.as_deref(), Some(secret));
        // The whole Secret: an item list would also be fine, but a subPath mount would not.
        assert_eq!(source.items, None);
        assert_eq!(source.default_mode, Some(0o440));
    }
    let ca = volumes
        .iter()
        .find(|v| v.name == "tls-server-ca")
        .expect("ca");
    assert_eq!(
        ca.config_map.as_ref().map(|c| c.name.as_str()),
        Some("db-ca")
    );
    let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
    let tls_mounts: Vec<(&str, &str)> = mounts
        .iter()
        .filter(|m| m.name.starts_with("tls-"))
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        tls_mounts,
        [
            ("tls-client", "/etc/weir/tls/client"),
            ("tls-client-ca", "/etc/weir/tls/client-ca"),
            ("tls-server-ca", "/etc/weir/tls/server-ca"),
            ("tls-server-client", "/etc/weir/tls/server-client"),
        ]
    );
    for m in &mounts {
        assert_eq!(m.read_only, Some(true), "{}", m.name);
        assert_eq!(
            m.sub_path, None,
            "{}: subPath mounts never see rotated files",
            m.name
        );
    }
}

#[test]
fn tls_settings_point_at_the_mounts() {
    let r = render(&tls_pool(FULL_TLS), &tls_observed("pem")).expect("renders");
    let text = ini(&r);
    let lines = "\
client_tls_sslmode = verify-full
client_tls_cert_file = /etc/weir/tls/client/tls.crt
client_tls_key_file = /etc/weir/tls/client/tls.key
client_tls_ca_file = /etc/weir/tls/client-ca/ca.crt
server_tls_sslmode = verify-full
server_tls_ca_file = /etc/weir/tls/server-ca/bundle.pem
server_tls_cert_file = /etc/weir/tls/server-client/tls.crt
server_tls_key_file = /etc/weir/tls/server-client/tls.key
";
    // Inside [pgbouncer], whether the pooler's settings type knows them (rendered with the
    // rest) or not yet (added as text), and the pooler reads the file.
    let section = &text[text.rfind("[pgbouncer]").expect("section")..];
    for line in lines.lines() {
        assert!(
            section.lines().any(|l| l == line),
            "{line:?} missing:\n{text}"
        );
    }
    Config::parse(text, Path::new("pgbouncer.ini")).expect("the pooler accepts it");
    // Without spec.tls the pooler's defaults hold.
    assert!(rendered().tls_settings.is_empty());
    // A certificate alone offers TLS (prefer); a server block alone keeps prefer.
    let r = render(
        &tls_pool("client: {secretName: orders-tls}\nserver: {}"),
        &tls_observed("pem"),
    )
    .expect("renders");
    let settings: Vec<(&str, &str)> = r
        .tls_settings
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    assert_eq!(
        settings,
        [
            ("client_tls_sslmode", "prefer"),
            ("client_tls_cert_file", "/etc/weir/tls/client/tls.crt"),
            ("client_tls_key_file", "/etc/weir/tls/client/tls.key"),
            ("server_tls_sslmode", "prefer"),
        ]
    );
}

#[test]
fn app_secret_sslmode_follows_the_client_side() {
    let uri = |r: &Rendered| secret_text(&r.app_secret, "uri");
    let jdbc = |r: &Rendered| secret_text(&r.app_secret, "jdbc-uri");
    let served = render(&tls_pool(FULL_TLS), &tls_observed("pem")).expect("renders");
    assert!(
        uri(&served).ends_with("/orders?sslmode=require"),
        "{}",
        uri(&served)
    );
    assert!(
        jdbc(&served).ends_with("&sslmode=require"),
        "{}",
        jdbc(&served)
    );
    let offered = render(
        &tls_pool("client: {secretName: orders-tls}"),
        &tls_observed("pem"),
    )
    .expect("renders");
    assert!(uri(&offered).ends_with("?sslmode=require"));
    let off = render(
        &tls_pool("client: {secretName: orders-tls, mode: disable}"),
        &tls_observed("pem"),
    )
    .expect("renders");
    assert!(uri(&off).ends_with("?sslmode=prefer"));
    assert!(uri(&rendered()).ends_with("?sslmode=prefer"));
}

#[test]
fn rotated_certificates_do_not_restart_pods_but_turning_tls_on_does() {
    let pool = tls_pool(FULL_TLS);
    let before = render(&pool, &tls_observed("old certificate")).expect("renders");
    let after = render(&pool, &tls_observed("renewed certificate")).expect("renders");
    assert_eq!(before.deployment, after.deployment);
    assert_eq!(before.config_map, after.config_map);
    // Without TLS the hash is what it was before TLS existed: upgrading rolls no pod.
    let plain = rendered();
    assert_eq!(plain.restart_hash, config::restart_hash(&plain.config, &[]));
    assert_ne!(plain.restart_hash, before.restart_hash);
    assert_ne!(pod_template(&plain), pod_template(&before));
    // A stricter mode holds for every pod at once: it rolls them.
    let require = render(
        &tls_pool("client: {secretName: orders-tls, mode: require}"),
        &tls_observed("pem"),
    )
    .expect("renders");
    let prefer = render(
        &tls_pool("client: {secretName: orders-tls}"),
        &tls_observed("pem"),
    )
    .expect("renders");
    assert_ne!(require.restart_hash, prefer.restart_hash);
}

#[test]
fn missing_tls_sources_are_named() {
    let pool = tls_pool(FULL_TLS);
    let mut o = tls_observed("pem");
    o.secrets.remove("orders-tls");
    let err = render(&pool, &o).expect_err("no certificate");
    assert!(
        matches!(&err, RenderError::MissingSecret(s) if s == "orders-tls"),
        "{err}"
    );
    let mut o = tls_observed("pem");
    if let Some(data) = o.secrets.get_mut("orders-db-client") {
        data.remove("tls.key");
    }
    let err = render(&pool, &o).expect_err("no key");
    assert_eq!(
        err.to_string(),
        r#"Secret "orders-db-client" has no key "tls.key""#
    );
    let mut o = tls_observed("pem");
    o.config_maps.clear();
    let err = render(&pool, &o).expect_err("no CA");
    assert_eq!(err.to_string(), r#"ConfigMap "db-ca" not found"#);
}

/// The first user logging in with ServiceAccount tokens (`app` of [`POOL`]), with `tls`.
fn token_pool(tls: &str) -> ConnectionPool {
    let text = format!("{POOL}  tls:\n    {tls}\n").replace(
        "      weight: 3\n",
        "      weight: 3\n      serviceAccounts: [{name: api}, {name: job, namespace: batch}]\n",
    );
    from_yaml(&text).expect("valid pool")
}

#[test]
fn token_users_get_a_binding_an_api_token_and_no_password_to_hand_out() {
    let r = render(
        &token_pool("client: {secretName: orders-tls}"),
        &tls_observed("pem"),
    )
    .expect("renders");
    assert_eq!(
        r.config.users["app"].service_accounts,
        ["shop/api", "batch/job"]
    );
    assert!(r.config.users["reports"].service_accounts.is_empty());
    let binding = r.token_review_binding.as_ref().expect("a binding");
    assert_eq!(
        binding.metadata.name.as_deref(),
        Some("weir-token-review.shop.orders")
    );
    assert_eq!(binding.role_ref.name, rbac::TOKEN_REVIEW_CLUSTER_ROLE);
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "orders");
    assert_eq!(subjects[0].namespace.as_deref(), Some("shop"));
    // Cluster-scoped: no owner reference to the namespaced pool (the finalizer cleans up).
    assert!(binding.metadata.owner_references.is_none());
    assert_eq!(
        pod_template(&r)["spec"]["automountServiceAccountToken"],
        true
    );
    assert!(r.objects().len() > r.children().len());

    let s = &r.app_secret;
    assert_eq!(secret_text(s, "user"), "app");
    assert_eq!(secret_text(s, "password"), "");
    assert_eq!(
        secret_text(s, "uri"),
        "postgresql://app@orders.shop.svc:5432/orders?sslmode=require"
    );
    assert_eq!(
        secret_text(s, "jdbc-uri"),
        "jdbc:postgresql://orders.shop.svc:5432/orders?user=app&sslmode=require"
    );
    // The pooler still logs in to the database with the user's own password.
    let auth = secret_text(&r.auth_secret, "userlist.txt");
    assert!(auth.contains("\"app\" \"p@ss w:rd\""), "{auth}");

    // Without token users: no binding, no API token.
    let plain = rendered();
    assert!(plain.token_review_binding.is_none());
    assert_eq!(
        pod_template(&plain)["spec"]["automountServiceAccountToken"],
        false
    );
}

#[test]
fn token_users_without_client_tls_are_refused() {
    let e = render(
        &token_pool("client: {secretName: orders-tls, mode: disable}"),
        &tls_observed("pem"),
    )
    .expect_err("tokens in clear");
    assert!(
        e.to_string().contains("service_accounts needs client TLS"),
        "{e}"
    );
}

#[test]
fn pods_find_their_peer_ids_in_the_config_map() {
    let mut facts = observed();
    facts.pod_ips = ["10.0.0.7", "10.0.0.8"].map(str::to_owned).into();
    facts.peers_in_force = [(2, "10.0.0.8".to_owned()), (1, "10.0.0.1".to_owned())].into();
    let r = render(&pool(), &facts).expect("renders");
    let peers: Vec<(u16, &str, u16)> = r
        .config
        .peers
        .iter()
        .map(|(id, p)| (*id, p.host.as_str(), p.port))
        .collect();
    assert_eq!(peers, [(2, "10.0.0.8", 6432), (3, "10.0.0.7", 6432)]);
    assert_eq!(r.config.pgbouncer.peer_id, 0, "each pod finds its own id");

    let container = &r
        .deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    let args = container.args.as_ref().expect("args");
    assert_eq!(args[..2], ["--peer-address", "$(POD_IP)"]);
    let env = &container.env.as_ref().expect("env")[0];
    assert_eq!(env.name, "POD_IP");
    let field = env
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "status.podIP");

    // The pool's Service lists the pods; there is no Service of their own for peering.
    let services = r
        .children()
        .into_iter()
        .filter(|c| matches!(c, Child::Service(_)))
        .count();
    assert_eq!(services, 1);
}

const NETWORK_POLICY: &str = "  networkPolicy:
    clients:
      - namespaceSelector: {matchLabels: {team: shop}}
        podSelector: {matchLabels: {app: checkout}}
    metrics:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
        podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}
";

fn with(extra: &str) -> ConnectionPool {
    from_yaml(&format!("{POOL}{extra}")).expect("valid pool")
}

fn as_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("serializes")
}

#[test]
fn no_network_policy_or_pod_monitor_unless_asked() {
    let r = rendered();
    assert!(r.network_policy.is_none());
    assert!(r.pod_monitor.is_none());
    assert!(!r
        .children()
        .iter()
        .any(|c| matches!(c, Child::NetworkPolicy(_))));
    let off = with("  monitoring:\n    podMonitor: {enabled: false}\n");
    assert!(render(&off, &observed())
        .expect("renders")
        .pod_monitor
        .is_none());
}

#[test]
fn the_network_policy_admits_clients_peers_and_scrapers_only() {
    let mut facts = observed();
    facts.operator_namespace = Some("weir-system".to_owned());
    let r = render(&with(NETWORK_POLICY), &facts).expect("renders");
    let policy = r.network_policy.as_ref().expect("a NetworkPolicy");
    assert_eq!(policy.metadata.name.as_deref(), Some("orders"));
    let spec = as_json(policy.spec.as_ref().expect("spec"));
    assert_eq!(
        spec["podSelector"],
        serde_json::json!({"matchLabels": {"app.kubernetes.io/name": "weir", "weir.dev/pool": "orders"}})
    );
    assert_eq!(
        spec["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    // The Service's ports, by target port: the clients and the pool's own pods (cancels).
    let clients = &spec["ingress"][0];
    assert_eq!(
        clients["ports"],
        serde_json::json!([{"port": "pooler", "protocol": "TCP"}])
    );
    assert_eq!(
        clients["from"][0]["podSelector"]["matchLabels"]["app"],
        "checkout"
    );
    assert_eq!(
        clients["from"][0]["namespaceSelector"]["matchLabels"]["team"],
        "shop"
    );
    assert_eq!(
        clients["from"][1],
        serde_json::json!({"podSelector": spec["podSelector"]})
    );
    assert_eq!(clients["from"].as_array().map(Vec::len), Some(2));
    // The HTTP port: the operator, by the chart's labels in its namespace, and Prometheus.
    let scrapers = &spec["ingress"][1];
    assert_eq!(
        scrapers["ports"],
        serde_json::json!([{"port": "http", "protocol": "TCP"}])
    );
    assert_eq!(
        scrapers["from"][0],
        serde_json::json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "weir-system"}},
            "podSelector": {"matchLabels": {
                "app.kubernetes.io/component": "operator",
                "app.kubernetes.io/name": "weir"
            }}
        })
    );
    assert_eq!(
        scrapers["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
    assert_eq!(spec["ingress"].as_array().map(Vec::len), Some(2));

    // Egress: DNS, the database (a host name: its port to any address), the peers.
    let egress = spec["egress"].as_array().expect("egress rules");
    assert_eq!(
        egress.len(),
        3,
        "no API server without token users: {egress:?}"
    );
    assert_eq!(
        egress[0],
        serde_json::json!({
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
            }],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
        })
    );
    assert_eq!(
        egress[1],
        serde_json::json!({"ports": [{"port": 5432, "protocol": "TCP"}]})
    );
    assert_eq!(
        egress[2],
        serde_json::json!({
            "to": [{"podSelector": spec["podSelector"]}],
            "ports": [{"port": r.config.pgbouncer.listen_port, "protocol": "TCP"}]
        })
    );
    // Owned, so that it is collected with the pool, and applied before the pods.
    assert_eq!(
        policy
            .metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].kind.as_str()),
        Some("ConnectionPool")
    );
    let kinds: Vec<&str> = r
        .children()
        .iter()
        .filter_map(|c| match c {
            Child::NetworkPolicy(_) => Some("NetworkPolicy"),
            Child::Deployment(_) => Some("Deployment"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["NetworkPolicy", "Deployment"]);
}

#[test]
fn database_egress_is_narrowed_to_an_address_when_one_is_known() {
    let egress = |pool: &ConnectionPool| {
        let r = render(pool, &observed()).expect("renders");
        as_json(&r.network_policy.expect("policy").spec.expect("spec"))["egress"][1].clone()
    };
    let ip_pool = from_yaml(&format!("{POOL}{NETWORK_POLICY}").replace("orders-db-rw", "10.1.2.3"))
        .expect("valid pool");
    assert_eq!(
        egress(&ip_pool)["to"],
        serde_json::json!([{"ipBlock": {"cidr": "10.1.2.3/32"}}])
    );
    let v6 = from_yaml(&format!("{POOL}{NETWORK_POLICY}").replace("orders-db-rw", "\"fd00::5\""))
        .expect("valid pool");
    assert_eq!(
        egress(&v6)["to"],
        serde_json::json!([{"ipBlock": {"cidr": "fd00::5/128"}}])
    );
    let cidr = with(&format!("{NETWORK_POLICY}    databaseCIDR: 10.20.0.0/16\n"));
    assert_eq!(
        egress(&cidr)["to"],
        serde_json::json!([{"ipBlock": {"cidr": "10.20.0.0/16"}}])
    );
}

#[test]
fn token_reviews_open_egress_to_the_api_server() {
    let pool = from_yaml(&format!(
        "{}{NETWORK_POLICY}    operator:\n      podSelector: {{matchLabels: {{role: op}}}}\n",
        serde_yaml_text(&token_pool("client: {secretName: orders-tls}"))
    ))
    .expect("valid pool");
    let mut facts = tls_observed("pem");
    let rules = |facts: &Observed| {
        let r = render(&pool, facts).expect("renders");
        as_json(&r.network_policy.expect("policy").spec.expect("spec"))
    };
    // Endpoints unknown: the usual ports, any address.
    let spec = rules(&facts);
    assert_eq!(
        spec["egress"][3],
        serde_json::json!({"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]})
    );
    facts.api_server = BTreeMap::from([
        ("10.0.0.1".to_owned(), vec![6443]),
        ("10.0.0.2".to_owned(), vec![6443]),
    ]);
    let spec = rules(&facts);
    assert_eq!(
        spec["egress"][3],
        serde_json::json!({
            "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "10.0.0.2/32"}}],
            "ports": [{"port": 6443, "protocol": "TCP"}]
        })
    );
    // The operator as the spec names it.
    assert_eq!(
        spec["ingress"][1]["from"][0],
        serde_json::json!({"podSelector": {"matchLabels": {"role": "op"}}})
    );
}

/// A pool's spec back as manifest text, to add fields to.
fn serde_yaml_text(pool: &ConnectionPool) -> String {
    crate::yaml::to_string(pool).expect("serializes")
}

#[test]
fn the_pod_monitor_scrapes_the_http_port() {
    let pool = with(
        "  monitoring:\n    podMonitor:\n      labels: {release: prometheus}\n      interval: 15s\n",
    );
    let r = render(&pool, &observed()).expect("renders");
    let monitor = r.pod_monitor.as_ref().expect("a PodMonitor");
    let json = as_json(monitor);
    assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(json["kind"], "PodMonitor");
    assert_eq!(json["metadata"]["name"], "orders");
    assert_eq!(json["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(json["metadata"]["labels"]["weir.dev/pool"], "orders");
    assert_eq!(
        json["metadata"]["ownerReferences"][0]["kind"],
        "ConnectionPool"
    );
    assert_eq!(
        json["spec"],
        serde_json::json!({
            "selector": {"matchLabels": {"app.kubernetes.io/name": "weir", "weir.dev/pool": "orders"}},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}]
        })
    );
    // The port it names is the pods' HTTP port.
    let ports = &pod_template(&r)["spec"]["containers"][0]["ports"];
    assert_eq!(ports[1]["name"], "http");
    // Not a child: the controller applies it only while its CRD is installed.
    assert!(r.objects().len() > r.children().len());
    assert!(r
        .to_yaml_stream()
        .expect("yaml")
        .contains("kind: PodMonitor"));
}

#[test]
fn bad_monitoring_and_network_policy_settings_are_refused() {
    let refused = |extra: &str| -> String {
        match from_yaml(&format!("{POOL}{extra}")) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        }
    };
    let e = refused("  networkPolicy:\n    clients: []\n");
    assert!(e.contains("spec.networkPolicy.clients"), "{e}");
    let e = refused(&format!("{NETWORK_POLICY}    databaseCIDR: 10.0.0.0\n"));
    assert!(e.contains(crate::api::rules::BAD_CIDR), "{e}");
    let e = refused("  monitoring:\n    podMonitor: {labels: {weir.dev/x: z}}\n");
    assert!(e.contains("spec.monitoring.podMonitor.labels"), "{e}");
    let e = refused("  monitoring:\n    podMonitor: {interval: \"15\"}\n");
    assert!(e.contains("spec.monitoring.podMonitor.interval"), "{e}");
}

#[test]
fn cidrs_are_checked_like_cel_is_cidr() {
    use crate::api::rules::is_cidr;
    for good in [
        "10.0.0.0/8",
        "10.1.2.3/32",
        "0.0.0.0/0",
        "fd00::/64",
        "::1/128",
    ] {
        assert!(is_cidr(good), "{good}");
    }
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "fd00::/129",
        "db/24",
        "10.0.0.0/+8",
        "10.0.0.0/",
    ] {
        assert!(!is_cidr(bad), "{bad}");
    }
}
