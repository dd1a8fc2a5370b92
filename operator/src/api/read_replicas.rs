//! `spec.readReplicas`: a second, read-only pool over the database's streaming-replication
//! standbys, with its own Service, app Secret and connection budget.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules;
use super::MaxConnections;

/// What the read-only pool's objects are called: the pool's name with this suffix.
pub const READ_ONLY_SUFFIX: &str = "-ro";

/// A read-only pool: Weir poolers whose one database entry lists every standby, accepts only
/// servers in recovery (`target_session_attrs=standby`) and spreads new server connections
/// over them (`load_balance_hosts=round-robin`). Clients connect to the `<name>-ro` Service
/// with the `<name>-ro-app` Secret, as the same users as the primary pool. Every read-only
/// pod may connect to every standby, so each pod's size comes from the smallest standby's
/// budget divided over the read-only pods plus rollout.maxSurge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::read_replicas_schema)]
pub struct ReadReplicas {
    /// The standbys, each a host name or address and a port.
    #[schemars(length(max = 16))]
    pub hosts: Vec<StandbyHost>,

    /// Pooler pods of the read-only pool (0 keeps its Service and Secrets, with no pods).
    #[serde(default = "super::default_replicas")]
    pub replicas: i32,

    /// Each standby's max_connections: a number, or `auto` (the default) to have the
    /// operator read max_connections and the reserved slots from every standby and size
    /// for the smallest.
    #[serde(default = "default_max_connections")]
    pub max_connections: MaxConnections,

    /// Connection slots each standby reserves for superusers. Used only when
    /// maxConnections is a number; with `auto` the standbys' own values are read.
    #[serde(default = "super::default_superuser_reserved")]
    pub superuser_reserved_connections: i32,

    /// Headroom left free on each standby, in percent of its maxConnections (rounded up).
    #[serde(default = "super::default_reserved_percent")]
    pub reserved_percent: i32,

    /// Connections on each standby held by applications that do not go through this pool.
    #[serde(default)]
    pub used_by_others: i32,
}

/// One standby server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::standby_host_schema)]
pub struct StandbyHost {
    /// Host name or address of the standby.
    #[schemars(length(max = 253))]
    pub host: String,

    /// Its port.
    #[serde(default = "super::default_port")]
    pub port: i32,
}

impl ReadReplicas {
    /// The `host=` value of the database entry: every standby, in spec order.
    pub fn host_list(&self) -> String {
        let hosts: Vec<&str> = self.hosts.iter().map(|h| h.host.as_str()).collect();
        hosts.join(",")
    }
}

/// The name of the read-only pool's objects.
pub fn read_only_name(pool: &str) -> String {
    format!("{pool}{READ_ONLY_SUFFIX}")
}

fn default_max_connections() -> MaxConnections {
    MaxConnections::Auto
}
