//! The ClusterRoleBinding of a pool whose users log in with ServiceAccount tokens. Being
//! cluster-scoped it cannot be owned by the namespaced pool, so a finalizer on the pool
//! makes sure it is deleted: when no user needs it any more, or with the pool.

use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use super::live::Versions;
use super::reconcile::{rendering_digest, Error, FIELD_MANAGER};
use crate::api::ConnectionPool;
use crate::render::rbac::binding_name;

/// Held on a pool while its ClusterRoleBinding may exist.
pub const FINALIZER: &str = "weir.dev/token-review-binding";

/// Applies `wanted` (the finalizer first, so the binding never outlives the pool) unless it
/// is as the last apply left it, or deletes the pool's binding and then drops the finalizer.
pub(super) async fn sync(
    client: &Client,
    live: &Versions,
    pool: &ConnectionPool,
    namespace: &str,
    wanted: Option<&ClusterRoleBinding>,
) -> Result<(), Error> {
    let Some(binding) = wanted else {
        return release(client, pool, namespace).await;
    };
    if !has_finalizer(pool) {
        let mut finalizers = pool.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        set_finalizers(client, pool, namespace, finalizers).await?;
    }
    let name = binding.metadata.name.clone().unwrap_or_default();
    let api = Api::<ClusterRoleBinding>::all(client.clone());
    let digest = rendering_digest(binding)?;
    // Not watched (a cluster-wide watch for a few bindings): a read tells an edit or a deletion.
    let current = api.get_opt(&name).await.map_err(kube_error("get", &name))?;
    if let Some(current) = &current {
        live.saw_for(pool.uid(), current);
    }
    if current.is_none() || !live.unchanged::<ClusterRoleBinding>("", &name, &digest) {
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(binding),
            )
            .await
            .map_err(kube_error("apply", &name))?;
        live.applied_for(pool.uid(), digest, &applied);
    }
    Ok(())
}

/// Deletes the pool's binding, if any, and drops the finalizer, if held.
pub(super) async fn release(
    client: &Client,
    pool: &ConnectionPool,
    namespace: &str,
) -> Result<(), Error> {
    if !has_finalizer(pool) {
        return Ok(());
    }
    let name = binding_name(namespace, &pool.name_any());
    Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .map(drop)
        .or_else(|e| match e {
            kube::Error::Api(s) if s.code == 404 => Ok(()),
            e => Err(e),
        })
        .map_err(kube_error("delete", &name))?;
    let finalizers = pool
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(client, pool, namespace, finalizers).await
}

fn has_finalizer(pool: &ConnectionPool) -> bool {
    pool.finalizers().iter().any(|f| f == FINALIZER)
}

/// Replaces the pool's finalizers, guarded by its resourceVersion so that a concurrent
/// change fails (and is retried) instead of being overwritten.
async fn set_finalizers(
    client: &Client,
    pool: &ConnectionPool,
    namespace: &str,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let name = pool.name_any();
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": pool.resource_version(),
        }
    });
    Api::<ConnectionPool>::namespaced(client.clone(), namespace)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Kube {
            verb: "patch finalizers of",
            kind: "ConnectionPool".to_owned(),
            name: name.clone(),
            source,
        })?;
    Ok(())
}

fn kube_error<'a>(verb: &'static str, name: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Kube {
        verb,
        kind: "ClusterRoleBinding".to_owned(),
        name: name.to_owned(),
        source,
    }
}
