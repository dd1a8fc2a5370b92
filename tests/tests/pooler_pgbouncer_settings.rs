//! PgBouncer 1.21–1.25 settings, run side by side against PgBouncer 1.25.2 and weir on the
//! same configuration: client connection limits per database and per user, a database's own
//! `server_lifetime`, a user's own timeouts, `scram_iterations`, `application_name_add_host`
//! and `server_round_robin`.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};
use weir_tests::fixture::{scalar, sqlstate, Fixture, DATABASE, PASSWORD, USER};
use weir_tests::parity::{cluster, start, POOLERS};
use weir_tests::postgres::PgCluster;
use weir_tests::raw::{ChannelBinding, RawClient, ScramSha256};
use weir_tests::weir::{connect, WeirProcess};

/// How long a freed place or an expired connection may take to show.
const LIMIT: Duration = Duration::from_secs(15);

/// `[databases]` and `[users]` lines, then the shared `[pgbouncer]` lines and `extra`.
fn ini(pg: &PgCluster, databases: &str, users: &str, extra: &str) -> String {
    format!(
        "[databases]\n{databases}\n[users]\n{users}\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\nlisten_port = {{port}}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {{dir}}/userlist.txt\nadmin_users = {USER}\n\
         pool_mode = transaction\nlog_connections = 0\nlog_disconnections = 0\n{extra}"
    )
    .replace("{pghost}", pg.host())
    .replace("{pgport}", &pg.port().to_string())
}

/// Connects and runs a query, so that a refusal after login shows too.
async fn client(pooler: &WeirProcess, database: &str) -> Result<Client, tokio_postgres::Error> {
    let client = connect(pooler.port(), USER, PASSWORD, database)
        .await
        .map_err(|e| {
            e.downcast::<tokio_postgres::Error>()
                .expect("a PostgreSQL error")
        })?;
    client.simple_query("SELECT 1").await?;
    Ok(client)
}

/// Asserts that a new client of `database` is refused for `limit`, as PgBouncer refuses it.
async fn refused(who: &str, pooler: &WeirProcess, database: &str, limit: &str) {
    let err = client(pooler, database)
        .await
        .err()
        .unwrap_or_else(|| panic!("{who}: a client past {limit} got in"));
    assert_eq!(sqlstate(&err), Some("08P01"), "{who}: {err}");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert_eq!(
        message.as_deref(),
        Some(format!("client connections exceeded ({limit})").as_str()),
        "{who}"
    );
}

/// The `col` of database `name` in SHOW DATABASES.
async fn show_database(console: &Client, name: &str, col: &str) -> Option<String> {
    let messages = console
        .simple_query("SHOW DATABASES")
        .await
        .expect("SHOW DATABASES");
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) if row.get("name") == Some(name) => {
            row.get(col).map(str::to_owned)
        }
        _ => None,
    })
}

#[tokio::test]
async fn client_connection_limits_per_database_and_per_user() {
    let pg = cluster().await;
    let config = ini(
        &pg,
        "app = host={pghost} port={pgport} dbname=app max_db_client_connections=2\n\
         other = host={pghost} port={pgport} dbname=app",
        "app = max_user_client_connections=3",
        "",
    );
    for who in POOLERS {
        let pooler = start(who, &config).await;
        let console = connect(pooler.port(), USER, PASSWORD, "pgbouncer")
            .await
            .unwrap();
        assert_eq!(
            show_database(&console, "app", "max_client_connections").await,
            Some("2".to_owned()),
            "{who}"
        );
        assert_eq!(
            show_database(&console, "other", "max_client_connections").await,
            Some("0".to_owned()),
            "{who}"
        );
        let first = client(&pooler, "app").await.unwrap();
        let _second = client(&pooler, "app").await.unwrap();
        refused(who, &pooler, "app", "max_db_client_connections").await;
        // The console session counts as the user's third client, as in PgBouncer.
        refused(who, &pooler, "other", "max_user_client_connections").await;
        drop(first);
        let back = Fixture::eventually(LIMIT, || async { client(&pooler, "other").await.is_ok() });
        assert!(back.await, "{who}: a client leaving frees its place");
    }
}

#[tokio::test]
async fn global_client_connection_limits() {
    let pg = cluster().await;
    for (extra, limit) in [
        (
            "max_db_client_connections = 1\n",
            "max_db_client_connections",
        ),
        (
            "max_user_client_connections = 1\n",
            "max_user_client_connections",
        ),
    ] {
        let config = ini(
            &pg,
            "app = host={pghost} port={pgport} dbname=app\n\
             other = host={pghost} port={pgport} dbname=app",
            "",
            extra,
        );
        for who in POOLERS {
            let pooler = start(who, &config).await;
            let _first = client(&pooler, "app").await.unwrap();
            refused(who, &pooler, "app", limit).await;
            // A per-database limit leaves other databases alone; a per-user one does not.
            let other = client(&pooler, "other").await;
            match limit {
                "max_db_client_connections" => assert!(other.is_ok(), "{who}: {other:?}"),
                _ => refused(who, &pooler, "other", limit).await,
            }
        }
    }
}

#[tokio::test]
async fn a_databases_own_server_lifetime() {
    let pg = cluster().await;
    let config = ini(
        &pg,
        "app = host={pghost} port={pgport} dbname=app server_lifetime=1\n\
         other = host={pghost} port={pgport} dbname=app server_lifetime=0",
        "",
        "server_lifetime = 3600\n",
    );
    for who in POOLERS {
        let pooler = start(who, &config).await;
        let console = connect(pooler.port(), USER, PASSWORD, "pgbouncer")
            .await
            .unwrap();
        for (name, want) in [("app", "1"), ("other", "3600")] {
            assert_eq!(
                show_database(&console, name, "server_lifetime").await,
                Some(want.to_owned()),
                "{who}: {name}"
            );
        }
        let app = client(&pooler, "app").await.unwrap();
        let first = scalar(&app, "SELECT pg_backend_pid()").await;
        let replaced = Fixture::eventually(LIMIT, || async {
            scalar(&app, "SELECT pg_backend_pid()").await != first
        });
        assert!(
            replaced.await,
            "{who}: the connection outlived the database's server_lifetime"
        );
    }
}

/// The iteration count (`i=`) of the server-first-message the pooler sends `user`.
async fn scram_rounds(who: &str, pooler: &WeirProcess, user: &str) -> String {
    let mut raw = RawClient::connect(pooler.port()).await.expect(who);
    raw.send_startup(user, DATABASE).await.expect(who);
    let request = raw.next().await.expect(who).expect(who);
    assert_eq!(request.auth_code(), Some(10), "{who}: SASL expected");
    let scram = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    raw.send_scram_first(&scram).await.expect(who);
    let first = raw.next().await.expect(who).expect(who);
    assert_eq!(first.auth_code(), Some(11), "{who}: SASL continue expected");
    let text = String::from_utf8_lossy(&first.body[4..]).into_owned();
    text.split(',')
        .find_map(|part| part.strip_prefix("i="))
        .unwrap_or_else(|| panic!("{who}: no iteration count in {text:?}"))
        .to_owned()
}

#[tokio::test]
async fn scram_iterations_set_the_rounds_of_derived_verifiers() {
    let pg = cluster().await;
    let config = ini(
        &pg,
        "app = host={pghost} port={pgport} dbname=app",
        "",
        "scram_iterations = 1234\n",
    );
    for who in POOLERS {
        let pooler = start(who, &config).await;
        assert_eq!(scram_rounds(who, &pooler, USER).await, "1234", "{who}");
        // The verifier works: a real login goes through.
        client(&pooler, "app").await.expect(who);
    }
}

#[tokio::test]
async fn application_name_add_host_appends_the_client_address() {
    let pg = cluster().await;
    let config = ini(
        &pg,
        "app = host={pghost} port={pgport} dbname=app",
        "",
        "application_name_add_host = 1\n",
    );
    for who in POOLERS {
        let pooler = start(who, &config).await;
        for (sent, prefix) in [
            (Some("demo"), "demo - 127.0.0.1:"),
            (None, "app - 127.0.0.1:"),
        ] {
            let mut settings =
                weir_tests::weir::client_config(pooler.port(), USER, PASSWORD, "app");
            if let Some(name) = sent {
                settings.application_name(name);
            }
            let client = weir_tests::net::connect_with(&settings).await.expect(who);
            let name = scalar(&client, "SHOW application_name").await;
            let port = name
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{who}: {name:?}"));
            assert!(port.parse::<u16>().is_ok(), "{who}: {name:?}");
        }
    }
}

#[tokio::test]
async fn a_users_own_timeouts() {
    let pg = cluster().await;
    let config = ini(
        &pg,
        "app = host={pghost} port={pgport} dbname=app",
        "app = query_timeout=1 idle_transaction_timeout=1 client_idle_timeout=1",
        "query_timeout = 0\nidle_transaction_timeout = 0\nclient_idle_timeout = 0\n",
    );
    for who in POOLERS {
        let pooler = start(who, &config).await;
        let slow = client(&pooler, "app").await.expect(who);
        let err = slow.simple_query("SELECT pg_sleep(60)").await;
        assert!(
            err.is_err(),
            "{who}: the user's query_timeout did not stop the query"
        );

        let in_transaction = client(&pooler, "app").await.expect(who);
        in_transaction.simple_query("BEGIN").await.expect(who);
        let closed = Fixture::eventually(LIMIT, || async { in_transaction.is_closed() });
        assert!(
            closed.await,
            "{who}: the user's idle_transaction_timeout did not end it"
        );

        let idle = client(&pooler, "app").await.expect(who);
        let closed = Fixture::eventually(LIMIT, || async { idle.is_closed() });
        assert!(
            closed.await,
            "{who}: the user's client_idle_timeout did not end it"
        );
    }
}

#[tokio::test]
async fn server_round_robin_lends_idle_connections_in_turn() {
    let pg = cluster().await;
    for (round_robin, turns) in [("0", false), ("1", true)] {
        let config = ini(
            &pg,
            "app = host={pghost} port={pgport} dbname=app",
            "",
            &format!("server_round_robin = {round_robin}\ndefault_pool_size = 2\n"),
        );
        for who in POOLERS {
            let pooler = start(who, &config).await;
            // Two transactions at once leave two idle server connections behind.
            let a = client(&pooler, "app").await.expect(who);
            let b = client(&pooler, "app").await.expect(who);
            a.simple_query("BEGIN").await.expect(who);
            b.simple_query("BEGIN").await.expect(who);
            let first = scalar(&a, "SELECT pg_backend_pid()").await;
            let second = scalar(&b, "SELECT pg_backend_pid()").await;
            assert_ne!(first, second, "{who}");
            b.simple_query("COMMIT").await.expect(who);
            a.simple_query("COMMIT").await.expect(who);
            // a's connection went back last: most recently used first gives it again each
            // time, round robin alternates between the two.
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(scalar(&a, "SELECT pg_backend_pid()").await);
            }
            let alternates = seen[0] != seen[1] && seen[1] != seen[2];
            let same = seen.iter().all(|pid| *pid == seen[0]);
            assert!(
                if turns { alternates } else { same },
                "{who}, server_round_robin = {round_robin}: {seen:?}"
            );
        }
    }
}

/// Logs in to `pooler` with the `options` startup parameter `options`; the client, or the
/// refusal's SQLSTATE and message.
async fn with_options(pooler: &WeirProcess, options: &str) -> Result<Client, (String, String)> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(weir_tests::net::HOST)
        .port(pooler.port())
        .user(USER)
        .password(PASSWORD)
        .dbname(DATABASE)
        .options(options);
    let refusal = |e: tokio_postgres::Error| {
        let db = e.as_db_error();
        (
            db.map(|d| d.code().code().to_owned()).unwrap_or_default(),
            db.map(|d| d.message().to_owned()).unwrap_or(e.to_string()),
        )
    };
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(refusal)?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.map_err(refusal)?;
    Ok(client)
}

/// The `options` startup parameter, as PgBouncer reads it: `-c name=value` and
/// `--name=value` set the parameters the pooler tracks; another setting is refused unless
/// `ignore_startup_parameters` names it or `options`; any other form is refused.
#[tokio::test]
async fn options_set_tracked_parameters_as_pgbouncer_does() {
    let pg = cluster().await;
    let databases = "app = host={pghost} port={pgport} dbname=app";
    let strict = ini(&pg, databases, "", "");
    let lenient = ini(&pg, databases, "", "ignore_startup_parameters = options\n");
    let tracked = r"-c TimeZone=Asia/Tokyo --application_name=opt\ app";
    for who in POOLERS {
        let pooler = start(who, &strict).await;
        let client = with_options(&pooler, tracked)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:?}"));
        assert_eq!(
            scalar(&client, "SHOW TimeZone").await,
            "Asia/Tokyo",
            "{who}"
        );
        assert_eq!(
            scalar(&client, "SHOW application_name").await,
            "opt app",
            "{who}"
        );
        let refused = with_options(&pooler, "-c work_mem=1MB").await.err();
        assert_eq!(
            refused,
            Some((
                "08P01".to_owned(),
                "unsupported startup parameter in options: work_mem".to_owned()
            )),
            "{who}"
        );
        let refused = with_options(&pooler, "-X").await.err();
        assert_eq!(
            refused,
            Some((
                "08P01".to_owned(),
                "unsupported options startup parameter: only '-c config=val' and \
                 '--config=val' are allowed"
                    .to_owned()
            )),
            "{who}"
        );
        drop(pooler);

        let pooler = start(who, &lenient).await;
        let client = with_options(&pooler, "-c work_mem=1MB -c TimeZone=Asia/Tokyo")
            .await
            .unwrap_or_else(|e| panic!("{who}: {e:?}"));
        assert_eq!(
            scalar(&client, "SHOW TimeZone").await,
            "Asia/Tokyo",
            "{who}"
        );
        assert_eq!(scalar(&client, "SHOW work_mem").await, "4MB", "{who}");
    }
}
