//! Pools sharing a database: who they are and how much of its budget they claim.
//!
//! Several ConnectionPools may point at the same PostgreSQL server; together they must stay
//! within its budget, so each pool's sizing subtracts what the others claim
//! (`status.budget.pool`). Claims are read from the controller's cache of ConnectionPools,
//! overlaid with a ledger of the claims this process wrote itself, because the cache learns
//! of a status write only when the watch event arrives: without the ledger, two pools
//! reconciled back to back could both see the other's old claim.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::api::{ConnectionPool, ConnectionPoolStatus};

/// The database server a pool connects to, with its host name made independent of the
/// pool's namespace, so that pools in different namespaces naming the same server by
/// different spellings still share one budget.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatabaseKey {
    /// Lower-case host: an address, a fully qualified name, or `service.namespace.svc`.
    pub host: String,
    /// The server's port.
    pub port: i32,
}

impl DatabaseKey {
    /// The key of `pool`'s database.
    pub fn of(pool: &ConnectionPool) -> DatabaseKey {
        let namespace = pool.namespace().unwrap_or_default();
        // A spec without a single server (refused at admission) gets a key of its own.
        let (host, port) = match pool.spec.backend() {
            Ok(backend) => (backend.host().to_owned(), backend.port()),
            Err(_) => (format!("(no server).{namespace}"), 0),
        };
        DatabaseKey {
            host: qualify_host(&host, &namespace),
            port,
        }
    }
}

/// Resolves a host the way a pod in `namespace` would for the common spellings: a bare
/// Service name becomes `name.namespace.svc`, the cluster domain suffix is dropped, and
/// addresses and other names are kept as they are.
fn qualify_host(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() {
        return host;
    }
    let host = match host.strip_suffix(".svc.cluster.local") {
        Some(short) => format!("{short}.svc"),
        None => host,
    };
    if host.contains('.') {
        host
    } else {
        format!("{host}.{namespace}.svc")
    }
}

/// The claim of one pool, as this process last wrote it to the pool's status.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    database: DatabaseKey,
    pool: i64,
}

/// The claims this process wrote, by pool uid, and one lock per database so that pools
/// sharing a database are sized one at a time.
#[derive(Debug, Default)]
pub struct Ledger {
    claims: Mutex<HashMap<String, Claim>>,
    locks: Mutex<HashMap<DatabaseKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl Ledger {
    /// Waits until no other pool of `database` is being reconciled, and holds that until
    /// the guard is dropped.
    pub async fn lock(&self, database: &DatabaseKey) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(database.clone()).or_default())
        };
        lock.lock_owned().await
    }

    /// Records that `pool`'s status now claims `claimed` connections of its database.
    pub fn record(&self, pool: &ConnectionPool, claimed: Option<i64>) {
        let Some(uid) = pool.uid() else { return };
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        match claimed {
            Some(claimed) => {
                claims.insert(
                    uid,
                    Claim {
                        database: DatabaseKey::of(pool),
                        pool: claimed,
                    },
                );
            }
            None => {
                claims.remove(&uid);
            }
        }
    }

    /// Forgets the claims of pools that no longer exist in `pools`.
    pub fn retain_existing(&self, pools: &[Arc<ConnectionPool>]) {
        let alive: HashSet<String> = pools.iter().filter_map(|p| p.uid()).collect();
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        claims.retain(|uid, _| alive.contains(uid));
    }

    /// What every pool other than `pool` on the same database claims, from `pools` (the
    /// cache) with this process's own newer writes taking precedence.
    pub fn others_claimed(&self, pool: &ConnectionPool, pools: &[Arc<ConnectionPool>]) -> u32 {
        let claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        let key = DatabaseKey::of(pool);
        let total: i64 = pools
            .iter()
            .filter(|other| !same_pool(pool, other))
            .filter_map(|other| {
                let recorded = other.uid().and_then(|uid| claims.get(&uid).cloned());
                match recorded {
                    Some(claim) => (claim.database == key).then_some(claim.pool),
                    None => (DatabaseKey::of(other) == key)
                        .then(|| other.status.as_ref()?.budget.as_ref().map(|b| b.pool))
                        .flatten(),
                }
            })
            .map(|claimed| claimed.max(0))
            .sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// The claim a pool holds while a reconciliation applies a new one: the larger of the two,
/// so that the pools sized meanwhile never count on connections it may still use.
pub fn while_applying(old: Option<i64>, new: Option<i64>) -> Option<i64> {
    old.max(new)
}

/// The other pools on `database` than `pool`.
pub fn sharing_database(
    pool: &ConnectionPool,
    database: &DatabaseKey,
    pools: &[Arc<ConnectionPool>],
) -> Vec<ObjectRef<ConnectionPool>> {
    pools
        .iter()
        .filter(|other| !same_pool(pool, other) && DatabaseKey::of(other) == *database)
        .map(|other| ObjectRef::from(other.as_ref()))
        .collect()
}

/// What the pool watch last showed of a pool.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    database: DatabaseKey,
    claim: Option<i64>,
    generation: Option<i64>,
    status: Option<ConnectionPoolStatus>,
}

/// Tells the pool events that move a claim (which resize the other pools of the database)
/// from the many status writes that do not.
#[derive(Debug, Default)]
pub struct ClaimChanges {
    shown: Mutex<HashMap<ObjectRef<ConnectionPool>, Shown>>,
}

impl ClaimChanges {
    /// The databases whose other pools must be resized after this event of `pool`: the old
    /// and new one when its database or claim changed. An event that repeats what was shown
    /// is a deletion (or a metadata edit), which frees the claim.
    pub fn databases_to_resize(&self, pool: &ConnectionPool) -> Vec<DatabaseKey> {
        let key = ObjectRef::from(pool);
        let now = Shown {
            database: DatabaseKey::of(pool),
            claim: pool
                .status
                .as_ref()
                .and_then(|s| Some(s.budget.as_ref()?.pool)),
            generation: pool.metadata.generation,
            status: pool.status.clone(),
        };
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        let before = shown.get(&key).cloned();
        match before {
            Some(before) if before == now => {
                shown.remove(&key);
                now.claim.map(|_| now.database).into_iter().collect()
            }
            Some(before) if before.database != now.database || before.claim != now.claim => {
                let mut databases = vec![before.database.clone(), now.database.clone()];
                databases.dedup();
                shown.insert(key, now);
                databases
            }
            Some(_) => {
                shown.insert(key, now);
                Vec::new()
            }
            None => {
                let databases = now
                    .claim
                    .map(|_| now.database.clone())
                    .into_iter()
                    .collect();
                shown.insert(key, now);
                databases
            }
        }
    }
}

fn same_pool(a: &ConnectionPool, b: &ConnectionPool) -> bool {
    a.namespace() == b.namespace() && a.name_any() == b.name_any()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BudgetStatus;

    fn pool(namespace: &str, name: &str, host: &str, claimed: Option<i64>) -> ConnectionPool {
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: {name}\n  \
             namespace: {namespace}\n  uid: uid-{namespace}-{name}\nspec:\n  database:\n    \
             host: {host}\n    dbname: app\n    credentialsSecret: {{name: db}}\n    \
             maxConnections: 100\n"
        );
        let mut pool = crate::api::from_yaml(&yaml).expect("valid pool");
        pool.status = claimed.map(|pool| ConnectionPoolStatus {
            budget: Some(BudgetStatus {
                pool,
                ..BudgetStatus::default()
            }),
            ..ConnectionPoolStatus::default()
        });
        pool
    }

    #[test]
    fn hosts_are_qualified_like_cluster_dns() {
        assert_eq!(
            qualify_host("orders-db-rw", "shop"),
            "orders-db-rw.shop.svc"
        );
        assert_eq!(
            qualify_host("Orders-DB-rw.shop.svc.cluster.local.", "x"),
            "orders-db-rw.shop.svc"
        );
        assert_eq!(
            qualify_host("orders-db-rw.shop.svc", "x"),
            "orders-db-rw.shop.svc"
        );
        assert_eq!(qualify_host("db.example.com", "x"), "db.example.com");
        assert_eq!(qualify_host("10.0.0.7", "x"), "10.0.0.7");
        assert_eq!(qualify_host("::1", "x"), "::1");
    }

    #[test]
    fn claims_of_other_pools_on_the_same_database_add_up() {
        let me = pool("shop", "a", "db", Some(50));
        let pools: Vec<Arc<ConnectionPool>> = vec![
            Arc::new(me.clone()),
            Arc::new(pool("shop", "b", "db.shop.svc", Some(20))),
            Arc::new(pool("shop", "c", "db", None)),
            Arc::new(pool("other", "d", "db", Some(30))),
            Arc::new(pool("other", "e", "db.shop.svc.cluster.local", Some(7))),
        ];
        let ledger = Ledger::default();
        assert_eq!(ledger.others_claimed(&me, &pools), 27);
        let shared: Vec<String> = sharing_database(&me, &DatabaseKey::of(&me), &pools)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(shared, ["b", "c", "e"]);
    }

    #[test]
    fn the_ledger_overrides_a_stale_cache_and_forgets_deleted_pools() {
        let me = pool("shop", "a", "db", None);
        let b = pool("shop", "b", "db", Some(20));
        let pools: Vec<Arc<ConnectionPool>> = vec![Arc::new(me.clone()), Arc::new(b.clone())];
        let ledger = Ledger::default();
        ledger.record(&b, Some(60));
        assert_eq!(ledger.others_claimed(&me, &pools), 60);
        // A claim recorded for another database no longer counts here.
        let mut moved = b.clone();
        moved.spec.database.as_mut().expect("a database").host = "elsewhere".into();
        ledger.record(&moved, Some(60));
        assert_eq!(ledger.others_claimed(&me, &pools), 0);
        ledger.record(&b, None);
        assert_eq!(ledger.others_claimed(&me, &pools), 20);
        ledger.record(&b, Some(5));
        ledger.retain_existing(&pools[..1]);
        assert_eq!(ledger.others_claimed(&me, &pools[..1]), 0);
    }

    #[test]
    fn a_pool_holds_the_larger_claim_while_applying() {
        assert_eq!(while_applying(None, None), None);
        assert_eq!(while_applying(None, Some(30)), Some(30));
        assert_eq!(while_applying(Some(30), None), Some(30));
        assert_eq!(while_applying(Some(60), Some(30)), Some(60));
        assert_eq!(while_applying(Some(30), Some(60)), Some(60));
    }

    #[test]
    fn only_claim_changes_and_deletions_resize_the_other_pools() {
        let changes = ClaimChanges::default();
        let db = |host: &str| DatabaseKey {
            host: format!("{host}.shop.svc"),
            port: 5432,
        };
        let mut a = pool("shop", "a", "db", None);
        assert_eq!(changes.databases_to_resize(&a), [], "no claim yet");
        a.status = pool("shop", "a", "db", Some(50)).status;
        assert_eq!(changes.databases_to_resize(&a), [db("db")], "a first claim");
        let mut written = a.clone();
        if let Some(status) = written.status.as_mut() {
            status.observed_generation = Some(3);
        }
        assert_eq!(
            changes.databases_to_resize(&written),
            [],
            "a status write that keeps the claim"
        );
        let mut moved = pool("shop", "a", "other", Some(50));
        moved.status = written.status.clone();
        assert_eq!(
            changes.databases_to_resize(&moved),
            [db("db"), db("other")],
            "both databases"
        );
        assert_eq!(
            changes.databases_to_resize(&moved),
            [db("other")],
            "the same object again: deleted, its claim is freed"
        );
        assert_eq!(
            changes.databases_to_resize(&moved),
            [db("other")],
            "forgotten after the deletion: seen as new"
        );
    }
}
