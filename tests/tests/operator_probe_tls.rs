//! The operator's `maxConnections: auto` probe over TLS, against a real PostgreSQL with
//! `ssl = on` that accepts other roles over TLS only (`hostssl`). The certificates are made
//! here: a CA and a server certificate for `localhost` only.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use weir_operator::api::SslMode;
use weir_operator::controller::database::{probe, ProbeError, Target};
use weir_operator::controller::tls::ProbeTls;
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions, PgTls};
use weir_tests::tls::TestCa;

const MAX_CONNECTIONS: u32 = 42;
const TIMEOUT: Duration = Duration::from_secs(20);

/// The superuser may come in over plain TCP (the harness administers through it); every
/// other role only over TLS.
const HBA: &str = "local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n";

fn target(pg: &PgCluster, host: &str, mode: SslMode, ca: Option<&str>) -> Target {
    Target {
        host: host.to_owned(),
        port: pg.port(),
        dbname: "orders".to_owned(),
        user: "app".to_owned(),
        password: "app-secret".to_owned(),
        tls: ProbeTls {
            mode,
            ca: ca.map(|pem| pem.as_bytes().to_vec()),
            client_certificate: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_uses_the_server_side_tls_settings() -> anyhow::Result<()> {
    let ca = TestCa::new("ca")?;
    let other_ca = TestCa::new("other-ca")?;
    let server = ca.leaf("localhost", &["localhost"])?;
    let pg = PgCluster::start_with(PgOptions {
        max_connections: MAX_CONNECTIONS,
        tls: Some(PgTls {
            cert_pem: server.cert_pem,
            key_pem: server.key_pem,
            ca_pem: None,
        }),
        hba: Some(HBA.to_owned()),
        ..PgOptions::default()
    })
    .await?;
    pg.create_role("app", "app-secret", PasswordMethod::Scram)
        .await?;
    pg.create_database("orders", "app").await?;
    let (ca, other_ca) = (ca.cert_pem.as_str(), other_ca.cert_pem.as_str());

    // Encrypted, with and without checking the certificate.
    for (host, mode, ca) in [
        ("localhost", SslMode::VerifyFull, Some(ca)),
        // verify-ca ignores the name the certificate was issued for.
        ("127.0.0.1", SslMode::VerifyCa, Some(ca)),
        ("127.0.0.1", SslMode::Require, None),
        ("127.0.0.1", SslMode::Prefer, None),
        ("127.0.0.1", SslMode::Allow, None),
    ] {
        let seen = probe(&target(&pg, host, mode, ca), TIMEOUT)
            .await
            .with_context(|| format!("{mode:?} toward {host}"))?;
        ensure!(
            seen.max_connections == MAX_CONNECTIONS,
            "{mode:?}: {seen:?}"
        );
    }

    // Refused, each with the cause named.
    let refused = [
        (
            "127.0.0.1",
            SslMode::VerifyFull,
            Some(ca),
            "not valid for name",
        ),
        (
            "localhost",
            SslMode::VerifyFull,
            Some(other_ca),
            "UnknownIssuer",
        ),
        (
            "localhost",
            SslMode::VerifyCa,
            Some(other_ca),
            "UnknownIssuer",
        ),
        // Plain text only reaches the server's non-TLS rules, which do not exist.
        ("127.0.0.1", SslMode::Disable, None, "no encryption"),
    ];
    for (host, mode, ca, cause) in refused {
        let err = probe(&target(&pg, host, mode, ca), TIMEOUT)
            .await
            .expect_err("refused");
        let text = err.to_string();
        ensure!(
            matches!(err, ProbeError::Connect { .. }) && text.contains(cause),
            "{mode:?} toward {host}: expected {cause:?} in {text}"
        );
    }

    // A CA that is not PEM is reported as such, before connecting.
    let mut bad = target(&pg, "localhost", SslMode::VerifyFull, None);
    bad.tls.ca = Some(b"not a certificate".to_vec());
    let err = probe(&bad, TIMEOUT).await.expect_err("bad CA");
    ensure!(
        matches!(err, ProbeError::Tls { .. }) && err.to_string().contains("CA"),
        "{err}"
    );
    Ok(())
}
