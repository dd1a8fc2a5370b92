//! The ClusterRoleBinding that lets a pool's pooler pods create TokenReviews, rendered only
//! when a user logs in with ServiceAccount tokens.

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weir_pooler::config::Config;

use super::meta::{labels, Context};

/// The ClusterRole the chart ships: `create` on `tokenreviews`, nothing else. The operator
/// may bind only this role (`bind` restricted by resourceNames).
pub const TOKEN_REVIEW_CLUSTER_ROLE: &str = "weir-token-review";

/// The label naming the namespace of the pool a cluster-scoped binding belongs to.
pub const POOL_NAMESPACE_LABEL: &str = "weir.dev/pool-namespace";

/// The binding's name: unique per pool, since it is cluster-scoped.
pub fn binding_name(namespace: &str, pool: &str) -> String {
    format!("{TOKEN_REVIEW_CLUSTER_ROLE}.{namespace}.{pool}")
}

/// Whether the pooler validates ServiceAccount tokens: some user lists service accounts.
pub fn reviews_tokens(config: &Config) -> bool {
    config
        .users
        .values()
        .any(|u| !u.service_accounts.is_empty())
}

/// Binds the pool's ServiceAccount to [`TOKEN_REVIEW_CLUSTER_ROLE`] when the pooler reviews
/// tokens. It carries no owner reference (a cluster-scoped object cannot be owned by a
/// namespaced one): the controller deletes it, behind a finalizer on the pool.
pub(crate) fn token_review_binding(
    ctx: &Context<'_>,
    config: &Config,
) -> Option<ClusterRoleBinding> {
    if !reviews_tokens(config) {
        return None;
    }
    let mut labels = labels(ctx.name);
    labels.insert(POOL_NAMESPACE_LABEL.to_owned(), ctx.namespace.to_owned());
    Some(ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(binding_name(ctx.namespace, ctx.name)),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: TOKEN_REVIEW_CLUSTER_ROLE.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: ctx.name.to_owned(),
            namespace: Some(ctx.namespace.to_owned()),
            ..Subject::default()
        }]),
    })
}
