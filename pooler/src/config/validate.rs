//! Cross-field checks on a whole [`Config`], shared by parsing and by hand-built configs.
//!
//! Two kinds of check run here. First, that every value can be written to pgbouncer.ini
//! and read back unchanged (no line breaks, no blanks at either end, no empty values where
//! "unset" is meant), so that a config the operator renders is the config the pooler runs.
//! Then the semantic checks: something to listen on, sane sizes, and an authentication setup
//! that can find its users. As in PgBouncer, a combination that still runs (a minimum pool
//! size above the pool's limits, no `auth_file`) loads with a warning saying what weir does
//! instead; only what cannot work at all is an error.

use std::path::{Path, PathBuf};

use super::database::{DatabaseEntry, UserEntry};
use super::error::{ConfigError, ConfigWarning};
use super::parse::{Locations, Section};
use super::settings::{AuthType, Settings, TlsMode};
use super::Config;

/// PgBouncer keeps sizes in C `int`s; larger values are certainly mistakes.
const MAX_COUNT: u32 = i32::MAX as u32;

/// The most `worker_threads`: far beyond any machine's CPUs, and each costs a stack.
const MAX_WORKER_THREADS: u32 = 1024;

/// The database name PgBouncer and weir reserve for the admin console.
pub(crate) const ADMIN_DATABASE: &str = "pgbouncer";

/// A failed check: which entry it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub section: Section,
    pub key: String,
    pub message: String,
}

impl Problem {
    fn setting(key: &str, message: impl Into<String>) -> Self {
        Problem {
            section: Section::Pgbouncer,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn database(name: &str, message: impl Into<String>) -> Self {
        Problem {
            section: Section::Databases,
            key: name.to_owned(),
            message: message.into(),
        }
    }

    fn user(name: &str, message: impl Into<String>) -> Self {
        Problem {
            section: Section::Users,
            key: name.to_owned(),
            message: message.into(),
        }
    }

    /// The line that set the key, or the main file alone when the key kept its default.
    fn location(&self, main_file: &Path, locations: &Locations) -> (PathBuf, Option<usize>) {
        match locations.get(&(self.section, self.key.clone())) {
            Some((file, line)) => (file.clone(), Some(*line)),
            None => (main_file.to_path_buf(), None),
        }
    }

    /// Turns the problem into an error pointing at the line that set the key, or at the
    /// main file when the key kept its default.
    pub(crate) fn locate(self, main_file: &Path, locations: &Locations) -> ConfigError {
        let (file, line) = self.location(main_file, locations);
        ConfigError {
            file,
            line,
            key: Some(self.key),
            message: self.message,
        }
    }

    /// Turns a note into a warning located like [`Problem::locate`] does.
    pub(crate) fn warning(self, main_file: &Path, locations: &Locations) -> ConfigWarning {
        let (file, line) = self.location(main_file, locations);
        ConfigWarning {
            file,
            line,
            key: Some(self.key),
            message: self.message,
        }
    }

    /// Turns the problem into an error without a file, for [`Config::validate`].
    pub(crate) fn unlocated(self) -> ConfigError {
        ConfigError {
            file: Default::default(),
            line: None,
            key: Some(self.key),
            message: self.message,
        }
    }
}

/// Runs every check, stopping at the first problem; otherwise returns the notes about
/// combinations that run, but not as written (each says what weir does instead).
pub(crate) fn check(config: &Config) -> Result<Vec<Problem>, Problem> {
    check_representable(config)?;
    let mut notes = check_listeners(&config.pgbouncer)?;
    check_limits(config)?;
    notes.extend(check_pool_sizes(config));
    notes.extend(check_replica_max_lag(config));
    notes.extend(check_auth(config)?);
    check_service_accounts(config)?;
    if let Some(redis) = &config.redis {
        redis.check().map_err(|message| Problem {
            section: Section::Redis,
            key: "server".to_owned(),
            message,
        })?;
    }
    Ok(notes)
}

const UNREPRESENTABLE: &str = "cannot be written to pgbouncer.ini and read back unchanged \
                               (blanks at either end, commas inside list items, or an empty \
                               value where the setting should be left unset?)";

fn has_line_break(text: &str) -> bool {
    text.contains(['\n', '\r'])
}

fn check_representable(config: &Config) -> Result<(), Problem> {
    let settings = &config.pgbouncer;
    for key in Settings::KEYS {
        let Some(Some(text)) = settings.render_value(key) else {
            continue;
        };
        if has_line_break(&text) {
            return Err(Problem::setting(key, "must not contain a line break"));
        }
        let mut reread = settings.clone();
        let same = matches!(reread.apply(key, text.trim()), Some(Ok(()))) && reread == *settings;
        if !same {
            return Err(Problem::setting(key, UNREPRESENTABLE));
        }
    }
    for (name, entry) in &config.databases {
        check_name(name).map_err(|m| Problem::database(name, m))?;
        if name == ADMIN_DATABASE {
            return Err(Problem::database(
                name,
                "the name \"pgbouncer\" is reserved for the admin console",
            ));
        }
        let text = entry.to_conn_string();
        if has_line_break(&text) {
            return Err(Problem::database(name, "must not contain a line break"));
        }
        if text.parse::<DatabaseEntry>().as_ref() != Ok(entry) {
            return Err(Problem::database(name, UNREPRESENTABLE));
        }
    }
    for (name, entry) in &config.users {
        check_name(name).map_err(|m| Problem::user(name, m))?;
        if entry.to_conn_string().parse::<UserEntry>().as_ref() != Ok(entry) {
            return Err(Problem::user(name, UNREPRESENTABLE));
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("name must not be empty")
    } else if has_line_break(name) {
        Err("name must not contain a line break")
    } else {
        Ok(())
    }
}

fn check_listeners(s: &Settings) -> Result<Vec<Problem>, Problem> {
    let mut notes = Vec::new();
    if !s.listens_on_tcp() && !s.listens_on_unix_socket() {
        return Err(Problem::setting(
            "listen_addr",
            "nothing to listen on: set listen_addr (TCP) or unix_socket_dir",
        ));
    }
    if s.listen_port == 0 {
        // PgBouncer binds port 0 as it is: the kernel picks the port.
        notes.push(Problem::setting(
            "listen_port",
            "is 0: the kernel picks a free TCP port, and the Unix socket is .s.PGSQL.0",
        ));
    }
    if s.unix_socket_mode > 0o7777 {
        return Err(Problem::setting(
            "unix_socket_mode",
            format!(
                "must be a permission mode from 0 to 07777, got 0{:o}",
                s.unix_socket_mode
            ),
        ));
    }
    if s.http_port != 0 {
        if s.http_listen_addr.trim().is_empty() {
            return Err(Problem::setting(
                "http_listen_addr",
                "must be set when http_port is not 0",
            ));
        }
        if s.listens_on_tcp() && s.http_port == s.listen_port {
            return Err(Problem::setting(
                "http_port",
                format!("must differ from listen_port ({})", s.listen_port),
            ));
        }
    }
    Ok(notes)
}

fn check_limits(config: &Config) -> Result<(), Problem> {
    let s = &config.pgbouncer;
    for (key, value) in [
        ("max_client_conn", s.max_client_conn),
        ("pkt_buf", s.pkt_buf),
        ("scram_iterations", s.scram_iterations),
    ] {
        if value == 0 {
            return Err(Problem::setting(key, "must be at least 1"));
        }
    }
    if s.max_packet_size == 0 {
        return Err(Problem::setting("max_packet_size", "must be at least 1"));
    }
    if s.worker_threads > MAX_WORKER_THREADS {
        return Err(Problem::setting(
            "worker_threads",
            format!("at most {MAX_WORKER_THREADS} (0 is one per CPU)"),
        ));
    }
    let global = [
        ("max_client_conn", s.max_client_conn),
        ("default_pool_size", s.default_pool_size),
        ("min_pool_size", s.min_pool_size),
        ("reserve_pool_size", s.reserve_pool_size),
        ("max_db_connections", s.max_db_connections),
        ("max_user_connections", s.max_user_connections),
        ("max_db_client_connections", s.max_db_client_connections),
        ("max_user_client_connections", s.max_user_client_connections),
        ("max_prepared_statements", s.max_prepared_statements),
        ("scram_iterations", s.scram_iterations),
        ("pkt_buf", s.pkt_buf),
        ("tcp_keepcnt", s.tcp_keepcnt),
        ("verbose", s.verbose),
    ];
    for (key, value) in global {
        if value > MAX_COUNT {
            return Err(Problem::setting(key, too_large(value)));
        }
    }
    for (name, db) in &config.databases {
        let counts = [
            ("pool_size", db.pool_size),
            ("min_pool_size", db.min_pool_size),
            ("reserve_pool_size", db.reserve_pool_size),
            ("max_db_connections", db.max_db_connections),
            ("max_db_client_connections", db.max_db_client_connections),
            ("server_lifetime", db.server_lifetime),
        ];
        for (param, value) in counts {
            if let Some(value) = value.filter(|v| *v > MAX_COUNT) {
                return Err(Problem::database(
                    name,
                    format!("{param}: {}", too_large(value)),
                ));
            }
        }
    }
    for (name, user) in &config.users {
        let counts = [
            ("pool_size", user.pool_size),
            ("max_user_connections", user.max_user_connections),
            (
                "max_user_client_connections",
                user.max_user_client_connections,
            ),
            ("reserve_pool_size", user.reserve_pool_size),
            ("min_pool_size", user.min_pool_size),
            ("query_timeout", user.query_timeout),
            ("idle_transaction_timeout", user.idle_transaction_timeout),
            ("client_idle_timeout", user.client_idle_timeout),
        ];
        for (param, value) in counts {
            if let Some(value) = value.filter(|v| *v > MAX_COUNT) {
                return Err(Problem::user(
                    name,
                    format!("{param}: {}", too_large(value)),
                ));
            }
        }
    }
    Ok(())
}

fn too_large(value: u32) -> String {
    format!("{value} is too large (at most {MAX_COUNT})")
}

/// A pool never holds more than its size or its database's connection limit, so a larger
/// minimum is capped at run time as PgBouncer caps it (see [`Config::pool_settings`]); the
/// configured value stays what SHOW DATABASES prints, as in PgBouncer.
fn check_pool_sizes(config: &Config) -> Vec<Problem> {
    let s = &config.pgbouncer;
    let mut notes = Vec::new();
    let capped = |min: u32, limit: &str, value: u32| {
        format!("{min} is above {limit} ({value}): pools keep at most {value} connections open")
    };
    if s.max_db_connections > 0 && s.min_pool_size > s.max_db_connections {
        notes.push(Problem::setting(
            "min_pool_size",
            capped(s.min_pool_size, "max_db_connections", s.max_db_connections),
        ));
    }
    for (name, db) in &config.databases {
        let pool = db.pool_size.unwrap_or(s.default_pool_size);
        let min = db.min_pool_size.unwrap_or(s.min_pool_size);
        if min > pool {
            notes.push(if db.pool_size.is_none() && db.min_pool_size.is_none() {
                Problem::setting(
                    "min_pool_size",
                    format!(
                        "{}, in database {name:?}",
                        capped(min, "default_pool_size", pool)
                    ),
                )
            } else {
                Problem::database(
                    name,
                    format!("min_pool_size {}", capped(min, "pool_size", pool)),
                )
            });
        }
        let max = config.max_db_connections_for(name);
        let own = db.min_pool_size.is_some() || db.max_db_connections.is_some();
        if max > 0 && min > max && own {
            notes.push(Problem::database(
                name,
                format!("min_pool_size {}", capped(min, "max_db_connections", max)),
            ));
        }
    }
    if config.databases.is_empty() && s.min_pool_size > s.default_pool_size {
        notes.push(Problem::setting(
            "min_pool_size",
            capped(s.min_pool_size, "default_pool_size", s.default_pool_size),
        ));
    }
    notes
}

/// `replica_max_lag` runs as written only where a pool accepts standbys, and is measured
/// about once a second: a setting that cannot act as written loads with a note saying so.
fn check_replica_max_lag(config: &Config) -> Vec<Problem> {
    let max = config.pgbouncer.replica_max_lag;
    if max.is_zero() {
        return Vec::new();
    }
    let mut notes = Vec::new();
    if max < std::time::Duration::from_secs(1) {
        notes.push(Problem::setting(
            "replica_max_lag",
            "replay lag is measured about once a second: a bound below 1 s takes a standby \
             out at its first lag of a second or more",
        ));
    }
    let accepts_standbys = |db: &DatabaseEntry| {
        !matches!(
            db.target_session_attrs.unwrap_or_default(),
            super::TargetSessionAttrs::ReadWrite | super::TargetSessionAttrs::Primary
        )
    };
    if !config.databases.is_empty() && !config.databases.values().any(accepts_standbys) {
        notes.push(Problem::setting(
            "replica_max_lag",
            "no database accepts standbys (every target_session_attrs is read-write or \
             primary): the bound has no effect",
        ));
    }
    notes
}

/// Follows PgBouncer: every method but `any` needs to know its users (even `trust`, which
/// checks that the user exists), in `auth_file` or through `auth_user` and `auth_query`;
/// without either PgBouncer still starts and refuses every login, and so does weir, with a
/// warning.
fn check_auth(config: &Config) -> Result<Vec<Problem>, Problem> {
    let s = &config.pgbouncer;
    let mut notes = Vec::new();
    let auth_user =
        s.auth_user.is_some() || config.databases.values().any(|d| d.auth_user.is_some());
    if s.auth_type.needs_users() && s.auth_file.is_none() && !auth_user {
        notes.push(Problem::setting(
            "auth_file",
            format!(
                "is not set: auth_type {} finds no users, so every login is refused \
                 (set auth_file, or auth_user to look users up with auth_query)",
                s.auth_type
            ),
        ));
    }
    if s.auth_type == AuthType::Any {
        if let Some((name, _)) = config.databases.iter().find(|(_, db)| db.user.is_none()) {
            return Err(Problem::database(
                name,
                "auth_type any needs every database to log in as a fixed user (user=...)",
            ));
        }
    }
    Ok(notes)
}

/// A ServiceAccount token is a bearer credential: users that log in with one need client TLS.
fn check_service_accounts(config: &Config) -> Result<(), Problem> {
    let s = &config.pgbouncer;
    let token_user = config
        .users
        .iter()
        .find(|(_, u)| !u.service_accounts.is_empty());
    if let Some((name, _)) = token_user {
        if s.client_tls_sslmode == TlsMode::Disable {
            return Err(Problem::user(
                name,
                "service_accounts needs client TLS (client_tls_sslmode, client_tls_cert_file, \
                 client_tls_key_file): tokens are only accepted over TLS",
            ));
        }
        if s.service_account_audience.trim().is_empty() {
            return Err(Problem::setting(
                "service_account_audience",
                "must not be empty when a user has service_accounts",
            ));
        }
    }
    Ok(())
}
