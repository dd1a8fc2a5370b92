//! Which children need a server-side apply: the resource version each child had after this
//! operator's last apply of a given rendering, against the version its watch last saw. A
//! child whose rendering and live version are both unchanged is left alone; anything else
//! (an edit, a deletion, a new rendering, an operator restart) is applied again.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use kube::{Resource, ResourceExt};

/// A child: kind, namespace, name.
type Key = (String, String, String);

/// The children's versions as applied and as seen.
#[derive(Debug, Default)]
pub struct Versions {
    /// Per child, the digest of the applied rendering and the version the apply left.
    applied: Mutex<HashMap<Key, (String, String)>>,
    /// Per child, the version its watch last delivered (deletions included).
    seen: Mutex<HashMap<Key, String>>,
}

fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Key {
    (
        K::kind(&()).into_owned(),
        namespace.to_owned(),
        name.to_owned(),
    )
}

/// Whether a child is as this operator left it: same rendering, and the live version is the
/// one the apply left.
pub fn up_to_date(applied: Option<&(String, String)>, seen: Option<&String>, digest: &str) -> bool {
    applied.is_some_and(|(d, version)| d == digest && seen == Some(version))
}

impl Versions {
    /// Records the version a watch delivered for `object`.
    pub fn saw<K: Resource<DynamicType = ()>>(&self, object: &K) {
        let (Some(namespace), Some(version)) = (object.namespace(), object.resource_version())
        else {
            return;
        };
        let key = key::<K>(&namespace, &object.name_any());
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, version);
    }

    /// Whether the child `name` with rendering `digest` needs no apply.
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
        let (Some(namespace), Some(version)) = (object.namespace(), object.resource_version())
        else {
            return;
        };
        let key = key::<K>(&namespace, &object.name_any());
        self.applied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (digest, version));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config_map(version: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("orders-config".into());
        cm.metadata.namespace = Some("shop".into());
        cm.metadata.resource_version = Some(version.into());
        cm
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
