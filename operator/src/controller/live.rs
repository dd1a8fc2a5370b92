//! Which children need a server-side apply: the resource version each child had after this
//! operator's last apply of a given rendering, against the version its watch last saw. A
//! child whose rendering and live version are both unchanged is left alone; anything else
//! (an edit, a deletion, a new rendering, an operator restart) is applied again.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use kube::{Resource, ResourceExt};

use crate::api::ConnectionPool;

/// A child: kind, namespace (empty for a cluster-scoped one), name.
type Key = (String, String, String);

/// The children's versions as applied and as seen.
#[derive(Debug, Default)]
pub struct Versions {
    /// Per child, the uid of the pool it belongs to, to forget the children of deleted pools.
    owners: Mutex<HashMap<Key, String>>,
    /// Per child, the digest of the applied rendering and the version the apply left.
    applied: Mutex<HashMap<Key, (String, String)>>,
    /// Per child, the version its watch (or a read) last delivered, deletions included.
    seen: Mutex<HashMap<Key, String>>,
}

fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Key {
    (
        K::kind(&()).into_owned(),
        namespace.to_owned(),
        name.to_owned(),
    )
}

fn key_of<K: Resource<DynamicType = ()>>(object: &K) -> Key {
    key::<K>(&object.namespace().unwrap_or_default(), &object.name_any())
}

/// The uid of the ConnectionPool among `object`'s owners.
fn owner_uid<K: Resource>(object: &K) -> Option<String> {
    object
        .owner_references()
        .iter()
        .find(|o| o.kind == ConnectionPool::kind(&()))
        .map(|o| o.uid.clone())
}

/// Whether a child is as this operator left it: same rendering, and the live version is the
/// one the apply left.
pub fn up_to_date(applied: Option<&(String, String)>, seen: Option<&String>, digest: &str) -> bool {
    applied.is_some_and(|(d, version)| d == digest && seen == Some(version))
}

impl Versions {
    /// Records the version a watch delivered for `object`, a child of the pool among its
    /// owners.
    pub fn saw<K: Resource<DynamicType = ()>>(&self, object: &K) {
        self.saw_for(owner_uid(object), object);
    }

    /// Records the version of `object`, a child of the pool with uid `owner`.
    pub fn saw_for<K: Resource<DynamicType = ()>>(&self, owner: Option<String>, object: &K) {
        let Some(version) = object.resource_version() else {
            return;
        };
        let key = key_of(object);
        self.own(&key, owner);
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, version);
    }

    /// Whether the child `name` with rendering `digest` needs no apply (`namespace` empty
    /// for a cluster-scoped child).
    pub fn unchanged<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
        digest: &str,
    ) -> bool {
        let key = key::<K>(namespace, name);
        let applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        up_to_date(applied.get(&key), seen.get(&key), digest)
    }

    /// Records an apply of rendering `digest` that left `object`.
    pub fn applied<K: Resource<DynamicType = ()>>(&self, digest: String, object: &K) {
        self.applied_for(owner_uid(object), digest, object);
    }

    /// Records an apply of rendering `digest` that left `object`, a child of the pool with
    /// uid `owner`.
    pub fn applied_for<K: Resource<DynamicType = ()>>(
        &self,
        owner: Option<String>,
        digest: String,
        object: &K,
    ) {
        let Some(version) = object.resource_version() else {
            return;
        };
        let key = key_of(object);
        self.own(&key, owner);
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (digest, version));
    }

    fn own(&self, key: &Key, owner: Option<String>) {
        if let Some(owner) = owner {
            self.owners
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.clone(), owner);
        }
    }

    /// Forgets the children of the pools whose uid is not in `alive`: deleted pools.
    pub fn retain_owners(&self, alive: &HashSet<String>) {
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<Key> = owners
            .iter()
            .filter(|(_, owner)| !alive.contains(*owner))
            .map(|(key, _)| key.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &gone {
            owners.remove(key);
            applied.remove(key);
            seen.remove(key);
        }
    }

    /// How many children are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        let applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        applied
            .keys()
            .chain(seen.keys())
            .collect::<HashSet<_>>()
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn config_map(version: &str) -> ConfigMap {
        owned_config_map("orders", "uid-orders", version)
    }

    fn owned_config_map(pool: &str, uid: &str, version: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("{pool}-config"));
        cm.metadata.namespace = Some("shop".into());
        cm.metadata.resource_version = Some(version.into());
        cm.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "weir.dev/v1alpha1".into(),
            kind: "ConnectionPool".into(),
            name: pool.into(),
            uid: uid.into(),
            ..OwnerReference::default()
        }]);
        cm
    }

    #[test]
    fn the_children_of_deleted_pools_are_forgotten() {
        use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
        let versions = Versions::default();
        for (pool, uid) in [("orders", "uid-orders"), ("billing", "uid-billing")] {
            versions.applied("a".into(), &owned_config_map(pool, uid, "5"));
            versions.saw(&owned_config_map(pool, uid, "5"));
        }
        let mut binding = ClusterRoleBinding::default();
        binding.metadata.name = Some("weir-token-review.shop.billing".into());
        binding.metadata.resource_version = Some("9".into());
        versions.applied_for(Some("uid-billing".into()), "b".into(), &binding);
        versions.saw_for(Some("uid-billing".into()), &binding);
        assert!(versions.unchanged::<ClusterRoleBinding>(
            "",
            "weir-token-review.shop.billing",
            "b"
        ));
        assert_eq!(versions.len(), 3);

        versions.retain_owners(&HashSet::from(["uid-orders".to_owned()]));
        assert_eq!(versions.len(), 1);
        assert!(versions.unchanged::<ConfigMap>("shop", "orders-config", "a"));
        assert!(!versions.unchanged::<ConfigMap>("shop", "billing-config", "a"));
        assert!(!versions.unchanged::<ClusterRoleBinding>(
            "",
            "weir-token-review.shop.billing",
            "b"
        ));
        versions.retain_owners(&HashSet::new());
        assert_eq!(versions.len(), 0);
    }

    #[test]
    fn a_child_is_skipped_only_when_rendering_and_live_version_match_the_last_apply() {
        let versions = Versions::default();
        let unchanged = |d: &str| versions.unchanged::<ConfigMap>("shop", "orders-config", d);
        assert!(!unchanged("a"), "never applied");
        versions.applied("a".into(), &config_map("5"));
        assert!(
            !unchanged("a"),
            "the watch has not delivered the applied version yet"
        );
        versions.saw(&config_map("5"));
        assert!(unchanged("a"));
        assert!(!unchanged("b"), "a new rendering is applied");
        versions.saw(&config_map("6"));
        assert!(
            !unchanged("a"),
            "edited or deleted by someone else: put back"
        );
        versions.applied("a".into(), &config_map("7"));
        versions.saw(&config_map("7"));
        assert!(unchanged("a"));
    }

    #[test]
    fn up_to_date_needs_both_the_apply_and_the_watch() {
        let applied = ("a".to_owned(), "5".to_owned());
        assert!(up_to_date(Some(&applied), Some(&"5".to_owned()), "a"));
        assert!(!up_to_date(Some(&applied), None, "a"));
        assert!(!up_to_date(None, Some(&"5".to_owned()), "a"));
    }
}
