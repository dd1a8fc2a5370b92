//! Whole-file tests: parsing, warnings, validation, includes, precedence and round trips.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

const INI: &str = "pgbouncer.ini";

fn parse_ok(text: &str) -> Loaded {
    match Config::parse(text, Path::new(INI)) {
        Ok(loaded) => loaded,
        Err(e) => panic!("expected a valid config, got: {e}\n---\n{text}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    match Config::parse(text, Path::new(INI)) {
        Ok(loaded) => panic!("expected an error, got {loaded:?}\n---\n{text}"),
        Err(e) => e,
    }
}

/// The smallest config that passes validation with PgBouncer's defaults.
const MINIMAL: &str = "[pgbouncer]\nauth_file = userlist.txt\n";

fn minimal_settings() -> Settings {
    Settings {
        auth_file: Some(PathBuf::from("userlist.txt")),
        ..Settings::default()
    }
}

const EVERY_SETTING: &str = "\
[pgbouncer]
logfile = /var/log/weir.log
pidfile = /run/weir.pid
listen_addr = 127.0.0.1, ::1
listen_port = 7432
unix_socket_dir = /run/weir
unix_socket_mode = 0700
unix_socket_group = weir
user = weir
pool_mode = transaction
max_client_conn = 5000
default_pool_size = 30
min_pool_size = 5
reserve_pool_size = 3
reserve_pool_timeout = 2.5
max_db_connections = 90
max_user_connections = 80
max_db_client_connections = 500
max_user_client_connections = 400
server_round_robin = 1
track_extra_parameters = IntervalStyle, search_path
ignore_startup_parameters = extra_float_digits,options
disable_pqexec = yes
application_name_add_host = on
stats_period = 30
log_stats = 0
cancel_wait_timeout = 2
scram_iterations = 10000
max_prepared_statements = 0
auth_type = scram-sha-256
auth_file = /etc/weir/userlist.txt
auth_hba_file = /etc/weir/hba.conf
auth_ident_file = /etc/weir/ident.conf
auth_user = pgbouncer_auth
auth_query = SELECT usename, passwd FROM user_lookup($1)
auth_dbname = authdb
auth_query_cache_ttl = 120
auth_rotation_grace = 300
log_connections = 0
log_disconnections = no
log_pooler_errors = off
verbose = 2
admin_users = admin, root
stats_users = stats
server_reset_query = DEALLOCATE ALL
server_reset_query_always = true
server_check_delay = 0
server_check_query = SELECT 1
server_lifetime = 2h
server_idle_timeout = 5min
server_connect_timeout = 3
server_login_retry = 500ms
client_login_timeout = 10s
query_timeout = 300
query_wait_timeout = 0
client_idle_timeout = 1d
idle_transaction_timeout = 0.25
pkt_buf = 8192
max_packet_size = 1048576
so_reuseport = 1
tcp_keepalive = 0
tcp_keepcnt = 4
tcp_keepidle = 120
tcp_keepintvl = 20
tcp_user_timeout = 2500
tcp_socket_buffer = 0x10000
tcp_defer_accept = 0
http_listen_addr = 127.0.0.1
http_port = 9127
shutdown_timeout = 2min
pinning = refuse
failover_hold = off
replica_max_lag = 1.5
service_account_audience = db.example
service_account_cache_ttl = 30
service_account_cache_size = 50
peer_id = 5
worker_threads = 4
client_tls_sslmode = verify-full
client_tls_key_file = /etc/weir/tls/server.key
client_tls_cert_file = /etc/weir/tls/server.crt
client_tls_ca_file = /etc/weir/tls/ca.crt
client_tls_protocols = tlsv1.3
client_tls_ciphers = secure
server_tls_sslmode = verify-ca
server_tls_ca_file = /etc/weir/tls/db-ca.crt
server_tls_key_file = /etc/weir/tls/client.key
server_tls_cert_file = /etc/weir/tls/client.crt
server_tls_protocols = tlsv1.2,tlsv1.3
server_tls_ciphers = normal
server_cleartext_password = allow
server_channel_binding = require
";

fn every_setting_expected() -> Settings {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    Settings {
        logfile: Some("/var/log/weir.log".into()),
        pidfile: Some("/run/weir.pid".into()),
        listen_addr: "127.0.0.1, ::1".into(),
        listen_port: 7432,
        unix_socket_dir: "/run/weir".into(),
        unix_socket_mode: 0o700,
        unix_socket_group: Some("weir".into()),
        user: Some("weir".into()),
        pool_mode: PoolMode::Transaction,
        max_client_conn: 5000,
        default_pool_size: 30,
        min_pool_size: 5,
        reserve_pool_size: 3,
        reserve_pool_timeout: Duration::from_millis(2500),
        max_db_connections: 90,
        max_user_connections: 80,
        max_db_client_connections: 500,
        max_user_client_connections: 400,
        server_round_robin: true,
        track_extra_parameters: strings(&["IntervalStyle", "search_path"]),
        ignore_startup_parameters: strings(&["extra_float_digits", "options"]),
        disable_pqexec: true,
        application_name_add_host: true,
        scram_iterations: 10000,
        stats_period: Duration::from_secs(30),
        log_stats: false,
        cancel_wait_timeout: Duration::from_secs(2),
        max_prepared_statements: 0,
        auth_type: AuthType::ScramSha256,
        auth_file: Some("/etc/weir/userlist.txt".into()),
        auth_hba_file: Some("/etc/weir/hba.conf".into()),
        auth_ident_file: Some("/etc/weir/ident.conf".into()),
        auth_user: Some("pgbouncer_auth".into()),
        auth_query: "SELECT usename, passwd FROM user_lookup($1)".into(),
        auth_dbname: Some("authdb".into()),
        auth_query_cache_ttl: Duration::from_secs(120),
        auth_rotation_grace: Duration::from_secs(300),
        log_connections: false,
        log_disconnections: false,
        log_pooler_errors: false,
        verbose: 2,
        admin_users: strings(&["admin", "root"]),
        stats_users: strings(&["stats"]),
        server_reset_query: "DEALLOCATE ALL".into(),
        server_reset_query_always: true,
        server_check_delay: Duration::ZERO,
        server_check_query: "SELECT 1".into(),
        server_lifetime: Duration::from_secs(7200),
        server_idle_timeout: Duration::from_secs(300),
        server_connect_timeout: Duration::from_secs(3),
        server_login_retry: Duration::from_millis(500),
        client_login_timeout: Duration::from_secs(10),
        query_timeout: Duration::from_secs(300),
        query_wait_timeout: Duration::ZERO,
        client_idle_timeout: Duration::from_secs(86_400),
        idle_transaction_timeout: Duration::from_millis(250),
        pkt_buf: 8192,
        max_packet_size: 1_048_576,
        so_reuseport: true,
        tcp_keepalive: false,
        tcp_keepcnt: 4,
        tcp_keepidle: Duration::from_secs(120),
        tcp_keepintvl: Duration::from_secs(20),
        tcp_user_timeout: Duration::from_millis(2500),
        tcp_socket_buffer: 65536,
        tcp_defer_accept: false,
        http_listen_addr: "127.0.0.1".into(),
        http_port: 9127,
        shutdown_timeout: Duration::from_secs(120),
        pinning: Pinning::Refuse,
        failover_hold: false,
        replica_max_lag: Duration::from_millis(1500),
        service_account_audience: "db.example".into(),
        service_account_cache_ttl: Duration::from_secs(30),
        service_account_cache_size: 50,
        peer_id: 5,
        worker_threads: 4,
        client_tls_sslmode: TlsMode::VerifyFull,
        client_tls_key_file: Some("/etc/weir/tls/server.key".into()),
        client_tls_cert_file: Some("/etc/weir/tls/server.crt".into()),
        client_tls_ca_file: Some("/etc/weir/tls/ca.crt".into()),
        client_tls_protocols: "tlsv1.3".into(),
        client_tls_ciphers: "secure".into(),
        server_tls_sslmode: TlsMode::VerifyCa,
        server_tls_ca_file: Some("/etc/weir/tls/db-ca.crt".into()),
        server_tls_key_file: Some("/etc/weir/tls/client.key".into()),
        server_tls_cert_file: Some("/etc/weir/tls/client.crt".into()),
        server_tls_protocols: "tlsv1.2,tlsv1.3".into(),
        server_tls_ciphers: "normal".into(),
        server_cleartext_password: CleartextPassword::Allow,
        server_channel_binding: ChannelBindingMode::Require,
    }
}

#[test]
fn every_setting_parses() {
    let loaded = parse_ok(EVERY_SETTING);
    assert_eq!(loaded.config.pgbouncer, every_setting_expected());
    // Every key is set to something other than its default: exactly the keys weir does not
    // act on say so, each with its reason.
    let warned: Vec<(&str, &str)> = loaded
        .warnings
        .iter()
        .map(|w| (w.key.as_deref().unwrap_or_default(), w.message.as_str()))
        .collect();
    let ignored: Vec<(&str, String)> = Settings::KEYS
        .iter()
        .filter_map(|key| match Settings::support(key) {
            Some(Support::Ignored(why)) => Some((*key, parse::ignored_setting(why))),
            Some(Support::Implemented) => None,
            None => panic!("{key} has no support entry"),
        })
        .collect();
    let expected: Vec<(&str, &str)> = ignored.iter().map(|(k, m)| (*k, m.as_str())).collect();
    assert_eq!(warned, expected);
}

#[test]
fn ignored_settings_left_at_their_default_do_not_warn() {
    let defaults = Settings::default();
    let mut text = MINIMAL.to_owned();
    for key in Settings::KEYS {
        if let (Some(Support::Ignored(_)), Some(value)) =
            (Settings::support(key), defaults.get(key))
        {
            if !value.is_empty() {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
    }
    let loaded = parse_ok(&text);
    assert!(loaded.warnings.is_empty(), "{:?}\n{text}", loaded.warnings);
}

#[test]
fn the_every_setting_fixture_covers_every_key() {
    let mut in_fixture: Vec<&str> = EVERY_SETTING
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut known: Vec<&str> = Settings::KEYS.to_vec();
    in_fixture.sort_unstable();
    known.sort_unstable();
    assert_eq!(in_fixture, known);
    // And every value in it differs from the default, so each line is really tested.
    let defaults = Settings::default();
    let parsed = every_setting_expected();
    for key in Settings::KEYS {
        assert_ne!(defaults.get(key), parsed.get(key), "{key}");
    }
}

#[test]
fn defaults_apply_to_unset_settings() {
    let loaded = parse_ok(MINIMAL);
    assert_eq!(loaded.config.pgbouncer, minimal_settings());
    assert!(loaded.config.databases.is_empty());
    assert!(loaded.config.users.is_empty());
    assert!(loaded.warnings.is_empty());
}

#[test]
fn pgbouncer_keys_and_section_names_ignore_case() {
    let loaded =
        parse_ok("[PgBouncer]\nAUTH_FILE = u.txt\nMax_Client_Conn = 7\n[DATABASES]\nApp =\n");
    assert_eq!(loaded.config.pgbouncer.max_client_conn, 7);
    // Database names keep their case: they are what clients ask for.
    assert!(loaded.config.databases.contains_key("App"));
}

#[test]
fn invalid_values_name_file_line_and_key() {
    let e = parse_err("[pgbouncer]\nauth_file = u\nmax_client_conn = lots\n");
    assert_eq!(
        e.to_string(),
        "pgbouncer.ini:3: max_client_conn: expected a whole number, got \"lots\""
    );
    let cases = [
        ("listen_port", "http", "expected a port number"),
        ("listen_port", "70000", "expected a port number"),
        ("unix_socket_mode", "rw", "expected an octal file mode"),
        ("pool_mode", "batch", "expected a pool mode"),
        ("default_pool_size", "twenty", "expected a whole number"),
        (
            "reserve_pool_timeout",
            "soon",
            "expected a duration in seconds",
        ),
        ("server_lifetime", "-1", "expected a duration"),
        (
            "tcp_user_timeout",
            "x",
            "expected a duration in milliseconds",
        ),
        ("log_connections", "maybe", "expected a boolean"),
        ("auth_type", "pam", "not supported by weir"),
        ("client_tls_sslmode", "always", "expected an sslmode"),
        (
            "server_cleartext_password",
            "sometimes",
            "expected allow or refuse",
        ),
        (
            "server_channel_binding",
            "always",
            "expected disable, prefer or require",
        ),
        ("auth_type", "password", "expected an authentication type"),
        ("pinning", "sometimes", "expected pin or refuse"),
        ("failover_hold", "maybe", "expected a boolean"),
        ("http_port", "-1", "expected a port number"),
    ];
    for (key, value, needle) in cases {
        let text = format!("; comment\n[pgbouncer]\n{key} = {value}\n");
        let e = parse_err(&text);
        assert_eq!(e.file, PathBuf::from(INI), "{key}");
        assert_eq!(e.line, Some(3), "{key}");
        assert_eq!(e.key.as_deref(), Some(key), "{key}");
        assert!(e.message.contains(needle), "{key}: {e}");
        assert!(e.message.contains(value), "{key}: {e}");
    }
}

#[test]
fn unknown_and_unsupported_settings_warn_and_are_ignored() {
    let text = format!(
        "{MINIMAL}frobnicate = 1\nclient_tls13_ciphers = x\nserver_tls13_ciphers = y\n\
         dns_max_ttl = 5\nConfFile = /x\n"
    );
    let loaded = parse_ok(&text);
    assert_eq!(loaded.config.pgbouncer, minimal_settings());
    let summary: Vec<(Option<usize>, Option<&str>, &str)> = loaded
        .warnings
        .iter()
        .map(|w| (w.line, w.key.as_deref(), w.message.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some(3), Some("frobnicate"), "unknown setting, ignored"),
            (
                Some(4),
                Some("client_tls13_ciphers"),
                "not supported by weir, ignored"
            ),
            (
                Some(5),
                Some("server_tls13_ciphers"),
                "not supported by weir, ignored"
            ),
            (
                Some(6),
                Some("dns_max_ttl"),
                "not supported by weir, ignored"
            ),
            (Some(7), Some("conffile"), "not supported by weir, ignored"),
        ]
    );
    assert_eq!(
        loaded.warnings[0].to_string(),
        "pgbouncer.ini:3: frobnicate: unknown setting, ignored"
    );
}

#[test]
fn unsupported_entry_parameters_warn() {
    let text = format!(
        "[databases]\nro = host=replica query_wait_timeout=10\n\
         [users]\nbob = pool_size=2 transaction_timeout=10\n{MINIMAL}"
    );
    let loaded = parse_ok(&text);
    let messages: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        vec![
            "pgbouncer.ini:2: ro: parameter query_wait_timeout is not supported by weir, ignored",
            "pgbouncer.ini:4: bob: parameter transaction_timeout is not supported by weir, ignored",
        ]
    );
    assert_eq!(
        loaded.config.databases["ro"].host.as_deref(),
        Some("replica")
    );
    assert_eq!(loaded.config.users["bob"].pool_size, Some(2));
}

#[test]
fn keys_set_twice_warn_and_the_later_value_wins() {
    let text = format!("{MINIMAL}max_client_conn = 10\n[databases]\na = port=1\na = port=2\n[pgbouncer]\nmax_client_conn = 20\n");
    let loaded = parse_ok(&text);
    assert_eq!(loaded.config.pgbouncer.max_client_conn, 20);
    assert_eq!(loaded.config.databases["a"].port, vec![2]);
    let messages: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        vec![
            "pgbouncer.ini:6: a: set more than once (also at pgbouncer.ini:5); the later value wins",
            "pgbouncer.ini:8: max_client_conn: set more than once (also at pgbouncer.ini:3); the \
             later value wins",
        ]
    );
}

#[test]
fn structural_errors() {
    let e = parse_err("max_client_conn = 5\n[pgbouncer]\n");
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(1), Some("max_client_conn"))
    );
    assert!(e.message.contains("outside of any section"), "{e}");

    let e = parse_err(&format!("{MINIMAL}[sessions]\n"));
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("unknown section [sessions]"), "{e}");

    let e = parse_err("[databases]\na = host=x\n");
    assert_eq!(e.to_string(), "pgbouncer.ini: missing [pgbouncer] section");

    let e = parse_err(&format!("{MINIMAL}[databases]\npgbouncer = host=x\n"));
    assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("pgbouncer")));
    assert!(e.message.contains("reserved"), "{e}");

    let e = parse_err(&format!(
        "{MINIMAL}[databases]\napp = host=x sslmode=require\n"
    ));
    assert_eq!(
        e.to_string(),
        "pgbouncer.ini:4: app: unknown parameter \"sslmode\" in connection string"
    );

    let e = parse_err(&format!(
        "{MINIMAL}[databases]\napp = host=x pool_size=big\n"
    ));
    assert_eq!(
        e.to_string(),
        "pgbouncer.ini:4: app: pool_size: expected a whole number, got \"big\""
    );

    let e = parse_err(&format!("{MINIMAL}[users]\nbob = max_user_connections=\n"));
    assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("bob")));
    assert!(e.message.contains("empty value"), "{e}");

    let e = parse_err(&format!("{MINIMAL}[databases]\nbroken line\n"));
    assert_eq!((e.line, e.key.as_deref()), (Some(4), None));
}

#[test]
fn comments_whitespace_and_quoting() {
    let text = "\u{feff}; PgBouncer-style comment\n# shell-style comment\n\n\
                [databases]   ; trailing comment after a header\n\
                \"my db\" = dbname='my db' connect_query='SELECT ''x'', 1'\n\
                  indented =  host=a   port=5433   \n\
                'o''k' =\n\
                [pgbouncer]\r\n\
                auth_file=u.txt\r\n\
                server_reset_query = DISCARD ALL; -- not a comment\n\
                listen_addr =\t*\t\n\
                ignore_startup_parameters = \n";
    let loaded = parse_ok(text);
    let c = &loaded.config;
    let db = &c.databases["my db"];
    assert_eq!(db.dbname.as_deref(), Some("my db"));
    assert_eq!(db.connect_query.as_deref(), Some("SELECT 'x', 1"));
    assert_eq!(c.databases["indented"].port, vec![5433]);
    assert_eq!(c.databases["o'k"], DatabaseEntry::default());
    assert_eq!(c.pgbouncer.auth_file, Some(PathBuf::from("u.txt")));
    assert_eq!(
        c.pgbouncer.server_reset_query,
        "DISCARD ALL; -- not a comment"
    );
    assert_eq!(c.pgbouncer.listen_addr, "*");
    assert!(c.pgbouncer.ignore_startup_parameters.is_empty());
}

#[test]
fn fallback_database() {
    let text = format!("[databases]\n* = host=fallback port=6000\nexact = host=exact\n{MINIMAL}");
    let c = parse_ok(&text).config;
    let (key, entry) = c.database("exact").expect("exact entry");
    assert_eq!((key, entry.host.as_deref()), ("exact", Some("exact")));
    let (key, entry) = c.database("anything").expect("fallback entry");
    assert_eq!((key, entry.host.as_deref()), ("*", Some("fallback")));
    assert_eq!(entry.dbname_or("anything"), "anything");

    let without = parse_ok(&format!("[databases]\nexact = host=exact\n{MINIMAL}")).config;
    assert!(without.database("anything").is_none());
}

#[test]
fn effective_values_follow_user_then_database_then_global() {
    let text = "\
[databases]
plain =
tuned = pool_size=7 min_pool_size=2 reserve_pool_size=3 max_db_connections=40 pool_mode=statement
* = pool_size=9 max_db_connections=11
[users]
bob = pool_mode=transaction pool_size=4 max_user_connections=6 reserve_pool_size=1
carol = max_user_connections=8
erin = min_pool_size=3
[pgbouncer]
auth_file = u.txt
pool_mode = session
default_pool_size = 20
min_pool_size = 1
reserve_pool_size = 5
max_db_connections = 100
max_user_connections = 50
";
    let c = parse_ok(text).config;

    let pool = |db: &str, user: &str| c.pool_settings(db, user).expect("database is served");
    assert_eq!(
        c.pool_settings("unknown_db", "nobody"),
        c.pool_settings("elsewhere", "nobody")
    );

    // pool_mode: user > database > global.
    assert_eq!(pool("tuned", "bob").mode, PoolMode::Transaction);
    assert_eq!(pool("tuned", "carol").mode, PoolMode::Statement);
    assert_eq!(pool("plain", "carol").mode, PoolMode::Session);

    // pool size: user > database > default_pool_size; the fallback entry counts too.
    assert_eq!(pool("tuned", "bob").size, 4);
    assert_eq!(pool("tuned", "carol").size, 7);
    assert_eq!(pool("plain", "carol").size, 20);
    assert_eq!(pool("elsewhere", "carol").size, 9);

    // min_pool_size: user (a Weir extension) > database > global.
    assert_eq!(pool("tuned", "bob").min_size, 2);
    assert_eq!(pool("plain", "carol").min_size, 1);
    assert_eq!(pool("plain", "erin").min_size, 3);
    assert_eq!(c.min_pool_size_for("tuned"), 2);
    assert_eq!(c.min_pool_size_for("plain"), 1);

    // reserve_pool_size: user > database > global.
    assert_eq!(c.reserve_pool_size_for("tuned"), 3);
    assert_eq!(c.reserve_pool_size_for("plain"), 5);
    assert_eq!(pool("tuned", "bob").reserve_size, 1);
    assert_eq!(pool("tuned", "carol").reserve_size, 3);
    assert_eq!(pool("plain", "carol").reserve_size, 5);

    // Limits travel with the pool's settings.
    assert_eq!(pool("tuned", "bob").max_db_connections, 40);
    assert_eq!(pool("tuned", "bob").max_user_connections, 6);

    assert_eq!(c.max_db_connections_for("tuned"), 40);
    assert_eq!(c.max_db_connections_for("plain"), 100);
    assert_eq!(c.max_db_connections_for("elsewhere"), 11);

    assert_eq!(c.max_user_connections_for("bob"), 6);
    assert_eq!(c.max_user_connections_for("carol"), 8);
    assert_eq!(c.max_user_connections_for("dave"), 50);
}

fn round_trip(config: &Config) {
    config.validate().expect("hand-built config is valid");
    let text = config.to_ini();
    let loaded = parse_ok(&text);
    assert_eq!(&loaded.config, config, "\n{text}");
    // The only warnings are for settings weir parses but ignores (see every_setting_parses).
    for w in &loaded.warnings {
        let key = w.key.as_deref().unwrap_or_default();
        assert!(
            matches!(Settings::support(key), Some(Support::Ignored(_))),
            "{w}"
        );
    }
    assert_eq!(loaded.config.to_ini(), text);
}

#[test]
fn round_trips_through_to_ini() {
    round_trip(&Config {
        pgbouncer: minimal_settings(),
        ..Config::default()
    });

    let mut databases = BTreeMap::new();
    databases.insert("*".to_owned(), DatabaseEntry::default());
    databases.insert(
        "app".to_owned(),
        DatabaseEntry {
            host: Some("db.prod.svc".into()),
            port: vec![5433],
            pool_size: Some(40),
            min_pool_size: Some(5),
            reserve_pool_size: Some(2),
            pool_mode: Some(PoolMode::Transaction),
            ..Default::default()
        },
    );
    databases.insert(
        "rds".to_owned(),
        DatabaseEntry {
            host: Some("db.abc.eu-west-1.rds.amazonaws.com".into()),
            user: Some("app".into()),
            server_auth: Some(ServerAuth::RdsIam),
            server_auth_region: Some("eu-west-1".into()),
            ..Default::default()
        },
    );
    databases.insert(
        "odd \"name\" = 'x'".to_owned(),
        DatabaseEntry {
            dbname: Some("real name".into()),
            user: Some("svc".into()),
            password: Some("p@ss w'rd".into()),
            connect_query: Some("SET search_path = app, public".into()),
            application_name: Some("weir".into()),
            ..Default::default()
        },
    );
    let mut users = BTreeMap::new();
    users.insert(
        "app@corp.example".to_owned(),
        UserEntry {
            pool_mode: Some(PoolMode::Statement),
            pool_size: Some(3),
            max_user_connections: Some(10),
            max_user_client_connections: Some(50),
            reserve_pool_size: Some(1),
            query_timeout: Some(60),
            idle_transaction_timeout: Some(5),
            client_idle_timeout: Some(600),
            min_pool_size: Some(2),
            service_accounts: vec!["shop/api".into(), "shop/worker".into()],
        },
    );
    users.insert("plain".to_owned(), UserEntry::default());
    round_trip(&Config {
        pgbouncer: every_setting_expected(),
        databases: databases.clone(),
        users,
        peers: BTreeMap::new(),
        redis: None,
    });

    let mut forced = BTreeMap::new();
    forced.insert(
        "only".to_owned(),
        DatabaseEntry {
            user: Some("svc".into()),
            ..Default::default()
        },
    );
    round_trip(&Config {
        pgbouncer: Settings {
            auth_type: AuthType::Any,
            listen_addr: "*".into(),
            unix_socket_dir: String::new(),
            unix_socket_mode: 0,
            server_lifetime: Duration::new(1, 1),
            tcp_user_timeout: Duration::from_nanos(1_500),
            reserve_pool_timeout: Duration::from_micros(1),
            track_extra_parameters: Vec::new(),
            server_check_query: String::new(),
            server_reset_query: String::new(),
            auth_query: String::new(),
            ..Settings::default()
        },
        databases: forced,
        users: BTreeMap::new(),
        peers: BTreeMap::new(),
        redis: None,
    });
}

#[test]
fn to_ini_layout() {
    let mut databases = BTreeMap::new();
    databases.insert("empty".to_owned(), DatabaseEntry::default());
    databases.insert(
        "app".to_owned(),
        DatabaseEntry {
            host: Some("h".into()),
            connect_query: Some("SELECT 1".into()),
            ..Default::default()
        },
    );
    let text = Config {
        pgbouncer: minimal_settings(),
        databases,
        users: BTreeMap::new(),
        peers: BTreeMap::new(),
        redis: None,
    }
    .to_ini();
    assert!(
        text.starts_with(
            "[databases]\napp = host=h connect_query='SELECT 1'\nempty =\n\n[pgbouncer]\n"
        ),
        "{text}"
    );
    assert!(!text.contains("[users]"));
    assert!(text.contains("\nlisten_addr =\n"));
    assert!(text.contains("\nlisten_port = 6432\n"));
    assert!(text.contains("\nunix_socket_mode = 0777\n"));
    assert!(text.contains("\nreserve_pool_timeout = 5\n"));
    assert!(text.contains("\ntcp_keepalive = 1\n"));
    assert!(text.contains("\nauth_file = userlist.txt\n"));
    assert!(
        !text.contains("logfile"),
        "unset optional settings are left out"
    );
}

#[test]
fn validate_checks_listeners_ports_and_limits() {
    let base = Config {
        pgbouncer: minimal_settings(),
        ..Config::default()
    };
    let failing = |change: &dyn Fn(&mut Config), key: &str, needle: &str| {
        let mut c = base.clone();
        change(&mut c);
        let e = c.validate().expect_err(key);
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.message.contains(needle), "{e}");
        assert_eq!(e.file, PathBuf::new());
        assert_eq!(e.line, None);
    };
    failing(
        &|c| c.pgbouncer.unix_socket_dir.clear(),
        "listen_addr",
        "nothing to listen on",
    );
    failing(
        &|c| c.pgbouncer.unix_socket_mode = 0o17777,
        "unix_socket_mode",
        "got 017777",
    );
    // PgBouncer runs with these: port 0 lets the kernel pick, the sticky bit is a mode bit.
    let warned = |change: &dyn Fn(&mut Config)| {
        let mut c = base.clone();
        change(&mut c);
        c.validate_with_warnings().expect("runs as PgBouncer does")
    };
    let w = warned(&|c| c.pgbouncer.listen_port = 0);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key.as_deref(), Some("listen_port"));
    assert!(
        w[0].message.contains("the kernel picks a free TCP port"),
        "{w:?}"
    );
    assert_eq!(warned(&|c| c.pgbouncer.unix_socket_mode = 0o1777), vec![]);
    failing(
        &|c| c.pgbouncer.max_client_conn = 0,
        "max_client_conn",
        "at least 1",
    );
    failing(&|c| c.pgbouncer.pkt_buf = 0, "pkt_buf", "at least 1");
    failing(
        &|c| c.pgbouncer.worker_threads = 1025,
        "worker_threads",
        "at most 1024",
    );
    failing(
        &|c| c.pgbouncer.max_packet_size = 0,
        "max_packet_size",
        "at least 1",
    );
    failing(
        &|c| c.pgbouncer.default_pool_size = u32::MAX,
        "default_pool_size",
        "too large",
    );
    failing(
        &|c| {
            c.pgbouncer.http_port = 9000;
            c.pgbouncer.http_listen_addr.clear();
        },
        "http_listen_addr",
        "http_port",
    );
    failing(
        &|c| {
            c.pgbouncer.listen_addr = "*".into();
            c.pgbouncer.http_port = 6432;
        },
        "http_port",
        "listen_port",
    );
    // The same port is fine when TCP listening is off.
    let mut unix_only = base.clone();
    unix_only.pgbouncer.http_port = 6432;
    unix_only.validate().expect("no TCP listener to clash with");
}

/// The one warning `c` loads with.
fn only_warning(c: &Config) -> ConfigWarning {
    let mut warnings = c.validate_with_warnings().expect("runs, as in PgBouncer");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    warnings.remove(0)
}

#[test]
fn minimum_pool_sizes_above_a_limit_are_capped_with_a_warning() {
    let base = Config {
        pgbouncer: minimal_settings(),
        ..Config::default()
    };

    let mut c = base.clone();
    c.pgbouncer.min_pool_size = 21;
    let w = only_warning(&c);
    assert_eq!(w.key.as_deref(), Some("min_pool_size"));
    assert_eq!(
        w.message,
        "21 is above default_pool_size (20): pools keep at most 20 connections open"
    );

    c.databases.insert("db".into(), DatabaseEntry::default());
    let w = only_warning(&c);
    assert_eq!(w.key.as_deref(), Some("min_pool_size"));
    assert!(w.message.ends_with(", in database \"db\""), "{w}");
    assert_eq!(c.pool_settings("db", "u").map(|p| p.min_size), Some(20));

    // A database with a larger pool makes the same global minimum fine.
    c.databases.insert(
        "db".into(),
        DatabaseEntry {
            pool_size: Some(30),
            ..Default::default()
        },
    );
    assert_eq!(c.validate_with_warnings(), Ok(vec![]));
    assert_eq!(c.pool_settings("db", "u").map(|p| p.min_size), Some(21));

    let mut c = base.clone();
    c.databases.insert(
        "db".into(),
        DatabaseEntry {
            pool_size: Some(3),
            min_pool_size: Some(4),
            ..Default::default()
        },
    );
    let w = only_warning(&c);
    assert_eq!(w.key.as_deref(), Some("db"));
    assert_eq!(
        w.message,
        "min_pool_size 4 is above pool_size (3): pools keep at most 3 connections open"
    );
    assert_eq!(c.pool_settings("db", "u").map(|p| p.min_size), Some(3));

    let mut c = base.clone();
    c.databases.insert(
        "db".into(),
        DatabaseEntry {
            min_pool_size: Some(5),
            max_db_connections: Some(4),
            ..Default::default()
        },
    );
    let w = only_warning(&c);
    assert_eq!(
        w.message,
        "min_pool_size 5 is above max_db_connections (4): pools keep at most 4 connections open"
    );
    assert_eq!(c.pool_settings("db", "u").map(|p| p.min_size), Some(4));
    // The configured value is what SHOW DATABASES prints, as in PgBouncer.
    assert_eq!(c.min_pool_size_for("db"), 5);

    let mut c = base.clone();
    c.pgbouncer.min_pool_size = 5;
    c.pgbouncer.max_db_connections = 4;
    c.pgbouncer.max_user_connections = 3;
    c.databases.insert("db".into(), DatabaseEntry::default());
    let w = only_warning(&c);
    assert_eq!(w.key.as_deref(), Some("min_pool_size"));
    assert!(w.message.contains("max_db_connections (4)"), "{w}");
    assert_eq!(c.pool_settings("db", "u").map(|p| p.min_size), Some(3));

    let mut c = base.clone();
    c.users.insert(
        "u".into(),
        UserEntry {
            pool_size: Some(u32::MAX),
            ..Default::default()
        },
    );
    let e = c.validate().expect_err("absurd user pool");
    assert_eq!(e.key.as_deref(), Some("u"));
    assert!(
        e.message.starts_with("pool_size: 4294967295 is too large"),
        "{e}"
    );
}

#[test]
fn service_account_users_need_client_tls() {
    let mut c = Config::default();
    c.pgbouncer.auth_file = Some("userlist.txt".into());
    c.users.insert(
        "app".into(),
        UserEntry {
            service_accounts: vec!["shop/api".into()],
            ..Default::default()
        },
    );
    let e = c.validate().expect_err("a token in clear");
    assert_eq!(e.key.as_deref(), Some("app"));
    assert!(
        e.message.contains("service_accounts needs client TLS"),
        "{e}"
    );
    c.pgbouncer.client_tls_sslmode = TlsMode::Allow;
    c.validate().expect("TLS offered");
    c.pgbouncer.service_account_audience.clear();
    let e = c.validate().expect_err("no audience");
    assert_eq!(e.key.as_deref(), Some("service_account_audience"));
}

#[test]
fn a_zero_limit_on_an_entry_leaves_the_global_one_in_force() {
    let mut c = Config {
        pgbouncer: minimal_settings(),
        ..Config::default()
    };
    c.pgbouncer.max_db_connections = 7;
    c.pgbouncer.max_user_connections = 6;
    c.databases.insert(
        "db".into(),
        DatabaseEntry {
            max_db_connections: Some(0),
            ..Default::default()
        },
    );
    c.users.insert(
        "u".into(),
        UserEntry {
            max_user_connections: Some(0),
            ..Default::default()
        },
    );
    assert_eq!(c.max_db_connections_for("db"), 7);
    assert_eq!(c.max_user_connections_for("u"), 6);
}

#[test]
fn validate_checks_authentication() {
    // PgBouncer starts without auth_file and refuses every login; weir says so.
    let mut c = Config::default();
    let w = only_warning(&c);
    assert_eq!(w.key.as_deref(), Some("auth_file"));
    assert!(w.message.contains("auth_type md5 finds no users"), "{w}");

    // trust still needs to know the users, as in PgBouncer.
    c.pgbouncer.auth_type = AuthType::Trust;
    assert!(only_warning(&c)
        .message
        .contains("auth_type trust finds no users"));

    // auth_user with auth_query finds users without auth_file, globally or per database.
    c.pgbouncer.auth_user = Some("lookup".into());
    assert_eq!(c.validate_with_warnings(), Ok(vec![]));
    c.pgbouncer.auth_user = None;
    c.databases.entry("db".into()).or_default().auth_user = Some("lookup".into());
    assert_eq!(c.validate_with_warnings(), Ok(vec![]));
    c.databases.remove("db");
    c.pgbouncer.auth_file = Some("userlist.txt".into());
    c.pgbouncer.auth_query.clear();
    assert_eq!(c.validate_with_warnings(), Ok(vec![]));

    // any needs no user list but a forced user on every database.
    let mut c = Config::default();
    c.pgbouncer.auth_type = AuthType::Any;
    c.validate().expect("no databases yet");
    c.databases.insert(
        "forced".into(),
        DatabaseEntry {
            user: Some("svc".into()),
            ..Default::default()
        },
    );
    c.databases.insert("loose".into(), DatabaseEntry::default());
    let e = c.validate().expect_err("database without user=");
    assert_eq!(e.key.as_deref(), Some("loose"));
    assert!(e.message.contains("auth_type any"), "{e}");
}

#[test]
fn validate_refuses_values_that_would_not_survive_to_ini() {
    let base = Config {
        pgbouncer: minimal_settings(),
        ..Config::default()
    };
    let check = |change: &dyn Fn(&mut Config), key: &str, needle: &str| {
        let mut c = base.clone();
        change(&mut c);
        let e = c.validate().expect_err(key);
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.message.contains(needle), "{e}");
    };
    check(
        &|c| c.pgbouncer.server_reset_query = "DISCARD ALL\nlisten_port = 1".into(),
        "server_reset_query",
        "line break",
    );
    check(
        &|c| c.pgbouncer.listen_addr = " 127.0.0.1".into(),
        "listen_addr",
        "read back unchanged",
    );
    check(
        &|c| c.pgbouncer.auth_user = Some(String::new()),
        "auth_user",
        "unchanged",
    );
    check(
        &|c| c.pgbouncer.logfile = Some(PathBuf::new()),
        "logfile",
        "unchanged",
    );
    check(
        &|c| c.pgbouncer.admin_users = vec!["a,b".into()],
        "admin_users",
        "unchanged",
    );
    check(
        &|c| {
            c.databases.insert(
                "db".into(),
                DatabaseEntry {
                    password: Some(String::new()),
                    ..Default::default()
                },
            );
        },
        "db",
        "unchanged",
    );
    check(
        &|c| {
            c.databases.insert(
                "db".into(),
                DatabaseEntry {
                    password: Some("a\nb".into()),
                    ..Default::default()
                },
            );
        },
        "db",
        "line break",
    );
    check(
        &|c| {
            c.databases
                .insert("bad\nname".into(), DatabaseEntry::default());
        },
        "bad\nname",
        "line break",
    );
    check(
        &|c| {
            c.databases.insert(String::new(), DatabaseEntry::default());
        },
        "",
        "must not be empty",
    );
    check(
        &|c| {
            c.databases
                .insert("pgbouncer".into(), DatabaseEntry::default());
        },
        "pgbouncer",
        "reserved",
    );
    check(
        &|c| {
            c.users.insert("".into(), UserEntry::default());
        },
        "",
        "must not be empty",
    );
}

#[test]
fn parse_locates_cross_field_errors_at_the_line_that_set_the_key() {
    let e = parse_err("[pgbouncer]\nauth_file = u\n\nunix_socket_dir=\n");
    assert_eq!(
        e.to_string(),
        "pgbouncer.ini: listen_addr: nothing to listen on: set listen_addr (TCP) or \
         unix_socket_dir"
    );

    // Warnings from the same checks point at their line too.
    let loaded =
        parse_ok("[databases]\n\ndb = pool_size=2 min_pool_size=3\n[pgbouncer]\nauth_file=u\n");
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "pgbouncer.ini:3: db: min_pool_size 3 is above pool_size (2): pools keep at most 2 \
          connections open"
        ]
    );

    // A problem with a setting left at its default names the file but no line.
    let loaded = parse_ok("[pgbouncer]\nlisten_addr = *\n");
    assert_eq!(
        loaded.warnings[0].to_string(),
        "pgbouncer.ini: auth_file: is not set: auth_type md5 finds no users, so every login \
         is refused (set auth_file, or auth_user to look users up with auth_query)"
    );
}

/// A configuration in the spirit of the sample PgBouncer ships, using features weir lacks.
const EXAMPLE: &str = r#"
;; database name = connect string
;;
;; connect string params:
;;   dbname= host= port= user= password= auth_user=
;;   client_encoding= datestyle= timezone=
;;   pool_size= reserve_pool= max_db_connections=
;;   pool_mode= connect_query= application_name=
[databases]

;; foodb over Unix socket
foodb =

;; redirect bardb to bazdb on localhost
bardb = host=localhost dbname=bazdb

;; access to destination database will go with single user
forcedb = host=localhost port=300 user=baz password=foo client_encoding=UNICODE datestyle=ISO connect_query='SELECT 1'

;; use custom pool sizes
nondefaultdb = pool_size=50 reserve_pool=10

;; use auth_user with auth_query if user not present in auth_file
authdb = host=localhost dbname=authdb auth_user=authuser

;; fallback connect string
* = host=testserver

[users]

user1 = pool_mode=transaction max_user_connections=10

[pgbouncer]

;;;
;;; Administrative settings
;;;

logfile = /var/log/pgbouncer/pgbouncer.log
pidfile = /var/run/pgbouncer/pgbouncer.pid

;;;
;;; Where to wait for clients
;;;

;; IP address or * which means all IPs
listen_addr = 127.0.0.1
listen_port = 6432

;; Unix socket is also used for -R.
;; On Debian it should be /var/run/postgresql
;unix_socket_dir = /tmp
;unix_socket_mode = 0777
;unix_socket_group =

;;;
;;; TLS settings for accepting clients
;;;

;; disable, allow, require, verify-ca, verify-full
client_tls_sslmode = disable
;client_tls_ca_file = <system default>
;client_tls_key_file =
;client_tls_cert_file =
client_tls_ciphers = fast

;;;
;;; TLS settings for connecting to backend databases
;;;

server_tls_sslmode = prefer
server_tls_protocols = secure

;;;
;;; Authentication settings
;;;

;; any, trust, plain, md5, cert, hba, pam
auth_type = md5
auth_file = /etc/pgbouncer/userlist.txt

;; Query to use to fetch password from database.  Result
;; must have 2 columns - username and password hash.
;auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1

;;;
;;; Users allowed into database 'pgbouncer'
;;;

;; comma-separated list of users who are allowed to change settings
admin_users = postgres, admin

;; comma-separated list of users who are just allowed to use SHOW command
stats_users = stats, postgres

;;;
;;; Pooler personality questions
;;;

;; When server connection is released back to pool:
;;   session      - after client disconnects (default)
;;   transaction  - after transaction finishes
;;   statement    - after statement finishes
pool_mode = session

;; Query for cleaning connection immediately after releasing from
;; client.  No need to put ROLLBACK here, pgbouncer does not reuse
;; connections where transaction is left open.
server_reset_query = DISCARD ALL

;; Comma-separated list of parameters to ignore when given in startup
;; packet.  Newer JDBC versions require the extra_float_digits here.
ignore_startup_parameters = extra_float_digits

;; When taking idle server into use, this query is sent first.
server_check_query = select 1

;; If server was used more recently that this many seconds ago,
; skip the check query.  Value 0 may or may not run in immediately.
server_check_delay = 30

;; Close servers in session pooling mode after a RECONNECT, RELOAD,
;; etc. when they are idle instead of at the end of the session.
server_fast_close = 0

;;;
;;; Connection limits
;;;

;; Total number of clients that can connect
max_client_conn = 100

;; Default pool size.  20 is good number when transaction pooling
;; is in use, in session pooling it needs to be the number of
;; max clients you want to handle at any moment
default_pool_size = 20

;; Minimum number of server connections to keep in pool.
min_pool_size = 0

; how many additional connection to allow in case of trouble
reserve_pool_size = 0

;; If a clients needs to wait more than this many seconds, use reserve
;; pool.
reserve_pool_timeout = 5

;; Maximum number of server connections for a database
max_db_connections = 0

;; Maximum number of server connections for a user
max_user_connections = 0

;; If off, then server connections are reused in LIFO manner
server_round_robin = 0

;;;
;;; Logging
;;;

;; Syslog settings
syslog = 0
syslog_facility = daemon
syslog_ident = pgbouncer

;; log if client connects or server connection is made
log_connections = 1

;; log if and why connection was closed
log_disconnections = 1

;; log error messages pooler sends to clients
log_pooler_errors = 1

;; write aggregated stats into log
log_stats = 1

;; Logging verbosity.  Same as -v switch on command line.
verbose = 0

;;;
;;; Timeouts
;;;

;; Close server connection if its been connected longer.
server_lifetime = 3600

;; Close server connection if its not been used in this time.  Allows
;; to clean unnecessary connections from pool after peak.
server_idle_timeout = 600

;; Cancel connection attempt if server does not answer takes longer.
server_connect_timeout = 15

;; If server login failed (server_connect_timeout or auth failure)
;; then wait this many second before trying again.
server_login_retry = 15

;; Dangerous.  Server connection is closed if query does not return in
;; this time.  Should be used to survive network problems, _not_ as
;; statement_timeout. (default: 0)
query_timeout = 0

;; Dangerous.  Client connection is closed if the query is not
;; assigned to a server in this time.  Should be used to limit the
;; number of queued queries in case of a database or network
;; failure. (default: 120)
query_wait_timeout = 120

;; Dangerous.  Client connection is closed if no activity in this
;; time.  Should be used to survive network problems. (default: 0)
client_idle_timeout = 0

;; Disconnect clients who have not managed to log in after connecting
;; in this many seconds.
client_login_timeout = 60

;; Clean automatically created database entries (via "*") if they stay
;; unused in this many seconds.
autodb_idle_timeout = 3600

;; Close connections which are in "IDLE in transaction" state longer
;; than this many seconds.
idle_transaction_timeout = 0

;; How long SUSPEND/-R waits for buffer flush before closing
;; connection.
suspend_timeout = 10

;;;
;;; Low-level tuning options
;;;

;; buffer for streaming packets
pkt_buf = 4096

;; man 2 listen
listen_backlog = 128

;; Max number pkt_buf to process in one event loop.
sbuf_loopcnt = 5

;; Maximum PostgreSQL protocol packet size.
max_packet_size = 2147483647

;; Set SO_REUSEPORT socket option
so_reuseport = 0

;; networking options, for info: man 7 tcp

;; Linux: Notify program about new connection only if there is also
;; data received.  (Seconds to wait.)  On Linux the default is 45, on
;; other OS'es 0.
tcp_defer_accept = 0

;; In-kernel buffer size (Linux default: 4096)
tcp_socket_buffer = 0

;; whether tcp keepalive should be turned on (0/1)
tcp_keepalive = 1

;; The following options are Linux-specific.  They also require
;; tcp_keepalive=1.

;; Count of keepalive packets
tcp_keepcnt = 0

;; How long the connection can be idle before sending keepalive
;; packets
tcp_keepidle = 0

;; The time between individual keepalive probes
tcp_keepintvl = 0

;; How long may transmitted data remain unacknowledged before TCP
;; connection is closed (in milliseconds)
tcp_user_timeout = 0

;; DNS lookup caching time
dns_max_ttl = 15

;; DNS zone SOA lookup period
dns_zone_check_period = 0

;; DNS negative result caching time
dns_nxdomain_ttl = 15

;;;
;;; Random stuff
;;;

;; Hackish security feature.  Helps against SQL injection: when PQexec
;; is disabled, multi-statement cannot be made.
disable_pqexec = 0

;; Config file to use for next RELOAD/SIGHUP
;; By default contains config file from command line.
;conffile

;; Windows service name to register as.  job_name is alias for
;; service_name, used by some Skytools scripts.
;service_name = pgbouncer
;job_name = pgbouncer

;; Read additional config from other file
;%include /etc/pgbouncer/pgbouncer-other.ini
"#;

#[test]
fn example_configuration_parses_with_only_warnings() {
    let loaded = parse_ok(EXAMPLE);
    let c = &loaded.config;
    assert_eq!(c.databases.len(), 6);
    let forced = &c.databases["forcedb"];
    assert_eq!(forced.port, vec![300]);
    assert_eq!(forced.user.as_deref(), Some("baz"));
    assert_eq!(forced.connect_query.as_deref(), Some("SELECT 1"));
    assert_eq!(c.databases["nondefaultdb"].reserve_pool_size, Some(10));
    assert_eq!(c.database("other").map(|(k, _)| k), Some("*"));
    let foodb = c.pool_settings("foodb", "user1").expect("foodb is served");
    assert_eq!(foodb.mode, PoolMode::Transaction);
    assert_eq!(c.pgbouncer.listen_addr, "127.0.0.1");
    assert_eq!(c.pgbouncer.admin_users, vec!["postgres", "admin"]);
    assert_eq!(c.pgbouncer.server_check_query, "select 1");
    assert_eq!(
        c.pgbouncer.ignore_startup_parameters,
        vec!["extra_float_digits"]
    );

    let ignored: Vec<&str> = loaded
        .warnings
        .iter()
        .map(|w| {
            assert_eq!(w.message, "not supported by weir, ignored", "{w}");
            w.key.as_deref().unwrap_or_default()
        })
        .collect();
    assert_eq!(
        ignored,
        vec![
            "server_fast_close",
            "syslog",
            "syslog_facility",
            "syslog_ident",
            "autodb_idle_timeout",
            "suspend_timeout",
            "listen_backlog",
            "sbuf_loopcnt",
            "dns_max_ttl",
            "dns_zone_check_period",
            "dns_nxdomain_ttl",
        ]
    );
}

#[test]
fn parse_does_not_follow_includes() {
    let e = parse_err("%include other.ini\n[pgbouncer]\n");
    assert_eq!(e.line, Some(1));
    assert!(
        e.message.contains("only followed when loading from a file"),
        "{e}"
    );
}

#[test]
fn parse_with_includes_reads_through_the_callback() {
    let loaded = Config::parse_with_includes(
        "[pgbouncer]\n%include common.ini\nmax_client_conn = 9\n",
        Path::new("/etc/weir/pgbouncer.ini"),
        |path| {
            assert_eq!(path, Path::new("/etc/weir/common.ini"));
            Ok("auth_file = u.txt\nmax_client_conn = 1\n".to_owned())
        },
    )
    .expect("valid");
    assert_eq!(loaded.config.pgbouncer.max_client_conn, 9);
    assert_eq!(loaded.warnings.len(), 1, "the override is reported");
    assert_eq!(loaded.warnings[0].line, Some(3));
    assert!(loaded.warnings[0].message.contains("common.ini:2"));
}

/// A scratch directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("weir-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_follows_includes_and_resolves_auth_file() {
    let dir = TempDir::new("load");
    dir.write(
        "conf.d/databases.ini",
        "[databases]\napp = host=db port=5433\n%include users.ini\n",
    );
    dir.write("conf.d/users.ini", "[users]\nbob = pool_size=2\n");
    dir.write("conf.d/bad.ini", "[pgbouncer]\n\nmax_client_conn = lots\n");
    let main = dir.write(
        "pgbouncer.ini",
        "%include conf.d/databases.ini\n[pgbouncer]\nauth_file = userlist.txt\nunknown_knob = 1\n",
    );

    let loaded = Config::load(&main).expect("loads");
    let c = &loaded.config;
    assert_eq!(c.databases["app"].port, vec![5433]);
    assert_eq!(c.users["bob"].pool_size, Some(2));
    assert_eq!(c.pgbouncer.auth_file, Some(dir.0.join("userlist.txt")));
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].file, main);
    assert_eq!(loaded.warnings[0].line, Some(4));

    // An absolute auth_file is kept as it is.
    let absolute = dir.write(
        "absolute.ini",
        "[pgbouncer]\nauth_file = /etc/weir/userlist.txt\n",
    );
    let loaded = Config::load(&absolute).expect("loads");
    assert_eq!(
        loaded.config.pgbouncer.auth_file,
        Some(PathBuf::from("/etc/weir/userlist.txt"))
    );

    // Errors inside an included file name that file and line.
    let broken = dir.write(
        "broken.ini",
        "[pgbouncer]\nauth_file = u\n%include conf.d/bad.ini\n",
    );
    let e = Config::load(&broken).expect_err("bad value in include");
    assert_eq!(e.file, dir.0.join("conf.d/bad.ini"));
    assert_eq!(e.line, Some(3));
    assert_eq!(e.key.as_deref(), Some("max_client_conn"));

    let missing = dir.write("missing.ini", "[pgbouncer]\n%include nowhere.ini\n");
    let e = Config::load(&missing).expect_err("missing include");
    assert_eq!((e.file.clone(), e.line), (missing, Some(2)));
    assert!(e.message.contains("nowhere.ini"), "{e}");
}

#[test]
fn load_reports_an_unreadable_file() {
    let path = std::env::temp_dir().join("weir-config-does-not-exist.ini");
    let e = Config::load(&path).expect_err("missing");
    assert_eq!(e.file, path);
    assert_eq!(e.line, None);
    assert!(
        e.message.starts_with("cannot read configuration file"),
        "{e}"
    );
}

/// The `[pgbouncer]` keys named in the README between `start` and the next `end`.
fn readme_keys(start: &str, end: &str) -> std::collections::BTreeSet<&'static str> {
    let readme = include_str!("../../../README.md");
    let from = readme
        .find(start)
        .unwrap_or_else(|| panic!("README lacks {start:?}"));
    let text = &readme[from + start.len()..];
    let text = &text[..text.find(end).unwrap_or(text.len())];
    Settings::KEYS
        .iter()
        .copied()
        .filter(|key| {
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word == *key)
        })
        .collect()
}

/// Every setting of PgBouncer 1.25.2's `doc/config.md`, by section.
#[rustfmt::skip]
const PGBOUNCER_1_25_SETTINGS: &[(&str, &[&str])] = &[
    (
        "[pgbouncer]",
        &[
            "logfile", "pidfile", "listen_addr", "listen_port", "unix_socket_dir",
            "unix_socket_mode", "unix_socket_group", "user", "pool_mode", "max_client_conn",
            "default_pool_size", "min_pool_size", "reserve_pool_size", "reserve_pool_timeout",
            "max_db_connections", "max_db_client_connections", "max_user_connections",
            "max_user_client_connections", "server_round_robin", "track_extra_parameters",
            "ignore_startup_parameters", "peer_id", "disable_pqexec",
            "application_name_add_host", "conffile", "service_name", "job_name",
            "stats_period", "max_prepared_statements", "scram_iterations", "auth_type",
            "auth_hba_file", "auth_ident_file", "auth_file", "auth_user", "auth_query",
            "auth_dbname", "auth_ldap_options", "syslog", "syslog_ident", "syslog_facility",
            "log_connections", "log_disconnections", "log_pooler_errors", "log_stats",
            "verbose", "admin_users", "stats_users", "server_reset_query",
            "server_reset_query_always", "server_check_delay", "server_check_query",
            "server_fast_close", "server_lifetime", "server_idle_timeout",
            "server_connect_timeout", "server_login_retry", "client_login_timeout",
            "autodb_idle_timeout", "dns_max_ttl", "dns_nxdomain_ttl", "dns_zone_check_period",
            "resolv_conf", "query_wait_notify", "client_tls_sslmode", "client_tls_key_file",
            "client_tls_cert_file", "client_tls_ca_file", "client_tls_protocols",
            "client_tls_ciphers", "client_tls13_ciphers", "client_tls_ecdhcurve",
            "client_tls_dheparams", "server_tls_sslmode", "server_tls_ca_file",
            "server_tls_key_file", "server_tls_cert_file", "server_tls_protocols",
            "server_tls_ciphers", "server_tls13_ciphers", "query_timeout",
            "query_wait_timeout", "cancel_wait_timeout", "client_idle_timeout",
            "idle_transaction_timeout", "transaction_timeout", "suspend_timeout", "pkt_buf",
            "max_packet_size", "listen_backlog", "sbuf_loopcnt", "so_reuseport",
            "tcp_defer_accept", "tcp_socket_buffer", "tcp_keepalive", "tcp_keepcnt",
            "tcp_keepidle", "tcp_keepintvl", "tcp_user_timeout",
        ],
    ),
    (
        "[databases]",
        &[
            "dbname", "host", "port", "user", "password", "auth_user", "auth_query",
            "auth_dbname", "pool_size", "min_pool_size", "reserve_pool_size", "connect_query",
            "pool_mode", "load_balance_hosts", "max_db_connections",
            "max_db_client_connections", "server_lifetime", "client_encoding", "datestyle",
            "timezone",
        ],
    ),
    (
        "[users]",
        &[
            "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
            "query_timeout", "idle_transaction_timeout", "transaction_timeout",
            "client_idle_timeout", "max_user_client_connections",
        ],
    ),
    ("[peers]", &["host", "port", "pool_size"]),
];

/// The README's table of every PgBouncer setting: (section, setting) -> weir's status.
fn readme_pgbouncer_table() -> std::collections::BTreeMap<(&'static str, &'static str), &'static str>
{
    let readme = include_str!("../../../README.md");
    let start = "Every setting of PgBouncer 1.25's `doc/config.md`";
    let from = readme
        .find(start)
        .unwrap_or_else(|| panic!("README lacks {start:?}"));
    let after = &readme[from..];
    let table = &after[after.find("\n\n|").map_or(after.len(), |i| i + 2)..];
    let table = &table[..table.find("\n\n").unwrap_or(table.len())];
    table
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            match cells[..] {
                [section, setting, status] if setting.starts_with('`') => Some((
                    (section.trim_matches('`'), setting.trim_matches('`')),
                    status,
                )),
                _ => None,
            }
        })
        .collect()
}

/// Whether weir's parser accepts `key` in `section` without acting on it.
fn weir_ignores(section: &str, key: &str) -> bool {
    match section {
        "[pgbouncer]" => {
            UNSUPPORTED_KEYS.contains(&key)
                || matches!(Settings::support(key), Some(Support::Ignored(_)))
        }
        "[databases]" => UNSUPPORTED_DATABASE_KEYS.contains(&key),
        "[users]" => UNSUPPORTED_USER_KEYS.contains(&key),
        _ => false,
    }
}

/// Whether weir's parser knows `key` in `section` (acting on it or warning that it does not).
fn weir_knows(section: &str, key: &str) -> bool {
    let entry = match section {
        "[pgbouncer]" => {
            return Settings::support(key).is_some() || UNSUPPORTED_KEYS.contains(&key)
        }
        "[databases]" => format!("[databases]\napp = host=h {key}=1\n{MINIMAL}"),
        "[users]" => format!("[users]\napp = {key}=1\n{MINIMAL}"),
        _ => format!("[peers]\n1 = host=h {key}=1\n{MINIMAL}"),
    };
    // A bad value is an error too; only "unknown" says the key itself is not read.
    match Config::parse(&entry, Path::new(INI)) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("unknown"),
    }
}

#[test]
fn readme_lists_the_settings_as_the_table_marks_them() {
    let table = readme_pgbouncer_table();
    let mut listed = std::collections::BTreeSet::new();
    for (section, keys) in PGBOUNCER_1_25_SETTINGS {
        for key in *keys {
            assert!(
                weir_knows(section, key),
                "weir does not read {section} {key}"
            );
            let status = table.get(&(*section, *key)).unwrap_or_else(|| {
                panic!("README's table of PgBouncer settings lacks {section} {key}")
            });
            let not = status.starts_with("not supported");
            assert!(
                not || status.starts_with("same") || status.starts_with("extended"),
                "{section} {key}: status {status:?} is not same, extended or not supported"
            );
            assert_eq!(
                not,
                weir_ignores(section, key),
                "{section} {key}: README says {status:?}"
            );
            if not {
                assert!(
                    status.contains(':') || status.contains('('),
                    "{section} {key}: why?"
                );
            }
            listed.insert((*section, *key));
        }
    }
    let extra: Vec<_> = table.keys().filter(|k| !listed.contains(*k)).collect();
    assert!(
        extra.is_empty(),
        "README rows PgBouncer 1.25 lacks: {extra:?}"
    );

    let mut documented = readme_keys("`[pgbouncer]`: ", "Parsed but not supported");
    documented.extend(readme_keys("Weir extensions: ", "\n\n"));
    let ignored = readme_keys("Parsed but not supported", "(");
    let (mut implemented, mut not) = (Vec::new(), Vec::new());
    for key in Settings::KEYS {
        match Settings::support(key) {
            Some(Support::Implemented) => implemented.push(*key),
            _ => not.push(*key),
        }
    }
    assert_eq!(documented.into_iter().collect::<Vec<_>>(), {
        implemented.sort_unstable();
        implemented
    });
    assert_eq!(ignored.into_iter().collect::<Vec<_>>(), {
        not.sort_unstable();
        not
    });
}

#[test]
fn peers_section_and_peer_id() {
    let text = format!(
        "[peers]\n1 = host=/tmp/other\n2 = host=10.0.0.2 port=6433 pool_size=3\n\
         {MINIMAL}peer_id = 2\n"
    );
    let loaded = parse_ok(&text);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = &loaded.config;
    assert_eq!(config.pgbouncer.peer_id, 2);
    assert_eq!(config.peers.len(), 2);
    assert_eq!(config.peers[&1].host, "/tmp/other");
    assert_eq!(config.peers[&1].port, 6432);
    assert_eq!(
        (config.peers[&2].port, config.peers[&2].pool_size),
        (6433, Some(3))
    );
    round_trip(config);

    for (bad, needle) in [
        (
            "[peers]\n0 = host=a\n",
            "ids of peers must be a number larger than 0",
        ),
        ("[peers]\n1 = nonsense\n", "peer 1:"),
        ("[peers]\n1 = port=5\n", "host was not provided"),
    ] {
        let e = Config::parse(&format!("{bad}{MINIMAL}"), Path::new(INI)).unwrap_err();
        assert!(e.to_string().contains(needle), "{bad}: {e}");
    }
    let e = Config::parse(&format!("{MINIMAL}peer_id = 70000\n"), Path::new(INI)).unwrap_err();
    assert!(e.to_string().contains("at most 65535"), "{e}");
}

#[test]
fn auth_lookup_takes_the_databases_settings_over_the_global_ones() {
    let mut c = Config::default();
    c.databases.insert("app".into(), DatabaseEntry::default());
    c.databases.insert(
        "own".into(),
        DatabaseEntry {
            auth_user: Some("local".into()),
            auth_query: Some("SELECT * FROM lookup($1)".into()),
            auth_dbname: Some("authdb".into()),
            ..Default::default()
        },
    );
    assert_eq!(c.auth_lookup("app"), None, "no auth_user anywhere");
    assert!(c.auth_lookup("own").is_some(), "the entry's own auth_user");
    c.pgbouncer.auth_user = Some("global".into());
    assert_eq!(
        c.auth_lookup("app"),
        Some(AuthLookup {
            user: "global".into(),
            query: DEFAULT_AUTH_QUERY.into(),
            dbname: "app".into(),
        })
    );
    c.pgbouncer.auth_dbname = Some("postgres".into());
    assert_eq!(
        c.auth_lookup("app").map(|l| l.dbname),
        Some("postgres".into())
    );
    assert_eq!(
        c.auth_lookup("own"),
        Some(AuthLookup {
            user: "local".into(),
            query: "SELECT * FROM lookup($1)".into(),
            dbname: "authdb".into(),
        })
    );
}
