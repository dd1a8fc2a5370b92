//! `[databases]` and `[users]` entries, written as libpq-like connection strings.
//!
//! A connection string is `key=value` pairs separated by blanks. A value may be wrapped in
//! single quotes to hold blanks, with `''` standing for one quote:
//! `connect_query='SELECT ''warm'''`. Empty values are refused, as PgBouncer does; leave the
//! parameter out instead. Parameter names are matched without regard to letter case.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ValueError;
use super::hosts::{self, LoadBalanceHosts, TargetSessionAttrs};
use super::settings::PoolMode;
use super::values;

/// The PostgreSQL port used when a database entry sets none.
pub const DEFAULT_SERVER_PORT: u16 = 5432;

/// `[databases]` parameters PgBouncer knows and weir ignores (with a warning).
pub const UNSUPPORTED_DATABASE_KEYS: &[&str] = &["query_wait_timeout"];

/// `[users]` parameters PgBouncer knows and weir ignores (with a warning).
pub const UNSUPPORTED_USER_KEYS: &[&str] = &["query_wait_timeout", "transaction_timeout"];

/// One `[databases]` entry: where a client-visible database name is routed and how its
/// pools behave. Every field is optional; unset ones fall back as documented on each, so
/// an empty entry (`foodb =`) means "same-named database over the Unix socket".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseEntry {
    /// Database name on the server. Unset: the name the client asked for.
    pub dbname: Option<String>,
    /// Server host name or address, a comma-separated list of them, or a Unix socket
    /// directory (starting with `/`). Unset: the Unix socket in `unix_socket_dir`.
    pub host: Option<String>,
    /// Server port, or one per host of a host list (libpq's `port=5432,5433`). Empty: 5432.
    pub port: Vec<u16>,
    /// With a host list: which host a new connection starts at. Unset: `round-robin`.
    pub load_balance_hosts: Option<LoadBalanceHosts>,
    /// Which servers a new connection accepts; the others are skipped. Unset: `any`.
    pub target_session_attrs: Option<TargetSessionAttrs>,
    /// Log in to the server as this user for every client ("forced user"), giving the
    /// database a single pool. Unset: each client's own user name.
    pub user: Option<String>,
    /// Password for `user`. Unset: taken from `auth_file`.
    pub password: Option<String>,
    /// Overrides the global `auth_user` for this database.
    pub auth_user: Option<String>,
    /// Overrides the global `auth_query` for this database.
    pub auth_query: Option<String>,
    /// Overrides the global `auth_dbname` for this database.
    pub auth_dbname: Option<String>,
    /// Overrides `default_pool_size` for this database's pools.
    pub pool_size: Option<u32>,
    /// Overrides the global `min_pool_size`.
    pub min_pool_size: Option<u32>,
    /// Overrides the global `reserve_pool_size` (PgBouncer's older name `reserve_pool` is
    /// accepted too).
    pub reserve_pool_size: Option<u32>,
    /// Overrides the global `max_db_connections`.
    pub max_db_connections: Option<u32>,
    /// Overrides the global `max_db_client_connections` (0: the global one applies).
    pub max_db_client_connections: Option<u32>,
    /// Overrides the global `server_lifetime`, in seconds (0: the global one applies).
    pub server_lifetime: Option<u32>,
    /// Overrides the global `pool_mode`.
    pub pool_mode: Option<PoolMode>,
    /// Query run once on each new server connection before any client uses it.
    pub connect_query: Option<String>,
    /// `client_encoding` to ask the server for.
    pub client_encoding: Option<String>,
    /// `DateStyle` to ask the server for.
    pub datestyle: Option<String>,
    /// `TimeZone` to ask the server for.
    pub timezone: Option<String>,
    /// `application_name` to ask the server for.
    pub application_name: Option<String>,
    /// Weir extension: log in to the server with a short-lived cloud token instead of a
    /// stored password. Unset: the password from `password=` or `auth_file`.
    pub server_auth: Option<ServerAuth>,
    /// Weir extension, with `server_auth = rds-iam`: the AWS region the token is signed for.
    /// Unset: `AWS_REGION` (or `AWS_DEFAULT_REGION`) of the pooler's environment.
    pub server_auth_region: Option<String>,
}

/// `server_auth`: where the pooler's server password comes from when it is a cloud token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerAuth {
    /// AWS RDS / Aurora IAM authentication: a SigV4-signed token made from the pod's AWS
    /// credentials (environment keys, IRSA web identity, or EKS Pod Identity).
    RdsIam,
    /// Google Cloud SQL / AlloyDB IAM authentication: the service account's OAuth access
    /// token from the metadata server (GKE Workload Identity).
    GcpIam,
    /// Azure Database for PostgreSQL with Microsoft Entra ID: an access token for the
    /// workload identity's federated token.
    AzureAd,
}

impl FromStr for ServerAuth {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s.to_ascii_lowercase().as_str() {
            "rds-iam" => Ok(ServerAuth::RdsIam),
            "gcp-iam" => Ok(ServerAuth::GcpIam),
            "azure-ad" => Ok(ServerAuth::AzureAd),
            _ => Err(ValueError::expected("rds-iam, gcp-iam or azure-ad", s)),
        }
    }
}

impl fmt::Display for ServerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerAuth::RdsIam => "rds-iam",
            ServerAuth::GcpIam => "gcp-iam",
            ServerAuth::AzureAd => "azure-ad",
        })
    }
}

/// One `[users]` entry: settings that apply to every pool of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserEntry {
    /// Overrides the database's and the global `pool_mode`.
    pub pool_mode: Option<PoolMode>,
    /// Overrides the database's `pool_size` and `default_pool_size`.
    pub pool_size: Option<u32>,
    /// Overrides the global `max_user_connections`.
    pub max_user_connections: Option<u32>,
    /// Overrides the global `max_user_client_connections` (0: the global one applies).
    pub max_user_client_connections: Option<u32>,
    /// Overrides the database's and the global `reserve_pool_size`.
    pub reserve_pool_size: Option<u32>,
    /// Overrides the global `query_timeout`, in seconds (0: the global one applies).
    pub query_timeout: Option<u32>,
    /// Overrides the global `idle_transaction_timeout`, in seconds (0: the global one).
    pub idle_transaction_timeout: Option<u32>,
    /// Overrides the global `client_idle_timeout`, in seconds (0: the global one applies).
    pub client_idle_timeout: Option<u32>,
    /// Overrides the database's and the global `min_pool_size` for this user's pools. A
    /// Weir extension: PgBouncer has no per-user minimum.
    pub min_pool_size: Option<u32>,
    /// Weir extension: the Kubernetes ServiceAccounts (`namespace/name`) whose tokens log in
    /// as this user. When set, the user logs in only with such a token, sent as the password
    /// over TLS; Weir then uses the user's own auth-file credentials toward the server.
    pub service_accounts: Vec<String>,
}

/// A parsed entry together with the PgBouncer parameters it named that weir ignores.
pub(crate) struct Parsed<T> {
    pub entry: T,
    pub ignored: Vec<String>,
}

impl DatabaseEntry {
    /// The server database to connect to for a client that asked for `client_dbname`.
    pub fn dbname_or<'a>(&'a self, client_dbname: &'a str) -> &'a str {
        self.dbname.as_deref().unwrap_or(client_dbname)
    }

    /// The server port (the first of a list), 5432 when unset.
    pub fn port_or_default(&self) -> u16 {
        self.port.first().copied().unwrap_or(DEFAULT_SERVER_PORT)
    }

    /// `load_balance_hosts` as the console shows it: only for a host list, as PgBouncer does.
    pub fn load_balance_shown(&self) -> Option<LoadBalanceHosts> {
        let list = self.host.as_deref().is_some_and(|h| h.contains(','));
        list.then(|| self.load_balance_hosts.unwrap_or_default())
    }

    /// Each server as a host and port, in the order written; hosts default to `socket_dir`.
    pub fn servers<'a>(&'a self, socket_dir: &'a str) -> Result<Vec<(&'a str, u16)>, ValueError> {
        let hosts = hosts::split_hosts(self.host.as_deref().unwrap_or(socket_dir));
        if hosts.iter().any(|h| h.is_empty()) {
            return Err(ValueError("empty host name in host list".into()));
        }
        hosts::pair_ports(&hosts, &self.port, DEFAULT_SERVER_PORT)
    }

    /// Parses a connection string, collecting known-but-unsupported parameters.
    pub(crate) fn parse_conn_string(text: &str) -> Result<Parsed<Self>, ValueError> {
        let mut entry = DatabaseEntry::default();
        let mut ignored = Vec::new();
        for (key, value) in split_conn_string(text)? {
            let in_key = |e: ValueError| ValueError(format!("{key}: {e}"));
            let text = Some(value.clone());
            match key.as_str() {
                "dbname" => entry.dbname = text,
                "host" => entry.host = text,
                "port" => entry.port = hosts::parse_ports(&value).map_err(in_key)?,
                "load_balance_hosts" => {
                    entry.load_balance_hosts = Some(value.parse().map_err(in_key)?)
                }
                "target_session_attrs" => {
                    entry.target_session_attrs = Some(value.parse().map_err(in_key)?)
                }
                "user" => entry.user = text,
                "password" => entry.password = text,
                "auth_user" => entry.auth_user = text,
                "auth_query" => entry.auth_query = text,
                "auth_dbname" => entry.auth_dbname = text,
                "pool_size" => entry.pool_size = count(&value).map_err(in_key)?,
                "min_pool_size" => entry.min_pool_size = count(&value).map_err(in_key)?,
                "reserve_pool_size" | "reserve_pool" => {
                    entry.reserve_pool_size = count(&value).map_err(in_key)?
                }
                "max_db_connections" => entry.max_db_connections = count(&value).map_err(in_key)?,
                "max_db_client_connections" => {
                    entry.max_db_client_connections = count(&value).map_err(in_key)?
                }
                "server_lifetime" => entry.server_lifetime = count(&value).map_err(in_key)?,
                "pool_mode" => entry.pool_mode = Some(value.parse().map_err(in_key)?),
                "connect_query" => entry.connect_query = text,
                "client_encoding" => entry.client_encoding = text,
                "datestyle" => entry.datestyle = text,
                "timezone" => entry.timezone = text,
                "application_name" => entry.application_name = text,
                "server_auth" => entry.server_auth = Some(value.parse().map_err(in_key)?),
                "server_auth_region" => entry.server_auth_region = text,
                other if UNSUPPORTED_DATABASE_KEYS.contains(&other) => ignored.push(key),
                _ => {
                    return Err(ValueError(format!(
                        "unknown parameter {key:?} in connection string"
                    )))
                }
            }
        }
        entry.servers("/")?;
        match (
            entry.server_auth,
            &entry.password,
            &entry.server_auth_region,
        ) {
            (Some(auth), Some(_), _) => {
                return Err(ValueError(format!(
                    "server_auth={auth} logs in with a cloud token; leave out password="
                )))
            }
            (Some(ServerAuth::RdsIam), _, _) | (_, _, None) => {}
            (_, _, Some(_)) => {
                return Err(ValueError(
                    "server_auth_region only applies to server_auth=rds-iam".into(),
                ))
            }
        }
        Ok(Parsed { entry, ignored })
    }

    /// The entry as a connection string, parameters in a fixed order and quoted where
    /// needed, so that parsing it gives this entry back.
    pub fn to_conn_string(&self) -> String {
        let mut out = ConnStringWriter::default();
        out.text("dbname", &self.dbname);
        out.text("host", &self.host);
        if !self.port.is_empty() {
            let ports: Vec<String> = self.port.iter().map(u16::to_string).collect();
            out.push("port", &ports.join(","));
        }
        out.number("load_balance_hosts", self.load_balance_hosts);
        out.number("target_session_attrs", self.target_session_attrs);
        out.text("user", &self.user);
        out.text("password", &self.password);
        out.text("auth_user", &self.auth_user);
        out.text("auth_query", &self.auth_query);
        out.text("auth_dbname", &self.auth_dbname);
        out.number("pool_size", self.pool_size);
        out.number("min_pool_size", self.min_pool_size);
        out.number("reserve_pool_size", self.reserve_pool_size);
        out.number("max_db_connections", self.max_db_connections);
        out.number("max_db_client_connections", self.max_db_client_connections);
        out.number("server_lifetime", self.server_lifetime);
        out.number("pool_mode", self.pool_mode);
        out.text("connect_query", &self.connect_query);
        out.text("client_encoding", &self.client_encoding);
        out.text("datestyle", &self.datestyle);
        out.text("timezone", &self.timezone);
        out.text("application_name", &self.application_name);
        out.number("server_auth", self.server_auth);
        out.text("server_auth_region", &self.server_auth_region);
        out.0
    }
}

impl FromStr for DatabaseEntry {
    type Err = ValueError;

    /// Parses a `[databases]` connection string. PgBouncer parameters weir does not
    /// implement are dropped here; [`Config::parse`](crate::config::Config::parse) reports
    /// them as warnings.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseEntry::parse_conn_string(s)?.entry)
    }
}

impl UserEntry {
    /// Parses a `[users]` entry, collecting known-but-unsupported parameters.
    pub(crate) fn parse_conn_string(text: &str) -> Result<Parsed<Self>, ValueError> {
        let mut entry = UserEntry::default();
        let mut ignored = Vec::new();
        for (key, value) in split_conn_string(text)? {
            let in_key = |e: ValueError| ValueError(format!("{key}: {e}"));
            match key.as_str() {
                "pool_mode" => entry.pool_mode = Some(value.parse().map_err(in_key)?),
                "pool_size" => entry.pool_size = count(&value).map_err(in_key)?,
                "max_user_connections" => {
                    entry.max_user_connections = count(&value).map_err(in_key)?
                }
                "max_user_client_connections" => {
                    entry.max_user_client_connections = count(&value).map_err(in_key)?
                }
                "reserve_pool_size" => entry.reserve_pool_size = count(&value).map_err(in_key)?,
                "min_pool_size" => entry.min_pool_size = count(&value).map_err(in_key)?,
                "query_timeout" => entry.query_timeout = count(&value).map_err(in_key)?,
                "idle_transaction_timeout" => {
                    entry.idle_transaction_timeout = count(&value).map_err(in_key)?
                }
                "client_idle_timeout" => {
                    entry.client_idle_timeout = count(&value).map_err(in_key)?
                }
                "service_accounts" => {
                    entry.service_accounts = service_accounts(&value).map_err(in_key)?
                }
                other if UNSUPPORTED_USER_KEYS.contains(&other) => ignored.push(key),
                _ => return Err(ValueError(format!("unknown user parameter {key:?}"))),
            }
        }
        Ok(Parsed { entry, ignored })
    }

    /// The entry as `key=value` pairs in a fixed order, so that parsing gives it back.
    pub fn to_conn_string(&self) -> String {
        let mut out = ConnStringWriter::default();
        out.number("pool_mode", self.pool_mode);
        out.number("pool_size", self.pool_size);
        out.number("max_user_connections", self.max_user_connections);
        out.number(
            "max_user_client_connections",
            self.max_user_client_connections,
        );
        out.number("reserve_pool_size", self.reserve_pool_size);
        out.number("min_pool_size", self.min_pool_size);
        out.number("query_timeout", self.query_timeout);
        out.number("idle_transaction_timeout", self.idle_transaction_timeout);
        out.number("client_idle_timeout", self.client_idle_timeout);
        if !self.service_accounts.is_empty() {
            out.push("service_accounts", &self.service_accounts.join(","));
        }
        out.0
    }
}

/// Parses `namespace/name,...`: each part a Kubernetes object name (lower-case letters,
/// digits, `-` and `.`), so that it can be compared with a TokenReview user name.
fn service_accounts(value: &str) -> Result<Vec<String>, ValueError> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    value
        .split(',')
        .map(|item| match item.trim().split_once('/') {
            Some((ns, name)) if valid(ns) && valid(name) => Ok(format!("{ns}/{name}")),
            _ => Err(ValueError(format!(
                "expected namespace/name of a ServiceAccount, found {item:?}"
            ))),
        })
        .collect()
}

impl FromStr for UserEntry {
    type Err = ValueError;

    /// Parses a `[users]` entry. PgBouncer parameters weir does not implement are dropped
    /// here; [`Config::parse`](crate::config::Config::parse) reports them as warnings.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(UserEntry::parse_conn_string(s)?.entry)
    }
}

/// A per-entry count; a negative number (PgBouncer's `-1`) leaves it unset, so the global
/// value applies, as in PgBouncer.
fn count(value: &str) -> Result<Option<u32>, ValueError> {
    match value.trim().strip_prefix('-') {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(None)
        }
        _ => values::count::parse(value).map(Some),
    }
}

/// Splits a connection string into `(lower-case key, unquoted value)` pairs.
pub(crate) fn split_conn_string(text: &str) -> Result<Vec<(String, String)>, ValueError> {
    let mut pairs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(pairs);
        }
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        if key.is_empty() {
            return Err(ValueError(format!(
                "expected key=value in connection string, found {rest:?}"
            )));
        }
        rest = rest[key_end..]
            .trim_start()
            .strip_prefix('=')
            .ok_or_else(|| ValueError(format!("expected '=' after {key:?} in connection string")))?
            .trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('\'') {
            let (value, after) = unquote(quoted).ok_or_else(|| {
                ValueError(format!("{key}: quoted value is missing its closing quote"))
            })?;
            if !after.is_empty() && !after.starts_with(char::is_whitespace) {
                return Err(ValueError(format!(
                    "{key}: expected a blank after the quoted value"
                )));
            }
            rest = after;
            value
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let value = rest[..end].to_owned();
            rest = &rest[end..];
            value
        };
        if value.is_empty() {
            return Err(ValueError(format!(
                "{key}: empty value; leave the parameter out instead"
            )));
        }
        pairs.push((key.to_ascii_lowercase(), value));
    }
}

/// Reads a single-quoted value whose opening quote is already consumed; returns the value
/// and the text after the closing quote, or `None` when it never closes.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            value.push(c);
        } else if text[i + 1..].starts_with('\'') {
            value.push('\'');
            chars.next();
        } else {
            return Some((value, &text[i + 1..]));
        }
    }
    None
}

/// Builds a connection string one parameter at a time.
#[derive(Default)]
struct ConnStringWriter(String);

impl ConnStringWriter {
    fn text(&mut self, key: &str, value: &Option<String>) {
        if let Some(value) = value {
            self.push(key, value);
        }
    }

    fn number(&mut self, key: &str, value: Option<impl ToString>) {
        if let Some(value) = value {
            self.push(key, &value.to_string());
        }
    }

    fn push(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(key);
        self.0.push('=');
        if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '\'') {
            self.0.push('\'');
            self.0.push_str(&value.replace('\'', "''"));
            self.0.push('\'');
        } else {
            self.0.push_str(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        split_conn_string(text).expect("valid connection string")
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn splits_pairs_with_flexible_blanks() {
        assert_eq!(pairs(""), vec![]);
        assert_eq!(pairs("   "), vec![]);
        assert_eq!(
            pairs("host=a  port = 5433\tdbname= x"),
            vec![pair("host", "a"), pair("port", "5433"), pair("dbname", "x")]
        );
        assert_eq!(pairs("HOST=a"), vec![pair("host", "a")]);
    }

    #[test]
    fn quoted_values() {
        assert_eq!(
            pairs("connect_query='SELECT 1' password='it''s' application_name='a=b c'"),
            vec![
                pair("connect_query", "SELECT 1"),
                pair("password", "it's"),
                pair("application_name", "a=b c"),
            ]
        );
        assert_eq!(pairs("password=''''"), vec![pair("password", "'")]);
        assert_eq!(pairs("password=it's"), vec![pair("password", "it's")]);
    }

    #[test]
    fn malformed_connection_strings() {
        let cases = [
            ("host", "expected '='"),
            ("=x", "expected key=value"),
            ("host=", "empty value"),
            ("host='' port=1", "empty value"),
            ("connect_query='SELECT 1", "closing quote"),
            ("password='a'b", "blank after"),
        ];
        for (text, needle) in cases {
            let err = split_conn_string(text).expect_err(text);
            assert!(err.0.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn database_entry_parameters() {
        let parsed = DatabaseEntry::parse_conn_string(
            "dbname=app host=db.internal port=5433 user=svc password='p w' auth_user=auth \
             pool_size=10 min_pool_size=2 reserve_pool=3 max_db_connections=50 \
             pool_mode=transaction connect_query='SELECT 1' client_encoding=UTF8 \
             datestyle=ISO timezone=UTC application_name=weir",
        )
        .expect("valid");
        assert!(parsed.ignored.is_empty());
        let e = parsed.entry;
        assert_eq!(e.dbname.as_deref(), Some("app"));
        assert_eq!(e.host.as_deref(), Some("db.internal"));
        assert_eq!(e.port, vec![5433]);
        assert_eq!(e.user.as_deref(), Some("svc"));
        assert_eq!(e.password.as_deref(), Some("p w"));
        assert_eq!(e.auth_user.as_deref(), Some("auth"));
        assert_eq!(e.pool_size, Some(10));
        assert_eq!(e.min_pool_size, Some(2));
        assert_eq!(e.reserve_pool_size, Some(3));
        assert_eq!(e.max_db_connections, Some(50));
        assert_eq!(e.pool_mode, Some(PoolMode::Transaction));
        assert_eq!(e.connect_query.as_deref(), Some("SELECT 1"));
        assert_eq!(e.client_encoding.as_deref(), Some("UTF8"));
        assert_eq!(e.datestyle.as_deref(), Some("ISO"));
        assert_eq!(e.timezone.as_deref(), Some("UTC"));
        assert_eq!(e.application_name.as_deref(), Some("weir"));
        assert_eq!(e.dbname_or("client"), "app");
        assert_eq!(e.port_or_default(), 5433);

        let empty = DatabaseEntry::default();
        assert_eq!(empty.dbname_or("client"), "client");
        assert_eq!(empty.port_or_default(), 5432);
    }

    #[test]
    fn server_auth_names_a_cloud_token() {
        let e: DatabaseEntry = "host=db server_auth=RDS-IAM server_auth_region=us-east-1"
            .parse()
            .expect("valid");
        assert_eq!(e.server_auth, Some(ServerAuth::RdsIam));
        assert_eq!(e.server_auth_region.as_deref(), Some("us-east-1"));
        assert_eq!(
            e.to_conn_string(),
            "host=db server_auth=rds-iam server_auth_region=us-east-1"
        );
        for kind in ["gcp-iam", "azure-ad"] {
            let e: DatabaseEntry = format!("server_auth={kind}").parse().expect(kind);
            assert_eq!(e.server_auth.map(|a| a.to_string()).as_deref(), Some(kind));
        }
    }

    #[test]
    fn reserve_pool_size_has_two_spellings() {
        let a: DatabaseEntry = "reserve_pool_size=4".parse().expect("valid");
        let b: DatabaseEntry = "reserve_pool=4".parse().expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.reserve_pool_size, Some(4));
    }

    #[test]
    fn database_entry_errors_name_the_parameter() {
        let cases = [
            (
                "port=0",
                "port: expected a port number (1-65535), got \"0\"",
            ),
            ("port=x", "port: expected a port number"),
            (
                "pool_size=lots",
                "pool_size: expected a whole number, got \"lots\"",
            ),
            ("pool_mode=batch", "pool_mode: expected a pool mode"),
            ("sslmode=require", "unknown parameter \"sslmode\""),
            (
                "server_auth=vault",
                "server_auth: expected rds-iam, gcp-iam or azure-ad",
            ),
            (
                "server_auth=gcp-iam password=x",
                "server_auth=gcp-iam logs in with a cloud token; leave out password=",
            ),
            (
                "server_auth=azure-ad server_auth_region=eu-west-1",
                "server_auth_region only applies to server_auth=rds-iam",
            ),
        ];
        for (text, needle) in cases {
            let err = text.parse::<DatabaseEntry>().expect_err(text);
            assert!(err.0.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn unsupported_database_parameters_are_collected() {
        let parsed = DatabaseEntry::parse_conn_string(
            "host=a query_wait_timeout=10 server_lifetime=10 max_db_client_connections=4",
        )
        .expect("valid");
        assert_eq!(parsed.ignored, vec!["query_wait_timeout"]);
        assert_eq!(parsed.entry.host.as_deref(), Some("a"));
        assert_eq!(parsed.entry.server_lifetime, Some(10));
        assert_eq!(parsed.entry.max_db_client_connections, Some(4));
    }

    #[test]
    fn host_lists_with_their_ports() {
        let e: DatabaseEntry = "host=a,b,/tmp port=1,2,3 load_balance_hosts=disable \
                                target_session_attrs=read-write"
            .parse()
            .expect("valid");
        assert_eq!(
            e.servers("/sock").unwrap(),
            vec![("a", 1), ("b", 2), ("/tmp", 3)]
        );
        assert_eq!(e.load_balance_hosts, Some(LoadBalanceHosts::Disable));
        assert_eq!(e.target_session_attrs, Some(TargetSessionAttrs::ReadWrite));
        assert_eq!(e.port_or_default(), 1);
        let one: DatabaseEntry = "host=a,b port=6000".parse().expect("valid");
        assert_eq!(
            one.servers("/sock").unwrap(),
            vec![("a", 6000), ("b", 6000)]
        );
        let none = DatabaseEntry::default();
        assert_eq!(none.servers("/sock").unwrap(), vec![("/sock", 5432)]);
        for (text, needle) in [
            (
                "host=a,b port=1,2,3",
                "could not match 3 port numbers to 2 hosts",
            ),
            ("port=1,2", "could not match 2 port numbers to 1 hosts"),
            ("host=a,,b", "empty host name"),
            ("host=a port=1,x", "port: expected a port number"),
            (
                "load_balance_hosts=random",
                "load_balance_hosts: expected round-robin or disable",
            ),
            (
                "target_session_attrs=master",
                "target_session_attrs: expected any, read-write",
            ),
        ] {
            let err = text.parse::<DatabaseEntry>().expect_err(text);
            assert!(err.0.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn user_entries() {
        let parsed = UserEntry::parse_conn_string(
            "pool_mode=statement pool_size=3 max_user_connections=9 reserve_pool_size=1 \
             min_pool_size=2 transaction_timeout=5 max_user_client_connections=20 \
             query_timeout=7 idle_transaction_timeout=8 client_idle_timeout=9 \
             service_accounts=shop/api,shop/worker",
        )
        .expect("valid");
        assert_eq!(
            parsed.entry,
            UserEntry {
                pool_mode: Some(PoolMode::Statement),
                pool_size: Some(3),
                max_user_connections: Some(9),
                max_user_client_connections: Some(20),
                reserve_pool_size: Some(1),
                query_timeout: Some(7),
                idle_transaction_timeout: Some(8),
                client_idle_timeout: Some(9),
                min_pool_size: Some(2),
                service_accounts: vec!["shop/api".into(), "shop/worker".into()],
            }
        );
        for bad in [
            "shop",
            "shop/",
            "/api",
            "Shop/api",
            "shop/api,",
            "a/b/c",
            "a:b/c",
        ] {
            let err = format!("service_accounts={bad}")
                .parse::<UserEntry>()
                .expect_err(bad);
            assert!(
                err.0
                    .starts_with("service_accounts: expected namespace/name"),
                "{bad}: {err}"
            );
        }
        assert_eq!(parsed.ignored, vec!["transaction_timeout"]);
        let err = "host=x".parse::<UserEntry>().expect_err("not a user key");
        assert!(err.0.contains("unknown user parameter \"host\""), "{err}");
        // PgBouncer's -1 means "not set here": the database's or the global value applies.
        let inherits = "pool_size=-1 max_user_connections=-5".parse::<UserEntry>();
        assert_eq!(inherits, Ok(UserEntry::default()));
        let db = "pool_size=-1 min_pool_size=-1 reserve_pool=-1 max_db_connections=-1";
        assert_eq!(db.parse::<DatabaseEntry>(), Ok(DatabaseEntry::default()));
        for bad in [
            "pool_size=-",
            "pool_size=--1",
            "pool_size=-x",
            "pool_size=1.5",
        ] {
            let err = bad.parse::<UserEntry>().expect_err(bad);
            assert!(
                err.0.starts_with("pool_size: expected a whole number"),
                "{err}"
            );
        }
    }

    #[test]
    fn rendering_round_trips() {
        let entries = [
            DatabaseEntry::default(),
            DatabaseEntry {
                host: Some("/var/run/postgresql".into()),
                ..Default::default()
            },
            DatabaseEntry {
                host: Some("a,b".into()),
                port: vec![5432, 5433],
                load_balance_hosts: Some(LoadBalanceHosts::Disable),
                target_session_attrs: Some(TargetSessionAttrs::PreferStandby),
                ..Default::default()
            },
            DatabaseEntry {
                dbname: Some("my db".into()),
                host: Some("10.0.0.1,10.0.0.2".into()),
                port: vec![6000],
                load_balance_hosts: Some(LoadBalanceHosts::RoundRobin),
                target_session_attrs: Some(TargetSessionAttrs::Any),
                user: Some("o'brien".into()),
                password: Some("p'a ss=word\t".into()),
                auth_user: Some("auth".into()),
                auth_query: Some("SELECT usename, passwd FROM lookup($1)".into()),
                auth_dbname: Some("authdb".into()),
                pool_size: Some(0),
                min_pool_size: Some(1),
                reserve_pool_size: Some(2),
                max_db_connections: Some(3),
                max_db_client_connections: Some(4),
                server_lifetime: Some(60),
                pool_mode: Some(PoolMode::Statement),
                connect_query: Some("SET x = 'y'; SELECT 1".into()),
                client_encoding: Some("UTF8".into()),
                datestyle: Some("ISO, MDY".into()),
                timezone: Some("Europe/Amsterdam".into()),
                application_name: Some("'".into()),
                server_auth: None,
                server_auth_region: None,
            },
            DatabaseEntry {
                host: Some("db.example".into()),
                server_auth: Some(ServerAuth::RdsIam),
                server_auth_region: Some("ap-south-1".into()),
                ..Default::default()
            },
        ];
        for entry in entries {
            let text = entry.to_conn_string();
            assert_eq!(text.parse::<DatabaseEntry>(), Ok(entry), "{text}");
        }
        let user = UserEntry {
            pool_mode: Some(PoolMode::Transaction),
            pool_size: Some(5),
            max_user_connections: None,
            max_user_client_connections: None,
            reserve_pool_size: Some(1),
            query_timeout: None,
            idle_transaction_timeout: None,
            client_idle_timeout: Some(30),
            min_pool_size: None,
            service_accounts: vec!["a/b".into(), "c/d".into()],
        };
        assert_eq!(
            user.to_conn_string(),
            "pool_mode=transaction pool_size=5 reserve_pool_size=1 client_idle_timeout=30 \
             service_accounts=a/b,c/d"
        );
        assert_eq!(user.to_conn_string().parse::<UserEntry>(), Ok(user));
    }
}
