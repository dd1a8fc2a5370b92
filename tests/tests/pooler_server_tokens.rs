//! Server logins with short-lived cloud tokens (`server_auth`), against a real PostgreSQL.
//!
//! The clouds cannot run here, so local servers started by each test stand in for them: an
//! HTTP server plays the GCP metadata server, the Microsoft Entra token endpoint and AWS STS,
//! exactly as the cloud SDKs allow their endpoints to be overridden (`GCE_METADATA_HOST`,
//! `AZURE_AUTHORITY_HOST`, `AWS_ENDPOINT_URL_STS`). For GCP and Azure each token it hands out
//! becomes the role's password (`ALTER ROLE … PASSWORD`) just before it is handed out; for
//! RDS, PostgreSQL checks the password with LDAP, and a small LDAP server stands in for RDS's
//! own IAM check: it recomputes the token's SigV4 signature from the credentials the STS
//! stand-in issued and checks host, port, user, region, session token and expiry. What this
//! does not show is that the real clouds accept these tokens.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::Client;

use weir_pooler::auth::sigv4::{self, AwsCredentials};
use weir_tests::fixture::{self, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};
use weir_tests::weir::WeirProcess;

/// How long a state may take to show up on the shared test machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// Lifetime of the tokens the stand-ins hand out: short, so that renewals happen in a test.
const TOKEN_SECONDS: u64 = 2;

/// One request an HTTP stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

type Answer = Pin<Box<dyn Future<Output = (u16, String)> + Send>>;
type Handler = Arc<dyn Fn(usize, Seen) -> Answer + Send + Sync>;

/// A one-request-per-connection HTTP/1.1 server standing in for a cloud token endpoint.
struct StandIn {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    async fn start(handler: Handler) -> StandIn {
        let port = net::free_port();
        let listener = TcpListener::bind((net::HOST, port))
            .await
            .expect("stand-in port");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (handler, record) = (handler.clone(), record.clone());
                tokio::spawn(async move { serve_http(socket, handler, record).await });
            }
        });
        StandIn { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }
}

async fn serve_http(mut socket: TcpStream, handler: Handler, record: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    let seen = Seen {
        method,
        path,
        headers,
        body,
    };
    let number = {
        let mut record = record.lock().expect("seen");
        record.push(seen.clone());
        record.len()
    };
    let (status, text) = handler(number, seen).await;
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// `application/x-www-form-urlencoded` (or a query string) decoded into pairs.
fn form(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A token nobody could guess, numbered for the logs.
fn fresh_token(kind: &str, n: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{kind}-token-{n}-{nanos:09}")
}

/// Makes `token` the application role's password, as the cloud's IAM would accept it.
async fn accept_in_postgres(su: &Client, token: &str) {
    su.batch_execute(&format!(
        "SET password_encryption = 'scram-sha-256'; ALTER ROLE {USER} PASSWORD '{token}'"
    ))
    .await
    .expect("ALTER ROLE");
}

/// Starts PostgreSQL with the application role and database, and a superuser session.
async fn postgres(opts: PgOptions) -> (PgCluster, Arc<Client>) {
    let pg = PgCluster::start_with(opts).await.expect("postgres");
    pg.create_role(USER, "not-the-token", PasswordMethod::Scram)
        .await
        .expect("role");
    pg.create_database(DATABASE, USER).await.expect("database");
    let su = pg.superuser().await.expect("superuser");
    (pg, Arc::new(su))
}

/// Starts weir for `pg` with `database_options` and `settings`, with `env` added.
async fn weir(
    pg: &PgCluster,
    database_options: &str,
    settings: &[&str],
    env: &[(&str, String)],
) -> WeirProcess {
    let mut opts = Options::mode("transaction", 2);
    opts.database_options = database_options.to_owned();
    for s in settings {
        opts = opts.with(s);
    }
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    WeirProcess::start_with_env(
        &fixture::ini(pg, &opts),
        &format!("\"{USER}\" \"{PASSWORD}\"\n"),
        &env,
    )
    .await
    .expect("weir")
}

/// Logs in through the pooler (the client's own password) and asks who the server session
/// is; on failure the SQLSTATE and message.
async fn who(weir: &WeirProcess) -> Result<String, (String, String)> {
    let described = |e: &tokio_postgres::Error| match e.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => ("no SQLSTATE".to_owned(), e.to_string()),
    };
    let client = net::connect(weir.port(), USER, PASSWORD, DATABASE)
        .await
        .map_err(|e| {
            e.chain()
                .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
                .map(described)
                .unwrap_or_else(|| ("no SQLSTATE".into(), format!("{e:#}")))
        })?;
    let rows = client
        .query("SELECT current_user::text", &[])
        .await
        .map_err(|e| described(&e))?;
    Ok(rows.first().map(|r| r.get(0)).unwrap_or_default())
}

/// Ends the pool's server sessions so that the next query needs a new server login.
async fn drop_server_sessions(pg: &PgCluster) {
    pg.execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = '{USER}' AND datname = '{DATABASE}'"
    ))
    .await
    .expect("terminating backends");
    let gone = Fixture::eventually(PATIENCE, || async {
        pg.backends(USER, DATABASE).await.ok() == Some(0)
    })
    .await;
    assert!(gone, "the pool's server sessions did not end");
}

/// New server logins, each after the previous server session ended, until `done` holds;
/// every one must succeed. Returns how many there were.
async fn logins_until(pg: &PgCluster, weir: &WeirProcess, done: impl Fn() -> bool) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut logins = 0;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no token renewal within {PATIENCE:?}:\n{}",
            weir.log()
        );
        drop_server_sessions(pg).await;
        assert_eq!(
            who(weir).await,
            Ok(USER.to_owned()),
            "login {logins}:\n{}",
            weir.log()
        );
        logins += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    logins
}

/// What the GCP and Azure stand-ins do with the next token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A new token, which PostgreSQL accepts.
    Accepted,
    /// A new token PostgreSQL does not know (revoked IAM grant).
    Unknown,
    /// An error status (the endpoint refuses the identity).
    Failing,
}

/// A token endpoint answering OAuth token responses according to `mode`.
async fn oauth_stand_in(
    kind: &'static str,
    su: Arc<Client>,
    mode: Arc<Mutex<Mode>>,
    issued: Arc<Mutex<Vec<String>>>,
) -> StandIn {
    StandIn::start(Arc::new(move |n, _seen| {
        let (su, mode, issued) = (su.clone(), mode.clone(), issued.clone());
        Box::pin(async move {
            let mode = *mode.lock().expect("mode");
            if mode == Mode::Failing {
                return (400, r#"{"error":"invalid_grant"}"#.to_owned());
            }
            let token = fresh_token(kind, n);
            if mode == Mode::Accepted {
                accept_in_postgres(&su, &token).await;
            }
            issued.lock().expect("issued").push(token.clone());
            let body = format!(
                r#"{{"access_token":"{token}","expires_in":{TOKEN_SECONDS},"token_type":"Bearer"}}"#
            );
            (200, body)
        })
    }))
    .await
}

/// The SQLSTATE and message of a login expected to fail, waiting until it does.
async fn first_failure(weir: &WeirProcess, pg: &PgCluster, wanted: &str) -> (String, String) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        drop_server_sessions(pg).await;
        if let Err((code, message)) = who(weir).await {
            if message.contains(wanted) {
                return (code, message);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no login failed with {wanted:?}:\n{}",
            weir.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn gcp_iam_tokens_are_renewed_used_for_each_new_login_and_refusals_are_clear() {
    let (pg, su) = postgres(PgOptions::default()).await;
    let mode = Arc::new(Mutex::new(Mode::Accepted));
    let issued = Arc::new(Mutex::new(Vec::new()));
    let metadata = oauth_stand_in("gcp", su.clone(), mode.clone(), issued.clone()).await;
    let weir = weir(
        &pg,
        "server_auth=gcp-iam",
        &[],
        &[(
            "GCE_METADATA_HOST",
            format!("{}:{}", net::HOST, metadata.port),
        )],
    )
    .await;
    let pid = weir.pid();

    assert_eq!(who(&weir).await, Ok(USER.to_owned()), "{}", weir.log());
    let first = &metadata.seen()[0];
    assert_eq!(first.method, "GET");
    assert_eq!(
        first.path,
        "/computeMetadata/v1/instance/service-accounts/default/token"
    );
    assert_eq!(
        first.headers.get("metadata-flavor").map(String::as_str),
        Some("Google")
    );

    // Each renewal replaces the role's password: a login that succeeds after one used the
    // new token, in the same process.
    let logins = logins_until(&pg, &weir, || metadata.count() >= 3).await;
    assert!(logins >= 2, "{logins} logins");
    assert_eq!(weir.pid(), pid);

    // A token the server does not take: the client hears that the server refused it.
    *mode.lock().expect("mode") = Mode::Unknown;
    let (code, message) = first_failure(&weir, &pg, "server_auth=gcp-iam token failed").await;
    assert_eq!(code, "28P01", "{message}");

    // No token to be had once the last one expired: the client hears why.
    *mode.lock().expect("mode") = Mode::Failing;
    let (code, message) = first_failure(&weir, &pg, "cannot get a server_auth=gcp-iam token").await;
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("400"), "{message}");

    // Recovery without a restart (once server_login_retry lets logins through again), and
    // no token ever reached the log.
    *mode.lock().expect("mode") = Mode::Accepted;
    let recovered = Fixture::eventually(PATIENCE, || async {
        drop_server_sessions(&pg).await;
        who(&weir).await == Ok(USER.to_owned())
    })
    .await;
    assert!(recovered, "{}", weir.log());
    let log = weir.log();
    for token in issued.lock().expect("issued").iter() {
        assert!(
            !log.contains(token.as_str()),
            "a token is in the log:\n{log}"
        );
    }
    assert_eq!(weir.pid(), pid);
}

#[tokio::test]
async fn azure_ad_exchanges_the_projected_federated_token_at_each_renewal() {
    let (pg, su) = postgres(PgOptions::default()).await;
    let mode = Arc::new(Mutex::new(Mode::Accepted));
    let issued = Arc::new(Mutex::new(Vec::new()));
    let entra = oauth_stand_in("entra", su, mode, issued.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let federated = dir.path().join("azure-identity-token");
    std::fs::write(&federated, "federated-jwt-1\n").expect("token file");
    let weir = weir(
        &pg,
        "server_auth=azure-ad",
        &[],
        &[
            ("AZURE_CLIENT_ID", "0000-client".to_owned()),
            ("AZURE_TENANT_ID", "tenant-1".to_owned()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                federated.display().to_string(),
            ),
            (
                "AZURE_AUTHORITY_HOST",
                format!("http://{}:{}/", net::HOST, entra.port),
            ),
        ],
    )
    .await;

    assert_eq!(who(&weir).await, Ok(USER.to_owned()), "{}", weir.log());
    let first = &entra.seen()[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/tenant-1/oauth2/v2.0/token");
    let sent = form(&first.body);
    assert_eq!(sent["client_id"], "0000-client");
    assert_eq!(
        sent["scope"],
        "https://ossrdbms-aad.database.windows.net/.default"
    );
    assert_eq!(sent["grant_type"], "client_credentials");
    assert_eq!(
        sent["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(sent["client_assertion"], "federated-jwt-1");

    // The kubelet rotates the projected token; the next exchange sends the new one.
    std::fs::write(&federated, "federated-jwt-2\n").expect("token file");
    logins_until(&pg, &weir, || entra.count() >= 2).await;
    let last = entra.seen().pop().expect("a request");
    assert_eq!(form(&last.body)["client_assertion"], "federated-jwt-2");
    let log = weir.log();
    for token in issued.lock().expect("issued").iter() {
        assert!(
            !log.contains(token.as_str()),
            "a token is in the log:\n{log}"
        );
    }
}

/// Temporary AWS credentials the STS stand-in issued, by access key id.
type Issued = Arc<Mutex<HashMap<String, AwsCredentials>>>;

/// An LDAP server standing in for RDS's IAM check: a simple bind as `uid=<user>,dc=rds`
/// with an RDS token as the password succeeds only if the token is one RDS would accept for
/// `user` at `127.0.0.1:pg_port` in `region`, signed with credentials `issued` holds.
/// Records the access key of each accepted token.
async fn rds_check_stand_in(
    pg_port: Arc<AtomicU16>,
    region: &'static str,
    issued: Issued,
    used: Arc<Mutex<Vec<String>>>,
    refused: Arc<AtomicUsize>,
) -> u16 {
    let port = net::free_port();
    let listener = TcpListener::bind((net::HOST, port))
        .await
        .expect("ldap port");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (issued, used, refused) = (issued.clone(), used.clone(), refused.clone());
            let pg_port = pg_port.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let Some((id, dn, password)) = read_bind(&mut socket).await else {
                    return;
                };
                let user = dn
                    .strip_prefix("uid=")
                    .and_then(|d| d.strip_suffix(",dc=rds"))
                    .unwrap_or_default();
                let verdict = check_rds_token(&password, user, pg_port, region, &issued);
                match &verdict {
                    Ok(key) => used.lock().expect("used").push(key.clone()),
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // BindResponse: success (0) or invalidCredentials (49).
                let code = if verdict.is_ok() { 0 } else { 49 };
                let mut op = vec![0x0a, 0x01, code, 0x04, 0x00, 0x04, 0x00];
                op.splice(0..0, [0x61, op.len() as u8]);
                let mut msg = vec![0x02, id.len() as u8];
                msg.extend_from_slice(&id);
                msg.extend_from_slice(&op);
                msg.splice(0..0, [0x30, msg.len() as u8]);
                let _ = socket.write_all(&msg).await;
                // Wait for the unbind and the close.
                let mut rest = [0u8; 256];
                let _ = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut rest)).await;
            });
        }
    });
    port
}

/// Reads one BER element: its tag and contents.
async fn read_element(socket: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let tag = socket.read_u8().await.ok()?;
    let first = socket.read_u8().await.ok()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let mut len = 0usize;
        for _ in 0..(first & 0x7f) {
            len = (len << 8) | usize::from(socket.read_u8().await.ok()?);
        }
        len
    };
    let mut content = vec![0u8; len];
    socket.read_exact(&mut content).await.ok()?;
    Some((tag, content))
}

/// Splits BER contents into (tag, contents) elements.
fn elements(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let (tag, first) = (data[0], data[1]);
        let (len, head) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            let len = data[2..2 + n]
                .iter()
                .fold(0usize, |l, b| (l << 8) | usize::from(*b));
            (len, 2 + n)
        };
        if data.len() < head + len {
            break;
        }
        out.push((tag, &data[head..head + len]));
        data = &data[head + len..];
    }
    out
}

/// The message id, bind DN and simple password of an LDAP BindRequest.
async fn read_bind(socket: &mut TcpStream) -> Option<(Vec<u8>, String, String)> {
    let (0x30, message) = read_element(socket).await? else {
        return None;
    };
    let parts = elements(&message);
    let (0x02, id) = *parts.first()? else {
        return None;
    };
    let (0x60, bind) = *parts.get(1)? else {
        return None;
    };
    let fields = elements(bind);
    let (0x04, dn) = *fields.get(1)? else {
        return None;
    };
    let (0x80, password) = *fields.get(2)? else {
        return None;
    };
    Some((
        id.to_vec(),
        String::from_utf8_lossy(dn).into_owned(),
        String::from_utf8_lossy(password).into_owned(),
    ))
}

/// RDS's check of an IAM token, as far as it can be made here; the access key on success.
fn check_rds_token(
    token: &str,
    user: &str,
    pg_port: u16,
    region: &str,
    issued: &Issued,
) -> Result<String, String> {
    let (host, query) = token.split_once("/?").ok_or("no query")?;
    if host != format!("{}:{pg_port}", net::HOST) {
        return Err(format!("signed for host {host}"));
    }
    let params = form(query);
    let get = |k: &str| params.get(k).cloned().ok_or(format!("no {k}"));
    if get("Action")? != "connect" || get("DBUser")? != user {
        return Err("not a connect token for this user".into());
    }
    let credential = get("X-Amz-Credential")?;
    let mut scope = credential.split('/');
    let key = scope.next().unwrap_or_default().to_owned();
    let date = get("X-Amz-Date")?;
    let signed_at: jiff::Timestamp = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15]
    )
    .parse()
    .map_err(|e| format!("bad date: {e}"))?;
    let signed_at = SystemTime::from(signed_at);
    let age = SystemTime::now()
        .duration_since(signed_at)
        .unwrap_or(Duration::ZERO);
    if age > Duration::from_secs(get("X-Amz-Expires")?.parse().map_err(|_| "expires")?) {
        return Err("expired".into());
    }
    let creds = issued
        .lock()
        .expect("issued")
        .get(&key)
        .cloned()
        .ok_or("unknown access key")?;
    let expected = sigv4::rds_auth_token(net::HOST, pg_port, user, region, &creds, signed_at);
    if expected != token {
        return Err("signature does not match".into());
    }
    Ok(key)
}

/// Where the pod's AWS credentials come from in an RDS test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AwsIdentity {
    /// IRSA: a projected web identity token exchanged at STS.
    WebIdentity,
    /// EKS Pod Identity: the agent's container credentials endpoint.
    PodIdentity,
}

/// Temporary credentials numbered `n`, valid a little longer than [`TOKEN_SECONDS`].
fn temporary_credentials(n: usize) -> (AwsCredentials, String) {
    let creds = AwsCredentials {
        access_key_id: format!("ASIASTANDIN{n}"),
        secret_access_key: fresh_token("secret", n),
        session_token: Some(format!("{}/+=", fresh_token("session", n))),
    };
    let expires =
        jiff::Timestamp::now() + jiff::SignedDuration::from_secs(TOKEN_SECONDS as i64 + 1);
    (creds, expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The answer of STS (XML) or of the Pod Identity agent (JSON) with `creds`.
fn credentials_answer(identity: AwsIdentity, creds: &AwsCredentials, expires: &str) -> String {
    let (id, secret) = (&creds.access_key_id, &creds.secret_access_key);
    let token = creds.session_token.clone().unwrap_or_default();
    match identity {
        AwsIdentity::WebIdentity => format!(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>\
             <Credentials><AccessKeyId>{id}</AccessKeyId>\
             <SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken>\
             <Expiration>{expires}</Expiration></Credentials>\
             </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
        ),
        AwsIdentity::PodIdentity => format!(
            r#"{{"AccessKeyId":"{id}","SecretAccessKey":"{secret}","Token":"{token}","AccountId":"111122223333","Expiration":"{expires}"}}"#
        ),
    }
}

/// RDS IAM logins with credentials from `identity`: each token is checked as RDS would
/// check it, and renewed credentials sign the tokens of later logins.
async fn rds_iam_logins(identity: AwsIdentity) {
    let region = "eu-west-1";
    let issued: Issued = Arc::default();
    let used = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    // pg_hba names the LDAP stand-in before PostgreSQL's port is known, so it learns it later.
    let pg_port = Arc::new(AtomicU16::new(0));
    let ldap_port = rds_check_stand_in(
        pg_port.clone(),
        region,
        issued.clone(),
        used.clone(),
        refused.clone(),
    )
    .await;
    let aws = {
        let issued = issued.clone();
        StandIn::start(Arc::new(move |n, _seen| {
            let issued = issued.clone();
            Box::pin(async move {
                let (creds, expires) = temporary_credentials(n);
                let body = credentials_answer(identity, &creds, &expires);
                issued
                    .lock()
                    .expect("issued")
                    .insert(creds.access_key_id.clone(), creds);
                (200, body)
            })
        }))
        .await
    };
    let hba = format!(
        "local all postgres trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all {USER} 127.0.0.1/32 ldap ldapserver={host} ldapport={ldap_port} \
         ldapprefix=\"uid=\" ldapsuffix=\",dc=rds\"\n",
        host = net::HOST,
    );
    let (pg, _su) = postgres(PgOptions {
        hba: Some(hba),
        ..PgOptions::default()
    })
    .await;
    pg_port.store(pg.port(), Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tempdir");
    let projected = dir.path().join("eks-token");
    std::fs::write(&projected, "projected-sa-jwt\n").expect("token file");
    let env = match identity {
        AwsIdentity::WebIdentity => vec![
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::111122223333:role/weir".to_owned(),
            ),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                projected.display().to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_STS",
                format!("http://{}:{}/", net::HOST, aws.port),
            ),
        ],
        AwsIdentity::PodIdentity => vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://{}:{}/v1/credentials", net::HOST, aws.port),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                projected.display().to_string(),
            ),
        ],
    };
    // PostgreSQL asks for the password in clear to pass it to LDAP, as RDS does; real RDS
    // is reached over TLS, this loopback test goes without.
    let weir = weir(
        &pg,
        &format!("server_auth=rds-iam server_auth_region={region}"),
        &["server_cleartext_password = allow"],
        &env,
    )
    .await;

    assert_eq!(who(&weir).await, Ok(USER.to_owned()), "{}", weir.log());
    let first = &aws.seen()[0];
    match identity {
        AwsIdentity::WebIdentity => {
            assert_eq!(first.method, "POST");
            let sent = form(&first.body);
            assert_eq!(sent["Action"], "AssumeRoleWithWebIdentity");
            assert_eq!(sent["RoleArn"], "arn:aws:iam::111122223333:role/weir");
            assert_eq!(sent["WebIdentityToken"], "projected-sa-jwt");
        }
        AwsIdentity::PodIdentity => {
            assert_eq!(
                (first.method.as_str(), first.path.as_str()),
                ("GET", "/v1/credentials")
            );
            assert_eq!(
                first.headers.get("authorization").map(String::as_str),
                Some("projected-sa-jwt")
            );
        }
    }
    assert_eq!(used.lock().expect("used").as_slice(), ["ASIASTANDIN1"]);
    // The stand-in's check is no rubber stamp: a token for another region, user or key fails.
    let creds = issued.lock().expect("issued")["ASIASTANDIN1"].clone();
    let now = SystemTime::now();
    let sign = |user: &str, region: &str, c: &AwsCredentials| {
        sigv4::rds_auth_token(net::HOST, pg.port(), user, region, c, now)
    };
    let check = |token: &str| check_rds_token(token, USER, pg.port(), region, &issued);
    assert!(check(&sign(USER, region, &creds)).is_ok());
    assert!(check(&sign(USER, "us-east-1", &creds)).is_err());
    assert!(check(&sign("postgres", region, &creds)).is_err());
    let forged = AwsCredentials {
        secret_access_key: "guessed".into(),
        ..creds.clone()
    };
    assert!(check(&sign(USER, region, &forged)).is_err());

    // Credentials renewed at 2/3 of their life sign the next tokens.
    logins_until(&pg, &weir, || aws.count() >= 3).await;
    let keys: std::collections::BTreeSet<String> =
        used.lock().expect("used").iter().cloned().collect();
    assert!(keys.len() >= 2, "tokens were signed with {keys:?} only");
    assert_eq!(refused.load(Ordering::Relaxed), 0);
    let log = weir.log();
    for creds in issued.lock().expect("issued").values() {
        assert!(!log.contains(&creds.secret_access_key), "{log}");
        assert!(
            !log.contains(creds.session_token.as_deref().unwrap_or("-")),
            "{log}"
        );
    }
    assert!(!log.contains("X-Amz-Signature"), "{log}");
}

#[tokio::test]
async fn rds_iam_tokens_are_signed_with_irsa_credentials_and_renewed_with_them() {
    rds_iam_logins(AwsIdentity::WebIdentity).await;
}

#[tokio::test]
async fn rds_iam_tokens_are_signed_with_eks_pod_identity_credentials() {
    rds_iam_logins(AwsIdentity::PodIdentity).await;
}
