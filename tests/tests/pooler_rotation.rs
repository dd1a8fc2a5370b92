//! Password rotation through the pooler (`auth_rotation_grace`): the old and the new password
//! both log in during the grace and only the new one after it, pgbench sees no failed
//! transaction across the rotation, and server logins use the new credentials at once, for
//! plain passwords and for SCRAM verifiers in the auth file.

use std::time::Duration;

use weir_tests::fixture::{self, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::parity;
use weir_tests::postgres::{parse_pgbench, PasswordMethod, PgCluster};
use weir_tests::weir::Signal;

const NEW_PASSWORD: &str = "app-secret-2";

/// How long a state may take to show up on the shared test machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// Logs in through the pooler with `password` and runs a query; the SQLSTATE on failure.
async fn login(fx: &Fixture, password: &str) -> Result<(), String> {
    let client = net::connect(fx.weir.port(), USER, password, DATABASE)
        .await
        .map_err(|e| {
            e.chain()
                .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
                .and_then(fixture::sqlstate)
                .unwrap_or("no SQLSTATE")
                .to_owned()
        })?;
    client
        .batch_execute("SELECT 1")
        .await
        .map_err(|e| format!("query failed: {e}"))
}

/// The role's password as PostgreSQL stores it.
async fn stored_password(pg: &PgCluster) -> String {
    let su = pg.superuser().await.expect("superuser");
    let row = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&USER],
        )
        .await
        .expect("pg_authid");
    row.get(0)
}

/// Changes the role's password in PostgreSQL (as a SCRAM verifier).
async fn alter_password(pg: &PgCluster, password: &str) {
    pg.execute(&format!(
        "SET password_encryption = 'scram-sha-256'; ALTER ROLE {USER} PASSWORD '{password}'"
    ))
    .await
    .expect("ALTER ROLE");
}

/// Replaces the auth file and makes the pooler reload it.
fn rewrite_userlist(fx: &Fixture, secret: &str) {
    let staging = fx.weir.dir().join("userlist.txt.new");
    std::fs::write(&staging, format!("\"{USER}\" \"{secret}\"\n")).expect("userlist");
    std::fs::rename(&staging, fx.weir.dir().join("userlist.txt")).expect("userlist");
    fx.weir.signal(Signal::SIGHUP).expect("SIGHUP");
}

/// SHOW USERS `credential_generation` of the application user, over the admin console.
async fn console_generation(fx: &Fixture, password: &str) -> Option<String> {
    let console = net::connect(fx.weir.port(), USER, password, "pgbouncer")
        .await
        .ok()?;
    let rows = parity::rows(&console, "SHOW USERS").await;
    rows.iter()
        .find(|r| parity::column(r, "name").as_deref() == Some(USER))
        .and_then(|r| parity::column(r, "credential_generation"))
}

async fn terminate_server_connections(fx: &Fixture) {
    fx.pg
        .execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = '{USER}' AND datname = '{DATABASE}'"
        ))
        .await
        .expect("terminating the pool's backends");
    let gone = Fixture::eventually(PATIENCE, || async {
        fx.server_connections().await.ok() == Some(0)
    })
    .await;
    assert!(gone, "the pool's backends did not go away");
}

#[tokio::test]
async fn pgbench_runs_through_a_rotation_and_the_old_password_ends_with_the_grace() {
    let opts = Options::mode("transaction", 4)
        .with("auth_rotation_grace = 300")
        .with(&format!("admin_users = {USER}"));
    let fx = Fixture::start(opts.clone()).await.expect("fixture");
    let init = fx
        .pgbench_direct(&["-i", "-q", "-s", "1"])
        .await
        .expect("pgbench -i");
    assert!(init.success(), "pgbench -i: {}", init.stderr);
    assert_eq!(
        console_generation(&fx, PASSWORD).await.as_deref(),
        None,
        "no pool yet"
    );

    // -C logs in again for every transaction, all of them with the old password.
    let bench = {
        let port = fx.weir.port();
        tokio::spawn(async move {
            weir_tests::postgres::pgbench(
                net::HOST,
                port,
                USER,
                PASSWORD,
                DATABASE,
                &["-n", "-C", "-c", "4", "-j", "2", "-t", "100"],
            )
            .await
        })
    };
    let app_db = fx
        .pg
        .connect("postgres", "", DATABASE)
        .await
        .expect("superuser");
    let started =
        Fixture::eventually(PATIENCE, || async { history_rows(&app_db).await >= 50 }).await;
    assert!(started, "pgbench did not get going:\n{}", fx.weir.log());

    // pgbench is held in the middle of its run (its INSERT waits for the lock) while the
    // password rotates, so that the rest of its logins come after the rotation.
    app_db
        .batch_execute("BEGIN; LOCK TABLE pgbench_history IN EXCLUSIVE MODE")
        .await
        .expect("LOCK");
    let at_rotation = history_rows(&app_db).await;
    assert!(at_rotation < 400, "pgbench finished before the rotation");
    // The rotation: PostgreSQL first (open server connections stay logged in), then the
    // auth file, which the pooler reloads.
    alter_password(&fx.pg, NEW_PASSWORD).await;
    rewrite_userlist(&fx, NEW_PASSWORD);
    let rotated = Fixture::eventually(PATIENCE, || async {
        console_generation(&fx, NEW_PASSWORD).await.as_deref() == Some("2")
    })
    .await;
    assert!(
        rotated,
        "SHOW USERS never showed generation 2:\n{}",
        fx.weir.log()
    );
    app_db.batch_execute("COMMIT").await.expect("COMMIT");
    assert_eq!(
        login(&fx, PASSWORD).await,
        Ok(()),
        "old password in the grace"
    );
    assert_eq!(login(&fx, NEW_PASSWORD).await, Ok(()), "new password");

    let out = bench.await.expect("pgbench task").expect("pgbench");
    assert!(
        out.success(),
        "pgbench failed:\n{}\n{}\nweir log:\n{}",
        out.stdout,
        out.stderr,
        fx.weir.log()
    );
    let summary = parse_pgbench(&out.stdout).expect("a pgbench report");
    assert_eq!(summary.failed, 0, "failed transactions: {}", out.stdout);
    assert_eq!(summary.transactions, 400, "{}", out.stdout);
    // Every transaction after `at_rotation` logged in with the old password after the reload.
    assert_eq!(history_rows(&app_db).await, 400);

    // Connections opened from now on log in to PostgreSQL with the new password.
    terminate_server_connections(&fx).await;
    assert_eq!(
        login(&fx, PASSWORD).await,
        Ok(()),
        "old password in the grace"
    );
    assert!(fx.server_connections().await.expect("count") >= 1);

    // A reload that shortens the grace ends the overlap; then only the new password works.
    let mut short = opts.clone();
    short
        .settings
        .retain(|l| !l.starts_with("auth_rotation_grace"));
    let short = short.with("auth_rotation_grace = 1");
    fx.weir
        .rewrite_config(&fixture::ini(&fx.pg, &short))
        .expect("rewrite config");
    fx.weir.signal(Signal::SIGHUP).expect("SIGHUP");
    let over = Fixture::eventually(PATIENCE, || async {
        login(&fx, PASSWORD).await == Err("28P01".to_owned())
    })
    .await;
    assert!(
        over,
        "the old password still logs in after the grace:\n{}",
        fx.weir.log()
    );
    assert_eq!(login(&fx, NEW_PASSWORD).await, Ok(()));
}

/// Regression: with a SCRAM verifier in the auth file the pool logs in to PostgreSQL with the
/// keys of its first client's proof; after a rotation those keys are refused, and the pool
/// kept them until a restart.
#[tokio::test]
async fn a_rotated_scram_verifier_logs_in_to_the_server_without_a_restart() {
    let pg = PgCluster::start().await.expect("postgres");
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("role");
    pg.create_database(DATABASE, USER).await.expect("database");
    let http = net::free_port();
    let opts = Options {
        userlist: Some(format!("\"{USER}\" \"{}\"\n", stored_password(&pg).await)),
        ..Options::mode("transaction", 2)
            .with(&format!("admin_users = {USER}"))
            .with("http_listen_addr = 127.0.0.1")
            .with(&format!("http_port = {http}"))
    };
    let weir = Fixture::start_weir(&pg, &opts).await.expect("weir");
    let fx = Fixture { pg, weir };
    assert_eq!(login(&fx, PASSWORD).await, Ok(()));
    assert_eq!(
        console_generation(&fx, PASSWORD).await.as_deref(),
        Some("1")
    );

    alter_password(&fx.pg, NEW_PASSWORD).await;
    let verifier = stored_password(&fx.pg).await;
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    rewrite_userlist(&fx, &verifier);
    let reloaded = Fixture::eventually(PATIENCE, || async {
        fx.weir.log().contains("password rotated")
    })
    .await;
    assert!(reloaded, "no rotation in the log:\n{}", fx.weir.log());
    // Until a client proves the new password the pool has no keys for the new verifier.
    assert_eq!(
        console_generation(&fx, NEW_PASSWORD).await.as_deref(),
        Some("1")
    );

    // Every server connection from now on is a new login.
    terminate_server_connections(&fx).await;
    assert_eq!(
        login(&fx, NEW_PASSWORD).await,
        Ok(()),
        "weir log:\n{}",
        fx.weir.log()
    );
    assert_eq!(
        console_generation(&fx, NEW_PASSWORD).await.as_deref(),
        Some("2")
    );
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("weir_credential_generation{database=\"app\",user=\"app\"} 2"),
        "{metrics}"
    );
    // No grace is configured: the old password is refused at once.
    assert_eq!(login(&fx, PASSWORD).await, Err("28P01".to_owned()));
}

/// Transactions pgbench's TPC-B script has completed.
async fn history_rows(db: &tokio_postgres::Client) -> i64 {
    let row = db
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .expect("pgbench_history");
    row.get(0)
}

/// The body of GET `path` on 127.0.0.1:`port`.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP endpoint");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("response");
    raw
}
