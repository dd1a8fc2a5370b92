//! Which children need a server-side apply, and whether the watches' caches may stand in
//! for a read: the content version each child had after this operator's last apply of a
//! given rendering, against the one its watch last delivered. A child whose rendering and
//! content are both unchanged is left alone; anything else (an edit, a deletion, a new
//! rendering, an operator restart) is applied again.
//!
//! The content version of a kind with a `metadata.generation` (Deployments, PDBs,
//! NetworkPolicies) is its uid, generation, labels, annotations and owners, which a status
//! update leaves alone; of any other kind its resource version.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::api::ConnectionPool;
use weir_pooler::config::file_digest;

/// A child: kind, namespace (empty for a cluster-scoped one), name.
type Key = (String, String, String);

/// One child's versions as some response or event showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    /// What changes when anything but the status does.
    content: String,
    /// The resource version.
    resource: String,
}

impl Version {
    fn of<K: Resource>(object: &K) -> Option<Version> {
        let meta = object.meta();
        let resource = meta.resource_version.clone()?;
        let content = match meta.generation {
            Some(generation) => {
                // Kubernetes' own controllers annotate what they manage (a Deployment's
                // revision); that is no edit of this operator's fields.
                let annotations: Vec<_> = meta
                    .annotations
                    .iter()
                    .flatten()
                    .filter(|(key, _)| !reserved(key))
                    .collect();
                let described =
                    serde_json::to_string(&(&meta.labels, annotations, &meta.owner_references))
                        .unwrap_or_default();
                format!(
                    "{}/{generation}/{}",
                    meta.uid.as_deref().unwrap_or_default(),
                    file_digest(&described)
                )
            }
            None => resource.clone(),
        };
        Some(Version { content, resource })
    }
}

/// Whether an annotation key is in a domain Kubernetes reserves for its own components.
fn reserved(key: &str) -> bool {
    key.split_once('/').is_some_and(|(domain, _)| {
        ["kubernetes.io", "k8s.io"]
            .iter()
            .any(|r| domain == *r || domain.ends_with(&format!(".{r}")))
    })
}

/// What this operator's last apply of a child left.
#[derive(Debug, Clone)]
struct Applied {
    /// The digest of the applied rendering.
    digest: String,
    version: Version,
    /// Whether the watch has delivered the apply's version (or, after a relist, something
    /// newer): from then on the watch's cache is at least as fresh as the apply.
    delivered: bool,
}

/// The children's versions as applied and as seen.
#[derive(Debug, Default)]
pub struct Versions {
    /// Per child, the uid of the pool it belongs to, to forget the children of deleted pools.
    owners: Mutex<HashMap<Key, String>>,
    /// Per child, what the last apply left.
    applied: Mutex<HashMap<Key, Applied>>,
    /// Per child, the version its watch (or a read) last delivered; deleted children have
    /// none.
    seen: Mutex<HashMap<Key, Version>>,
    /// The kinds whose watch has delivered a complete list and is not relisting.
    listed: Mutex<HashSet<String>>,
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

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a child is as this operator left it: same rendering, and the live content is
/// what the apply left.
fn up_to_date(applied: Option<&Applied>, seen: Option<&Version>, digest: &str) -> bool {
    applied
        .is_some_and(|a| a.digest == digest && seen.map(|s| &s.content) == Some(&a.version.content))
}

impl Versions {
    /// Records what a watch of children delivered; `relevant` picks the objects that are
    /// children (a Secret watch also sees the Secrets the pools only read).
    pub fn observe<K: Resource<DynamicType = ()>>(
        &self,
        event: &watcher::Event<K>,
        relevant: impl Fn(&K) -> bool,
    ) {
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object)
                if relevant(object) =>
            {
                self.saw(object);
            }
            watcher::Event::Delete(object) if relevant(object) => {
                locked(&self.seen).remove(&key_of(object));
            }
            // A relist follows: what it does not deliver no longer exists.
            watcher::Event::Init => {
                let kind = K::kind(&());
                locked(&self.listed).remove(kind.as_ref());
                locked(&self.seen).retain(|(k, _, _), _| *k != kind);
            }
            // The relist was made after every apply that had finished: the cache is at
            // least as fresh as each of them.
            watcher::Event::InitDone => {
                let kind = K::kind(&());
                locked(&self.listed).insert(kind.clone().into_owned());
                for (_, applied) in locked(&self.applied)
                    .iter_mut()
                    .filter(|((k, _, _), _)| *k == kind)
                {
                    applied.delivered = true;
                }
            }
            _ => {}
        }
    }

    /// Records the version a watch or a read delivered for `object`, a child of the pool
    /// among its owners.
    pub fn saw<K: Resource<DynamicType = ()>>(&self, object: &K) {
        self.saw_for(owner_uid(object), object);
    }

    /// Records the version of `object`, a child of the pool with uid `owner`.
    pub fn saw_for<K: Resource<DynamicType = ()>>(&self, owner: Option<String>, object: &K) {
        let Some(version) = Version::of(object) else {
            return;
        };
        let key = key_of(object);
        self.own(&key, owner);
        if let Some(applied) = locked(&self.applied).get_mut(&key) {
            if applied.version.resource == version.resource {
                applied.delivered = true;
            }
        }
        locked(&self.seen).insert(key, version);
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
        let applied = locked(&self.applied);
        let seen = locked(&self.seen);
        up_to_date(applied.get(&key), seen.get(&key), digest)
    }

    /// Whether the watch has caught up with this process's last apply of the child `name`:
    /// its cache then shows the child at least as fresh as that apply. A child never
    /// applied by this process is as fresh in the cache as anywhere.
    pub fn caught_up<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> bool {
        locked(&self.applied)
            .get(&key::<K>(namespace, name))
            .is_none_or(|a| a.delivered)
    }

    /// Whether the child `name` is known not to exist: its kind's watch has listed every
    /// child, delivered nothing of that name since, and has caught up with this process's
    /// applies of it.
    pub fn known_absent<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> bool {
        let key = key::<K>(namespace, name);
        locked(&self.listed).contains(key.0.as_str())
            && !locked(&self.seen).contains_key(&key)
            && self.caught_up::<K>(namespace, name)
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
        let Some(version) = Version::of(object) else {
            return;
        };
        let key = key_of(object);
        self.own(&key, owner);
        // The watch may have delivered this very version before the response arrived.
        let delivered = locked(&self.seen)
            .get(&key)
            .is_some_and(|s| s.resource == version.resource);
        locked(&self.applied).insert(
            key,
            Applied {
                digest,
                version,
                delivered,
            },
        );
    }

    fn own(&self, key: &Key, owner: Option<String>) {
        if let Some(owner) = owner {
            locked(&self.owners).insert(key.clone(), owner);
        }
    }

    /// Forgets the children of the pools whose uid is not in `alive`: deleted pools.
    pub fn retain_owners(&self, alive: &HashSet<String>) {
        let mut owners = locked(&self.owners);
        let gone: Vec<Key> = owners
            .iter()
            .filter(|(_, owner)| !alive.contains(*owner))
            .map(|(key, _)| key.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut applied = locked(&self.applied);
        let mut seen = locked(&self.seen);
        for key in &gone {
            owners.remove(key);
            applied.remove(key);
            seen.remove(key);
        }
    }

    /// How many children are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        let applied = locked(&self.applied);
        let seen = locked(&self.seen);
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
    use k8s_openapi::api::apps::v1::Deployment;
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

    fn deployment(version: &str, generation: i64) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = Some("orders".into());
        d.metadata.namespace = Some("shop".into());
        d.metadata.uid = Some("uid-deployment".into());
        d.metadata.resource_version = Some(version.into());
        d.metadata.generation = Some(generation);
        d
    }

    #[test]
    fn a_status_update_leaves_a_child_with_a_generation_unchanged() {
        let versions = Versions::default();
        let unchanged = || versions.unchanged::<Deployment>("shop", "orders", "a");
        versions.applied("a".into(), &deployment("5", 2));
        versions.saw(&deployment("5", 2));
        assert!(unchanged());
        versions.saw(&deployment("6", 2));
        assert!(unchanged(), "the controller wrote the status only");
        versions.saw(&deployment("7", 3));
        assert!(!unchanged(), "someone edited the spec");
        versions.applied("a".into(), &deployment("8", 4));
        let mut labelled = deployment("8", 4);
        labelled.metadata.labels = Some([("team".to_owned(), "x".to_owned())].into());
        versions.saw(&labelled);
        assert!(!unchanged(), "someone edited the labels");
        let mut revised = deployment("8", 4);
        revised.metadata.labels = labelled.metadata.labels.clone();
        revised.metadata.annotations = Some(
            [(
                "deployment.kubernetes.io/revision".to_owned(),
                "2".to_owned(),
            )]
            .into(),
        );
        versions.applied("a".into(), &labelled);
        versions.saw(&revised);
        assert!(unchanged(), "the deployment controller noted a revision");
        let mut recreated = deployment("9", 4);
        recreated.metadata.uid = Some("uid-other".into());
        versions.applied("a".into(), &deployment("9", 4));
        versions.saw(&recreated);
        assert!(!unchanged(), "deleted and created again by someone else");
    }

    #[test]
    fn deletions_and_relists_make_a_child_applied_again() {
        let versions = Versions::default();
        let all = |_: &ConfigMap| true;
        let unchanged = || versions.unchanged::<ConfigMap>("shop", "orders-config", "a");
        versions.applied("a".into(), &config_map("5"));
        versions.observe(&watcher::Event::Apply(config_map("5")), all);
        assert!(unchanged());
        versions.observe(&watcher::Event::Delete(config_map("6")), all);
        assert!(!unchanged(), "deleted: applied again");
        versions.applied("a".into(), &config_map("7"));
        versions.observe(&watcher::Event::Apply(config_map("7")), all);
        assert!(unchanged());
        versions.observe(&watcher::Event::<ConfigMap>::Init, all);
        assert!(!unchanged(), "until the relist shows it, it may be gone");
        versions.observe(&watcher::Event::InitApply(config_map("7")), all);
        versions.observe(&watcher::Event::<ConfigMap>::InitDone, all);
        assert!(unchanged());
        versions.observe(&watcher::Event::Delete(config_map("8")), |_| false);
        assert!(unchanged(), "an object that is not a child is not recorded");
    }

    #[test]
    fn a_child_is_known_absent_only_from_a_complete_list_that_caught_up() {
        let versions = Versions::default();
        let all = |_: &ConfigMap| true;
        let absent = || versions.known_absent::<ConfigMap>("shop", "orders-config");
        assert!(!absent(), "nothing listed yet");
        versions.observe(&watcher::Event::<ConfigMap>::Init, all);
        versions.observe(&watcher::Event::<ConfigMap>::InitDone, all);
        assert!(absent());
        assert!(
            !versions.known_absent::<Deployment>("shop", "orders"),
            "another kind's watch has not listed"
        );
        versions.applied("a".into(), &config_map("5"));
        assert!(!absent(), "applied here, not delivered yet");
        versions.observe(&watcher::Event::Apply(config_map("5")), all);
        assert!(!absent());
        versions.observe(&watcher::Event::Delete(config_map("6")), all);
        assert!(absent());
        versions.observe(&watcher::Event::<ConfigMap>::Init, all);
        assert!(!absent(), "relisting");
    }

    #[test]
    fn the_cache_stands_in_for_a_read_once_the_watch_delivered_the_last_apply() {
        let versions = Versions::default();
        let all = |_: &ConfigMap| true;
        let caught_up = || versions.caught_up::<ConfigMap>("shop", "orders-config");
        assert!(caught_up(), "never applied here");
        versions.applied("a".into(), &config_map("5"));
        assert!(!caught_up(), "the watch is behind the apply");
        versions.observe(&watcher::Event::Apply(config_map("4")), all);
        assert!(!caught_up(), "an older version");
        versions.observe(&watcher::Event::Apply(config_map("5")), all);
        assert!(caught_up());
        versions.observe(&watcher::Event::Apply(config_map("9")), all);
        versions.applied("b".into(), &config_map("9"));
        assert!(
            caught_up(),
            "the watch delivered the version before the response came"
        );
        versions.applied("c".into(), &config_map("12"));
        versions.observe(&watcher::Event::<ConfigMap>::Init, all);
        versions.observe(&watcher::Event::InitApply(config_map("13")), all);
        assert!(!caught_up(), "the relist is not complete yet");
        versions.observe(&watcher::Event::<ConfigMap>::InitDone, all);
        assert!(caught_up(), "a relist is newer than every finished apply");
    }
}
