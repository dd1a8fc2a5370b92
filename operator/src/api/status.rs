//! What the operator reports back in `status`: conditions, replica counts, the selector for
//! the scale subresource, and the computed budget and pool sizes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sizing::{Budget, Sizing};

/// Condition types and reasons the operator sets.
pub mod condition {
    /// All pooler pods of the current revision are ready and the Service has endpoints.
    pub const READY: &str = "Ready";
    /// A rollout or a resize is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// The connection budget holds every pod's pools (reasons: [`FITS`], or the reason of
    /// the sizing failure such as `BudgetTooSmall`, `Overcommitted`, `DatabaseExhausted`).
    pub const BUDGET_FEASIBLE: &str = "BudgetFeasible";
    /// Reason of a true `BudgetFeasible`.
    pub const FITS: &str = "Fits";
    /// Whether the PodMonitor `spec.monitoring.podMonitor` asks for exists (present only
    /// while one is asked for).
    pub const MONITORING: &str = "Monitoring";
    /// Reason of a false `BudgetFeasible` when the spec itself is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The pods' open server connections have stayed above the operator's threshold (a
    /// share of the pool's budget) for its sustained period.
    pub const NEAR_BUDGET: &str = "NearBudget";
    /// The read-only pool `spec.readReplicas` asks for is rendered and all its pods are
    /// ready (present only while one is asked for).
    pub const READ_ONLY_READY: &str = "ReadOnlyReady";
}

/// The observed state of a ConnectionPool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolStatus {
    /// Ready, Progressing, BudgetFeasible, NearBudget and (with a PodMonitor asked for)
    /// Monitoring, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = conditions_schema)]
    pub conditions: Vec<Condition>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pooler pods that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Pooler pods ready to serve clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Label selector of the pooler pods, for the scale subresource (and so for
    /// HorizontalPodAutoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// How the connection budget was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,

    /// Each user's pool sizes in every pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserPoolStatus>,

    /// Where clients connect: the Service's host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The Secret with host, port, dbname, user, password, uri and jdbc-uri for
    /// applications (for a Redis pool: host, port, username, password and a redis:// uri).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_name: Option<String>,

    /// How full the pools are, from each pooler pod's `/status` (absent when the operator
    /// runs with `--poll-pod-status=false`). Counts are rounded so that a busy pool does not
    /// rewrite its status at every poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,

    /// The read-only pool over the standbys, when spec.readReplicas asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<ReadOnlyPoolStatus>,
}

/// The read-only pool's own state: its pods, its budget from the standbys, where it listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadOnlyPoolStatus {
    /// Read-only pooler pods that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Read-only pooler pods ready to serve clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// How the budget was computed, from the smallest standby's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,

    /// Each user's pool sizes in every read-only pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserPoolStatus>,

    /// Where clients connect for reads: the `<name>-ro` Service's host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The Secret with the read-only pool's connection details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_name: Option<String>,
}

/// The pools' usage over all pooler pods, as their `/status` reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    /// Server connections open against the budget, as `used/budget` (the `Used` column).
    pub summary: String,
    /// Server connections open in all pods that answered, rounded to the nearest 5 % of the
    /// budget.
    pub server_connections: i64,
    /// This pool's budget over all its pods (`budget.pool`).
    pub budget: i64,
    /// Clients waiting for a server connection in all pods, rounded down to 0, 1, 2, 5,
    /// 10, 20, 50, 100, ...
    pub waiting_clients: i64,
    /// How long the longest-waiting client has waited, in seconds, rounded down to 0, 1, 2,
    /// 5, 10, 20, 50, 100, ...
    pub longest_wait_seconds: i64,
    /// Running pooler pods whose `/status` answered.
    pub pods_reporting: i64,
    /// Running pooler pods that run the pool's current ConfigMap.
    pub pods_on_latest_config: i64,
    /// Running pooler pods that answered with an older configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods_behind: Vec<String>,
    /// Running pooler pods whose `/status` did not answer in time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods_unreachable: Vec<String>,
    /// Each running pooler pod's usage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodUsage>,
}

/// One pooler pod's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// The pod.
    pub name: String,
    /// Server connections open in this pod, rounded to the nearest 5 % of the per-pod size;
    /// absent when the pod did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_connections: Option<i64>,
    /// Clients waiting in this pod, rounded down as `waitingClients` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_clients: Option<i64>,
    /// Whether the pod runs the pool's current ConfigMap.
    pub latest_config: bool,
}

/// The connection budget, number by number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// The database's max_connections.
    pub max_connections: i64,
    /// Slots reserved for superusers.
    pub superuser_reserved: i64,
    /// Connections kept free as headroom (reservedPercent of maxConnections).
    pub reserved_headroom: i64,
    /// Connections held by applications outside any pool.
    pub used_by_others: i64,
    /// What is left for all pools on the database.
    pub database: i64,
    /// What other ConnectionPools on the same database claim. A claim that shrinks shows
    /// at once; one that grows or appears (which changes nothing of this pool's sizing)
    /// once the database's claims have been still for 10 s, at most 60 s after it moved.
    pub claimed_by_others: i64,
    /// This pool's budget over all its pods.
    pub pool: i64,
    /// The most pooler pods that can exist at once (replicas or autoscaling.maxReplicas,
    /// plus rollout.maxSurge).
    pub pods_max: i64,
    /// Server connections per pod (the pooler's max_db_connections).
    pub per_pod: i64,
}

/// One user's pool in every pooler pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPoolStatus {
    /// The PostgreSQL role.
    pub user: String,
    /// pool_size: connections lent out at once.
    pub pool_size: i64,
    /// min_pool_size: connections kept open when idle.
    pub min_pool_size: i64,
    /// reserve_pool_size: extra connections for clients that waited too long.
    pub reserve_pool_size: i64,
}

impl From<&Budget> for BudgetStatus {
    fn from(b: &Budget) -> Self {
        BudgetStatus {
            max_connections: b.max_connections.into(),
            superuser_reserved: b.superuser_reserved.into(),
            reserved_headroom: b.reserved_headroom.into(),
            used_by_others: b.used_by_others.into(),
            database: b.database.into(),
            claimed_by_others: b.others_claimed.into(),
            pool: b.pool.into(),
            pods_max: b.pods_max.into(),
            per_pod: b.per_pod.into(),
        }
    }
}

impl UserPoolStatus {
    /// The status entries for a sizing, given the users' names in the same order.
    pub fn list(sizing: &Sizing, names: &[String]) -> Vec<UserPoolStatus> {
        names
            .iter()
            .zip(&sizing.users)
            .map(|(name, pool)| UserPoolStatus {
                user: name.clone(),
                pool_size: pool.pool_size.into(),
                min_pool_size: pool.min_pool_size.into(),
                reserve_pool_size: pool.reserve_pool_size.into(),
            })
            .collect()
    }
}

fn conditions_schema(schema: &mut schemars::Schema) {
    // One condition per type, merged by type under server-side apply.
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), "map".into());
    object.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
}
