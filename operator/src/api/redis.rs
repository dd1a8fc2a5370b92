//! `spec.redis`: a Redis server behind the pool instead of a PostgreSQL database.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules;
use super::CredentialsSecret;

/// Redis's own default port.
pub const DEFAULT_REDIS_PORT: u16 = 6379;

/// The Redis server behind the pool: Weir multiplexes ordinary commands over a few shared
/// connections and lends exclusive ones (MULTI/EXEC after WATCH, blocking commands) from a
/// per-pod pool, within a budget taken from the server's `maxclients`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::redis_schema)]
pub struct RedisSpec {
    /// Host name or address of the Redis server.
    #[schemars(length(max = 253))]
    pub host: String,

    /// Port of the Redis server.
    #[serde(default = "default_redis_port")]
    pub port: i32,

    /// More seed nodes (`host:port`) of a Redis Cluster whose node `host`/`port` is: with
    /// them, each pod serves the whole cluster behind one endpoint (keys routed by hash slot,
    /// MOVED and ASK followed). maxClients is then each node's: every pod connects to every
    /// master, and each pod's budget applies per master.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_nodes: Vec<String>,

    /// The server's maxclients. Leave it out to have the operator read it with
    /// `CONFIG GET maxclients`; managed Redis services that disable CONFIG need it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<i32>,

    /// The ACL user and password clients AUTH with and the poolers log in to Redis with
    /// (for a password set with requirepass, the user is `default`), unless `users` lists
    /// several. Without it, clients need no AUTH and the poolers log in without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecret>,

    /// Headroom left free for replicas, monitoring and emergencies, in percent of
    /// maxClients (rounded up to whole connections).
    #[serde(default = "default_reserved_percent")]
    pub reserved_percent: i32,

    /// Connections held by applications that do not go through any ConnectionPool.
    #[serde(default)]
    pub used_by_others: i32,

    /// Shared (multiplexed) connections each pod keeps per user for ordinary commands
    /// (shared_connections).
    #[serde(default = "default_shared_connections")]
    pub shared_connections: i32,

    /// The per-pod pool of exclusive connections for stateful and blocking commands.
    #[serde(default)]
    pub private_pool: PrivatePool,
}

/// The pool of exclusive connections (Tair's private connection pool). Hot-reloaded: a
/// change reaches running pods without a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::private_pool_schema)]
pub struct PrivatePool {
    /// Keep returned exclusive connections for the next client; off, every exclusive
    /// client opens and closes its own (private_conn_pool_enabled).
    #[serde(default)]
    pub enabled: bool,

    /// Seconds an idle exclusive connection is kept; 0 closes it at once
    /// (private_conn_idle_time_sec).
    #[serde(default = "default_idle_time_seconds")]
    pub idle_time_seconds: i32,

    /// A returned connection is kept only while fewer than this many are idle per
    /// database, else closed (private_conn_pool_max_idle_per_db).
    #[serde(default = "default_max_idle_per_db")]
    pub max_idle_per_db: i32,

    /// Idle connections per database opened up front and never reaped
    /// (private_conn_pool_min_idle_per_db); counted against each pod's budget.
    #[serde(default)]
    pub min_idle_per_db: i32,
}

impl Default for PrivatePool {
    fn default() -> Self {
        PrivatePool {
            enabled: false,
            idle_time_seconds: default_idle_time_seconds(),
            max_idle_per_db: default_max_idle_per_db(),
            min_idle_per_db: 0,
        }
    }
}

impl RedisSpec {
    /// The least server connections one pod needs for `users` users: their shared
    /// connections plus the pre-opened exclusive ones, and at least one.
    pub fn minimum_per_pod(&self, users: usize) -> u32 {
        let users = u32::try_from(users.max(1)).unwrap_or(u32::MAX);
        let shared = u32::try_from(self.shared_connections).unwrap_or(0);
        let warm = if self.private_pool.enabled {
            u32::try_from(self.private_pool.min_idle_per_db).unwrap_or(0)
        } else {
            0
        };
        shared.saturating_mul(users).saturating_add(warm).max(1)
    }
}

fn default_redis_port() -> i32 {
    i32::from(DEFAULT_REDIS_PORT)
}

fn default_reserved_percent() -> i32 {
    15
}

fn default_shared_connections() -> i32 {
    2
}

fn default_idle_time_seconds() -> i32 {
    60
}

fn default_max_idle_per_db() -> i32 {
    1000
}
