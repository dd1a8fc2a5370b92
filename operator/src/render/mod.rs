//! From a ConnectionPool and what was observed about the world to the objects that should
//! exist: pure functions, no API calls.
//!
//! The controller gathers the [`Observed`] facts (the database's limits when
//! `maxConnections` is `auto`, what other pools on the same database claim, the referenced
//! Secrets), calls [`render`], and applies [`Rendered::children`] in order with server-side
//! apply. `weir-operator render` does the same offline with stand-in facts.
//!
//! Only settings that the pooler cannot take on a live reload change the pod template (see
//! [`config::RESTART_KEYS`]); pool sizes and credentials reach running pods through the
//! ConfigMap and the Secret.

pub mod config;
mod meta;
pub mod monitoring;
mod network_policy;
pub mod peers;
pub mod rbac;
pub mod read_only;
pub mod redis;
mod secrets;
mod server_auth;
pub mod tls;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::ResourceExt;
use weir_pooler::config::{Config, ConfigError};

use crate::api::{
    Backend, BudgetStatus, ConnectionPool, ConnectionPoolSpec, ConnectionPoolStatus,
    InvalidDuration, MaxConnections, NoSingleBackend, ReadReplicas, UserPoolStatus, UserSource,
    Violations,
};
use crate::sizing::{self, DatabaseLimits, Share, Sizing, SizingError, UserDemand};
use crate::yaml;

pub use meta::{names, selector_labels, selector_string, RESTART_HASH_ANNOTATION};
pub use monitoring::PodMonitor;
pub use secrets::APP_SECRET_KEYS;
pub use workload::{POOLER_PORT_NAME, SERVICE_PORT};

/// What the database itself reports, read by the controller when `maxConnections` is
/// `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedDatabase {
    /// `SHOW max_connections`.
    pub max_connections: u32,
    /// `SHOW superuser_reserved_connections`.
    pub superuser_reserved_connections: u32,
    /// `SHOW reserved_connections` (PostgreSQL 16 and later; 0 before).
    pub reserved_connections: u32,
}

/// Facts from outside the ConnectionPool that rendering needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The database's limits; required when `maxConnections` is `auto`.
    pub database: Option<ObservedDatabase>,
    /// The Redis server's `maxclients` (`CONFIG GET maxclients`); required when
    /// `spec.redis.maxClients` is not set.
    pub max_clients: Option<u32>,
    /// Each standby's limits, by `host:port`, read when `spec.readReplicas.maxConnections`
    /// is `auto`.
    pub standbys: BTreeMap<String, ObservedDatabase>,
    /// Server connections other ConnectionPools on the same database (same host and port)
    /// claim, from their `status.budget.pool`.
    pub others_claimed: u32,
    /// The data of every Secret the spec references, by Secret name.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// The data of every ConfigMap the spec references (TLS CAs), by ConfigMap name.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// The IP addresses of the pooler pods, ready or not (the peers Service's endpoints).
    pub pod_ips: BTreeSet<String>,
    /// The peer ids in force (id → pod IP), from the ConfigMap's `[peers]`, so that pods
    /// keep their ids (see [`peers::assign`]).
    pub peers_in_force: BTreeMap<u16, String>,
    /// The namespace the operator runs in, for the NetworkPolicy's default operator peer.
    pub operator_namespace: Option<String>,
    /// The API server's endpoints (address → ports, from the `kubernetes` Service's
    /// EndpointSlices), for the NetworkPolicy's egress when tokens are reviewed.
    pub api_server: BTreeMap<String, Vec<i32>>,
}

/// Why a ConnectionPool cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The spec breaks admission rules (only possible offline, or if the CRD is outdated).
    #[error(transparent)]
    Invalid(#[from] Violations),
    /// The object lacks metadata the children need.
    #[error("the ConnectionPool has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// `readReplicas.maxConnections: auto` but a standby's limits were not observed.
    #[error(
        "readReplicas.maxConnections is auto but the max_connections of standby {0} is not \
         known yet"
    )]
    StandbyNotObserved(String),
    /// `maxConnections: auto` but the database's limits were not observed.
    #[error("maxConnections is auto but the database's max_connections is not known yet")]
    DatabaseNotObserved,
    /// `spec.redis.maxClients` is not set and the server's maxclients was not read.
    #[error("spec.redis.maxClients is not set and the Redis server's maxclients is not known")]
    MaxClientsNotObserved,
    /// Neither or both of database and redis (admission normally refuses it first).
    #[error(transparent)]
    Backend(#[from] NoSingleBackend),
    /// The budget does not fit.
    #[error(transparent)]
    Sizing(#[from] SizingError),
    /// A referenced Secret does not exist.
    #[error("Secret {0:?} not found")]
    MissingSecret(String),
    /// A referenced Secret lacks a key.
    #[error("Secret {secret:?} has no key {key:?}")]
    MissingSecretKey {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
    },
    /// A referenced ConfigMap does not exist.
    #[error("ConfigMap {0:?} not found")]
    MissingConfigMap(String),
    /// A referenced ConfigMap lacks a key.
    #[error("ConfigMap {config_map:?} has no key {key:?}")]
    MissingConfigMapKey {
        /// The ConfigMap.
        config_map: String,
        /// The key.
        key: String,
    },
    /// A Secret value cannot be used as a user name or password.
    #[error("Secret {secret:?} key {key:?}: {problem}")]
    BadSecretValue {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
        /// What is wrong with the value.
        problem: &'static str,
    },
    /// A `parameters` value the pooler does not accept.
    #[error("spec.parameters.{key}: {message}")]
    Parameter {
        /// The setting.
        key: String,
        /// The pooler's explanation.
        message: String,
    },
    /// A TLS setting the pooler does not accept.
    #[error("spec.tls: the pooler refuses {key}: {message}")]
    Tls {
        /// The setting.
        key: String,
        /// The pooler's explanation.
        message: String,
    },
    /// A malformed duration (admission normally refuses it first).
    #[error(transparent)]
    Duration(#[from] InvalidDuration),
    /// `shutdown_timeout = 0` asks the pooler to drain forever, which Kubernetes cannot
    /// grant: the pod is killed after its termination grace period.
    #[error(
        "spec.parameters.shutdown_timeout: 0 (wait forever) cannot be honoured, Kubernetes \
         kills pods after their termination grace period; give a bound"
    )]
    UnboundedDrain,
    /// The pooler's own validation refused the rendered configuration.
    #[error("the rendered pgbouncer.ini is not valid: {0}")]
    Config(ConfigError),
}

/// Everything rendered for one ConnectionPool.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The computed budget and pool sizes.
    pub sizing: Sizing,
    /// The users in the order of `sizing.users`.
    pub users: Vec<String>,
    /// The pooler configuration in the ConfigMap, with the TLS settings the pooler's
    /// settings type knows.
    pub config: Config,
    /// The `[pgbouncer]` TLS settings from `spec.tls`; those the pooler's settings type
    /// does not know are added to the ConfigMap's pgbouncer.ini as text.
    pub tls_settings: Vec<(&'static str, String)>,
    /// The `[redis]` settings of a Redis pool, written after `[pgbouncer]`.
    pub redis_settings: Option<Vec<(&'static str, String)>>,
    /// Hash of the settings that need a restart, as put on the pod template.
    pub restart_hash: String,
    /// The pods' ServiceAccount.
    pub service_account: ServiceAccount,
    /// Lets the pods create TokenReviews, when a user logs in with ServiceAccount tokens;
    /// cluster-scoped, so applied and deleted by the controller apart from the children.
    pub token_review_binding: Option<ClusterRoleBinding>,
    /// `pgbouncer.ini`.
    pub config_map: ConfigMap,
    /// `userlist.txt`: the users' names and passwords, which the pooler checks clients
    /// against and logs in to the database with.
    pub auth_secret: Secret,
    /// Connection details for applications.
    pub app_secret: Secret,
    /// Where clients connect; its EndpointSlices, which list every pod with an address,
    /// ready or not, are the pods' peer addresses.
    pub service: Service,
    /// The pooler pods.
    pub deployment: Deployment,
    /// Keeps voluntary disruptions to one pod at a time.
    pub pod_disruption_budget: PodDisruptionBudget,
    /// Who may reach the pods and what they may reach, when `spec.networkPolicy` asks.
    pub network_policy: Option<NetworkPolicy>,
    /// The Prometheus Operator PodMonitor, when `spec.monitoring.podMonitor` asks; applied
    /// by the controller apart from the children, only while its CRD is installed.
    pub pod_monitor: Option<PodMonitor>,
}

/// One rendered child object, typed, so that the controller applies exactly the list
/// [`Rendered::children`] gives, in its order.
#[derive(Debug, Clone, Copy)]
pub enum Child<'a> {
    /// The pods' ServiceAccount.
    ServiceAccount(&'a ServiceAccount),
    /// `pgbouncer.ini`.
    ConfigMap(&'a ConfigMap),
    /// The auth file or the applications' connection details.
    Secret(&'a Secret),
    /// Where clients connect.
    Service(&'a Service),
    /// The pooler pods.
    Deployment(&'a Deployment),
    /// The pods' disruption budget.
    PodDisruptionBudget(&'a PodDisruptionBudget),
    /// The pods' NetworkPolicy.
    NetworkPolicy(&'a NetworkPolicy),
}

impl<'a> Child<'a> {
    /// The object, for YAML output.
    pub fn document(self) -> &'a dyn yaml::erased::Document {
        match self {
            Child::ServiceAccount(o) => o,
            Child::ConfigMap(o) => o,
            Child::Secret(o) => o,
            Child::Service(o) => o,
            Child::Deployment(o) => o,
            Child::PodDisruptionBudget(o) => o,
            Child::NetworkPolicy(o) => o,
        }
    }
}

impl Rendered {
    /// The children in the order they are applied: what pods mount and run as comes before
    /// the pods, and so does their NetworkPolicy; the disruption budget with them.
    pub fn children(&self) -> Vec<Child<'_>> {
        let mut children = vec![
            Child::ServiceAccount(&self.service_account),
            Child::ConfigMap(&self.config_map),
            Child::Secret(&self.auth_secret),
            Child::Secret(&self.app_secret),
            Child::Service(&self.service),
        ];
        children.extend(self.network_policy.as_ref().map(Child::NetworkPolicy));
        children.push(Child::Deployment(&self.deployment));
        children.push(Child::PodDisruptionBudget(&self.pod_disruption_budget));
        children
    }

    /// The objects of [`Rendered::children`], in that order, then the ClusterRoleBinding
    /// and the PodMonitor.
    pub fn objects(&self) -> Vec<&dyn yaml::erased::Document> {
        let mut objects: Vec<&dyn yaml::erased::Document> =
            self.children().into_iter().map(Child::document).collect();
        if let Some(binding) = &self.token_review_binding {
            objects.push(binding);
        }
        if let Some(monitor) = &self.pod_monitor {
            objects.push(monitor);
        }
        objects
    }

    /// The parts of the status rendering decides: the budget, the pool sizes, the selector,
    /// the endpoint and the app Secret. The controller adds conditions and replica counts.
    pub fn status(&self, pool: &ConnectionPool) -> ConnectionPoolStatus {
        let name = pool.name_any();
        let namespace = pool.namespace().unwrap_or_default();
        let port = match self.redis_settings {
            Some(_) => redis::REDIS_PORT,
            None => SERVICE_PORT,
        };
        ConnectionPoolStatus {
            budget: Some(BudgetStatus::from(&self.sizing.budget)),
            users: UserPoolStatus::list(&self.sizing, &self.users),
            selector: Some(selector_string(&name)),
            endpoint: Some(format!("{}:{port}", meta::service_host(&name, &namespace))),
            app_secret_name: Some(names::app_secret(&name)),
            ..ConnectionPoolStatus::default()
        }
    }

    /// The objects as one YAML stream, introduced by comments that show the computed
    /// sizes: what `weir-operator render` prints.
    pub fn to_yaml_stream(&self) -> Result<String, yaml::Error> {
        let b = &self.sizing.budget;
        let mut out = String::new();
        let (limit, reserved, cap) = match self.redis_settings {
            Some(_) => (
                "Redis maxclients",
                String::new(),
                redis::MAX_SERVER_CONNECTIONS,
            ),
            None => (
                "max_connections",
                format!(" - {} superuser-reserved", b.superuser_reserved),
                "max_db_connections",
            ),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# Connection budget: {limit} {}{reserved} - {} headroom - {} used by others \
             = {} for all pools",
            b.max_connections, b.reserved_headroom, b.used_by_others, b.database
        );
        let _ = writeln!(
            out,
            "# This pool: {} (other pools claim {}); {} pods at most x {} per pod \
             ({cap}) = {}",
            b.pool,
            b.others_claimed,
            b.pods_max,
            b.per_pod,
            self.sizing.committed()
        );
        for (name, pool) in self.users.iter().zip(&self.sizing.users) {
            if self.redis_settings.is_some() {
                break;
            }
            let _ = writeln!(
                out,
                "# User {name}: pool_size {}, reserve_pool_size {}, min_pool_size {}",
                pool.pool_size, pool.reserve_pool_size, pool.min_pool_size
            );
        }
        out.push_str(&yaml::stream(&self.objects())?);
        Ok(out)
    }
}

/// Renders every child object of `pool`, or explains why it cannot be done.
pub fn render(pool: &ConnectionPool, observed: &Observed) -> Result<Rendered, RenderError> {
    pool.validate()?;
    let owner = meta::owner(pool)?;
    let sizing = sizing::compute(&sizing_inputs(pool, observed)?)?;
    let mut rendered = render_pooler(pool, owner, observed, sizing, None)?;
    if let (Some(binding), Some(_)) = (
        rendered.token_review_binding.as_mut(),
        &pool.spec.read_replicas,
    ) {
        read_only::bind_service_account(binding, &pool.name_any());
    }
    Ok(rendered)
}

/// Renders the pooler objects of `pool` (the ConnectionPool itself, or the read-only pool
/// derived from it) owned by `owner`; with `standbys`, its database entry lists them.
fn render_pooler(
    pool: &ConnectionPool,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    observed: &Observed,
    sizing: Sizing,
    standbys: Option<&ReadReplicas>,
) -> Result<Rendered, RenderError> {
    let name = pool
        .metadata
        .name
        .clone()
        .ok_or(RenderError::MissingMetadata("name"))?;
    let namespace = pool
        .metadata
        .namespace
        .clone()
        .ok_or(RenderError::MissingMetadata("namespace"))?;
    let backend = pool.spec.backend()?;
    let credentials = secrets::credentials(&pool.spec, observed)?;
    tls::check_sources(&pool.spec, observed)?;
    let tls_settings = tls::settings(&pool.spec);
    let mut config = config::build(
        &pool.spec,
        backend,
        &namespace,
        &sizing,
        &credentials,
        &tls_settings,
    )?;
    if let Some(standbys) = standbys {
        read_only::point_at_standbys(&mut config, standbys)?;
    }
    let redis_settings = match backend {
        Backend::Redis(spec) => Some(redis::settings(spec, &sizing, &credentials)),
        Backend::Postgres(_) => None,
    };
    let assigned = peers::assign(&observed.peers_in_force, &observed.pod_ips);
    config.peers = peers::section(&assigned, config.pgbouncer.listen_port);
    let restart_hash = config::restart_hash(&config, &tls_settings);
    let ctx = meta::Context {
        name: &name,
        namespace: &namespace,
        owner,
    };
    let service = workload::service(&ctx, &pool.spec);
    let network_policy = network_policy::network_policy(
        &ctx,
        &network_policy::Inputs {
            spec: &pool.spec,
            service: &service,
            config: &config,
            observed,
        },
    );
    Ok(Rendered {
        network_policy,
        pod_monitor: monitoring::pod_monitor(&ctx, &pool.spec),
        // Redis users have no pools of their own: the status lists none.
        users: match backend {
            Backend::Postgres(_) => credentials.iter().map(|c| c.user.clone()).collect(),
            Backend::Redis(_) => Vec::new(),
        },
        service_account: workload::service_account(&ctx, &pool.spec),
        token_review_binding: rbac::token_review_binding(&ctx, &config),
        config_map: secrets::config_map(&ctx, &config, redis_settings.as_deref()),
        auth_secret: secrets::auth_secret(&ctx, &credentials),
        app_secret: secrets::app_secret(&ctx, backend, &pool.spec, &credentials),
        service,
        deployment: workload::deployment(&ctx, &pool.spec, &config, &restart_hash),
        pod_disruption_budget: workload::pod_disruption_budget(&ctx),
        sizing,
        config,
        tls_settings,
        redis_settings,
        restart_hash,
    })
}

/// A count the admission rules already proved non-negative.
fn count(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// What each PostgreSQL user asks of every pod, in spec order.
fn postgres_users(spec: &ConnectionPoolSpec) -> Vec<UserDemand> {
    spec.user_sources()
        .iter()
        .map(|u: &UserSource<'_>| UserDemand {
            weight: count(u.weight()),
            min_pool_size: count(u.min_pool_size()),
            reserve_pool_size: count(u.reserve_pool_size()),
        })
        .collect()
}

/// The sizing inputs: the spec's numbers, with the server's own where the spec leaves
/// them to be read (`maxConnections: auto`, no `redis.maxClients`).
pub fn sizing_inputs(
    pool: &ConnectionPool,
    observed: &Observed,
) -> Result<sizing::Inputs, RenderError> {
    let spec = &pool.spec;
    let (database, users) = match spec.backend()? {
        Backend::Postgres(db) => {
            let (max_connections, superuser_reserved) = match db.max_connections {
                MaxConnections::Count(n) => (
                    u32::try_from(n).unwrap_or(u32::MAX),
                    count(db.superuser_reserved_connections),
                ),
                MaxConnections::Auto => {
                    let seen = observed.database.ok_or(RenderError::DatabaseNotObserved)?;
                    (
                        seen.max_connections,
                        seen.superuser_reserved_connections
                            .saturating_add(seen.reserved_connections),
                    )
                }
            };
            let limits = DatabaseLimits {
                max_connections,
                superuser_reserved,
                reserved_percent: count(db.reserved_percent),
                used_by_others: count(db.used_by_others),
            };
            (limits, postgres_users(spec))
        }
        Backend::Redis(redis) => {
            let max_clients = match redis.max_clients {
                Some(n) => count(n),
                None => observed
                    .max_clients
                    .ok_or(RenderError::MaxClientsNotObserved)?,
            };
            // Redis reserves no slots of its own: the headroom keeps room for replicas and
            // monitoring.
            let limits = DatabaseLimits {
                max_connections: max_clients,
                superuser_reserved: 0,
                reserved_percent: count(redis.reserved_percent),
                used_by_others: count(redis.used_by_others),
            };
            // All users share each pod's one cap, which must hold their shared connections.
            let users = vec![UserDemand {
                weight: 1,
                min_pool_size: redis.minimum_per_pod(spec.user_sources().len()),
                reserve_pool_size: 0,
            }];
            (limits, users)
        }
    };
    let share = match (spec.max_connections_percent, spec.max_server_connections) {
        (_, Some(n)) => Share::Absolute(count(n)),
        (Some(p), None) => Share::Percent(count(p)),
        (None, None) => Share::Percent(100),
    };
    Ok(sizing::Inputs {
        database,
        share,
        others_claimed: observed.others_claimed,
        replicas: count(spec.replicas),
        max_surge: count(spec.rollout.max_surge),
        max_replicas: spec.autoscaling.as_ref().map(|a| count(a.max_replicas)),
        users,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod redis_tests;
