//! Admission rules: each CEL expression the CRD carries (`x-kubernetes-validations`), side by
//! side with the same check in Rust.
//!
//! The API server enforces the CEL rules when a ConnectionPool is created or changed; the
//! Rust twins let `weir-operator render` and the controller refuse the same specs offline
//! with the same messages. Keeping both halves in one table makes a drift between them
//! visible in review, and the tests check every rule in both forms.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
use schemars::Schema;
use serde_json::{json, Value};
use weir_pooler::config::Settings;

use super::{
    Autoscaling, CaSource, ClientTls, ConnectionPoolSpec, CredentialsSecret, DatabaseSpec,
    KeySelector, Limits, MaxConnections, NetworkPolicySettings, PasswordSecret, PrivatePool,
    ReadReplicas, RedisSpec, Rollout, ServerTls, SslMode, StandbyHost, UserSpec, READ_ONLY_SUFFIX,
};

/// The most users one pool may list; bounds the cost of the CEL rules over the list.
pub(crate) const MAX_USERS: u64 = 32;

/// The most entries in `parameters`, `pod.labels` and `pod.annotations`; bounds the cost of
/// the CEL rules over those maps.
pub(crate) const MAX_MAP_ENTRIES: u64 = 64;

/// The longest `parameters` value.
const MAX_PARAMETER_LENGTH: u64 = 1024;

/// The pattern the Service name (the pool's own name) must match: a DNS-1035 label.
pub(crate) const NAME_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// Longest pool name: the Service is named after the pool and must fit a DNS label.
pub(crate) const MAX_NAME_LENGTH: usize = 63;

/// The message for a pool name that cannot name a Service.
pub(crate) const NAME_MESSAGE: &str = "metadata.name must be at most 63 lower-case letters, \
                                       digits and '-', starting with a letter: it also names \
                                       the pool's Service";

/// The pod label keys the operator sets itself.
pub(crate) const OWNED_LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
];

/// Prefix of the label and annotation keys the operator reserves for itself.
pub(crate) const OWNED_PREFIX: &str = "weir.dev/";

/// `[pgbouncer]` settings the operator derives from the spec (or fixes, such as the listen
/// address), with where their value comes from instead.
const OWNED_KEYS: &[(&str, &str)] = &[
    ("logfile", "the pooler logs to standard error"),
    ("pidfile", "not used in a container"),
    ("listen_addr", "fixed by the operator"),
    ("listen_port", "fixed by the operator"),
    ("unix_socket_dir", "fixed by the operator"),
    ("unix_socket_mode", "fixed by the operator"),
    ("user", "the container's user is fixed"),
    ("pool_mode", "spec.poolMode"),
    ("max_client_conn", "spec.limits.maxClientConnections"),
    ("default_pool_size", "computed from the connection budget"),
    ("min_pool_size", "spec.users[].minPoolSize"),
    ("reserve_pool_size", "spec.users[].reservePoolSize"),
    ("max_db_connections", "computed from the connection budget"),
    (
        "max_user_connections",
        "computed from the connection budget",
    ),
    ("auth_type", "fixed by the operator"),
    ("auth_file", "rendered from spec.users"),
    ("auth_user", "fixed by the operator"),
    ("auth_query", "fixed by the operator"),
    ("auth_dbname", "fixed by the operator"),
    ("auth_query_cache_ttl", "fixed by the operator"),
    ("query_wait_timeout", "spec.limits.queryWaitTimeout"),
    ("server_idle_timeout", "spec.limits.serverIdleTimeout"),
    ("server_lifetime", "spec.limits.serverLifetime"),
    ("client_idle_timeout", "spec.limits.clientIdleTimeout"),
    (
        "idle_transaction_timeout",
        "spec.limits.idleTransactionTimeout",
    ),
    ("http_listen_addr", "fixed by the operator"),
    ("http_port", "fixed by the operator"),
    ("peer_id", "each pod finds its own from its IP"),
];

/// The `[pgbouncer]` TLS settings the operator renders from `spec.tls`. Kept apart from
/// [`OWNED_KEYS`] because the pooler may not know them yet (it then warns and ignores them).
pub(crate) const TLS_KEYS: &[&str] = &[
    "client_tls_sslmode",
    "client_tls_cert_file",
    "client_tls_key_file",
    "client_tls_ca_file",
    "server_tls_sslmode",
    "server_tls_ca_file",
    "server_tls_cert_file",
    "server_tls_key_file",
];

/// The `[pgbouncer]` settings the operator sets itself, which `spec.parameters` may not.
pub fn operator_owned_keys() -> impl Iterator<Item = &'static str> {
    OWNED_KEYS.iter().map(|(key, _)| *key)
}

/// The `[pgbouncer]` settings `spec.parameters` may set: every setting the pooler knows
/// except the operator's own.
pub fn settable_keys() -> impl Iterator<Item = &'static str> {
    Settings::KEYS
        .iter()
        .copied()
        .filter(|k| !OWNED_KEYS.iter().any(|(owned, _)| owned == k) && !TLS_KEYS.contains(k))
}

/// One admission rule on a schema node of Rust type `T`.
pub(crate) struct Rule<T: ?Sized> {
    /// The CEL expression; `self` is the node.
    pub cel: String,
    /// The failure message.
    pub message: String,
    /// The field the failure is reported on, relative to the node (`.replicas`).
    pub field: Option<&'static str>,
    /// The same check in Rust: `None` when it holds, else the message the API server
    /// gives.
    pub check: fn(&T) -> Option<String>,
}

impl<T: ?Sized> Rule<T> {
    pub(crate) fn new(
        cel: impl Into<String>,
        message: &'static str,
        field: Option<&'static str>,
        check: fn(&T) -> Option<String>,
    ) -> Self {
        Rule {
            cel: cel.into(),
            message: message.to_owned(),
            field,
            check,
        }
    }

    /// The entry for `x-kubernetes-validations`.
    pub(crate) fn to_json(&self) -> Value {
        let mut rule = json!({ "rule": self.cel, "message": self.message });
        if let Some(field) = self.field {
            rule["fieldPath"] = json!(field);
        }
        rule
    }
}

/// `Some(message)` unless `ok`.
pub(crate) fn unless(ok: bool, message: &str) -> Option<String> {
    (!ok).then(|| message.to_owned())
}

/// Appends `rules` to the schema's `x-kubernetes-validations`.
pub(crate) fn attach<T: ?Sized>(schema: &mut Schema, rules: &[Rule<T>]) {
    let object = schema.ensure_object();
    let entry = object
        .entry("x-kubernetes-validations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = entry {
        list.extend(rules.iter().map(Rule::to_json));
    }
}

/// Sets a keyword on the schema.
fn set(schema: &mut Schema, key: &str, value: Value) {
    schema.ensure_object().insert(key.to_owned(), value);
}

/// A CEL list literal of strings.
fn cel_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

pub(crate) const BOTH_BUDGET_FORMS: &str =
    "set maxConnectionsPercent or maxServerConnections, not both";
const PERCENT_RANGE: &str = "maxConnectionsPercent must be between 1 and 100";
const SERVER_CONNECTIONS_MIN: &str = "maxServerConnections must be at least 1";
const REPLICAS_MIN: &str = "replicas must be at least 1";
pub(crate) const REPLICAS_ABOVE_MAX: &str = "replicas must not exceed autoscaling.maxReplicas, \
                                             the most pods the connection budget is divided for";
const IMAGE_EMPTY: &str = "image must not be empty";

pub(crate) const ONE_BACKEND: &str =
    "set exactly one of database (a PostgreSQL server) and redis (a Redis server)";
pub(crate) const REDIS_USERS: &str = "with redis, users take only user and credentialsSecret: \
                                      weight, minPoolSize, reservePoolSize and serviceAccounts \
                                      are PostgreSQL settings";
pub(crate) const REDIS_CREDENTIALS_TWICE: &str =
    "set redis.credentialsSecret (one user) or users (several), not both";
pub(crate) const READ_REPLICAS_NEED_DATABASE: &str =
    "readReplicas needs database: read-only pools are over PostgreSQL standbys";
pub(crate) const REDIS_TLS: &str = "tls applies to PostgreSQL pools only: a redis pool \
                                    speaks plain RESP";

/// Rules on `spec`.
pub(crate) fn spec_rules() -> Vec<Rule<ConnectionPoolSpec>> {
    vec![
        Rule::new(
            "has(self.database) != has(self.redis)",
            ONE_BACKEND,
            None,
            |s| unless(s.database.is_some() != s.redis.is_some(), ONE_BACKEND),
        ),
        Rule::new(
            "!has(self.redis) || !has(self.users) || self.users.all(u, u.weight == 1 && \
             u.minPoolSize == 0 && u.reservePoolSize == 0 && \
             (!has(u.serviceAccounts) || size(u.serviceAccounts) == 0))",
            REDIS_USERS,
            Some(".users"),
            |s| {
                let plain = |u: &UserSpec| {
                    u.weight == 1
                        && u.min_pool_size == 0
                        && u.reserve_pool_size == 0
                        && u.service_accounts.as_ref().is_none_or(Vec::is_empty)
                };
                unless(
                    s.redis.is_none() || s.users.iter().flatten().all(plain),
                    REDIS_USERS,
                )
            },
        ),
        Rule::new(
            "!has(self.redis) || !has(self.redis.credentialsSecret) || !has(self.users)",
            REDIS_CREDENTIALS_TWICE,
            Some(".users"),
            |s| {
                unless(
                    s.redis
                        .as_ref()
                        .is_none_or(|r| r.credentials_secret.is_none() || s.users.is_none()),
                    REDIS_CREDENTIALS_TWICE,
                )
            },
        ),
        Rule::new(
            "!has(self.readReplicas) || has(self.database)",
            READ_REPLICAS_NEED_DATABASE,
            Some(".readReplicas"),
            |s| {
                unless(
                    s.read_replicas.is_none() || s.database.is_some(),
                    READ_REPLICAS_NEED_DATABASE,
                )
            },
        ),
        Rule::new(
            "!has(self.redis) || !has(self.tls)",
            REDIS_TLS,
            Some(".tls"),
            |s| unless(s.redis.is_none() || s.tls.is_none(), REDIS_TLS),
        ),
        Rule::new(
            "!(has(self.maxConnectionsPercent) && has(self.maxServerConnections))",
            BOTH_BUDGET_FORMS,
            None,
            |s| {
                unless(
                    !(s.max_connections_percent.is_some() && s.max_server_connections.is_some()),
                    BOTH_BUDGET_FORMS,
                )
            },
        ),
        Rule::new(
            "!has(self.maxConnectionsPercent) || \
             (self.maxConnectionsPercent >= 1 && self.maxConnectionsPercent <= 100)",
            PERCENT_RANGE,
            Some(".maxConnectionsPercent"),
            |s| {
                unless(
                    s.max_connections_percent
                        .is_none_or(|p| (1..=100).contains(&p)),
                    PERCENT_RANGE,
                )
            },
        ),
        Rule::new(
            "!has(self.maxServerConnections) || self.maxServerConnections >= 1",
            SERVER_CONNECTIONS_MIN,
            Some(".maxServerConnections"),
            |s| {
                unless(
                    s.max_server_connections.is_none_or(|n| n >= 1),
                    SERVER_CONNECTIONS_MIN,
                )
            },
        ),
        Rule::new("self.replicas >= 1", REPLICAS_MIN, Some(".replicas"), |s| {
            unless(s.replicas >= 1, REPLICAS_MIN)
        }),
        Rule::new(
            "!has(self.autoscaling) || self.replicas <= self.autoscaling.maxReplicas",
            REPLICAS_ABOVE_MAX,
            Some(".replicas"),
            |s| {
                unless(
                    s.autoscaling
                        .as_ref()
                        .is_none_or(|a| s.replicas <= a.max_replicas),
                    REPLICAS_ABOVE_MAX,
                )
            },
        ),
        Rule::new(
            "!has(self.image) || self.image != ''",
            IMAGE_EMPTY,
            Some(".image"),
            |s| unless(s.image.as_deref() != Some(""), IMAGE_EMPTY),
        ),
        Rule::new(
            "!has(self.users) || !self.users.exists(u, has(u.serviceAccounts) && \
             size(u.serviceAccounts) > 0) || (has(self.tls) && has(self.tls.client))",
            TOKENS_NEED_TLS,
            None,
            |s| {
                let tokens = s
                    .users
                    .iter()
                    .flatten()
                    .any(|u| u.service_accounts.as_ref().is_some_and(|a| !a.is_empty()));
                let tls = s.tls.as_ref().is_some_and(|t| t.client.is_some());
                unless(!tokens || tls, TOKENS_NEED_TLS)
            },
        ),
    ]
}

const TOKENS_NEED_TLS: &str =
    "users with serviceAccounts need tls.client: tokens are only accepted over TLS";

const HOST_EMPTY: &str = "host must not be empty";
const PORT_RANGE: &str = "port must be between 1 and 65535";
const DBNAME_EMPTY: &str = "dbname must not be empty";
const DBNAME_RESERVED: &str = "dbname pgbouncer is reserved for the pooler's admin console";
pub(crate) const MAX_CONNECTIONS_FORM: &str =
    "maxConnections must be a number of at least 1, or auto";
const SUPERUSER_RESERVED_MIN: &str = "superuserReservedConnections must not be negative";
const RESERVED_PERCENT_RANGE: &str = "reservedPercent must be between 0 and 50";
const USED_BY_OTHERS_MIN: &str = "usedByOthers must not be negative";

/// Rules on `spec.database`.
pub(crate) fn database_rules() -> Vec<Rule<DatabaseSpec>> {
    vec![
        Rule::new("self.host != ''", HOST_EMPTY, Some(".host"), |d| {
            unless(!d.host.is_empty(), HOST_EMPTY)
        }),
        Rule::new(
            "self.port >= 1 && self.port <= 65535",
            PORT_RANGE,
            Some(".port"),
            |d| unless((1..=65535).contains(&d.port), PORT_RANGE),
        ),
        Rule::new("self.dbname != ''", DBNAME_EMPTY, Some(".dbname"), |d| {
            unless(!d.dbname.is_empty(), DBNAME_EMPTY)
        }),
        Rule::new(
            "self.dbname != 'pgbouncer'",
            DBNAME_RESERVED,
            Some(".dbname"),
            |d| unless(d.dbname != "pgbouncer", DBNAME_RESERVED),
        ),
        Rule::new(
            "type(self.maxConnections) == int ? self.maxConnections >= 1 \
             : self.maxConnections == 'auto'",
            MAX_CONNECTIONS_FORM,
            Some(".maxConnections"),
            |d| {
                unless(
                    !matches!(d.max_connections, MaxConnections::Count(n) if n < 1),
                    MAX_CONNECTIONS_FORM,
                )
            },
        ),
        Rule::new(
            "self.superuserReservedConnections >= 0",
            SUPERUSER_RESERVED_MIN,
            Some(".superuserReservedConnections"),
            |d| {
                unless(
                    d.superuser_reserved_connections >= 0,
                    SUPERUSER_RESERVED_MIN,
                )
            },
        ),
        Rule::new(
            "self.reservedPercent >= 0 && self.reservedPercent <= 50",
            RESERVED_PERCENT_RANGE,
            Some(".reservedPercent"),
            |d| {
                unless(
                    (0..=50).contains(&d.reserved_percent),
                    RESERVED_PERCENT_RANGE,
                )
            },
        ),
        Rule::new(
            "self.usedByOthers >= 0",
            USED_BY_OTHERS_MIN,
            Some(".usedByOthers"),
            |d| unless(d.used_by_others >= 0, USED_BY_OTHERS_MIN),
        ),
    ]
}

pub(crate) const NO_STANDBYS: &str = "hosts must list at least one standby";
const RO_REPLICAS_MIN: &str = "replicas must not be negative";
const STANDBY_HOST_FORM: &str =
    "host must be a host name or an address, without blanks or commas (it joins a host list)";

/// Rules on `spec.readReplicas`.
pub(crate) fn read_replicas_rules() -> Vec<Rule<ReadReplicas>> {
    vec![
        Rule::new("size(self.hosts) >= 1", NO_STANDBYS, Some(".hosts"), |r| {
            unless(!r.hosts.is_empty(), NO_STANDBYS)
        }),
        Rule::new(
            "self.replicas >= 0",
            RO_REPLICAS_MIN,
            Some(".replicas"),
            |r| unless(r.replicas >= 0, RO_REPLICAS_MIN),
        ),
        Rule::new(
            "type(self.maxConnections) == int ? self.maxConnections >= 1 \
             : self.maxConnections == 'auto'",
            MAX_CONNECTIONS_FORM,
            Some(".maxConnections"),
            |r| {
                unless(
                    !matches!(r.max_connections, MaxConnections::Count(n) if n < 1),
                    MAX_CONNECTIONS_FORM,
                )
            },
        ),
        Rule::new(
            "self.superuserReservedConnections >= 0",
            SUPERUSER_RESERVED_MIN,
            Some(".superuserReservedConnections"),
            |r| {
                unless(
                    r.superuser_reserved_connections >= 0,
                    SUPERUSER_RESERVED_MIN,
                )
            },
        ),
        Rule::new(
            "self.reservedPercent >= 0 && self.reservedPercent <= 50",
            RESERVED_PERCENT_RANGE,
            Some(".reservedPercent"),
            |r| {
                unless(
                    (0..=50).contains(&r.reserved_percent),
                    RESERVED_PERCENT_RANGE,
                )
            },
        ),
        Rule::new(
            "self.usedByOthers >= 0",
            USED_BY_OTHERS_MIN,
            Some(".usedByOthers"),
            |r| unless(r.used_by_others >= 0, USED_BY_OTHERS_MIN),
        ),
    ]
}

/// Rules on each `spec.readReplicas.hosts[]` entry.
pub(crate) fn standby_host_rules() -> Vec<Rule<StandbyHost>> {
    vec![
        Rule::new(
            "self.host.matches('^[^\\\\s,]+$')",
            STANDBY_HOST_FORM,
            Some(".host"),
            |h| {
                unless(
                    !h.host.is_empty() && !h.host.contains(|c: char| c == ',' || c.is_whitespace()),
                    STANDBY_HOST_FORM,
                )
            },
        ),
        Rule::new(
            "self.port >= 1 && self.port <= 65535",
            PORT_RANGE,
            Some(".port"),
            |h| unless((1..=65535).contains(&h.port), PORT_RANGE),
        ),
    ]
}

const REDIS_HOST_FORM: &str = "host must be a host name or an IP address";
const CLUSTER_NODES_FORM: &str = "clusterNodes must be host:port entries, port 1 to 65535";
/// Cluster seed nodes a spec may list.
const MAX_CLUSTER_NODES: usize = 16;
/// The longest `host:port` entry: a DNS name and a port.
const MAX_CLUSTER_NODE_LENGTH: usize = 253 + 6;
const MAX_CLIENTS_MIN: &str = "maxClients must be at least 1";
const SHARED_CONNECTIONS_MIN: &str = "sharedConnections must be at least 1";

/// Rules on `spec.redis`.
pub(crate) fn redis_rules() -> Vec<Rule<RedisSpec>> {
    vec![
        Rule::new(
            "self.host.matches('^[-._:a-zA-Z0-9]+$')",
            REDIS_HOST_FORM,
            Some(".host"),
            |r| {
                unless(
                    !r.host.is_empty()
                        && r.host.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':')
                        }),
                    REDIS_HOST_FORM,
                )
            },
        ),
        Rule::new(
            "self.port >= 1 && self.port <= 65535",
            PORT_RANGE,
            Some(".port"),
            |r| unless((1..=65535).contains(&r.port), PORT_RANGE),
        ),
        Rule::new(
            "!has(self.clusterNodes) || self.clusterNodes.all(n, \
             n.matches('^[-._a-zA-Z0-9]+:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$'))",
            CLUSTER_NODES_FORM,
            Some(".clusterNodes"),
            |r| {
                unless(
                    r.cluster_nodes.iter().all(|n| is_node(n)),
                    CLUSTER_NODES_FORM,
                )
            },
        ),
        Rule::new(
            "!has(self.maxClients) || self.maxClients >= 1",
            MAX_CLIENTS_MIN,
            Some(".maxClients"),
            |r| unless(r.max_clients.is_none_or(|n| n >= 1), MAX_CLIENTS_MIN),
        ),
        Rule::new(
            "self.reservedPercent >= 0 && self.reservedPercent <= 50",
            RESERVED_PERCENT_RANGE,
            Some(".reservedPercent"),
            |r| {
                unless(
                    (0..=50).contains(&r.reserved_percent),
                    RESERVED_PERCENT_RANGE,
                )
            },
        ),
        Rule::new(
            "self.usedByOthers >= 0",
            USED_BY_OTHERS_MIN,
            Some(".usedByOthers"),
            |r| unless(r.used_by_others >= 0, USED_BY_OTHERS_MIN),
        ),
        Rule::new(
            "self.sharedConnections >= 1",
            SHARED_CONNECTIONS_MIN,
            Some(".sharedConnections"),
            |r| unless(r.shared_connections >= 1, SHARED_CONNECTIONS_MIN),
        ),
    ]
}

const IDLE_TIME_MIN: &str = "idleTimeSeconds must not be negative";
const MAX_IDLE_MIN: &str = "maxIdlePerDb must not be negative";
pub(crate) const MIN_IDLE_RANGE: &str =
    "minIdlePerDb must be between 0 and maxIdlePerDb: connections above maxIdlePerDb are closed";

/// Rules on `spec.redis.privatePool`.
pub(crate) fn private_pool_rules() -> Vec<Rule<PrivatePool>> {
    vec![
        Rule::new(
            "self.idleTimeSeconds >= 0",
            IDLE_TIME_MIN,
            Some(".idleTimeSeconds"),
            |p| unless(p.idle_time_seconds >= 0, IDLE_TIME_MIN),
        ),
        Rule::new(
            "self.maxIdlePerDb >= 0",
            MAX_IDLE_MIN,
            Some(".maxIdlePerDb"),
            |p| unless(p.max_idle_per_db >= 0, MAX_IDLE_MIN),
        ),
        Rule::new(
            "self.minIdlePerDb >= 0 && self.minIdlePerDb <= self.maxIdlePerDb",
            MIN_IDLE_RANGE,
            Some(".minIdlePerDb"),
            |p| {
                unless(
                    p.min_idle_per_db >= 0 && p.min_idle_per_db <= p.max_idle_per_db,
                    MIN_IDLE_RANGE,
                )
            },
        ),
    ]
}

const SECRET_NAME_EMPTY: &str = "the Secret name must not be empty";
const USERNAME_KEY_EMPTY: &str = "usernameKey must not be empty";
const PASSWORD_KEY_EMPTY: &str = "passwordKey must not be empty";

/// Rules on a `credentialsSecret` with a user name.
pub(crate) fn credentials_rules() -> Vec<Rule<CredentialsSecret>> {
    vec![
        Rule::new("self.name != ''", SECRET_NAME_EMPTY, Some(".name"), |c| {
            unless(!c.name.is_empty(), SECRET_NAME_EMPTY)
        }),
        Rule::new(
            "self.usernameKey != ''",
            USERNAME_KEY_EMPTY,
            Some(".usernameKey"),
            |c| unless(!c.username_key.is_empty(), USERNAME_KEY_EMPTY),
        ),
        Rule::new(
            "self.passwordKey != ''",
            PASSWORD_KEY_EMPTY,
            Some(".passwordKey"),
            |c| unless(!c.password_key.is_empty(), PASSWORD_KEY_EMPTY),
        ),
    ]
}

/// Rules on a user's `credentialsSecret`.
pub(crate) fn password_rules() -> Vec<Rule<PasswordSecret>> {
    vec![
        Rule::new("self.name != ''", SECRET_NAME_EMPTY, Some(".name"), |c| {
            unless(!c.name.is_empty(), SECRET_NAME_EMPTY)
        }),
        Rule::new(
            "self.passwordKey != ''",
            PASSWORD_KEY_EMPTY,
            Some(".passwordKey"),
            |c| unless(!c.password_key.is_empty(), PASSWORD_KEY_EMPTY),
        ),
    ]
}

const USER_EMPTY: &str = "user must not be empty";
const WEIGHT_RANGE: &str = "weight must be between 1 and 1000";
const MIN_POOL_MIN: &str = "minPoolSize must not be negative";
const RESERVE_POOL_MIN: &str = "reservePoolSize must not be negative";

/// Rules on one entry of `spec.users`.
pub(crate) fn user_rules() -> Vec<Rule<UserSpec>> {
    vec![
        Rule::new("self.user != ''", USER_EMPTY, Some(".user"), |u| {
            unless(!u.user.is_empty(), USER_EMPTY)
        }),
        Rule::new(
            "self.weight >= 1 && self.weight <= 1000",
            WEIGHT_RANGE,
            Some(".weight"),
            |u| unless((1..=1000).contains(&u.weight), WEIGHT_RANGE),
        ),
        Rule::new(
            "self.minPoolSize >= 0",
            MIN_POOL_MIN,
            Some(".minPoolSize"),
            |u| unless(u.min_pool_size >= 0, MIN_POOL_MIN),
        ),
        Rule::new(
            "self.reservePoolSize >= 0",
            RESERVE_POOL_MIN,
            Some(".reservePoolSize"),
            |u| unless(u.reserve_pool_size >= 0, RESERVE_POOL_MIN),
        ),
    ]
}

pub(crate) const NO_USERS: &str =
    "at least one user is needed; leave users out to use the database credentials";

/// Rules on the `spec.users` list.
pub(crate) fn users_rules() -> Vec<Rule<[UserSpec]>> {
    vec![Rule::new("size(self) >= 1", NO_USERS, None, |users| {
        unless(!users.is_empty(), NO_USERS)
    })]
}

const MAX_CLIENT_CONNECTIONS_MIN: &str = "maxClientConnections must be at least 1";

/// Rules on `spec.limits`.
pub(crate) fn limits_rules() -> Vec<Rule<Limits>> {
    vec![Rule::new(
        "self.maxClientConnections >= 1",
        MAX_CLIENT_CONNECTIONS_MIN,
        Some(".maxClientConnections"),
        |l| unless(l.max_client_connections >= 1, MAX_CLIENT_CONNECTIONS_MIN),
    )]
}

const MAX_SURGE_MIN: &str = "maxSurge must be at least 1: old pods stop only after new ones \
                             are ready, so a rollout needs room for one more pod";

/// Rules on `spec.rollout`.
pub(crate) fn rollout_rules() -> Vec<Rule<Rollout>> {
    vec![Rule::new(
        "self.maxSurge >= 1",
        MAX_SURGE_MIN,
        Some(".maxSurge"),
        |r| unless(r.max_surge >= 1, MAX_SURGE_MIN),
    )]
}

const MAX_REPLICAS_MIN: &str = "maxReplicas must be at least 1";

/// Rules on `spec.autoscaling`.
pub(crate) fn autoscaling_rules() -> Vec<Rule<Autoscaling>> {
    vec![Rule::new(
        "self.maxReplicas >= 1",
        MAX_REPLICAS_MIN,
        Some(".maxReplicas"),
        |a| unless(a.max_replicas >= 1, MAX_REPLICAS_MIN),
    )]
}

/// The modes that check the peer's certificate against a CA, as a CEL list.
const VERIFY_MODES: &str = "['verify-ca', 'verify-full']";

pub(crate) const CLIENT_MODE_NEEDS_CERTIFICATE: &str =
    "a client mode other than disable needs secretName: the certificate the poolers present";
const CLIENT_SECRET_EMPTY: &str = "secretName must not be empty";
pub(crate) const CLIENT_VERIFY_NEEDS_CA: &str =
    "modes verify-ca and verify-full check client certificates: set ca";
pub(crate) const CLIENT_CA_NEEDS_VERIFY: &str = "ca checks client certificates only with mode \
                                                 verify-ca or verify-full: set the mode";

/// Rules on `spec.tls.client`.
pub(crate) fn client_tls_rules() -> Vec<Rule<ClientTls>> {
    vec![
        Rule::new(
            "!has(self.mode) || self.mode == 'disable' || has(self.secretName)",
            CLIENT_MODE_NEEDS_CERTIFICATE,
            Some(".secretName"),
            |c| {
                unless(
                    c.mode.is_none_or(|m| m == SslMode::Disable) || c.secret_name.is_some(),
                    CLIENT_MODE_NEEDS_CERTIFICATE,
                )
            },
        ),
        Rule::new(
            "!has(self.secretName) || self.secretName != ''",
            CLIENT_SECRET_EMPTY,
            Some(".secretName"),
            |c| unless(c.secret_name.as_deref() != Some(""), CLIENT_SECRET_EMPTY),
        ),
        Rule::new(
            format!("!has(self.mode) || !(self.mode in {VERIFY_MODES}) || has(self.ca)"),
            CLIENT_VERIFY_NEEDS_CA,
            Some(".ca"),
            |c| {
                unless(
                    !c.mode.is_some_and(SslMode::verifies) || c.ca.is_some(),
                    CLIENT_VERIFY_NEEDS_CA,
                )
            },
        ),
        Rule::new(
            format!("!has(self.ca) || (has(self.mode) && self.mode in {VERIFY_MODES})"),
            CLIENT_CA_NEEDS_VERIFY,
            Some(".mode"),
            |c| {
                unless(
                    c.ca.is_none() || c.mode.is_some_and(SslMode::verifies),
                    CLIENT_CA_NEEDS_VERIFY,
                )
            },
        ),
    ]
}

pub(crate) const SERVER_VERIFY_NEEDS_CA: &str =
    "modes verify-ca and verify-full check the database's certificate: set ca";
const CLIENT_CERTIFICATE_EMPTY: &str = "clientCertificateSecretName must not be empty";

/// Rules on `spec.tls.server`.
pub(crate) fn server_tls_rules() -> Vec<Rule<ServerTls>> {
    vec![
        Rule::new(
            format!("!has(self.mode) || !(self.mode in {VERIFY_MODES}) || has(self.ca)"),
            SERVER_VERIFY_NEEDS_CA,
            Some(".ca"),
            |s| {
                unless(
                    !s.mode.is_some_and(SslMode::verifies) || s.ca.is_some(),
                    SERVER_VERIFY_NEEDS_CA,
                )
            },
        ),
        Rule::new(
            "!has(self.clientCertificateSecretName) || self.clientCertificateSecretName != ''",
            CLIENT_CERTIFICATE_EMPTY,
            Some(".clientCertificateSecretName"),
            |s| {
                unless(
                    s.client_certificate_secret_name.as_deref() != Some(""),
                    CLIENT_CERTIFICATE_EMPTY,
                )
            },
        ),
    ]
}

pub(crate) const ONE_CA_SOURCE: &str = "set exactly one of secret and configMap";

/// Rules on a `ca`.
pub(crate) fn ca_source_rules() -> Vec<Rule<CaSource>> {
    vec![Rule::new(
        "has(self.secret) != has(self.configMap)",
        ONE_CA_SOURCE,
        None,
        |c| unless(c.secret.is_some() != c.config_map.is_some(), ONE_CA_SOURCE),
    )]
}

const KEY_NAME_EMPTY: &str = "name must not be empty";
pub(crate) const KEY_FORM: &str =
    "key must be a Secret or ConfigMap key: letters, digits, '-', '_' and '.'";

/// Rules on a Secret or ConfigMap key reference.
pub(crate) fn key_selector_rules() -> Vec<Rule<KeySelector>> {
    vec![
        Rule::new("self.name != ''", KEY_NAME_EMPTY, Some(".name"), |k| {
            unless(!k.name.is_empty(), KEY_NAME_EMPTY)
        }),
        Rule::new(
            "self.key.matches('^[-._a-zA-Z0-9]+$')",
            KEY_FORM,
            Some(".key"),
            |k| {
                unless(
                    !k.key.is_empty()
                        && k.key
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                    KEY_FORM,
                )
            },
        ),
    ]
}

const PARAMETER_LINE_BREAK: &str = "parameter values must be a single line";

/// The keys of `map` for which `pick` holds, joined as the CEL `join(', ')` does.
fn keys_where(map: &BTreeMap<String, String>, pick: impl Fn(&str) -> bool) -> String {
    map.keys()
        .filter(|k| pick(k))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The admission message for unknown `parameters` keys: the keys themselves cannot be
/// named in it (the API server bounds a message's cost, and map keys have no length
/// limit), so it lists what may be set instead.
pub(crate) fn unknown_parameters_message() -> String {
    format!(
        "unknown pgbouncer.ini setting; names are lower case, and the settable ones are: {}",
        settable_keys().collect::<Vec<_>>().join(", ")
    )
}

pub(crate) const OWNED_PARAMETERS: &str = "listening, authentication, pool sizes and the \
                                           spec.limits settings are set by the operator and \
                                           cannot be set in parameters";

pub(crate) const TLS_PARAMETERS: &str =
    "TLS settings are set from spec.tls and cannot be set in parameters";

/// Rules on `spec.parameters`. The key lists come from the pooler's own table of settings,
/// so a setting the pooler learns becomes settable without touching the operator. The Rust
/// twins add the offending keys to the message.
pub(crate) fn parameters_rules() -> Vec<Rule<BTreeMap<String, String>>> {
    let known = cel_list(Settings::KEYS.iter().copied());
    let owned = cel_list(operator_owned_keys());
    vec![
        Rule {
            cel: format!("self.all(k, k in {known})"),
            message: unknown_parameters_message(),
            field: None,
            check: |map| {
                let unknown = keys_where(map, |k| !Settings::KEYS.contains(&k));
                (!unknown.is_empty())
                    .then(|| format!("{} (found: {unknown})", unknown_parameters_message()))
            },
        },
        Rule {
            cel: format!("self.all(k, !(k in {owned}))"),
            message: OWNED_PARAMETERS.to_owned(),
            field: None,
            check: |map| {
                let found: Vec<String> = OWNED_KEYS
                    .iter()
                    .filter(|(k, _)| map.contains_key(*k))
                    .map(|(k, instead)| format!("{k}: {instead}"))
                    .collect();
                (!found.is_empty()).then(|| format!("{OWNED_PARAMETERS} ({})", found.join("; ")))
            },
        },
        Rule {
            cel: format!(
                "self.all(k, !(k in {}))",
                cel_list(TLS_KEYS.iter().copied())
            ),
            message: TLS_PARAMETERS.to_owned(),
            field: None,
            check: |map| {
                let found = keys_where(map, |k| TLS_KEYS.contains(&k));
                (!found.is_empty()).then(|| format!("{TLS_PARAMETERS} (found: {found})"))
            },
        },
        Rule::new(
            "self.all(k, !self[k].contains('\\n') && !self[k].contains('\\r'))",
            PARAMETER_LINE_BREAK,
            None,
            |map| {
                unless(
                    !map.values().any(|v| v.contains(['\n', '\r'])),
                    PARAMETER_LINE_BREAK,
                )
            },
        ),
    ]
}

pub(crate) const RESERVED_LABELS: &str =
    "labels under weir.dev/ and the app.kubernetes.io/ labels the operator sets are reserved";
pub(crate) const RESERVED_ANNOTATIONS: &str = "annotations under weir.dev/ are reserved";

/// Rules on `spec.pod.labels`.
pub(crate) fn pod_labels_rules() -> Vec<Rule<BTreeMap<String, String>>> {
    vec![Rule::new(
        format!(
            "self.all(k, !k.startsWith('{OWNED_PREFIX}') && !(k in {}))",
            cel_list(OWNED_LABELS.iter().copied())
        ),
        RESERVED_LABELS,
        None,
        |labels| {
            unless(
                !labels
                    .keys()
                    .any(|k| k.starts_with(OWNED_PREFIX) || OWNED_LABELS.contains(&k.as_str())),
                RESERVED_LABELS,
            )
        },
    )]
}

/// Rules on `spec.pod.annotations`.
pub(crate) fn pod_annotations_rules() -> Vec<Rule<BTreeMap<String, String>>> {
    vec![Rule::new(
        format!("self.all(k, !k.startsWith('{OWNED_PREFIX}'))"),
        RESERVED_ANNOTATIONS,
        None,
        |annotations| {
            unless(
                !annotations.keys().any(|k| k.starts_with(OWNED_PREFIX)),
                RESERVED_ANNOTATIONS,
            )
        },
    )]
}

const NO_CLIENTS: &str = "clients must name at least one peer: without one nobody could \
                          connect to the pooler (podSelector: {} admits the whole namespace)";
pub(crate) const BAD_CIDR: &str = "databaseCIDR must be a CIDR like 10.0.12.0/24 or fd00::/64";

/// Rules on `spec.networkPolicy`.
pub(crate) fn network_policy_rules() -> Vec<Rule<NetworkPolicySettings>> {
    vec![
        Rule::new(
            "size(self.clients) >= 1",
            NO_CLIENTS,
            Some(".clients"),
            |n| unless(!n.clients.is_empty(), NO_CLIENTS),
        ),
        Rule::new(
            "!has(self.databaseCIDR) || isCIDR(self.databaseCIDR)",
            BAD_CIDR,
            Some(".databaseCIDR"),
            |n| unless(n.database_cidr.as_deref().is_none_or(is_cidr), BAD_CIDR),
        ),
    ]
}

/// Whether `text` is an address and a prefix length that fits it, as CEL's `isCIDR`.
pub(crate) fn is_cidr(text: &str) -> bool {
    let Some((address, bits)) = text.split_once('/') else {
        return false;
    };
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    !bits.starts_with('+') && bits.parse::<u8>().is_ok_and(|b| b <= max)
}

// Schema transforms, named in `#[schemars(transform = ...)]` on the API types.

pub(crate) fn spec_schema(schema: &mut Schema) {
    attach(schema, &spec_rules());
    attach(schema, &super::server_auth::spec_rules());
}

pub(crate) fn database_schema(schema: &mut Schema) {
    attach(schema, &database_rules());
    attach(schema, &super::server_auth::database_rules());
}

pub(crate) fn read_replicas_schema(schema: &mut Schema) {
    attach(schema, &read_replicas_rules());
}

pub(crate) fn standby_host_schema(schema: &mut Schema) {
    attach(schema, &standby_host_rules());
}

pub(crate) fn redis_schema(schema: &mut Schema) {
    attach(schema, &redis_rules());
    // Bounds that let the API server estimate the cost of the clusterNodes rule.
    if let Some(nodes) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("clusterNodes"))
        .and_then(Value::as_object_mut)
    {
        nodes.insert("maxItems".to_owned(), json!(MAX_CLUSTER_NODES));
        if let Some(items) = nodes.get_mut("items").and_then(Value::as_object_mut) {
            items.insert("maxLength".to_owned(), json!(MAX_CLUSTER_NODE_LENGTH));
        }
    }
}

/// `host:port` as the clusterNodes rule's pattern has it.
fn is_node(node: &str) -> bool {
    node.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !port.starts_with('0')
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p >= 1)
    })
}

pub(crate) fn private_pool_schema(schema: &mut Schema) {
    attach(schema, &private_pool_rules());
}

pub(crate) fn credentials_schema(schema: &mut Schema) {
    attach(schema, &credentials_rules());
}

pub(crate) fn password_schema(schema: &mut Schema) {
    attach(schema, &password_rules());
}

pub(crate) fn user_schema(schema: &mut Schema) {
    attach(schema, &user_rules());
}

pub(crate) fn users_schema(schema: &mut Schema) {
    // A list keyed by user name: the API server refuses duplicates, and server-side apply
    // merges entries by name.
    set(schema, "x-kubernetes-list-type", json!("map"));
    set(schema, "x-kubernetes-list-map-keys", json!(["user"]));
    set(schema, "maxItems", json!(MAX_USERS));
    attach(schema, &users_rules());
}

pub(crate) fn limits_schema(schema: &mut Schema) {
    attach(schema, &limits_rules());
}

pub(crate) fn rollout_schema(schema: &mut Schema) {
    attach(schema, &rollout_rules());
}

pub(crate) fn autoscaling_schema(schema: &mut Schema) {
    attach(schema, &autoscaling_rules());
}

pub(crate) fn client_tls_schema(schema: &mut Schema) {
    attach(schema, &client_tls_rules());
}

pub(crate) fn server_tls_schema(schema: &mut Schema) {
    attach(schema, &server_tls_rules());
}

pub(crate) fn ca_source_schema(schema: &mut Schema) {
    attach(schema, &ca_source_rules());
}

pub(crate) fn key_selector_schema(schema: &mut Schema) {
    attach(schema, &key_selector_rules());
}

pub(crate) fn parameters_schema(schema: &mut Schema) {
    set(schema, "maxProperties", json!(MAX_MAP_ENTRIES));
    set(
        schema,
        "additionalProperties",
        json!({ "type": "string", "maxLength": MAX_PARAMETER_LENGTH }),
    );
    attach(schema, &parameters_rules());
}

pub(crate) fn network_policy_schema(schema: &mut Schema) {
    attach(schema, &network_policy_rules());
}

pub(crate) fn pod_labels_schema(schema: &mut Schema) {
    set(schema, "maxProperties", json!(MAX_MAP_ENTRIES));
    attach(schema, &pod_labels_rules());
}

pub(crate) fn pod_annotations_schema(schema: &mut Schema) {
    set(schema, "maxProperties", json!(MAX_MAP_ENTRIES));
    attach(schema, &pod_annotations_rules());
}

/// The longest pool name with `readReplicas`: `<name>-ro` names a Service too.
pub(crate) const MAX_READ_ONLY_NAME_LENGTH: usize = MAX_NAME_LENGTH - READ_ONLY_SUFFIX.len();

/// The message for a pool name too long for its read-only Service.
pub(crate) const READ_ONLY_NAME_MESSAGE: &str =
    "with spec.readReplicas, metadata.name must be at most 60 characters: <name>-ro names the \
     read-only pool's Service";

/// Rules on the whole object, added to the generated CRD's root schema.
pub(crate) fn root_rules() -> Vec<ValidationRule> {
    vec![
        ValidationRule {
            rule: format!(
                "size(self.metadata.name) <= {MAX_NAME_LENGTH} && \
                 self.metadata.name.matches('{NAME_PATTERN}')"
            ),
            message: Some(NAME_MESSAGE.to_owned()),
            ..ValidationRule::default()
        },
        ValidationRule {
            rule: format!(
                "!has(self.spec.readReplicas) || \
                 size(self.metadata.name) <= {MAX_READ_ONLY_NAME_LENGTH}"
            ),
            message: Some(READ_ONLY_NAME_MESSAGE.to_owned()),
            ..ValidationRule::default()
        },
    ]
}
