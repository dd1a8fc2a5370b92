//! Configurations PgBouncer 1.25.2 accepts start weir too: each row runs against PgBouncer
//! and weir on the same text, both must serve `SELECT 1`, and where PgBouncer adjusts or
//! resolves a value, SHOW DATABASES / SHOW CONFIG and the server connections opened agree.
//!
//! The `etc/` and documentation rows keep the settings of PgBouncer's own `etc/pgbouncer.ini`,
//! `etc/pgbouncer-minimal.ini`, `doc/config.md` and `doc/usage.md`, with paths, hosts and
//! ports pointed at the test's PostgreSQL and directory.

use std::time::Duration;

use weir_tests::fixture::{Fixture, DATABASE, PASSWORD, USER};
use weir_tests::parity::{self, column, POOLERS};
use weir_tests::postgres::PgCluster;
use weir_tests::weir::{connect, WeirProcess};

/// How long a pool may take to open its `min_pool_size` connections.
const WARM_LIMIT: Duration = Duration::from_secs(15);

/// What a row expects of both poolers.
enum Expect {
    /// `SHOW CONFIG`: the value of a setting.
    Config(&'static str, &'static str),
    /// `SHOW DATABASES`: a column of a database's row.
    Database(&'static str, &'static str, &'static str),
    /// The pool of the application database keeps exactly this many server connections
    /// while a client is connected (a `min_pool_size` capped by a limit).
    WarmServers(i64),
}

struct Row {
    name: &'static str,
    /// `{pghost}`/`{pgport}` are the test's PostgreSQL; `{port}`/`{dir}` the pooler's.
    ini: &'static str,
    /// The database `SELECT 1` runs on, as the application user; `None`: the row only has
    /// to start (no database of it can reach the test's PostgreSQL).
    select_on: Option<&'static str>,
    expect: &'static [Expect],
}

/// The `[pgbouncer]` lines every adjusted-value row shares: TCP on loopback, the test's
/// userlist, and the application user as console admin for the SHOW checks.
macro_rules! common {
    () => {
        "listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {dir}/userlist.txt\nadmin_users = app\n\
         log_connections = 0\nlog_disconnections = 0\n"
    };
}

const ROWS: &[Row] = &[
    Row {
        name: "min_pool_size above max_db_connections",
        ini: concat!(
            "[databases]\napp = host={pghost} port={pgport} dbname=app\n[pgbouncer]\n",
            common!(),
            "min_pool_size = 5\nmax_db_connections = 2\n"
        ),
        select_on: Some("app"),
        expect: &[
            Expect::Config("min_pool_size", "5"),
            Expect::Config("max_db_connections", "2"),
            Expect::Database("app", "min_pool_size", "5"),
            Expect::Database("app", "max_connections", "2"),
            Expect::WarmServers(2),
        ],
    },
    Row {
        name: "min_pool_size above default_pool_size",
        ini: concat!(
            "[databases]\napp = host={pghost} port={pgport} dbname=app\n[pgbouncer]\n",
            common!(),
            "min_pool_size = 30\ndefault_pool_size = 3\n"
        ),
        select_on: Some("app"),
        expect: &[
            Expect::Database("app", "pool_size", "3"),
            Expect::Database("app", "min_pool_size", "30"),
            Expect::WarmServers(3),
        ],
    },
    Row {
        name: "a database's min_pool_size above its pool_size",
        ini: concat!(
            "[databases]\napp = host={pghost} port={pgport} dbname=app pool_size=2 min_pool_size=4\n\
             [pgbouncer]\n",
            common!()
        ),
        select_on: Some("app"),
        expect: &[
            Expect::Database("app", "pool_size", "2"),
            Expect::Database("app", "min_pool_size", "4"),
            Expect::WarmServers(2),
        ],
    },
    Row {
        name: "a database's min_pool_size above its max_db_connections",
        ini: concat!(
            "[databases]\n\
             app = host={pghost} port={pgport} dbname=app min_pool_size=3 max_db_connections=1\n\
             [pgbouncer]\n",
            common!()
        ),
        select_on: Some("app"),
        expect: &[
            Expect::Database("app", "min_pool_size", "3"),
            Expect::Database("app", "max_connections", "1"),
            Expect::WarmServers(1),
        ],
    },
    Row {
        name: "-1 on a database inherits, 0 limits fall back to the global ones",
        ini: concat!(
            "[databases]\n\
             app = host={pghost} port={pgport} dbname=app pool_size=-1 min_pool_size=-1 \
             reserve_pool_size=-1 max_db_connections=0\n\
             [users]\napp = pool_size=-1 max_user_connections=0\n\
             [pgbouncer]\n",
            common!(),
            "default_pool_size = 7\nmin_pool_size = 1\nreserve_pool_size = 2\n\
             max_db_connections = 9\nmax_user_connections = 8\n"
        ),
        select_on: Some("app"),
        expect: &[
            Expect::Database("app", "pool_size", "7"),
            Expect::Database("app", "min_pool_size", "1"),
            Expect::Database("app", "reserve_pool_size", "2"),
            Expect::Database("app", "max_connections", "9"),
            Expect::WarmServers(1),
        ],
    },
    Row {
        name: "a sticky unix_socket_mode",
        ini: concat!(
            "[databases]\napp = host={pghost} port={pgport} dbname=app\n[pgbouncer]\n",
            "listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {dir}\n\
             unix_socket_mode = 01777\nauth_type = scram-sha-256\n\
             auth_file = {dir}/userlist.txt\n"
        ),
        select_on: Some("app"),
        expect: &[],
    },
    Row {
        name: "auth_user with an empty auth_query",
        ini: concat!(
            "[databases]\napp = host={pghost} port={pgport} dbname=app\n[pgbouncer]\n",
            common!(),
            "auth_user = app\nauth_query =\n"
        ),
        select_on: Some("app"),
        expect: &[],
    },
    Row {
        name: "etc/pgbouncer.ini",
        ini: "[databases]\napp = host={pghost} port={pgport} dbname=app\n[users]\n\
              [pgbouncer]\nlogfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n\
              listen_addr = localhost\nlisten_port = {port}\nunix_socket_dir =\n\
              auth_type = md5\nauth_file = {dir}/userlist.txt\n",
        select_on: Some("app"),
        expect: &[],
    },
    Row {
        name: "etc/pgbouncer.ini with every example setting it shows",
        ini: ETC_EVERY_SETTING,
        select_on: Some("app"),
        expect: &[
            Expect::Config("max_prepared_statements", "0"),
            Expect::Database("nondefaultdb", "pool_size", "50"),
            Expect::Database("nondefaultdb", "reserve_pool_size", "10"),
            Expect::Database("forcedb", "force_user", "baz"),
            Expect::Database("forcedb", "port", "300"),
        ],
    },
    Row {
        name: "etc/pgbouncer-minimal.ini",
        // Only where to listen is added: the file listens on the Unix socket alone.
        ini: "[databases]\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
              unix_socket_dir = {dir}\n",
        select_on: None,
        expect: &[],
    },
    Row {
        name: "doc/config.md: small example",
        ini: "[databases]\n\
              template1 = host={pghost} port={pgport} dbname=template1 auth_user=someuser\n\
              [pgbouncer]\npool_mode = session\nlisten_port = {port}\nlisten_addr = localhost\n\
              unix_socket_dir =\nauth_type = md5\nauth_file = {dir}/userlist.txt\n\
              logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n\
              admin_users = someuser\nstats_users = stat_collector\n",
        select_on: Some("template1"),
        expect: &[],
    },
    Row {
        name: "doc/config.md: database examples",
        ini: "[databases]\nfoodb =\nbardb = host={pghost} port={pgport} dbname=app\n\
              forcedb = host=localhost port=300 user=baz password=foo \
              client_encoding=UNICODE datestyle=ISO\n\
              [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
              unix_socket_dir =\nauth_file = {dir}/userlist.txt\nadmin_users = app\n",
        select_on: Some("bardb"),
        expect: &[
            Expect::Database("foodb", "port", "5432"),
            Expect::Database("bardb", "database", "app"),
            Expect::Database("forcedb", "force_user", "baz"),
        ],
    },
    Row {
        name: "doc/config.md: so_reuseport with peers",
        ini: "[databases]\npostgres = host={pghost} port={pgport} dbname=postgres\n\
              [peers]\n1 = host={dir}/pgbouncer1\n2 = host={dir}/pgbouncer2\n\
              [pgbouncer]\nlisten_addr=127.0.0.1\nlisten_port = {port}\n\
              auth_file={dir}/userlist.txt\nso_reuseport=1\nunix_socket_dir={dir}\npeer_id=1\n",
        select_on: Some("postgres"),
        expect: &[],
    },
    Row {
        name: "doc/usage.md: quick start",
        ini: "[databases]\ntemplate1 = host={pghost} port={pgport} dbname=template1\n\
              [pgbouncer]\nlisten_port = {port}\nlisten_addr = localhost\nunix_socket_dir =\n\
              auth_type = md5\nauth_file = {dir}/userlist.txt\nlogfile = {dir}/pgbouncer.log\n\
              pidfile = {dir}/pgbouncer.pid\nadmin_users = someuser\n",
        select_on: Some("template1"),
        expect: &[],
    },
];

/// PgBouncer's `etc/pgbouncer.ini` with the example lines of its comments switched on,
/// except paths that do not exist here (`<system default>`, `resolv_conf`) and the
/// Windows-only `service_name`, which PgBouncer on Linux refuses.
const ETC_EVERY_SETTING: &str = "\
[databases]
app = host={pghost} port={pgport} dbname=app
foodb = auth_user=bar
bardb = host=localhost dbname=bazdb
forcedb = host=localhost port=300 user=baz password=foo client_encoding=UNICODE datestyle=ISO connect_query='SELECT 1'
nondefaultdb = pool_size=50 reserve_pool_size=10
bazdb = auth_dbname=foo max_db_client_connections=10
* = host=testserver

[users]
user1 = pool_size=5 reserve_pool_size=2 pool_mode=transaction max_user_connections=10 max_user_client_connections=20

[pgbouncer]
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
listen_addr = localhost
listen_port = {port}
unix_socket_dir = {dir}
unix_socket_mode = 0777
unix_socket_group =
peer_id = 0
query_wait_notify = 5
client_tls_sslmode = disable
client_tls_key_file =
client_tls_cert_file =
client_tls_ciphers = default
client_tls13_ciphers =
client_tls_protocols = secure
client_tls_dheparams = auto
client_tls_ecdhcurve = auto
server_tls_sslmode = prefer
server_tls_key_file =
server_tls_cert_file =
server_tls_protocols = secure
server_tls_ciphers = default
server_tls13_ciphers =
auth_type = md5
auth_file = {dir}/userlist.txt
auth_hba_file =
auth_ident_file =
auth_ldap_options =
auth_query = SELECT rolname, CASE WHEN rolvaliduntil < pg_catalog.now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin
auth_dbname =
admin_users = app, someadmin, otheradmin
stats_users = stats, root
pool_mode = session
max_prepared_statements = 0
scram_iterations = 4096
server_reset_query = DISCARD ALL
server_reset_query_always = 0
track_extra_parameters = IntervalStyle
ignore_startup_parameters = extra_float_digits
server_check_query = select 1
server_check_delay = 30
server_fast_close = 0
application_name_add_host = 0
stats_period = 60
max_client_conn = 100
default_pool_size = 20
min_pool_size = 0
reserve_pool_size = 0
reserve_pool_timeout = 5
max_db_connections = 0
max_user_connections = 0
server_round_robin = 0
syslog = 0
syslog_facility = daemon
syslog_ident = pgbouncer
log_connections = 1
log_disconnections = 1
log_pooler_errors = 1
log_stats = 1
verbose = 0
server_lifetime = 3600
server_idle_timeout = 600
server_connect_timeout = 15
server_login_retry = 15
query_timeout = 0
query_wait_timeout = 120
cancel_wait_timeout = 10
client_idle_timeout = 0
client_login_timeout = 60
autodb_idle_timeout = 3600
idle_transaction_timeout = 0
suspend_timeout = 10
pkt_buf = 4096
listen_backlog = 128
sbuf_loopcnt = 5
max_packet_size = 2147483647
so_reuseport = 0
tcp_defer_accept = 0
tcp_socket_buffer = 0
tcp_keepalive = 1
tcp_keepcnt = 0
tcp_keepidle = 0
tcp_keepintvl = 0
tcp_user_timeout = 0
dns_max_ttl = 15
dns_zone_check_period = 0
dns_nxdomain_ttl = 15
disable_pqexec = 0
job_name = pgbouncer
";

/// Runs `row` against one pooler; `who` names it in failures.
async fn check(pg: &PgCluster, row: &Row, who: &str, pooler: &WeirProcess) {
    let context = |what: &str| format!("{}: {who}: {what}\nlog:\n{}", row.name, pooler.log());
    let Some(database) = row.select_on else {
        return;
    };
    let client = connect(pooler.port(), USER, PASSWORD, database)
        .await
        .unwrap_or_else(|e| panic!("{}", context(&format!("connecting: {e:#}"))));
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .unwrap_or_else(|e| panic!("{}", context(&format!("SELECT 1: {e}"))))
        .get(0);
    assert_eq!(one, 1, "{}", context("SELECT 1"));
    if row.expect.is_empty() {
        return;
    }
    let console = connect(pooler.port(), USER, PASSWORD, "pgbouncer")
        .await
        .unwrap_or_else(|e| panic!("{}", context(&format!("console: {e:#}"))));
    for expect in row.expect {
        match *expect {
            Expect::Config(key, want) => {
                let rows = parity::rows(&console, "SHOW CONFIG").await;
                let got = rows
                    .iter()
                    .find(|r| column(r, "key").as_deref() == Some(key))
                    .and_then(|r| column(r, "value"));
                assert_eq!(got.as_deref(), Some(want), "{}", context(key));
            }
            Expect::Database(name, col, want) => {
                let rows = parity::rows(&console, "SHOW DATABASES").await;
                let got = rows
                    .iter()
                    .find(|r| column(r, "name").as_deref() == Some(name))
                    .and_then(|r| column(r, col));
                assert_eq!(
                    got.as_deref(),
                    Some(want),
                    "{}",
                    context(&format!("{name}.{col}"))
                );
            }
            Expect::WarmServers(want) => {
                let reached = Fixture::eventually(WARM_LIMIT, || async {
                    pg.backends(USER, DATABASE).await.unwrap_or(-1) == want
                })
                .await;
                let now = pg.backends(USER, DATABASE).await.unwrap_or(-1);
                assert!(
                    reached,
                    "{}",
                    context(&format!("{now} server connections, expected {want}"))
                );
            }
        }
    }
    drop(client);
    // The next pooler starts from no server connections.
    drop(console);
}

#[tokio::test]
async fn configurations_pgbouncer_accepts_start_weir_with_the_same_values() {
    let pg = parity::cluster().await;
    for row in ROWS {
        let ini = row
            .ini
            .replace("{pghost}", pg.host())
            .replace("{pgport}", &pg.port().to_string());
        for who in POOLERS {
            let userlist = format!("\"{USER}\" \"{PASSWORD}\"\n");
            let pooler = parity::start_named(who, &ini, &userlist)
                .await
                .unwrap_or_else(|e| panic!("{}: {who} does not start: {e:#}", row.name));
            check(&pg, row, who, &pooler).await;
            drop(pooler);
            // Server connections of this pooler are gone before the next one counts its own.
            let gone = Fixture::eventually(WARM_LIMIT, || async {
                pg.backends(USER, DATABASE).await.unwrap_or(-1) == 0
            })
            .await;
            assert!(gone, "{}: {who} left server connections behind", row.name);
        }
    }
}

#[tokio::test]
async fn without_a_readable_auth_file_both_start_and_refuse_every_login() {
    let pg = parity::cluster().await;
    // The database logs in with its own credentials, so only the pooler can refuse a client.
    let database = format!(
        "[databases]\napp = host={} port={} dbname=app user={USER} password={PASSWORD}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {{port}}\nunix_socket_dir =\n",
        pg.host(),
        pg.port()
    );
    // trust still needs to know the user, so an unknown one is refused, as in PgBouncer.
    for auth in [
        "auth_type = trust\n",
        "auth_type = trust\nauth_file = {dir}/missing.txt\n",
        "auth_type = scram-sha-256\nauth_file = {dir}/missing.txt\n",
    ] {
        let ini = format!("{database}{auth}");
        for who in POOLERS {
            let pooler = parity::start_named(who, &ini, "")
                .await
                .unwrap_or_else(|e| panic!("{who} with {auth:?} does not start: {e:#}"));
            let login = connect(pooler.port(), USER, PASSWORD, DATABASE).await;
            assert!(login.is_err(), "{who} with {auth:?} let an unknown user in");
        }
    }
}
