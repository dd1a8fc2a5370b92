//! Names, labels and owner references shared by every child object.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use super::RenderError;
use crate::api::ConnectionPool;

/// Pod-template annotation holding the hash of the settings that need a restart.
pub const RESTART_HASH_ANNOTATION: &str = "weir.dev/restart-hash";

/// The label naming the pool a pod belongs to; with `app.kubernetes.io/name` it is the
/// selector. A Weir-specific key, because deployment tools rewrite
/// `app.kubernetes.io/instance` on the objects they manage.
const POOL_LABEL: &str = "weir.dev/pool";

/// Names of the child objects, derived from the pool's name.
pub mod names {
    /// The ConfigMap with pgbouncer.ini.
    pub fn config_map(pool: &str) -> String {
        format!("{pool}-config")
    }

    /// The Secret with userlist.txt.
    pub fn auth_secret(pool: &str) -> String {
        format!("{pool}-auth")
    }

    /// The Secret applications read their connection details from.
    pub fn app_secret(pool: &str) -> String {
        format!("{pool}-app")
    }

    /// The headless Service earlier versions listed the pods' peer addresses with, which the
    /// controller deletes where it finds one: the pool's own Service lists them too.
    pub fn legacy_peers_service(pool: &str) -> String {
        format!("{pool}-peers")
    }
}

/// What every child's metadata is built from.
pub(crate) struct Context<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub owner: OwnerReference,
}

impl Context<'_> {
    /// Metadata for a child called `name`: namespace, standard labels, owner reference.
    pub fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(labels(self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The labels that select a pool's pods (and never change for the pool's lifetime).
pub fn selector_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "weir".to_owned()),
        (POOL_LABEL.to_owned(), pool.to_owned()),
    ])
}

/// The selector as a label-selector string, for `status.selector`.
pub fn selector_string(pool: &str) -> String {
    selector_labels(pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The labels on every child object and pod.
pub(crate) fn labels(pool: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pool);
    labels.extend([
        ("app.kubernetes.io/instance".to_owned(), pool.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "pooler".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "weir-operator".to_owned(),
        ),
    ]);
    labels
}

/// The controller owner reference to `pool`, so that its children are garbage-collected
/// with it and their changes wake its controller.
pub(crate) fn owner(pool: &ConnectionPool) -> Result<OwnerReference, RenderError> {
    if pool.meta().uid.is_none() {
        return Err(RenderError::MissingMetadata("uid"));
    }
    pool.controller_owner_ref(&())
        .ok_or(RenderError::MissingMetadata("name"))
}

/// The Service's host name inside the cluster.
pub(crate) fn service_host(pool: &str, namespace: &str) -> String {
    format!("{pool}.{namespace}.svc")
}
