//! The Redis side of a pool: the `[redis]` section of the pooler's configuration and the
//! connection details applications get.
//!
//! The `[redis]` keys are the configuration contract shared with the pooler; the section is
//! written as text after the pooler's own `[pgbouncer]` settings.

use std::path::PathBuf;

use super::config::{AUTH_DIR, AUTH_FILE};
use super::secrets::{encode, Credential};
use crate::api::{RedisSpec, DEFAULT_REDIS_PORT};
use crate::sizing::Sizing;

/// The port clients connect to, on the Service and in the pod: Redis's own.
pub const REDIS_PORT: u16 = DEFAULT_REDIS_PORT;

/// Name of the Service and container port of the RESP listener.
pub const REDIS_PORT_NAME: &str = "redis";

/// The section header.
const SECTION: &str = "[redis]";

/// The key holding each pod's server connection cap.
pub const MAX_SERVER_CONNECTIONS: &str = "max_server_connections";

/// The `[redis]` settings, in the order they are written.
pub(crate) fn settings(
    redis: &RedisSpec,
    sizing: &Sizing,
    credentials: &[Credential],
) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "1" } else { "0" }.to_owned();
    let pool = &redis.private_pool;
    let mut out = vec![
        ("listen_addr", "*".to_owned()),
        ("listen_port", REDIS_PORT.to_string()),
    ];
    let server = server_address(&redis.host, redis.port);
    if redis.cluster_nodes.is_empty() {
        out.push(("server", server));
    } else {
        // `host`/`port` is a seed too, listed first.
        let mut seeds = vec![server];
        for node in &redis.cluster_nodes {
            if !seeds.contains(node) {
                seeds.push(node.clone());
            }
        }
        out.push(("cluster_nodes", seeds.join(",")));
    }
    // Without credentials clients need no AUTH and the pooler logs in without one.
    if !credentials.is_empty() {
        let path = PathBuf::from(AUTH_DIR).join(AUTH_FILE);
        out.push(("auth_file", path.display().to_string()));
    }
    out.extend([
        ("shared_connections", redis.shared_connections.to_string()),
        (
            MAX_SERVER_CONNECTIONS,
            sizing.max_db_connections().to_string(),
        ),
        ("private_conn_pool_enabled", flag(pool.enabled)),
        (
            "private_conn_idle_time_sec",
            pool.idle_time_seconds.to_string(),
        ),
        (
            "private_conn_pool_max_idle_per_db",
            pool.max_idle_per_db.to_string(),
        ),
        (
            "private_conn_pool_min_idle_per_db",
            pool.min_idle_per_db.to_string(),
        ),
    ]);
    out
}

/// `host:port`, with an IPv6 address in brackets so that the port stays unambiguous.
fn server_address(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The `[redis]` section as ini text.
pub(crate) fn section(settings: &[(&str, String)]) -> String {
    let mut out = format!("\n{SECTION}\n");
    for (key, value) in settings {
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

/// The per-pod cap in a rendered ini's `[redis]` section, if there is one.
pub fn configured_per_pod(ini: &str) -> Option<u32> {
    let mut in_section = false;
    for line in ini.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == SECTION;
        } else if in_section {
            if let Some((key, value)) = line.split_once('=') {
                if key.trim() == MAX_SERVER_CONNECTIONS {
                    return value.trim().parse().ok();
                }
            }
        }
    }
    None
}

/// The keys of a Redis pool's app Secret.
pub const APP_SECRET_KEYS: &[&str] = &["host", "port", "username", "password", "uri"];

/// The app Secret's values, in [`APP_SECRET_KEYS`] order: how to reach the pool as its first
/// user, database 0.
pub(crate) fn app_values(host: &str, credential: Option<&Credential>) -> [String; 5] {
    let (user, password) = credential
        .map(|c| (c.user.as_str(), c.password.as_str()))
        .unwrap_or_default();
    let userinfo = match credential {
        Some(_) => format!("{}:{}@", encode(user), encode(password)),
        None => String::new(),
    };
    [
        host.to_owned(),
        REDIS_PORT.to_string(),
        user.to_owned(),
        password.to_owned(),
        format!("redis://{userinfo}{host}:{REDIS_PORT}/0"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_servers_are_bracketed() {
        assert_eq!(server_address("redis", 6379), "redis:6379");
        assert_eq!(server_address("fd00::1", 6380), "[fd00::1]:6380");
    }

    #[test]
    fn the_cap_is_read_from_the_redis_section_only() {
        let ini = "[pgbouncer]\nmax_server_connections = 7\n\n[redis]\nserver = r:6379\n\
                   max_server_connections = 42\n";
        assert_eq!(configured_per_pod(ini), Some(42));
        assert_eq!(
            configured_per_pod("[pgbouncer]\nmax_server_connections = 7\n"),
            None
        );
    }

    #[test]
    fn app_values_without_credentials_have_no_userinfo() {
        let [.., uri] = app_values("p.ns.svc", None);
        assert_eq!(uri, "redis://p.ns.svc:6379/0");
        let c = Credential {
            user: "app".into(),
            password: "p@ss:w".into(),
        };
        let [host, port, user, password, uri] = app_values("p.ns.svc", Some(&c));
        assert_eq!((host.as_str(), port.as_str()), ("p.ns.svc", "6379"));
        assert_eq!((user.as_str(), password.as_str()), ("app", "p@ss:w"));
        assert_eq!(uri, "redis://app:p%40ss%3Aw@p.ns.svc:6379/0");
    }
}
