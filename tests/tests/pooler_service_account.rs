//! ServiceAccount-token logins against the real test API server (tests/controlplane) and a
//! real PostgreSQL: tokens minted with `kubectl create token` log in over TLS as the user the
//! configuration maps them to, and every kind of bad token is refused with a clear error.
//!
//! Weir asks the API server with the credentials of a ServiceAccount that has exactly the
//! RBAC the chart gives pooler pods (TokenReview create), so this also proves that is enough.
//! One test runs the scenarios in order on one control plane (it takes 10-20 s to start).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::ensure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::fixture::{self, Options, DATABASE, PASSWORD, USER};
use weir_tests::k8s::{eventually, ControlPlane};
use weir_tests::net;
use weir_tests::postgres::{psql_conninfo, CommandOutput, PasswordMethod, PgCluster};
use weir_tests::tls::TestCa;
use weir_tests::weir::WeirProcess;

const NS: &str = "shop";
/// The ServiceAccount the pooler validates tokens as.
const POOLER_SA: &str = "pooler";
/// The cache TTL the test runs with: short, so that a deleted ServiceAccount is noticed soon.
const CACHE_TTL_SECONDS: u64 = 2;
/// Rounds of each login the latency report takes the median of.
const ROUNDS: usize = 11;
/// A user with a password, whose SCRAM logins the token logins are compared with.
const SCRAM_USER: &str = "scram";

/// The RBAC a pooler pod needs to validate tokens, as the chart ships it.
const TOKEN_REVIEW_RBAC: &str = "
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: weir-token-review
rules:
  - apiGroups: [\"authentication.k8s.io\"]
    resources: [\"tokenreviews\"]
    verbs: [\"create\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: weir-token-review-shop-pooler
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: weir-token-review
subjects:
  - kind: ServiceAccount
    name: pooler
    namespace: shop
";

async fn token(plane: &ControlPlane, sa: &str, audience: &str) -> anyhow::Result<String> {
    let out = plane
        .kubectl_ok(&["create", "token", sa, "-n", NS, "--audience", audience])
        .await?;
    Ok(out.trim().to_owned())
}

/// A kubeconfig that authenticates as `token` against the control plane's API server.
async fn kubeconfig_for(plane: &ControlPlane, token: &str, dir: &std::path::Path) -> PathBuf {
    let server = plane
        .kubectl_ok(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])
        .await
        .expect("server address");
    let ca = plane
        .kubectl_ok(&[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ])
        .await
        .expect("server CA");
    let path = dir.join("pooler.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: pooler\n  user:\n    token: {token}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: pooler\n\
         current-context: test\n"
    );
    std::fs::write(&path, text).expect("writing the pooler kubeconfig");
    path
}

/// psql through weir as `user` with `password`, TLS as `sslmode` says; the wall time too.
async fn login(
    weir: &WeirProcess,
    user: &str,
    password: &str,
    sslmode: &str,
    sql: &str,
) -> (CommandOutput, Duration) {
    let started = Instant::now();
    let out = psql_conninfo(
        "127.0.0.1",
        weir.port(),
        user,
        password,
        &format!("dbname={DATABASE} sslmode={sslmode}"),
        sql,
    )
    .await
    .expect("running psql");
    (out, started.elapsed())
}

fn refused(out: &CommandOutput, sqlstate: &str, text: &str) {
    assert!(!out.success(), "expected a refusal: {}", out.stdout);
    assert!(
        out.stderr.contains(text),
        "expected {text:?} ({sqlstate}): {}",
        out.stderr
    );
}

/// `log` without the terminal colours of its key=value pairs.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(start) = rest.find('\x1b') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    out.push_str(rest);
    out
}

fn min(times: &[Duration]) -> Duration {
    times.iter().min().copied().unwrap_or_default()
}

fn median(times: &[Duration]) -> Duration {
    let mut times = times.to_vec();
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_log_in_as_the_mapped_user_over_tls_only() {
    let plane = ControlPlane::start()
        .await
        .expect("starting the control plane");
    let pg = PgCluster::start().await.expect("starting PostgreSQL");
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the role");
    pg.create_database(DATABASE, USER)
        .await
        .expect("creating the database");

    pg.create_role(SCRAM_USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the password user's role");
    plane
        .kubectl_ok(&["create", "namespace", NS])
        .await
        .expect("namespace");
    for sa in [POOLER_SA, "api", "intruder", "doomed"] {
        plane
            .kubectl_ok(&["create", "serviceaccount", sa, "-n", NS])
            .await
            .expect("ServiceAccount");
    }
    let applied = plane
        .kubectl_with_input(&["apply", "-f", "-"], Some(TOKEN_REVIEW_RBAC))
        .await
        .expect("kubectl apply");
    assert!(applied.success(), "{}", applied.stderr);
    let can = plane
        .kubectl(&[
            "auth",
            "can-i",
            "create",
            "tokenreviews.authentication.k8s.io",
            &format!("--as=system:serviceaccount:{NS}:{POOLER_SA}"),
        ])
        .await
        .expect("kubectl auth can-i");
    assert_eq!(can.stdout.trim(), "yes", "{}", can.stderr);

    let certs = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("weir token test CA").expect("CA");
    let leaf = ca.leaf("weir", &["127.0.0.1", "localhost"]).expect("leaf");
    let cert = certs.path().join("weir.crt");
    let key = certs.path().join("weir.key");
    std::fs::write(&cert, &leaf.cert_pem).expect("cert");
    std::fs::write(&key, &leaf.key_pem).expect("key");
    let pooler_token = token(
        &plane,
        POOLER_SA,
        "https://kubernetes.default.svc.cluster.local",
    )
    .await
    .expect("pooler token");
    // The child inherits the environment: weir finds the API server as `kube` infers it.
    let kubeconfig = kubeconfig_for(&plane, &pooler_token, certs.path()).await;
    std::env::set_var("KUBECONFIG", &kubeconfig);

    let http_port = net::free_port();
    let mut opts = Options::default();
    opts.settings.extend([
        "client_tls_sslmode = allow".to_owned(),
        format!("client_tls_cert_file = {}", cert.display()),
        format!("client_tls_key_file = {}", key.display()),
        format!("service_account_cache_ttl = {CACHE_TTL_SECONDS}"),
        format!("http_port = {http_port}"),
    ]);
    let ini = fixture::ini(&pg, &opts).replace(
        "[pgbouncer]",
        &format!("[users]\n{USER} = service_accounts={NS}/api,{NS}/doomed\n\n[pgbouncer]"),
    );
    let userlist = format!("\"{USER}\" \"{PASSWORD}\"\n\"{SCRAM_USER}\" \"{PASSWORD}\"\n");
    let weir = WeirProcess::start(&ini, &userlist)
        .await
        .expect("starting weir");

    // A token of a listed ServiceAccount logs in, as the mapped user.
    let api = token(&plane, "api", "weir").await.expect("token");
    let role_sql = "SELECT usename FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    let (out, _) = login(&weir, USER, &api, "require", role_sql).await;
    assert!(out.success(), "{}\n{}", out.stderr, weir.log());
    assert_eq!(out.stdout.trim(), USER);
    let log = plain(&weir.log());
    assert!(
        log.contains("ServiceAccount token login")
            && log.contains("system:serviceaccount:shop:api")
            && log.contains("cached=false"),
        "{log}"
    );
    assert!(!log.contains(&api), "the token must never be logged");
    let (out, _) = login(&weir, USER, &api, "require", "SELECT 1").await;
    assert!(out.success(), "{}", out.stderr);
    let log = plain(&weir.log());
    assert!(log.contains("cached=true"), "{log}");

    // A token sent in clear is never asked for.
    let (out, _) = login(&weir, USER, &api, "disable", "SELECT 1").await;
    refused(&out, "28000", "only accepted over TLS");

    // Wrong audience, an account not listed, garbage.
    let other = token(&plane, "api", "someone-else").await.expect("token");
    let (out, _) = login(&weir, USER, &other, "require", "SELECT 1").await;
    refused(&out, "28P01", "ServiceAccount token authentication failed");
    let intruder = token(&plane, "intruder", "weir").await.expect("token");
    let (out, _) = login(&weir, USER, &intruder, "require", "SELECT 1").await;
    refused(
        &out,
        "28P01",
        "system:serviceaccount:shop:intruder may not log in as user",
    );
    let (out, _) = login(&weir, USER, "not-a-token", "require", "SELECT 1").await;
    refused(&out, "28P01", "did not accept the token");

    // A deleted ServiceAccount: its token works until the cache TTL, then no more.
    let doomed = token(&plane, "doomed", "weir").await.expect("token");
    let (out, _) = login(&weir, USER, &doomed, "require", "SELECT 1").await;
    assert!(out.success(), "{}", out.stderr);
    plane
        .kubectl_ok(&["delete", "serviceaccount", "doomed", "-n", NS])
        .await
        .expect("deleting the ServiceAccount");
    let gone = eventually(
        "the deleted ServiceAccount's token to be refused",
        Duration::from_secs(30),
        || async {
            let (out, _) = login(&weir, USER, &doomed, "require", "SELECT 1").await;
            ensure!(!out.success(), "still accepted");
            Ok(out)
        },
    )
    .await
    .expect("refused after the TTL");
    refused(&gone, "28P01", "did not accept the token");
    eprintln!("deleted ServiceAccount: {}", gone.stderr.trim());

    // Latency, interleaved so that load on the machine hits every kind alike: the first
    // login of a fresh token, the same token again (cached), and a SCRAM password login.
    let (mut fresh, mut cached, mut scram) = (vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let t = token(&plane, "api", "weir").await.expect("token");
        for (times, user, password) in [
            (&mut fresh, USER, t.as_str()),
            (&mut cached, USER, t.as_str()),
            (&mut scram, SCRAM_USER, PASSWORD),
        ] {
            let (out, took) = login(&weir, user, password, "require", "SELECT 1").await;
            assert!(out.success(), "{}", out.stderr);
            times.push(took);
        }
    }
    eprintln!(
        "login latency over TLS, psql wall time, median (min) of {ROUNDS}: first token login \
         {:?} ({:?}), cached token login {:?} ({:?}), SCRAM login {:?} ({:?})",
        median(&fresh),
        min(&fresh),
        median(&cached),
        min(&cached),
        median(&scram),
        min(&scram),
    );

    let metrics = http_get(http_port, "/metrics").await;
    for line in [
        "weir_token_logins_total{result=\"accepted\"}",
        "weir_token_logins_total{result=\"refused\"}",
        "weir_token_verdicts_total{source=\"api\"}",
        "weir_token_verdicts_total{source=\"cache\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

async fn http_get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect((net::HOST, port))
        .await
        .expect("HTTP connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .expect("HTTP request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("HTTP response");
    response
}
