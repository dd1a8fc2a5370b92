//! Offline admission: reading a ConnectionPool manifest and refusing what the API server
//! would refuse, with the same messages.
//!
//! The API server checks the schema (field types, enums, unknown fields under strict
//! field validation) and the CEL rules. Here serde checks types and enums, a round trip
//! finds unknown fields, and the Rust twin of every CEL rule in [`super::rules`] runs.

use std::fmt;

use kube::Resource;
use serde_json::Value;

use super::duration::MESSAGE as DURATION_MESSAGE;
use super::rules::{
    self, Rule, MAX_NAME_LENGTH, MAX_READ_ONLY_NAME_LENGTH, NAME_MESSAGE, READ_ONLY_NAME_MESSAGE,
};
use super::server_auth;
use super::{CaSource, ConnectionPool, Limits, TlsSpec};

/// One refused field: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field path, as the API server prints it (`spec.users[1].weight`).
    pub path: String,
    /// The rule's message.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every admission rule a ConnectionPool breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_lines(.0))]
pub struct Violations(pub Vec<Violation>);

fn join_lines(violations: &[Violation]) -> String {
    let lines: Vec<String> = violations.iter().map(Violation::to_string).collect();
    lines.join("\n")
}

/// Why a manifest could not be read as a valid ConnectionPool.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The text is not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// The YAML is some other kind of object.
    #[error(
        "expected apiVersion weir.dev/v1alpha1 and kind ConnectionPool, found {api_version} {kind}"
    )]
    WrongKind {
        /// The `apiVersion` found.
        api_version: String,
        /// The `kind` found.
        kind: String,
    },
    /// A field has the wrong type or an unsupported value.
    #[error("not a valid ConnectionPool: {0}")]
    Shape(String),
    /// Fields the API does not have (the API server refuses these under strict field
    /// validation, kubectl's default).
    #[error("unknown fields: {}", .0.join(", "))]
    UnknownFields(Vec<String>),
    /// Admission rules the pool breaks.
    #[error(transparent)]
    Invalid(#[from] Violations),
}

/// Reads one ConnectionPool manifest and runs the admission checks on it.
pub fn from_yaml(text: &str) -> Result<ConnectionPool, LoadError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|e| LoadError::Yaml(e.to_string()))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("(none)")
            .to_owned()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version != "weir.dev/v1alpha1" || kind != "ConnectionPool" {
        return Err(LoadError::WrongKind { api_version, kind });
    }
    let pool: ConnectionPool =
        serde_json::from_value(value.clone()).map_err(|e| LoadError::Shape(e.to_string()))?;
    let round_trip = serde_json::to_value(&pool).map_err(|e| LoadError::Shape(e.to_string()))?;
    let mut unknown = Vec::new();
    unknown_fields(&value, &round_trip, "", &mut unknown);
    if !unknown.is_empty() {
        return Err(LoadError::UnknownFields(unknown));
    }
    pool.validate()?;
    Ok(pool)
}

/// Collects the paths present in `given` but lost in `kept` (what the types read back);
/// explicit nulls are not fields and are skipped.
fn unknown_fields(given: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (given, kept) {
        (Value::Object(given), Value::Object(kept)) => {
            for (key, value) in given {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match kept.get(key) {
                    Some(k) => unknown_fields(value, k, &child, out),
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(given), Value::Array(kept)) => {
            for (i, (g, k)) in given.iter().zip(kept).enumerate() {
                unknown_fields(g, k, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

impl ConnectionPool {
    /// Runs every admission rule, collecting all violations as the API server does.
    pub fn validate(&self) -> Result<(), Violations> {
        let mut v = Checker(Vec::new());
        if let Some(name) = &self.meta().name {
            if !valid_name(name) {
                v.0.push(Violation {
                    path: "metadata.name".into(),
                    message: NAME_MESSAGE.into(),
                });
            }
            if self.spec.read_replicas.is_some() && name.len() > MAX_READ_ONLY_NAME_LENGTH {
                v.0.push(Violation {
                    path: "metadata.name".into(),
                    message: READ_ONLY_NAME_MESSAGE.into(),
                });
            }
        }
        let spec = &self.spec;
        v.run("spec", &rules::spec_rules(), spec);
        v.run("spec", &server_auth::spec_rules(), spec);
        if let Some(database) = &spec.database {
            v.run("spec.database", &rules::database_rules(), database);
            v.run("spec.database", &server_auth::database_rules(), database);
            v.run(
                "spec.database.credentialsSecret",
                &rules::credentials_rules(),
                &database.credentials_secret,
            );
            if let Some(auth) = &database.server_auth {
                v.run(
                    "spec.database.serverAuth",
                    &server_auth::server_auth_rules(),
                    auth,
                );
                let annotations = auth
                    .service_account
                    .as_ref()
                    .and_then(|a| a.annotations.as_ref());
                if let Some(annotations) = annotations {
                    v.run(
                        "spec.database.serverAuth.serviceAccount.annotations",
                        &rules::pod_annotations_rules(),
                        annotations,
                    );
                }
            }
        }
        if let Some(replicas) = &spec.read_replicas {
            v.run("spec.readReplicas", &rules::read_replicas_rules(), replicas);
            for (i, host) in replicas.hosts.iter().enumerate() {
                let path = format!("spec.readReplicas.hosts[{i}]");
                v.run(&path, &rules::standby_host_rules(), host);
            }
        }
        if let Some(redis) = &spec.redis {
            v.run("spec.redis", &rules::redis_rules(), redis);
            v.run(
                "spec.redis.privatePool",
                &rules::private_pool_rules(),
                &redis.private_pool,
            );
            if let Some(credentials) = &redis.credentials_secret {
                v.run(
                    "spec.redis.credentialsSecret",
                    &rules::credentials_rules(),
                    credentials,
                );
            }
        }
        if let Some(users) = &spec.users {
            v.run("spec.users", &rules::users_rules(), users.as_slice());
            for (i, user) in users.iter().enumerate() {
                let path = format!("spec.users[{i}]");
                v.run(&path, &rules::user_rules(), user);
                v.run(
                    &format!("{path}.credentialsSecret"),
                    &rules::password_rules(),
                    &user.credentials_secret,
                );
            }
        }
        v.run("spec.limits", &rules::limits_rules(), &spec.limits);
        v.durations(&spec.limits);
        v.run("spec.rollout", &rules::rollout_rules(), &spec.rollout);
        if let Some(autoscaling) = &spec.autoscaling {
            v.run("spec.autoscaling", &rules::autoscaling_rules(), autoscaling);
        }
        if let Some(tls) = &spec.tls {
            v.tls(tls);
        }
        if let Some(parameters) = &spec.parameters {
            v.run("spec.parameters", &rules::parameters_rules(), parameters);
        }
        if let Some(pod) = &spec.pod {
            if let Some(labels) = &pod.labels {
                v.run("spec.pod.labels", &rules::pod_labels_rules(), labels);
            }
            if let Some(annotations) = &pod.annotations {
                v.run(
                    "spec.pod.annotations",
                    &rules::pod_annotations_rules(),
                    annotations,
                );
            }
        }
        if let Some(policy) = &spec.network_policy {
            v.run("spec.networkPolicy", &rules::network_policy_rules(), policy);
        }
        let monitor = spec
            .monitoring
            .as_ref()
            .and_then(|m| m.pod_monitor.as_ref());
        if let Some(monitor) = monitor {
            if let Some(labels) = &monitor.labels {
                v.run(
                    "spec.monitoring.podMonitor.labels",
                    &rules::pod_labels_rules(),
                    labels,
                );
            }
            if monitor
                .interval
                .as_ref()
                .is_some_and(|d| d.to_duration().is_err())
            {
                v.0.push(Violation {
                    path: "spec.monitoring.podMonitor.interval".into(),
                    message: DURATION_MESSAGE.into(),
                });
            }
        }
        if v.0.is_empty() {
            Ok(())
        } else {
            Err(Violations(v.0))
        }
    }
}

/// Whether `name` can name the pool's Service: a DNS-1035 label.
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    name.len() <= MAX_NAME_LENGTH
        && inner_ok
        && bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.last().is_some_and(|b| *b != b'-')
}

struct Checker(Vec<Violation>);

impl Checker {
    fn run<T: ?Sized>(&mut self, path: &str, rules: &[Rule<T>], value: &T) {
        for rule in rules {
            if let Some(message) = (rule.check)(value) {
                self.0.push(Violation {
                    path: format!("{path}{}", rule.field.unwrap_or("")),
                    message,
                });
            }
        }
    }

    fn tls(&mut self, tls: &TlsSpec) {
        if let Some(client) = &tls.client {
            tls_side(
                self,
                "spec.tls.client",
                &rules::client_tls_rules(),
                client,
                &client.ca,
            );
        }
        if let Some(server) = &tls.server {
            tls_side(
                self,
                "spec.tls.server",
                &rules::server_tls_rules(),
                server,
                &server.ca,
            );
        }
    }

    fn durations(&mut self, limits: &Limits) {
        let fields = [
            ("queryWaitTimeout", &limits.query_wait_timeout),
            ("serverIdleTimeout", &limits.server_idle_timeout),
            ("serverLifetime", &limits.server_lifetime),
            ("clientIdleTimeout", &limits.client_idle_timeout),
            ("idleTransactionTimeout", &limits.idle_transaction_timeout),
        ];
        for (name, value) in fields {
            if value.as_ref().is_some_and(|d| d.to_duration().is_err()) {
                self.0.push(Violation {
                    path: format!("spec.limits.{name}"),
                    message: DURATION_MESSAGE.into(),
                });
            }
        }
    }
}

/// Runs one side's TLS rules and those of its CA reference.
fn tls_side<T>(v: &mut Checker, path: &str, side: &[Rule<T>], value: &T, ca: &Option<CaSource>) {
    v.run(path, side, value);
    if let Some(ca) = ca {
        let path = format!("{path}.ca");
        v.run(&path, &rules::ca_source_rules(), ca);
        for (field, selector) in [("secret", &ca.secret), ("configMap", &ca.config_map)] {
            if let Some(selector) = selector {
                v.run(
                    &format!("{path}.{field}"),
                    &rules::key_selector_rules(),
                    selector,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
