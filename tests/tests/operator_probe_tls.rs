//! The operator's `maxConnections: auto` probe over TLS, against a real PostgreSQL with
//! `ssl = on` that accepts other roles over TLS only (`hostssl`). Certificates are made
//! here with the openssl command: a CA and a server certificate for `localhost` only.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use weir_operator::api::SslMode;
use weir_operator::controller::database::{probe, ProbeError, Target};
use weir_operator::controller::tls::ProbeTls;
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};

const MAX_CONNECTIONS: u32 = 42;
const TIMEOUT: Duration = Duration::from_secs(20);

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Makes `name`.crt (a CA) and `name`.key in `dir`.
fn make_ca(dir: &Path, name: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    )
}

/// Makes server.crt (for DNS name localhost, signed by ca) and server.key in `dir`.
fn make_server_certificate(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    )
}

/// Turns TLS on in `pg` with the certificates in `dir`, and makes every role but the
/// superuser log in over TLS only.
async fn enable_tls(pg: &PgCluster, dir: &Path) -> anyhow::Result<()> {
    // PostgreSQL refuses a key file other users can read, or that it does not own.
    let postgres = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
    for file in ["server.crt", "server.key"] {
        let path = dir.join(file);
        std::os::unix::fs::chown(
            &path,
            Some(postgres.uid.as_raw()),
            Some(postgres.gid.as_raw()),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let hba_path = pg.data_dir().join("pg_hba.conf");
    let hba = std::fs::read_to_string(&hba_path)?;
    let tls_only = hba.replace("\nhost    all       all ", "\nhostssl all       all ");
    ensure!(tls_only != hba, "unexpected pg_hba.conf:\n{hba}");
    std::fs::write(&hba_path, tls_only)?;
    let file = |name: &str| dir.join(name).display().to_string().replace('\'', "''");
    // One statement each: ALTER SYSTEM cannot run inside a multi-statement batch.
    for (setting, value) in [
        ("ssl_cert_file", file("server.crt")),
        ("ssl_key_file", file("server.key")),
        ("ssl", "on".to_owned()),
    ] {
        pg.execute(&format!("ALTER SYSTEM SET {setting} = '{value}'"))
            .await?;
    }
    pg.execute("SELECT pg_reload_conf()").await?;
    weir_tests::k8s::eventually("ssl is on", TIMEOUT, || async {
        let client = pg.superuser().await?;
        let row = client.query_one("SHOW ssl", &[]).await?;
        let ssl: String = row.get(0);
        ensure!(ssl == "on", "ssl = {ssl}; log:\n{}", pg.log());
        Ok(())
    })
    .await
}

fn target(pg: &PgCluster, host: &str, mode: SslMode, ca: Option<&PathBuf>) -> Target {
    Target {
        host: host.to_owned(),
        port: pg.port(),
        dbname: "orders".to_owned(),
        user: "app".to_owned(),
        password: "app-secret".to_owned(),
        tls: ProbeTls {
            mode,
            ca: ca.map(|p| std::fs::read(p).expect("the CA file was written")),
            client_certificate: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_uses_the_server_side_tls_settings() -> anyhow::Result<()> {
    let pg = PgCluster::start_with(PgOptions {
        max_connections: MAX_CONNECTIONS,
        ..PgOptions::default()
    })
    .await?;
    pg.create_role("app", "app-secret", PasswordMethod::Scram)
        .await?;
    pg.create_database("orders", "app").await?;
    let dir = pg.root_dir().join("tls");
    std::fs::create_dir(&dir)?;
    make_ca(&dir, "ca")?;
    make_ca(&dir, "other-ca")?;
    make_server_certificate(&dir)?;
    enable_tls(&pg, &dir).await?;
    let ca = dir.join("ca.crt");
    let other_ca = dir.join("other-ca.crt");

    // Encrypted, with and without checking the certificate.
    for (host, mode, ca) in [
        ("localhost", SslMode::VerifyFull, Some(&ca)),
        // verify-ca ignores the name the certificate was issued for.
        ("127.0.0.1", SslMode::VerifyCa, Some(&ca)),
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
            Some(&ca),
            "not valid for name",
        ),
        (
            "localhost",
            SslMode::VerifyFull,
            Some(&other_ca),
            "UnknownIssuer",
        ),
        (
            "localhost",
            SslMode::VerifyCa,
            Some(&other_ca),
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
