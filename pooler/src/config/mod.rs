//! The pooler's configuration: PgBouncer's `pgbouncer.ini` and `userlist.txt`, typed.
//!
//! This module is the contract between the two halves of weir: the pooler parses and
//! validates these types, the operator builds them and renders them with
//! [`Config::to_ini`]. Setting names and defaults are defined here and nowhere else.
//!
//! The file format is PgBouncer's, so an existing pgbouncer.ini loads as it is: settings
//! weir does not implement produce [`ConfigWarning`]s rather than errors. Weir's own
//! additions (`http_listen_addr`, `http_port`, `shutdown_timeout`, `pinning`,
//! `failover_hold`, `replica_max_lag`) live in the same `[pgbouncer]` section. Where weir departs from
//! PgBouncer it says so on the item: `%include` paths and a relative `auth_file` are taken relative to the including file
//! rather than the working directory. Combinations PgBouncer tolerates but cannot honour as
//! written (a minimum pool size above a limit) load with a warning saying what weir does.

mod database;
mod duration;
mod error;
pub mod hosts;
mod ini;
mod parse;
mod peers;
mod pool;
mod redis;
mod settings;
mod userlist;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// `[pgbouncer]` settings that take effect only when the pooler starts: a reload logs that
/// they changed and keeps the old values; the operator rolls pods when they change.
pub const RESTART_KEYS: &[&str] = &[
    "logfile",
    "pidfile",
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "unix_socket_mode",
    "unix_socket_group",
    "user",
    "so_reuseport",
    "pkt_buf",
    // Keys already issued carry the peer id; peers would misroute them after a change.
    "peer_id",
    "http_listen_addr",
    "http_port",
    "worker_threads",
];

pub use database::{
    DatabaseEntry, ServerAuth, UserEntry, DEFAULT_SERVER_PORT, UNSUPPORTED_DATABASE_KEYS,
    UNSUPPORTED_USER_KEYS,
};
pub use duration::{format_duration, parse_duration, BareUnit};
pub use error::{ConfigError, ConfigWarning, ValueError};
pub use hosts::{LoadBalanceHosts, ServerRole, TargetSessionAttrs};
pub use peers::{PeerEntry, DEFAULT_PEER_PORT};
pub use pool::{PoolSettings, ServerCheck, ServerLifetime, EMPTY_CHECK_QUERY};
pub use redis::{RedisSettings, DEFAULT_REDIS_PORT, REDIS_RESTART_KEYS};
pub use settings::{
    AuthType, ChannelBindingMode, CleartextPassword, Pinning, PoolMode, Settings, Support, TlsMode,
    DEFAULT_AUTH_QUERY, UNSUPPORTED_KEYS,
};
pub use userlist::{load_userlist, parse_userlist, render_userlist, secret_kind, SecretKind};

/// The `[databases]` key of the fallback entry, used for any database name without an
/// entry of its own.
pub const FALLBACK_DATABASE: &str = "*";

/// Where and as whom `auth_query` runs for one database's clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLookup {
    /// The user that runs the query (`auth_user`).
    pub user: String,
    /// The query, with the client's user name as `$1`.
    pub query: String,
    /// The `[databases]` entry to run it in (`auth_dbname`, else the client's database).
    pub dbname: String,
}

/// A whole pgbouncer.ini: the global settings and the per-database and per-user entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The `[pgbouncer]` section.
    pub pgbouncer: Settings,
    /// The `[databases]` section, by client-visible database name; the key `*` is the
    /// fallback entry (see [`Config::database`]).
    pub databases: BTreeMap<String, DatabaseEntry>,
    /// The `[users]` section, by user name.
    pub users: BTreeMap<String, UserEntry>,
    /// The `[peers]` section, by peer id: where cancel requests for keys other processes
    /// issued are forwarded.
    pub peers: BTreeMap<u16, PeerEntry>,
    /// The `[redis]` section: present, it turns the Redis data path on.
    pub redis: Option<RedisSettings>,
}

/// A successfully parsed configuration and what was ignored on the way, which the caller
/// should log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    /// The configuration, already validated.
    pub config: Config,
    /// Settings and sections that were ignored, in file order, then values weir works
    /// around as PgBouncer does (each says what weir does instead).
    pub warnings: Vec<ConfigWarning>,
    /// [`file_digest`] of the main file's text (not of `%include`d files).
    pub file_digest: String,
}

/// A digest of a configuration file's text: what `/status` reports as
/// `config_file_digest`, so that whoever wrote the file (the operator, from its ConfigMap)
/// can tell whether a process runs it.
pub fn file_digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Config {
    /// Parses pgbouncer.ini text and validates the result. `path` is only used in error
    /// messages; nothing is read, so a `%include` line is an error here (use
    /// [`Config::load`] or [`Config::parse_with_includes`]).
    pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
        Config::parse_with_includes(text, path, |_| {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "%include is only followed when loading from a file",
            ))
        })
    }

    /// Like [`Config::parse`], reading `%include`d files through `read`. Include paths are
    /// resolved relative to the directory of the file containing the directive before
    /// `read` sees them; includes nest at most 10 deep.
    pub fn parse_with_includes(
        text: &str,
        path: &Path,
        mut read: impl FnMut(&Path) -> io::Result<String>,
    ) -> Result<Loaded, ConfigError> {
        let lines = ini::lex_with_includes(text, path, &mut read)?;
        let mut built = parse::build(lines, path)?;
        let notes = validate::check(&built.config).map_err(|p| p.locate(path, &built.locations))?;
        built.warnings.extend(
            notes
                .into_iter()
                .map(|note| note.warning(path, &built.locations)),
        );
        Ok(Loaded {
            config: built.config,
            warnings: built.warnings,
            file_digest: file_digest(text),
        })
    }

    /// Reads the pgbouncer.ini at `path`, following `%include`, and validates it. A
    /// relative `auth_file` is resolved against the directory of `path` (PgBouncer uses
    /// its working directory, which in a container is rarely meaningful).
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::in_file(path, format!("cannot read configuration file: {e}"))
        })?;
        let mut loaded = Config::parse_with_includes(&text, path, |p| std::fs::read_to_string(p))?;
        let settings = &mut loaded.config.pgbouncer;
        for file in [
            &mut settings.auth_file,
            &mut settings.auth_hba_file,
            &mut settings.auth_ident_file,
            &mut settings.client_tls_key_file,
            &mut settings.client_tls_cert_file,
            &mut settings.client_tls_ca_file,
            &mut settings.server_tls_ca_file,
            &mut settings.server_tls_key_file,
            &mut settings.server_tls_cert_file,
        ] {
            if let Some(relative) = file.as_ref() {
                *file = Some(ini::resolve_relative(path, relative));
            }
        }
        if let Some(file) = loaded.config.redis.as_mut().map(|r| &mut r.auth_file) {
            if let Some(relative) = file.as_ref() {
                *file = Some(ini::resolve_relative(path, relative));
            }
        }
        Ok(loaded)
    }

    /// Renders the canonical pgbouncer.ini: `[databases]`, `[users]` and `[peers]` (when not
    /// empty),
    /// then every `[pgbouncer]` setting in [`Settings::KEYS`] order, defaults included so
    /// the file does not depend on the reader's defaults. For a config that passes
    /// [`Config::validate`], parsing the result gives the same config back.
    pub fn to_ini(&self) -> String {
        let mut out = String::from("[databases]\n");
        for (name, entry) in &self.databases {
            push_entry(&mut out, &ini::render_key(name), &entry.to_conn_string());
        }
        if !self.users.is_empty() {
            out.push_str("\n[users]\n");
            for (name, entry) in &self.users {
                push_entry(&mut out, &ini::render_key(name), &entry.to_conn_string());
            }
        }
        if !self.peers.is_empty() {
            out.push_str("\n[peers]\n");
            for (id, entry) in &self.peers {
                push_entry(&mut out, &id.to_string(), &entry.to_conn_string());
            }
        }
        out.push_str("\n[pgbouncer]\n");
        for (key, value) in self.pgbouncer.ini_entries() {
            push_entry(&mut out, key, &value);
        }
        if let Some(redis) = &self.redis {
            out.push_str("\n[redis]\n");
            for (key, value) in redis.ini_entries() {
                push_entry(&mut out, key, &value);
            }
        }
        out
    }

    /// Checks the whole configuration: that it survives [`Config::to_ini`] unchanged,
    /// that there is something to listen on, that minimum pool sizes fit within pool sizes
    /// and connection limits, and that the authentication setup can find its users
    /// (`auth_file` for every `auth_type` except `any`, which instead needs a `user=` on
    /// every database). [`Config::parse`] runs this too, and then also names
    /// the line that set the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with_warnings().map(drop)
    }

    /// Like [`Config::validate`], also returning what runs but not as written (a minimum
    /// pool size above a limit, no `auth_file`...), each saying what weir does instead.
    pub fn validate_with_warnings(&self) -> Result<Vec<ConfigWarning>, ConfigError> {
        let notes = validate::check(self).map_err(validate::Problem::unlocated)?;
        Ok(notes
            .into_iter()
            .map(|note| note.warning(Path::new(""), &Default::default()))
            .collect())
    }

    /// The entry serving database `name`: its own entry, else the `*` fallback. Returns
    /// the key of the entry used with it.
    pub fn database(&self, name: &str) -> Option<(&str, &DatabaseEntry)> {
        self.databases
            .get_key_value(name)
            .or_else(|| self.databases.get_key_value(FALLBACK_DATABASE))
            .map(|(key, entry)| (key.as_str(), entry))
    }

    /// How users missing from `auth_file` are looked up for clients of `database`: the
    /// database's `auth_user`, `auth_query` and `auth_dbname`, else the global ones; `None`
    /// when no `auth_user` applies.
    pub fn auth_lookup(&self, database: &str) -> Option<AuthLookup> {
        let entry = self.database(database).map(|(_, e)| e);
        let s = &self.pgbouncer;
        let user = entry
            .and_then(|e| e.auth_user.clone())
            .or_else(|| s.auth_user.clone())?;
        Some(AuthLookup {
            user,
            query: entry
                .and_then(|e| e.auth_query.clone())
                .unwrap_or_else(|| s.auth_query.clone()),
            dbname: entry
                .and_then(|e| e.auth_dbname.clone())
                .or_else(|| s.auth_dbname.clone())
                .unwrap_or_else(|| database.to_owned()),
        })
    }

    /// The database-level minimum pool size of `db` (SHOW DATABASES): the database's, else
    /// the global one. A pool's own is in [`Config::pool_settings`].
    pub fn min_pool_size_for(&self, db: &str) -> u32 {
        self.database(db)
            .and_then(|(_, d)| d.min_pool_size)
            .unwrap_or(self.pgbouncer.min_pool_size)
    }

    /// The database-level reserve pool size of `db` (SHOW DATABASES): the database's, else
    /// the global one. A pool's own is in [`Config::pool_settings`].
    pub fn reserve_pool_size_for(&self, db: &str) -> u32 {
        self.database(db)
            .and_then(|(_, d)| d.reserve_pool_size)
            .unwrap_or(self.pgbouncer.reserve_pool_size)
    }

    /// The server connection limit of `db` over all its pools (0: unlimited): the
    /// database's, else (also when the database's is 0, as in PgBouncer) the global one.
    pub fn max_db_connections_for(&self, db: &str) -> u32 {
        let own = self.database(db).and_then(|(_, d)| d.max_db_connections);
        override_or(own, self.pgbouncer.max_db_connections)
    }

    /// The client connection limit of `db` (0: unlimited): the database's, else the global.
    pub fn max_db_client_connections_for(&self, db: &str) -> u32 {
        let own = self
            .database(db)
            .and_then(|(_, d)| d.max_db_client_connections);
        override_or(own, self.pgbouncer.max_db_client_connections)
    }

    /// The client connection limit of `user` (0: unlimited): the user's, else the global.
    pub fn max_user_client_connections_for(&self, user: &str) -> u32 {
        let own = self
            .users
            .get(user)
            .and_then(|u| u.max_user_client_connections);
        override_or(own, self.pgbouncer.max_user_client_connections)
    }

    /// `query_timeout` for server connections of `user`: the user's, else the global one.
    pub fn query_timeout_for(&self, user: &str) -> std::time::Duration {
        self.user_timeout(user, |u| u.query_timeout, self.pgbouncer.query_timeout)
    }

    /// `idle_transaction_timeout` for server connections of `user`: the user's, else the
    /// global one.
    pub fn idle_transaction_timeout_for(&self, user: &str) -> std::time::Duration {
        let global = self.pgbouncer.idle_transaction_timeout;
        self.user_timeout(user, |u| u.idle_transaction_timeout, global)
    }

    /// `client_idle_timeout` for clients logged in as `user`: the user's, else the global.
    pub fn client_idle_timeout_for(&self, user: &str) -> std::time::Duration {
        let global = self.pgbouncer.client_idle_timeout;
        self.user_timeout(user, |u| u.client_idle_timeout, global)
    }

    /// A `[users]` timeout in seconds when above 0, else `global` (PgBouncer's rule).
    fn user_timeout(
        &self,
        user: &str,
        own: fn(&UserEntry) -> Option<u32>,
        global: std::time::Duration,
    ) -> std::time::Duration {
        match self.users.get(user).and_then(own) {
            Some(secs) if secs > 0 => std::time::Duration::from_secs(secs.into()),
            _ => global,
        }
    }

    /// How long server connections of `db` may serve: the database's, else the global one.
    pub fn server_lifetime_for(&self, db: &str) -> std::time::Duration {
        match self.database(db).and_then(|(_, d)| d.server_lifetime) {
            Some(secs) if secs > 0 => std::time::Duration::from_secs(secs.into()),
            _ => self.pgbouncer.server_lifetime,
        }
    }

    /// The server connection limit of `user` over all its pools (0: unlimited): the
    /// user's, else (also when the user's is 0, as in PgBouncer) the global one.
    pub fn max_user_connections_for(&self, user: &str) -> u32 {
        let own = self.users.get(user).and_then(|u| u.max_user_connections);
        override_or(own, self.pgbouncer.max_user_connections)
    }
}

/// A limit resolved as PgBouncer does: the entry's when above 0, else the global one.
fn override_or(own: Option<u32>, global: u32) -> u32 {
    own.filter(|limit| *limit > 0).unwrap_or(global)
}

fn push_entry(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    if value.is_empty() {
        out.push_str(" =\n");
    } else {
        out.push_str(" = ");
        out.push_str(value);
        out.push('\n');
    }
}
