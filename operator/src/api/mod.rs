//! The `ConnectionPool` API (`weir.dev/v1alpha1`): what users write, what the operator
//! reports back, and the admission rules the API server enforces.
//!
//! Field doc comments are user documentation: they become the CRD's descriptions and so
//! the text of `kubectl explain connectionpool.spec...`. Defaults that the operator chooses
//! are serde defaults, which the CRD schema publishes so the API server fills them in;
//! pooler settings left unset keep the pooler's own defaults (from `weir_pooler::config`),
//! which are never restated here.

mod duration;
mod max_connections;
mod monitoring;
mod network_policy;
mod read_replicas;
mod redis;
pub(crate) mod rules;
pub(crate) mod server_auth;
mod status;
mod tls;
mod validate;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use duration::{DurationSpec, InvalidDuration};
pub use max_connections::MaxConnections;
pub use monitoring::{Monitoring, PodMonitorSettings};
pub use network_policy::NetworkPolicySettings;
pub use read_replicas::{read_only_name, ReadReplicas, StandbyHost, READ_ONLY_SUFFIX};
pub use redis::{PrivatePool, RedisSpec, DEFAULT_REDIS_PORT};
pub use rules::{operator_owned_keys, settable_keys};
pub use server_auth::{
    rds_region, CloudProvider, CloudServiceAccount, ServerAuthSpec, AZURE_WORKLOAD_IDENTITY_LABEL,
};
pub use status::{
    condition, BudgetStatus, ConnectionPoolStatus, PodUsage, ReadOnlyPoolStatus, UsageStatus,
    UserPoolStatus,
};
pub use tls::{CaSource, ClientTls, KeySelector, ServerTls, SslMode, TlsSpec};
pub use validate::{from_yaml, LoadError, Violation, Violations};

/// The API group of every Weir resource.
pub const GROUP: &str = "weir.dev";

/// The pooler image used when `spec.image` is not set: the pooler released together with
/// this operator.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/weir-dev/weir:", env!("CARGO_PKG_VERSION"));

/// A pool of PostgreSQL connections in front of one database: a Deployment of Weir
/// poolers (PgBouncer-compatible), its Service, and pool sizes computed so that all pooler
/// pods together never exceed the database's connection budget.
// Each printcolumn(...) repeats the same keys, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "ConnectionPool",
    namespaced,
    shortname = "cpool",
    category = "weir",
    status = "ConnectionPoolStatus",
    derive = "PartialEq",
    doc = "A pool of PostgreSQL connections in front of one database (or of Redis \
           connections in front of one Redis server): Weir poolers (PgBouncer-compatible) \
           whose pool sizes are computed so that all pooler pods together, during rollouts \
           and at the autoscaler's maximum too, never exceed the server's connection budget.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.poolMode",
        description = "Pooling mode"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired pooler pods"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pooler pods ready to serve"
    ),
    printcolumn(
        name = "Budget",
        type_ = "integer",
        json_path = ".status.budget.pool",
        description = "Server connections this pool may use over all its pods"
    ),
    printcolumn(
        name = "Per-pod",
        type_ = "integer",
        json_path = ".status.budget.perPod",
        description = "Server connections each pod may open (max_db_connections)"
    ),
    printcolumn(
        name = "Used",
        type_ = "string",
        json_path = ".status.usage.summary",
        description = "Server connections open over all pods / the budget"
    ),
    printcolumn(
        name = "Waiting",
        type_ = "integer",
        json_path = ".status.usage.waitingClients",
        description = "Clients waiting for a server connection (rounded down)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::spec_schema)]
pub struct ConnectionPoolSpec {
    /// The PostgreSQL server the poolers connect to, and how many connections it allows.
    /// Set this or redis, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,

    /// A Redis server instead of a PostgreSQL one: the poolers speak RESP on port 6379 and
    /// divide the server's maxclients across their pods. Set this or database, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,

    /// A second, read-only pool over the database's streaming-replication standbys: its own
    /// Deployment, Service `<name>-ro` and app Secret `<name>-ro-app`, the same users, and
    /// its own connection budget from the standbys' max_connections. Removing it deletes
    /// those objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_replicas: Option<ReadReplicas>,

    /// When a server connection goes back to the pool: after each transaction (the default,
    /// and what most applications want), after each statement, or only when the client
    /// disconnects (session, for applications that rely on session state such as LISTEN or
    /// session-level advisory locks).
    #[serde(default = "default_pool_mode")]
    pub pool_mode: PoolMode,

    /// Pooler pods to run. The connection budget is divided by replicas plus
    /// rollout.maxSurge (or autoscaling.maxReplicas plus rollout.maxSurge), so more pods
    /// mean fewer server connections per pod. Changed by `kubectl scale` too.
    #[serde(default = "default_replicas")]
    pub replicas: i32,

    /// This pool's share of the database budget, in percent (RDS Proxy's
    /// MaxConnectionsPercent). The database budget is maxConnections minus reserved slots,
    /// headroom and connections used by others; pools sharing a database must together
    /// claim at most all of it. Default 100 when maxServerConnections is not set either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_percent: Option<i32>,

    /// This pool's share of the database budget as an absolute number of server
    /// connections, over all its pods; capped at the database budget. Set this or
    /// maxConnectionsPercent, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_server_connections: Option<i32>,

    /// The database users clients log in as, each with its own pool. Each pod's connections
    /// are split between them by weight. Default: one user, from
    /// database.credentialsSecret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rules::users_schema)]
    pub users: Option<Vec<UserSpec>>,

    /// Client-facing limits and timeouts of every pooler pod.
    #[serde(default)]
    pub limits: Limits,

    /// Extra pgbouncer.ini settings (of its pgbouncer section), by their PgBouncer names in
    /// lower case, for example `server_reset_query` or `max_prepared_statements`. Settings
    /// the operator derives from other fields (listen addresses, authentication, pool
    /// sizes, the limits above) are refused, and so are names the pooler does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rules::parameters_schema)]
    pub parameters: Option<BTreeMap<String, String>>,

    /// How rolling updates replace pooler pods.
    #[serde(default)]
    pub rollout: Rollout,

    /// Set when something (typically a HorizontalPodAutoscaler targeting this resource's
    /// scale subresource) changes replicas: the budget is then divided for maxReplicas pods
    /// up front, so scaling never needs to shrink pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Scheduling and metadata of the pooler pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSettings>,

    /// The Service clients connect to.
    #[serde(default)]
    pub service: ServiceSettings,

    /// TLS between clients and the poolers, and between the poolers and the database.
    /// Certificates come from Secrets mounted as files; a renewed certificate (for example
    /// by cert-manager) reaches running pods without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Prometheus Operator objects that scrape the pooler pods' metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<Monitoring>,

    /// A NetworkPolicy limiting who reaches the pooler pods and what they reach. Not
    /// set: no NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySettings>,

    /// The pooler container image. Default: the Weir pooler released with this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,
}

/// The PostgreSQL server behind the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::database_schema)]
pub struct DatabaseSpec {
    /// Host name or address of the PostgreSQL server (for CloudNativePG, the `-rw` Service).
    #[schemars(length(max = 253))]
    pub host: String,

    /// Port of the PostgreSQL server.
    #[serde(default = "default_port")]
    pub port: i32,

    /// The database to connect to. Clients use the same name.
    #[schemars(length(max = 63))]
    pub dbname: String,

    /// The Secret holding the user name and password the pool logs in with when `users`
    /// is not given (a CloudNativePG `-app` Secret fits as it is).
    pub credentials_secret: CredentialsSecret,

    /// The server's max_connections: a number, or `auto` to have the operator read
    /// max_connections and the reserved slots (superuser_reserved_connections and
    /// reserved_connections) from the database itself.
    pub max_connections: MaxConnections,

    /// Connection slots reserved for superusers (superuser_reserved_connections plus
    /// reserved_connections). Used only when maxConnections is a number; with `auto` the
    /// database's own values are read.
    #[serde(default = "default_superuser_reserved")]
    pub superuser_reserved_connections: i32,

    /// Headroom left free for maintenance, replication and emergencies, in percent of
    /// maxConnections (rounded up to whole connections).
    #[serde(default = "default_reserved_percent")]
    pub reserved_percent: i32,

    /// Connections held by applications that do not go through any ConnectionPool.
    #[serde(default)]
    pub used_by_others: i32,

    /// Log in to the database with the pods' cloud identity (RDS IAM, Cloud SQL / AlloyDB
    /// IAM, Microsoft Entra ID) instead of a password: credentialsSecret then names the
    /// user, and a password in it is only what clients log in to the pooler with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_auth: Option<ServerAuthSpec>,
}

/// A Secret with a user name and a password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::credentials_schema)]
pub struct CredentialsSecret {
    /// Name of the Secret, in the ConnectionPool's namespace.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Key of the user name in the Secret.
    #[serde(default = "default_username_key")]
    #[schemars(length(max = 253))]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(max = 253))]
    pub password_key: String,
}

/// A Secret with a password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::password_schema)]
pub struct PasswordSecret {
    /// Name of the Secret, in the ConnectionPool's namespace.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(max = 253))]
    pub password_key: String,
}

/// One database user with its own pool in every pooler pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::user_schema)]
pub struct UserSpec {
    /// The PostgreSQL role. Clients log in to the pooler with this name and password, and
    /// the pooler logs in to the database with the same.
    #[schemars(length(max = 63))]
    pub user: String,

    /// The Secret holding this user's password.
    pub credentials_secret: PasswordSecret,

    /// This user's relative share of each pod's server connections.
    #[serde(default = "default_weight")]
    pub weight: i32,

    /// Server connections kept open per pod even when idle, so that bursts do not wait
    /// for new logins. Part of the user's share, not added to it.
    #[serde(default)]
    pub min_pool_size: i32,

    /// Server connections per pod held back for clients that waited longer than
    /// reserve_pool_timeout (5 s by default). Part of the user's share, not added to it.
    #[serde(default)]
    pub reserve_pool_size: i32,

    /// Kubernetes ServiceAccounts whose projected tokens (audience `weir`) log in as this
    /// user instead of a password: the application sends its token as the password, over
    /// TLS (needs tls.client), and the pooler checks it with a TokenReview. When set, the
    /// user logs in only with such tokens; the pooler still logs in to the database with
    /// the password from credentialsSecret, which applications then never see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub service_accounts: Option<Vec<ServiceAccountRef>>,
}

/// A ServiceAccount allowed to log in as a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// The ServiceAccount's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Its namespace. Default: the ConnectionPool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
}

/// Limits and timeouts that apply to every pooler pod. Durations are written like `30s`,
/// `5m` or `1h30m` (units h, m, s, ms); `0s` disables a timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::limits_schema)]
pub struct Limits {
    /// Client connections each pod accepts at once (max_client_conn).
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: i32,

    /// How long a client may wait for a server connection before it is disconnected
    /// (query_wait_timeout). Default: the pooler's, 120s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_wait_timeout: Option<DurationSpec>,

    /// Server connections idle longer than this are closed (server_idle_timeout). Default:
    /// the pooler's, 600s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_idle_timeout: Option<DurationSpec>,

    /// Server connections older than this are closed once released, so that connections
    /// rotate (server_lifetime). Default: the pooler's, 3600s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_lifetime: Option<DurationSpec>,

    /// Clients idle longer than this are disconnected (client_idle_timeout). Default: the
    /// pooler's, 0s (never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout: Option<DurationSpec>,

    /// Clients idle inside a transaction longer than this are disconnected, releasing the
    /// server connection they hold (idle_transaction_timeout). Default: the pooler's, 0s
    /// (never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_transaction_timeout: Option<DurationSpec>,
}

/// How rolling updates replace pooler pods. A new pod is started and must be ready before
/// an old one stops (maxUnavailable is always 0), so clients never lose capacity; the
/// extra pods are part of the connection budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::rollout_schema)]
pub struct Rollout {
    /// Extra pods a rolling update may start at once. More makes rollouts faster and
    /// leaves fewer server connections per pod.
    #[serde(default = "default_max_surge")]
    pub max_surge: i32,
}

/// The range an autoscaler may move replicas in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::autoscaling_schema)]
pub struct Autoscaling {
    /// The most replicas that may be set. The connection budget is divided for this many
    /// pods (plus rollout.maxSurge), and replicas may not exceed it.
    pub max_replicas: i32,
}

/// Scheduling and metadata of the pooler pods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// CPU and memory requests and limits of the pooler container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Nodes the pods may run on, by node label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Node and pod affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// How the pods spread across failure domains. Default: at most one pod more on any
    /// node than on another, when possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Extra labels of the pods. Keys under weir.dev/ and the app.kubernetes.io/ labels
    /// the operator sets are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rules::pod_labels_schema)]
    pub labels: Option<BTreeMap<String, String>>,

    /// Extra annotations of the pods. Keys under weir.dev/ are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = rules::pod_annotations_schema)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The Service in front of the pooler pods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// How the Service is exposed.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Annotations of the Service, for example for a cloud load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// When a server connection returns to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// When the client disconnects.
    Session,
    /// When a transaction ends.
    Transaction,
    /// When a statement ends; multi-statement transactions are refused.
    Statement,
}

impl From<PoolMode> for weir_pooler::config::PoolMode {
    fn from(mode: PoolMode) -> Self {
        match mode {
            PoolMode::Session => Self::Session,
            PoolMode::Transaction => Self::Transaction,
            PoolMode::Statement => Self::Statement,
        }
    }
}

/// The Kubernetes Service types a pool can be exposed with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Where this pool's user comes from: a listed user, or the database credentials.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UserSource<'a> {
    /// `spec.users[i]`.
    Listed(&'a UserSpec),
    /// `spec.database.credentialsSecret` (or `spec.redis.credentialsSecret`), used when
    /// `users` is not given.
    Database(&'a CredentialsSecret),
}

impl UserSource<'_> {
    /// The user's weight (1 for the database credentials).
    pub fn weight(&self) -> i32 {
        match self {
            UserSource::Listed(u) => u.weight,
            UserSource::Database(_) => default_weight(),
        }
    }

    /// `minPoolSize` (0 for the database credentials).
    pub fn min_pool_size(&self) -> i32 {
        match self {
            UserSource::Listed(u) => u.min_pool_size,
            UserSource::Database(_) => 0,
        }
    }

    /// `reservePoolSize` (0 for the database credentials).
    pub fn reserve_pool_size(&self) -> i32 {
        match self {
            UserSource::Listed(u) => u.reserve_pool_size,
            UserSource::Database(_) => 0,
        }
    }
}

/// The server behind the pool: exactly one of `spec.database` and `spec.redis`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend<'a> {
    /// A PostgreSQL database.
    Postgres(&'a DatabaseSpec),
    /// A Redis server.
    Redis(&'a RedisSpec),
}

impl Backend<'_> {
    /// The server's host as the spec writes it.
    pub fn host(&self) -> &str {
        match self {
            Backend::Postgres(db) => &db.host,
            Backend::Redis(redis) => &redis.host,
        }
    }

    /// The server's port as the spec writes it.
    pub fn port(&self) -> i32 {
        match self {
            Backend::Postgres(db) => db.port,
            Backend::Redis(redis) => redis.port,
        }
    }
}

/// A spec with neither or both of `database` and `redis` (admission refuses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", rules::ONE_BACKEND)]
pub struct NoSingleBackend;

impl ConnectionPoolSpec {
    /// The server behind the pool.
    pub fn backend(&self) -> Result<Backend<'_>, NoSingleBackend> {
        match (&self.database, &self.redis) {
            (Some(db), None) => Ok(Backend::Postgres(db)),
            (None, Some(redis)) => Ok(Backend::Redis(redis)),
            _ => Err(NoSingleBackend),
        }
    }

    /// The pool's users in spec order: `users`, or the server credentials alone (none for
    /// a Redis server without them).
    pub fn user_sources(&self) -> Vec<UserSource<'_>> {
        let server = self
            .database
            .as_ref()
            .map(|db| &db.credentials_secret)
            .or_else(|| self.redis.as_ref()?.credentials_secret.as_ref());
        match (&self.users, server) {
            (Some(users), _) => users.iter().map(UserSource::Listed).collect(),
            (None, Some(credentials)) => vec![UserSource::Database(credentials)],
            (None, None) => Vec::new(),
        }
    }

    /// The PodMonitor settings, when one is asked for and enabled.
    pub fn pod_monitor(&self) -> Option<&PodMonitorSettings> {
        self.monitoring
            .as_ref()
            .and_then(|m| m.pod_monitor.as_ref())
            .filter(|p| p.enabled)
    }

    /// The pooler image to run.
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }
}

fn default_pool_mode() -> PoolMode {
    PoolMode::Transaction
}

fn default_replicas() -> i32 {
    2
}

fn default_port() -> i32 {
    i32::from(weir_pooler::config::DEFAULT_SERVER_PORT)
}

/// PostgreSQL's own default for superuser_reserved_connections.
fn default_superuser_reserved() -> i32 {
    3
}

fn default_reserved_percent() -> i32 {
    15
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

fn default_weight() -> i32 {
    1
}

/// AlloyDB's managed pooling default; PgBouncer's 100 is too low for a shared pooler.
fn default_max_client_connections() -> i32 {
    5000
}

fn default_max_surge() -> i32 {
    1
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_connections: default_max_client_connections(),
            query_wait_timeout: None,
            server_idle_timeout: None,
            server_lifetime: None,
            client_idle_timeout: None,
            idle_transaction_timeout: None,
        }
    }
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_surge: default_max_surge(),
        }
    }
}
