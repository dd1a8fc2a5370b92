//! TLS on both sides of weir, against a real PostgreSQL with `ssl = on` (certificates made
//! in the test) and real clients (psql, tokio-postgres, a raw rustls client for PostgreSQL
//! 17's direct TLS): every `server_tls_sslmode` against servers with and without TLS, wrong
//! CAs and host names, clear-text passwords over plain connections, and `client_tls_sslmode`
//! from `disable` to `verify-full` with `auth_type = cert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::fixture::{self, sqlstate, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::postgres::{
    parse_pgbench, pgbench, psql_conninfo, CommandOutput, PasswordMethod, PgCluster, PgOptions,
    PgTls,
};
use weir_tests::tls::{CertPair, TestCa};
use weir_tests::weir::WeirProcess;

/// The superuser may always come in over plain TCP: the harness administers through it.
const HBA_ADMIN: &str = "local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n";

/// Certificates and the files they are written to.
struct Certs {
    dir: tempfile::TempDir,
    ca: TestCa,
    other_ca: TestCa,
}

impl Certs {
    fn new() -> Certs {
        Certs {
            dir: tempfile::tempdir().expect("temp dir"),
            ca: TestCa::new("weir test CA").expect("CA"),
            other_ca: TestCa::new("somebody else's CA").expect("other CA"),
        }
    }

    /// Writes `text` to `name` (mode 0600, as libpq wants for keys) and returns the path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("writing a certificate file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    fn ca_file(&self) -> PathBuf {
        self.write("ca.crt", &self.ca.cert_pem)
    }

    fn other_ca_file(&self) -> PathBuf {
        self.write("other-ca.crt", &self.other_ca.cert_pem)
    }

    /// Writes a leaf as `<name>.crt` and `<name>.key`.
    fn pair_files(&self, name: &str, pair: &CertPair) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), &pair.cert_pem),
            self.write(&format!("{name}.key"), &pair.key_pem),
        )
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// A cluster with the application role and database, TLS on when `tls` is given.
async fn cluster(tls: Option<PgTls>, hba: &str) -> PgCluster {
    let pg = PgCluster::start_with(PgOptions {
        tls,
        hba: Some(format!("{HBA_ADMIN}{hba}")),
        ..PgOptions::default()
    })
    .await
    .expect("starting PostgreSQL");
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the role");
    pg.create_database(DATABASE, USER)
        .await
        .expect("creating the database");
    pg
}

/// Starts weir in front of `pg` with `settings`, naming the server by `host`.
async fn weir(pg: &PgCluster, host: &str, settings: &[String]) -> WeirProcess {
    let mut opts = Options::default();
    opts.settings.extend(settings.iter().cloned());
    let ini =
        fixture::ini(pg, &opts).replace(&format!("host={}", pg.host()), &format!("host={host}"));
    WeirProcess::start(&ini, &format!("\"{USER}\" \"{PASSWORD}\"\n"))
        .await
        .expect("starting weir")
}

/// Whether weir's server connection is encrypted (`true`/`false`, from `pg_stat_ssl`), or
/// the error the client got instead, as `SQLSTATE: message`.
async fn server_ssl(weir: &WeirProcess) -> Result<String, String> {
    let client = net::connect(weir.port(), USER, PASSWORD, DATABASE)
        .await
        .map_err(|e| {
            let code = e
                .downcast_ref::<weir_tests::tokio_postgres::Error>()
                .and_then(sqlstate)
                .unwrap_or("none");
            format!("{code}: {e:#}")
        })?;
    let row = client
        .query_one(
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(row.get(0))
}

fn server_pair(certs: &Certs) -> PgTls {
    // A DNS name only: verify-full must accept host=localhost and refuse host=127.0.0.1.
    let pair = certs
        .ca
        .leaf("localhost", &["localhost"])
        .expect("server cert");
    PgTls {
        cert_pem: pair.cert_pem,
        key_pem: pair.key_pem,
        ca_pem: None,
    }
}

#[tokio::test]
async fn every_server_sslmode_against_a_server_with_ssl() {
    let certs = Certs::new();
    // TLS-only, and the clear-text `password` method: allowed because the connection is
    // encrypted.
    let pg = cluster(
        Some(server_pair(&certs)),
        "hostssl all app 127.0.0.1/32 password\n",
    )
    .await;
    let ca = display(&certs.ca_file());
    let other = display(&certs.other_ca_file());
    // (server_tls_sslmode, server_tls_ca_file, host, pg_stat_ssl.ssl or part of the error)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Result<&'a str, &'a str>);
    let cases: Vec<Case> = vec![
        ("prefer", None, "127.0.0.1", Ok("true")),
        ("require", None, "127.0.0.1", Ok("true")),
        // Plain first; the server's pg_hba refusal makes weir retry with TLS.
        ("allow", None, "127.0.0.1", Ok("true")),
        ("verify-ca", Some(&ca), "127.0.0.1", Ok("true")),
        ("verify-full", Some(&ca), "localhost", Ok("true")),
        // As libpq: require with a CA file checks the chain, not the name.
        ("require", Some(&ca), "127.0.0.1", Ok("true")),
        ("require", Some(&other), "127.0.0.1", Err("UnknownIssuer")),
        ("verify-ca", Some(&other), "127.0.0.1", Err("UnknownIssuer")),
        (
            "verify-full",
            Some(&ca),
            "127.0.0.1",
            Err("not valid for name"),
        ),
        ("disable", None, "127.0.0.1", Err("no pg_hba.conf entry")),
    ];
    for (mode, ca_file, host, expected) in cases {
        let mut settings = vec![format!("server_tls_sslmode = {mode}")];
        if let Some(ca_file) = ca_file {
            settings.push(format!("server_tls_ca_file = {ca_file}"));
        }
        let weir = weir(&pg, host, &settings).await;
        let got = server_ssl(&weir).await;
        match expected {
            Ok(ssl) => assert_eq!(got.as_deref(), Ok(ssl), "{mode} {ca_file:?} {host}"),
            Err(needle) => {
                let e = got.expect_err(mode);
                assert!(e.contains(needle), "{mode} {ca_file:?} {host}: {e}");
            }
        }
    }
}

#[tokio::test]
async fn verify_full_matches_an_ip_address_host_against_the_ip_sans() {
    let certs = Certs::new();
    let pair = certs.ca.leaf("db", &["127.0.0.1"]).expect("server cert");
    let tls = PgTls {
        cert_pem: pair.cert_pem,
        key_pem: pair.key_pem,
        ca_pem: None,
    };
    let pg = cluster(Some(tls), "hostssl all app 127.0.0.1/32 scram-sha-256\n").await;
    let settings = [
        "server_tls_sslmode = verify-full".to_owned(),
        format!("server_tls_ca_file = {}", display(&certs.ca_file())),
    ];
    let by_ip = weir(&pg, "127.0.0.1", &settings).await;
    assert_eq!(server_ssl(&by_ip).await.as_deref(), Ok("true"));
    let by_name = weir(&pg, "localhost", &settings).await;
    let e = server_ssl(&by_name)
        .await
        .expect_err("localhost is not in the certificate");
    assert!(e.contains("not valid for name"), "{e}");
}

#[tokio::test]
async fn every_server_sslmode_against_a_server_without_ssl() {
    let certs = Certs::new();
    let pg = cluster(None, "host all app 127.0.0.1/32 scram-sha-256\n").await;
    let ca = display(&certs.ca_file());
    for (mode, expected) in [
        ("disable", Ok("false")),
        ("allow", Ok("false")),
        ("prefer", Ok("false")),
        ("require", Err("does not support SSL")),
        ("verify-ca", Err("does not support SSL")),
        ("verify-full", Err("does not support SSL")),
    ] {
        let settings = [
            format!("server_tls_sslmode = {mode}"),
            format!("server_tls_ca_file = {ca}"),
        ];
        let weir = weir(&pg, "localhost", &settings).await;
        let got = server_ssl(&weir).await;
        match expected {
            Ok(ssl) => assert_eq!(got.as_deref(), Ok(ssl), "{mode}"),
            Err(needle) => {
                let e = got.expect_err(mode);
                assert!(e.contains(needle), "{mode}: {e}");
                assert!(e.starts_with("08006: "), "{mode}: {e}");
            }
        }
    }
}

#[tokio::test]
async fn a_clear_text_password_goes_over_plain_tcp_only_when_allowed() {
    let pg = cluster(None, "host all app 127.0.0.1/32 password\n").await;
    let refused = weir(&pg, "127.0.0.1", &[]).await;
    let e = server_ssl(&refused).await.expect_err("refused by default");
    assert!(e.contains("clear-text password"), "{e}");
    assert!(e.contains("server_cleartext_password"), "{e}");
    let allowed = weir(
        &pg,
        "127.0.0.1",
        &["server_cleartext_password = allow".to_owned()],
    )
    .await;
    assert_eq!(server_ssl(&allowed).await.as_deref(), Ok("false"));
}

/// Weir with `client_tls_sslmode = mode` and a certificate for 127.0.0.1 signed by the CA.
async fn client_tls_fixture(certs: &Certs, mode: &str, extra: &[&str]) -> Fixture {
    let pair = certs
        .ca
        .leaf("weir", &["127.0.0.1", "localhost"])
        .expect("weir cert");
    let (cert, key) = certs.pair_files("weir", &pair);
    let mut opts = Options::default()
        .with(&format!("client_tls_sslmode = {mode}"))
        .with(&format!("client_tls_cert_file = {}", cert.display()))
        .with(&format!("client_tls_key_file = {}", key.display()));
    for line in extra {
        opts = opts.with(line);
    }
    Fixture::start(opts).await.expect("starting the fixture")
}

async fn psql(fx: &Fixture, user: &str, conninfo: &str) -> CommandOutput {
    psql_conninfo(
        net::HOST,
        fx.weir.port(),
        user,
        PASSWORD,
        &format!("dbname={DATABASE} {conninfo}"),
        "SELECT 'through weir'",
    )
    .await
    .expect("running psql")
}

#[tokio::test]
async fn client_tls_require_serves_tls_and_refuses_plain_clients() {
    let certs = Certs::new();
    let fx = client_tls_fixture(&certs, "require", &[]).await;
    let ca = certs.ca_file();
    let ok = psql(
        &fx,
        USER,
        &format!("sslmode=verify-full sslrootcert={}", ca.display()),
    )
    .await;
    assert_eq!((ok.status, ok.stdout.trim()), (0, "through weir"), "{ok:?}");

    // SCRAM-SHA-256-PLUS: a client that insists on channel binding gets it over TLS.
    let bound = psql(
        &fx,
        USER,
        &format!(
            "sslmode=verify-full sslrootcert={} channel_binding=require",
            ca.display()
        ),
    )
    .await;
    assert_eq!(
        (bound.status, bound.stdout.trim()),
        (0, "through weir"),
        "{bound:?}"
    );

    let plain = psql(&fx, USER, "sslmode=disable").await;
    assert_ne!(plain.status, 0);
    assert!(plain.stderr.contains("SSL required"), "{plain:?}");

    let e = net::connect(fx.weir.port(), USER, PASSWORD, DATABASE)
        .await
        .expect_err("a plain client is refused");
    let e = e
        .downcast_ref::<weir_tests::tokio_postgres::Error>()
        .expect("a database error");
    assert_eq!(sqlstate(e), Some("28000"), "{e}");

    // A client that checks weir's certificate against another CA gives up.
    let other = certs.other_ca_file();
    let wrong = psql(
        &fx,
        USER,
        &format!("sslmode=verify-full sslrootcert={}", other.display()),
    )
    .await;
    assert_ne!(wrong.status, 0);
    assert!(
        wrong.stderr.contains("certificate verify failed"),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn large_results_and_concurrent_clients_flow_over_tls_on_both_sides() {
    let certs = Certs::new();
    let pg = cluster(
        Some(server_pair(&certs)),
        "hostssl all app 127.0.0.1/32 scram-sha-256\n",
    )
    .await;
    let pair = certs.ca.leaf("weir", &["127.0.0.1"]).expect("weir cert");
    let (cert, key) = certs.pair_files("weir", &pair);
    let weir = weir(
        &pg,
        "127.0.0.1",
        &[
            "server_tls_sslmode = require".to_owned(),
            "client_tls_sslmode = require".to_owned(),
            format!("client_tls_cert_file = {}", cert.display()),
            format!("client_tls_key_file = {}", key.display()),
        ],
    )
    .await;
    let conninfo = format!("dbname={DATABASE} sslmode=require");
    // About 20 MB from the server, through two TLS connections.
    let big = psql_conninfo(
        net::HOST,
        weir.port(),
        USER,
        PASSWORD,
        &conninfo,
        "SELECT repeat('x', 1000) FROM generate_series(1, 20000)",
    )
    .await
    .expect("psql");
    assert_eq!(big.status, 0, "{}", big.stderr);
    assert_eq!(big.stdout.lines().count(), 20_000);
    assert!(big.stdout.lines().all(|l| l.len() == 1000));

    // Results of 100 kB each: TLS records bigger than 8 kB stall libpq's non-blocking reads.
    let script = certs.write(
        "bench.sql",
        "SELECT repeat('x', 5000) FROM generate_series(1, 20);\n",
    );
    let script = display(&script);
    let bench = pgbench(
        net::HOST,
        weir.port(),
        USER,
        PASSWORD,
        &conninfo,
        &["-n", "-c", "8", "-t", "100", "-f", &script],
    )
    .await
    .expect("pgbench");
    let summary = parse_pgbench(&bench.stdout)
        .unwrap_or_else(|| panic!("no pgbench summary: {bench:?}\n{}", weir.log()));
    assert_eq!(
        (summary.transactions, summary.failed),
        (800, 0),
        "{bench:?}"
    );
}

#[tokio::test]
async fn client_tls_disable_answers_n() {
    let certs = Certs::new();
    let fx = client_tls_fixture(&certs, "disable", &[]).await;
    let prefer = psql(&fx, USER, "sslmode=prefer").await;
    assert_eq!(prefer.status, 0, "{prefer:?}");
    let require = psql(&fx, USER, "sslmode=require").await;
    assert_ne!(require.status, 0);
    assert!(
        require.stderr.contains("does not support SSL"),
        "{require:?}"
    );
}

#[tokio::test]
async fn client_certificates_under_verify_full_and_auth_type_cert() {
    let certs = Certs::new();
    let ca = certs.ca_file();
    let fx = client_tls_fixture(
        &certs,
        "verify-full",
        &[
            &format!("client_tls_ca_file = {}", ca.display()),
            "auth_type = cert",
        ],
    )
    .await;
    let app = certs.ca.leaf(USER, &[]).expect("client cert");
    let (app_cert, app_key) = certs.pair_files("app", &app);
    let with_cert = |cert: &Path, key: &Path| {
        format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            ca.display(),
            cert.display(),
            key.display()
        )
    };
    let ok = psql(&fx, USER, &with_cert(&app_cert, &app_key)).await;
    assert_eq!((ok.status, ok.stdout.trim()), (0, "through weir"), "{ok:?}");

    // A valid certificate for someone else.
    let mallory = certs.ca.leaf("mallory", &[]).expect("client cert");
    let (m_cert, m_key) = certs.pair_files("mallory", &mallory);
    let other_user = psql(&fx, USER, &with_cert(&m_cert, &m_key)).await;
    assert_ne!(other_user.status, 0);
    assert!(
        other_user
            .stderr
            .contains("certificate authentication failed for user \"app\""),
        "{other_user:?}"
    );

    // A certificate from another CA, and no certificate at all: the handshake fails.
    let forged = certs.other_ca.leaf(USER, &[]).expect("client cert");
    let (f_cert, f_key) = certs.pair_files("forged", &forged);
    let forged = psql(&fx, USER, &with_cert(&f_cert, &f_key)).await;
    assert_ne!(forged.status, 0, "{forged:?}");
    let none = psql(
        &fx,
        USER,
        &format!("sslmode=verify-full sslrootcert={}", ca.display()),
    )
    .await;
    assert_ne!(none.status, 0, "{none:?}");

    let plain = psql(&fx, USER, "sslmode=disable").await;
    assert!(plain.stderr.contains("SSL required"), "{plain:?}");
}

type ClientTlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a direct TLS connection (no SSLRequest, as `sslnegotiation=direct` does) to weir,
/// trusting `ca_pem` and offering `alpn`.
async fn direct_tls(port: u16, ca_pem: &str, alpn: Vec<Vec<u8>>) -> ClientTlsStream {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    let tcp = tokio::net::TcpStream::connect((net::HOST, port))
        .await
        .expect("connecting");
    let name = ServerName::try_from(net::HOST).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Sends a protocol 3.0 startup packet for the application user and database.
async fn send_startup(tls: &mut ClientTlsStream) {
    let mut payload = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", USER), ("database", DATABASE)] {
        payload.extend_from_slice(k.as_bytes());
        payload.push(0);
        payload.extend_from_slice(v.as_bytes());
        payload.push(0);
    }
    payload.push(0);
    let mut packet = u32::try_from(payload.len() + 4)
        .expect("short")
        .to_be_bytes()
        .to_vec();
    packet.extend_from_slice(&payload);
    tls.write_all(&packet).await.expect("sending startup");
}

/// The next message: type and body.
async fn next_message(tls: &mut ClientTlsStream) -> (u8, Vec<u8>) {
    let tag = tls.read_u8().await.expect("reply");
    let len = tls.read_u32().await.expect("reply length");
    let mut body = vec![0; len as usize - 4];
    tls.read_exact(&mut body).await.expect("reply body");
    (tag, body)
}

/// Reads messages up to ReadyForQuery, failing on an ErrorResponse.
async fn until_ready(tls: &mut ClientTlsStream) {
    loop {
        match next_message(tls).await {
            (b'Z', _) => return,
            (b'E', body) => panic!("error: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

async fn direct_tls_first_reply(port: u16, ca_pem: &str, alpn: Vec<Vec<u8>>) -> (u8, Vec<u8>) {
    let mut tls = direct_tls(port, ca_pem, alpn).await;
    send_startup(&mut tls).await;
    next_message(&mut tls).await
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql() {
    let certs = Certs::new();
    let fx = client_tls_fixture(&certs, "require", &[]).await;
    let port = fx.weir.port();
    // SCRAM: weir asks for authentication (AuthenticationSASL, code 10).
    let (tag, body) =
        direct_tls_first_reply(port, &certs.ca.cert_pem, vec![b"postgresql".to_vec()]).await;
    assert_eq!((tag, &body[..4]), (b'R', &10u32.to_be_bytes()[..]));

    let (tag, body) = direct_tls_first_reply(port, &certs.ca.cert_pem, Vec::new()).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(tag, b'E', "{text}");
    assert!(text.contains("C08P01"), "{text}");
    assert!(text.contains("ALPN"), "{text}");
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_stops_weir_with_the_setting_named() {
    let certs = Certs::new();
    let pg = cluster(None, "host all app 127.0.0.1/32 scram-sha-256\n").await;
    let a = certs.ca.leaf("a", &["127.0.0.1"]).expect("cert");
    let b = certs.ca.leaf("b", &["127.0.0.1"]).expect("cert");
    let cert = certs.write("a.crt", &a.cert_pem);
    let key = certs.write("b.key", &b.key_pem);
    let mut opts = Options::default()
        .with("client_tls_sslmode = require")
        .with(&format!("client_tls_cert_file = {}", cert.display()))
        .with(&format!("client_tls_key_file = {}", key.display()));
    let e = match WeirProcess::start(&fixture::ini(&pg, &opts), "").await {
        Ok(_) => panic!("weir started with a mismatched key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("client_tls_key_file"), "{e}");
    assert!(e.contains("does not match the certificate"), "{e}");

    opts.settings.pop();
    opts = opts.with("client_tls_key_file = /nonexistent/weir.key");
    let e = match WeirProcess::start(&fixture::ini(&pg, &opts), "").await {
        Ok(_) => panic!("weir started without its key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("/nonexistent/weir.key"), "{e}");
    assert!(e.contains("client_tls_key_file"), "{e}");
}

/// The certificate weir shows a new TLS client right now.
async fn served_certificate(port: u16, ca_pem: &str) -> Vec<u8> {
    let tls = direct_tls(port, ca_pem, vec![b"postgresql".to_vec()]).await;
    let served = tls.get_ref().1.peer_certificates().expect("a certificate");
    served[0].as_ref().to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM")
        .as_ref()
        .to_vec()
}

/// Swaps the `..data` symlink to `version`, as Kubernetes updates a mounted Secret.
fn swap_secret(dir: &Path, version: &str, pair: &CertPair) {
    use std::os::unix::fs::symlink;
    let target = dir.join(version);
    std::fs::create_dir(&target).expect("version dir");
    std::fs::write(target.join("tls.crt"), &pair.cert_pem).expect("cert");
    std::fs::write(target.join("tls.key"), &pair.key_pem).expect("key");
    let staging = dir.join("..data_tmp");
    symlink(version, &staging).expect("staging link");
    std::fs::rename(&staging, dir.join("..data")).expect("swap");
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_a_bad_one_is_refused() {
    let certs = Certs::new();
    let secret = certs.dir.path().join("secret");
    std::fs::create_dir(&secret).expect("secret dir");
    let first = certs.ca.leaf("first", &["127.0.0.1"]).expect("cert");
    swap_secret(&secret, "v1", &first);
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), secret.join(name)).expect("link");
    }
    let http_port = net::free_port();
    let opts = Options {
        auth_type: "trust",
        ..Options::default()
    }
    .with("client_tls_sslmode = require")
    .with(&format!(
        "client_tls_cert_file = {}",
        secret.join("tls.crt").display()
    ))
    .with(&format!(
        "client_tls_key_file = {}",
        secret.join("tls.key").display()
    ))
    .with(&format!("http_port = {http_port}"))
    .with("http_listen_addr = 127.0.0.1");
    let fx = Fixture::start(opts).await.expect("fixture");
    let port = fx.weir.port();
    let ca = certs.ca.cert_pem.clone();
    assert_eq!(served_certificate(port, &ca).await, der(&first.cert_pem));
    let metrics = http_get(http_port, "/metrics").await;
    let expiry = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "weir_tls_certificate_expiry_seconds{certificate=\"client_tls_cert_file\"}",
            )
        })
        .unwrap_or_else(|| panic!("no expiry metric in:\n{metrics}"));
    let seconds: f64 = expiry
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(seconds > 86_400.0, "{expiry}");

    // A session opened before the rotation goes on after it.
    let mut session = direct_tls(port, &ca, vec![b"postgresql".to_vec()]).await;
    send_startup(&mut session).await;
    until_ready(&mut session).await;

    let second = certs.ca.leaf("second", &["127.0.0.1"]).expect("cert");
    swap_secret(&secret, "v2", &second);
    let rotated = Fixture::eventually(std::time::Duration::from_secs(20), || async {
        served_certificate(port, &ca).await == der(&second.cert_pem)
    })
    .await;
    assert!(
        rotated,
        "the new certificate was not served; log:\n{}",
        fx.weir.log()
    );

    let mut query = vec![b'Q'];
    query.extend_from_slice(&13u32.to_be_bytes());
    query.extend_from_slice(b"SELECT 1\0");
    session.write_all(&query).await.expect("query");
    until_ready(&mut session).await;

    // A key that does not belong to the certificate: refused, the second one stays.
    let third = certs.ca.leaf("third", &["127.0.0.1"]).expect("cert");
    let mismatched = CertPair {
        cert_pem: third.cert_pem,
        key_pem: first.key_pem.clone(),
    };
    swap_secret(&secret, "v3", &mismatched);
    let logged = Fixture::eventually(std::time::Duration::from_secs(20), || async {
        fx.weir.log().contains("does not match the certificate")
    })
    .await;
    assert!(logged, "no error logged; log:\n{}", fx.weir.log());
    assert!(fx.weir.log().contains("reload failed"), "{}", fx.weir.log());
    assert_eq!(served_certificate(port, &ca).await, der(&second.cert_pem));
}

/// A plain HTTP/1.0 GET on loopback, returning the body.
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

/// A certificate renewed while pgbench reconnects for every transaction (`-C`, so each one is a
/// new TLS handshake, verified against the CA and the host name) fails no transaction: handshakes
/// before the swap get the old certificate, those after it the new one.
#[tokio::test]
async fn a_certificate_rotation_under_load_fails_no_transaction() {
    let certs = Certs::new();
    let secret = certs.dir.path().join("secret");
    std::fs::create_dir(&secret).expect("secret dir");
    let first = certs.ca.leaf("first", &["127.0.0.1"]).expect("cert");
    swap_secret(&secret, "v1", &first);
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), secret.join(name)).expect("link");
    }
    let opts = Options::default()
        .with("stats_users = app")
        .with("client_tls_sslmode = require")
        .with(&format!(
            "client_tls_cert_file = {}",
            secret.join("tls.crt").display()
        ))
        .with(&format!(
            "client_tls_key_file = {}",
            secret.join("tls.key").display()
        ));
    let fx = Fixture::start(opts).await.expect("fixture");
    let port = fx.weir.port();
    let ca = certs.ca.cert_pem.clone();
    assert_eq!(served_certificate(port, &ca).await, der(&first.cert_pem));

    let conninfo = format!(
        "dbname={DATABASE} sslmode=verify-full sslrootcert={}",
        display(&certs.ca_file())
    );
    let script = display(&certs.write("select.sql", "SELECT 1;\n"));
    let load = tokio::spawn(async move {
        pgbench(
            net::HOST,
            port,
            USER,
            PASSWORD,
            &conninfo,
            &["-n", "-C", "-c", "4", "-T", "8", "-f", &script],
        )
        .await
    });
    // Let the load run on the first certificate for a while, then renew it.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let second = certs.ca.leaf("second", &["127.0.0.1"]).expect("cert");
    swap_secret(&secret, "v2", &second);
    let rotated = Fixture::eventually(std::time::Duration::from_secs(20), || async {
        served_certificate(port, &ca).await == der(&second.cert_pem)
    })
    .await;
    assert!(
        rotated,
        "the new certificate was not served; log:\n{}",
        fx.weir.log()
    );

    let bench = load.await.expect("pgbench task").expect("pgbench");
    let summary = parse_pgbench(&bench.stdout)
        .unwrap_or_else(|| panic!("no pgbench summary: {bench:?}\n{}", fx.weir.log()));
    assert!(summary.transactions > 0, "{bench:?}");
    assert_eq!(summary.failed, 0, "{bench:?}\n{}", fx.weir.log());
    eprintln!(
        "certificate rotation under pgbench -C: {} transactions, {} failed",
        summary.transactions, summary.failed
    );

    // The console shows the certificate in force and how long it has left.
    let shown = psql_conninfo(
        net::HOST,
        port,
        USER,
        PASSWORD,
        "dbname=pgbouncer sslmode=require",
        "SHOW CERTIFICATES",
    )
    .await
    .expect("psql");
    let row = shown
        .stdout
        .lines()
        .find(|l| l.starts_with("client_tls_cert_file|"))
        .unwrap_or_else(|| panic!("no certificate row: {shown:?}"));
    let fields: Vec<&str> = row.split('|').collect();
    assert_eq!(fields[1], "require", "{row}");
    let left: i64 = fields[3].parse().expect("seconds left");
    assert!(left > 86_400, "{row}");
}

/// As libpq's `prefer`: a server that turns the encrypted login away (a `hostnossl` line) is
/// tried again in the clear, while `require` fails with the server's refusal.
#[tokio::test]
async fn prefer_falls_back_to_plain_when_the_server_refuses_tls_logins() {
    let certs = Certs::new();
    let pg = cluster(
        Some(server_pair(&certs)),
        "hostnossl all app 127.0.0.1/32 scram-sha-256\n",
    )
    .await;
    let prefer = weir(
        &pg,
        "127.0.0.1",
        &["server_tls_sslmode = prefer".to_owned()],
    )
    .await;
    assert_eq!(
        server_ssl(&prefer).await.as_deref(),
        Ok("false"),
        "{}",
        prefer.log()
    );
    let require = weir(
        &pg,
        "127.0.0.1",
        &["server_tls_sslmode = require".to_owned()],
    )
    .await;
    let err = server_ssl(&require)
        .await
        .expect_err("require must not go plain");
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
}

/// `server_channel_binding = require` lets weir log in only with SCRAM-SHA-256-PLUS. That it
/// logs in to a real PostgreSQL over TLS proves the binding was used and that its data (the
/// certificate's `tls-server-end-point` hash) is what the server computed; every other login
/// (clear-text password, trust, no TLS) fails with an error naming the setting, while
/// `prefer` logs in to all of them.
#[tokio::test]
async fn server_channel_binding_require_logs_in_only_with_scram_sha_256_plus() {
    let certs = Certs::new();
    let pg = cluster(
        Some(server_pair(&certs)),
        "hostssl all app 127.0.0.1/32 scram-sha-256\n\
         hostssl all clear 127.0.0.1/32 password\n\
         hostssl all trusted 127.0.0.1/32 trust\n\
         hostnossl all plain 127.0.0.1/32 scram-sha-256\n",
    )
    .await;
    for role in ["clear", "trusted", "plain"] {
        pg.create_role(role, PASSWORD, PasswordMethod::Scram)
            .await
            .expect("creating a role");
    }
    // (server user, server_channel_binding, pg_stat_ssl.ssl or part of the error)
    let cases: [(&str, &str, Result<&str, &str>); 9] = [
        (USER, "require", Ok("true")),
        (USER, "prefer", Ok("true")),
        (USER, "disable", Ok("true")),
        ("clear", "require", Err("asks for a password instead")),
        ("clear", "prefer", Ok("true")),
        ("trusted", "require", Err("logged the pooler in without it")),
        ("trusted", "prefer", Ok("true")),
        // TLS is turned away by the hostnossl line, so prefer goes plain: nothing to bind to.
        ("plain", "require", Err("does not offer SCRAM-SHA-256-PLUS")),
        ("plain", "prefer", Ok("false")),
    ];
    for (user, binding, expected) in cases {
        let mut opts = Options::default()
            .with("server_tls_sslmode = prefer")
            .with(&format!("server_channel_binding = {binding}"));
        opts.database_options = format!("user={user} password={PASSWORD}");
        let weir = WeirProcess::start(
            &fixture::ini(&pg, &opts),
            &format!("\"{USER}\" \"{PASSWORD}\"\n"),
        )
        .await
        .expect("starting weir");
        let got = server_ssl(&weir).await;
        match expected {
            Ok(ssl) => assert_eq!(got.as_deref(), Ok(ssl), "{user} {binding}"),
            Err(needle) => {
                let e = got.expect_err(binding);
                assert!(e.contains(needle), "{user} {binding}: {e}");
                assert!(
                    e.contains("server_channel_binding"),
                    "{user} {binding}: {e}"
                );
            }
        }
    }
}
