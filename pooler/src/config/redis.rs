//! The `[redis]` section: the Redis data path's listener, backend, credentials and the
//! Tair-style pool of exclusive connections. Its presence turns the Redis side on.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ValueError;
use super::values;

/// The RESP listener's default port, Redis's own.
pub const DEFAULT_REDIS_PORT: u16 = 6379;

/// `[redis]` keys that take effect only when the pooler starts.
pub const REDIS_RESTART_KEYS: &[&str] = &["listen_addr", "listen_port"];

/// The `[redis]` section, typed; names and defaults are the contract with the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Where the RESP listener binds; unset: `[pgbouncer] listen_addr`.
    pub listen_addr: Option<String>,
    /// The RESP listener's port.
    pub listen_port: u16,
    /// A standalone Redis as `host:port`.
    pub server: Option<String>,
    /// Seed nodes of a Redis Cluster, `host:port` each.
    pub cluster_nodes: Vec<String>,
    /// Client credentials in PgBouncer's userlist format; weir logs in to Redis as the same
    /// ACL user with the same password.
    pub auth_file: Option<PathBuf>,
    /// The ACL user weir logs in as when there is no `auth_file`.
    pub server_user: Option<String>,
    /// The password weir logs in with when there is no `auth_file`.
    pub server_password: Option<String>,
    /// Shared (multiplexed) connections per backend, user, protocol and database.
    pub shared_connections: u32,
    /// Server connections per backend node, all kinds together; 0: unlimited.
    pub max_server_connections: u32,
    /// Whether exclusive connections are pooled (off: each is opened and closed per use).
    pub private_conn_pool_enabled: bool,
    /// How long an idle pooled exclusive connection is kept, in seconds; 0 closes at once.
    pub private_conn_idle_time_sec: u32,
    /// Idle exclusive connections kept per database; a connection returned above this closes.
    pub private_conn_pool_max_idle_per_db: u32,
    /// Idle exclusive connections per database never reaped, and opened in advance.
    pub private_conn_pool_min_idle_per_db: u32,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            listen_addr: None,
            listen_port: DEFAULT_REDIS_PORT,
            server: None,
            cluster_nodes: Vec::new(),
            auth_file: None,
            server_user: None,
            server_password: None,
            shared_connections: 2,
            max_server_connections: 0,
            private_conn_pool_enabled: false,
            private_conn_idle_time_sec: 60,
            private_conn_pool_max_idle_per_db: 1000,
            private_conn_pool_min_idle_per_db: 0,
        }
    }
}

impl RedisSettings {
    /// Every key, in the order `[redis]` is rendered.
    pub const KEYS: &'static [&'static str] = &[
        "listen_addr",
        "listen_port",
        "server",
        "cluster_nodes",
        "auth_file",
        "server_user",
        "server_password",
        "shared_connections",
        "max_server_connections",
        "private_conn_pool_enabled",
        "private_conn_idle_time_sec",
        "private_conn_pool_max_idle_per_db",
        "private_conn_pool_min_idle_per_db",
    ];

    /// Sets `key` from its ini text; `None` for a key this section does not have.
    pub(crate) fn apply(&mut self, key: &str, value: &str) -> Option<Result<(), ValueError>> {
        let result = (|| {
            match key {
                "listen_addr" => self.listen_addr = values::opt_text::parse(value)?,
                "listen_port" => self.listen_port = values::number_port::parse(value)?,
                "server" => {
                    self.server = values::opt_text::parse(value)?;
                    if let Some(s) = &self.server {
                        host_port(s)?;
                    }
                }
                "cluster_nodes" => {
                    self.cluster_nodes = values::list::parse(value)?;
                    for node in &self.cluster_nodes {
                        host_port(node)?;
                    }
                }
                "auth_file" => self.auth_file = values::opt_path::parse(value)?,
                "server_user" => self.server_user = values::opt_text::parse(value)?,
                "server_password" => self.server_password = values::opt_text::parse(value)?,
                "shared_connections" => {
                    self.shared_connections = values::number::parse(value)?;
                    if self.shared_connections == 0 {
                        return Err(ValueError("shared_connections must be at least 1".into()));
                    }
                }
                "max_server_connections" => {
                    self.max_server_connections = values::number::parse(value)?
                }
                "private_conn_pool_enabled" => {
                    self.private_conn_pool_enabled = values::flag::parse(value)?
                }
                "private_conn_idle_time_sec" => {
                    self.private_conn_idle_time_sec = values::number::parse(value)?
                }
                "private_conn_pool_max_idle_per_db" => {
                    self.private_conn_pool_max_idle_per_db = values::number::parse(value)?
                }
                "private_conn_pool_min_idle_per_db" => {
                    self.private_conn_pool_min_idle_per_db = values::number::parse(value)?
                }
                _ => return Err(ValueError(String::new())),
            }
            Ok(())
        })();
        match result {
            Err(e) if e.0.is_empty() => None,
            other => Some(other),
        }
    }

    /// The section's lines, every key with its value (unset optional ones left out).
    pub fn ini_entries(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut push = |key: &'static str, value: Option<String>| {
            if let Some(v) = value {
                out.push((key, v));
            }
        };
        push("listen_addr", self.listen_addr.clone());
        push("listen_port", Some(self.listen_port.to_string()));
        push("server", self.server.clone());
        push(
            "cluster_nodes",
            Some(self.cluster_nodes.join(",")).filter(|s| !s.is_empty()),
        );
        push("auth_file", values::opt_path::render(&self.auth_file));
        push("server_user", self.server_user.clone());
        push("server_password", self.server_password.clone());
        push(
            "shared_connections",
            values::number::render(&self.shared_connections),
        );
        push(
            "max_server_connections",
            values::number::render(&self.max_server_connections),
        );
        push(
            "private_conn_pool_enabled",
            values::flag::render(&self.private_conn_pool_enabled),
        );
        push(
            "private_conn_idle_time_sec",
            values::number::render(&self.private_conn_idle_time_sec),
        );
        push(
            "private_conn_pool_max_idle_per_db",
            values::number::render(&self.private_conn_pool_max_idle_per_db),
        );
        push(
            "private_conn_pool_min_idle_per_db",
            values::number::render(&self.private_conn_pool_min_idle_per_db),
        );
        out
    }

    /// How long an idle pooled exclusive connection is kept.
    pub fn idle_time(&self) -> Duration {
        Duration::from_secs(self.private_conn_idle_time_sec.into())
    }

    /// Checks what one key cannot: exactly one of `server` and `cluster_nodes`, and a
    /// minimum of idle connections that fits under the maximum.
    pub(crate) fn check(&self) -> Result<(), String> {
        match (&self.server, self.cluster_nodes.is_empty()) {
            (Some(_), false) => {
                Err("[redis] takes exactly one of server and cluster_nodes, not both".into())
            }
            (None, true) => Err("[redis] needs server (or cluster_nodes)".into()),
            _ if self.private_conn_pool_min_idle_per_db
                > self.private_conn_pool_max_idle_per_db =>
            {
                Err("[redis] private_conn_pool_min_idle_per_db is above \
                     private_conn_pool_max_idle_per_db"
                    .into())
            }
            _ => Ok(()),
        }
    }
}

/// Checks a `host:port` address (the host may be a bracketed IPv6 address).
fn host_port(text: &str) -> Result<(), ValueError> {
    let bad = || ValueError::expected("host:port", text);
    let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    match values::port::parse(port) {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contract() {
        let s = RedisSettings::default();
        assert_eq!(s.listen_port, 6379);
        assert_eq!(s.shared_connections, 2);
        assert_eq!(s.max_server_connections, 0);
        assert!(!s.private_conn_pool_enabled);
        assert_eq!(s.private_conn_idle_time_sec, 60);
        assert_eq!(s.private_conn_pool_max_idle_per_db, 1000);
        assert_eq!(s.private_conn_pool_min_idle_per_db, 0);
    }

    #[test]
    fn every_key_applies_and_renders_back() {
        let mut s = RedisSettings::default();
        for (k, v) in [
            ("listen_addr", "127.0.0.1"),
            ("listen_port", "7000"),
            ("server", "redis.example:6380"),
            ("auth_file", "/etc/weir/redis-users.txt"),
            ("server_user", "weir"),
            ("server_password", "s3cret"),
            ("shared_connections", "4"),
            ("max_server_connections", "100"),
            ("private_conn_pool_enabled", "1"),
            ("private_conn_idle_time_sec", "0"),
            ("private_conn_pool_max_idle_per_db", "10"),
            ("private_conn_pool_min_idle_per_db", "2"),
        ] {
            s.apply(k, v).expect(k).expect(k);
        }
        let mut again = RedisSettings::default();
        for (k, v) in s.ini_entries() {
            again.apply(k, &v).expect(k).expect(k);
        }
        assert_eq!(again, s);
        assert!(s.check().is_ok());
        assert_eq!(s.idle_time(), Duration::ZERO);
        let keys: Vec<_> = s.ini_entries().into_iter().map(|(k, _)| k).collect();
        assert!(keys.iter().all(|k| RedisSettings::KEYS.contains(k)));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut s = RedisSettings::default();
        assert!(s.apply("nonsense", "1").is_none());
        for (k, v) in [
            ("server", "nohost"),
            ("server", ":6379"),
            ("server", "h:0"),
            ("cluster_nodes", "a:1,b"),
            ("shared_connections", "0"),
            ("listen_port", "70000"),
            ("private_conn_pool_enabled", "maybe"),
        ] {
            assert!(s.apply(k, v).expect(k).is_err(), "{k}={v}");
        }
        let mut both = RedisSettings {
            server: Some("a:1".into()),
            cluster_nodes: vec!["b:2".into()],
            ..Default::default()
        };
        assert!(both.check().is_err());
        both.server = None;
        both.cluster_nodes.clear();
        assert!(both.check().is_err());
        let upside_down = RedisSettings {
            server: Some("a:1".into()),
            private_conn_pool_min_idle_per_db: 5,
            private_conn_pool_max_idle_per_db: 1,
            ..Default::default()
        };
        assert!(upside_down.check().is_err());
    }

    #[test]
    fn the_section_in_an_ini_file() {
        use crate::config::Config;
        let path = std::path::Path::new("weir.ini");
        let text = "[pgbouncer]\nlisten_port = 6432\nauth_type = any\n\
                    [redis]\nserver = 10.0.0.5:6379\nPRIVATE_CONN_POOL_ENABLED = 1\n\
                    shared_connections = 3\nbogus = 1\n";
        let loaded = Config::parse(text, path).unwrap();
        let redis = loaded.config.redis.clone().unwrap();
        assert_eq!(redis.server.as_deref(), Some("10.0.0.5:6379"));
        assert!(redis.private_conn_pool_enabled);
        assert_eq!(redis.shared_connections, 3);
        assert!(loaded
            .warnings
            .iter()
            .any(|w| w.to_string().contains("bogus")));
        let again = Config::parse(&loaded.config.to_ini(), path).unwrap();
        assert_eq!(again.config, loaded.config);

        let cluster = "[pgbouncer]\nlisten_port = 6432\nauth_type = any\n\
                       [redis]\ncluster_nodes = a:1,b:2\n";
        let loaded = Config::parse(cluster, path).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let redis = loaded.config.redis.unwrap();
        assert_eq!(redis.cluster_nodes, ["a:1", "b:2"]);
        let none = "[pgbouncer]\nlisten_port = 6432\nauth_type = any\n[redis]\n";
        assert!(Config::parse(none, path).is_err());
        let bad = "[pgbouncer]\nlisten_port = 6432\nauth_type = any\n[redis]\nserver = x\n";
        let e = Config::parse(bad, path).unwrap_err().to_string();
        assert!(e.contains("server"), "{e}");
    }
}
