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
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::runtime::reflector::{ObjectRef, Store};
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

/// The databases whose pools an event of one pool concerns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resize {
    /// Databases where connections were freed: a pool held back by the old claims may now
    /// get more, so their pools are woken at once.
    pub now: Vec<DatabaseKey>,
    /// Databases where a claim grew or appeared. The pool claimed out of what the others left
    /// it, so nothing of theirs has to change but the claim they report
    /// (`status.budget.claimedByOthers`): their pools are woken once the claims settle.
    pub settled: Vec<DatabaseKey>,
}

/// Tells the pool events that move a claim (which concern the other pools of the database)
/// from the many status writes that do not.
#[derive(Debug, Default)]
pub struct ClaimChanges {
    shown: Mutex<HashMap<ObjectRef<ConnectionPool>, Shown>>,
}

impl ClaimChanges {
    /// The databases whose other pools this event of `pool` concerns. An event that repeats
    /// what was shown is a deletion (or a metadata edit), which frees the claim.
    pub fn databases_to_resize(&self, pool: &ConnectionPool) -> Resize {
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
        let before = shown.remove(&key);
        let freed = |database: &DatabaseKey| Resize {
            now: vec![database.clone()],
            settled: Vec::new(),
        };
        let claimed = |database: &DatabaseKey| Resize {
            now: Vec::new(),
            settled: vec![database.clone()],
        };
        let resize = match &before {
            // Seen before as it is: deleted (it is then forgotten).
            Some(before) if *before == now => {
                return now.claim.map(|_| freed(&now.database)).unwrap_or_default();
            }
            Some(before) if before.database != now.database => Resize {
                now: before
                    .claim
                    .map(|_| before.database.clone())
                    .into_iter()
                    .collect(),
                settled: now
                    .claim
                    .map(|_| now.database.clone())
                    .into_iter()
                    .collect(),
            },
            Some(before) if now.claim < before.claim => freed(&now.database),
            Some(before) if now.claim > before.claim => claimed(&now.database),
            Some(_) => Resize::default(),
            None => now
                .claim
                .map(|_| claimed(&now.database))
                .unwrap_or_default(),
        };
        shown.insert(key, now);
        resize
    }
}

/// How long a database's claims must stay put before its pools are told the new totals.
/// What they are told is only the figure they report: a pool's own sizing never depends on
/// a claim that grew. Each telling is a status write per pool on the database, so a burst of
/// new pools costs writes in proportion to the pools times the tellings: 500 pools over 50
/// databases created at once (their first claims spread over about a minute) took 1,660
/// such writes of 2,531 status writes until all were Ready at 2 s quiet and at most 10 s;
/// at 10 s and 60 s the status writes were 1,690.
const SETTLE_QUIET: Duration = Duration::from_secs(10);
/// The longest a database's pools wait to be told, however busy its claims.
const SETTLE_LONGEST: Duration = Duration::from_secs(60);

/// Since when and until when the claims of a database have been moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moving {
    first: Instant,
    last: Instant,
}

impl Moving {
    fn due(&self) -> Instant {
        (self.last + SETTLE_QUIET).min(self.first + SETTLE_LONGEST)
    }
}

/// The databases whose claims grew, each told to its pools once its claims settle: a burst
/// of new pools on one database then updates each sibling's status once or twice, not once
/// per new pool.
#[derive(Debug, Default)]
pub struct Settling {
    moving: Mutex<HashMap<DatabaseKey, Moving>>,
    changed: tokio::sync::Notify,
}

impl Settling {
    /// Notes that claims on `database` moved at `at`.
    pub fn moved(&self, database: DatabaseKey, at: Instant) {
        self.moving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(database)
            .and_modify(|m| m.last = at)
            .or_insert(Moving {
                first: at,
                last: at,
            });
        self.changed.notify_one();
    }

    /// Takes the databases due at `at`, and tells when the next one is due.
    fn take_due(&self, at: Instant) -> (Vec<DatabaseKey>, Option<Instant>) {
        let mut moving = self.moving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due: Vec<DatabaseKey> = moving
            .iter()
            .filter(|(_, m)| m.due() <= at)
            .map(|(database, _)| database.clone())
            .collect();
        due.sort();
        for database in &due {
            moving.remove(database);
        }
        (due, moving.values().map(Moving::due).min())
    }

    /// The pools of each database whose claims settled, as they settle: all the pools on
    /// it in `pools` at that time.
    pub fn pools(
        self: Arc<Self>,
        pools: Store<ConnectionPool>,
    ) -> impl futures::Stream<Item = ObjectRef<ConnectionPool>> + Send {
        futures::stream::unfold(self, move |settling| {
            let pools = pools.clone();
            async move {
                loop {
                    let (due, next) = settling.take_due(Instant::now());
                    if !due.is_empty() {
                        let refs: Vec<ObjectRef<ConnectionPool>> = pools
                            .state()
                            .iter()
                            .filter(|p| due.contains(&DatabaseKey::of(p)))
                            .map(|p| ObjectRef::from(p.as_ref()))
                            .collect();
                        return Some((futures::stream::iter(refs), settling));
                    }
                    match next {
                        Some(next) => {
                            tokio::select! {
                                () = tokio::time::sleep_until(next.into()) => {}
                                () = settling.changed.notified() => {}
                            }
                        }
                        None => settling.changed.notified().await,
                    }
                }
            }
        })
        .flatten()
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
    fn freed_connections_resize_at_once_and_grown_claims_once_settled() {
        let changes = ClaimChanges::default();
        let db = |host: &str| DatabaseKey {
            host: format!("{host}.shop.svc"),
            port: 5432,
        };
        let now = |d: &str| Resize {
            now: vec![db(d)],
            settled: Vec::new(),
        };
        let settled = |d: &str| Resize {
            now: Vec::new(),
            settled: vec![db(d)],
        };
        let mut a = pool("shop", "a", "db", None);
        assert_eq!(
            changes.databases_to_resize(&a),
            Resize::default(),
            "no claim yet"
        );
        a.status = pool("shop", "a", "db", Some(50)).status;
        assert_eq!(
            changes.databases_to_resize(&a),
            settled("db"),
            "a first claim"
        );
        let mut written = a.clone();
        if let Some(status) = written.status.as_mut() {
            status.observed_generation = Some(3);
        }
        assert_eq!(
            changes.databases_to_resize(&written),
            Resize::default(),
            "a status write that keeps the claim"
        );
        let smaller = pool("shop", "a", "db", Some(20));
        assert_eq!(changes.databases_to_resize(&smaller), now("db"), "freed");
        let larger = pool("shop", "a", "db", Some(40));
        assert_eq!(changes.databases_to_resize(&larger), settled("db"), "grown");
        let moved = pool("shop", "a", "other", Some(40));
        assert_eq!(
            changes.databases_to_resize(&moved),
            Resize {
                now: vec![db("db")],
                settled: vec![db("other")],
            },
            "freed on the old database, claimed on the new"
        );
        assert_eq!(
            changes.databases_to_resize(&moved),
            now("other"),
            "the same object again: deleted, its claim is freed"
        );
        assert_eq!(
            changes.databases_to_resize(&moved),
            settled("other"),
            "forgotten after the deletion: seen as new"
        );
    }

    #[test]
    fn a_database_is_due_after_a_quiet_spell_or_at_the_latest_bound() {
        let settling = Settling::default();
        let db = |host: &str| DatabaseKey {
            host: host.into(),
            port: 5432,
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let (quiet, longest) = (SETTLE_QUIET, SETTLE_LONGEST);
        assert!(quiet > s(1) && longest > quiet);
        assert_eq!(settling.take_due(t0), (Vec::new(), None));
        settling.moved(db("a"), t0);
        settling.moved(db("b"), t0 + s(1));
        assert_eq!(settling.take_due(t0 + s(1)), (Vec::new(), Some(t0 + quiet)));
        assert_eq!(
            settling.take_due(t0 + quiet),
            (vec![db("a")], Some(t0 + s(1) + quiet))
        );
        // b keeps moving every second: it is told at the latest bound.
        for second in 2..=longest.as_secs() {
            settling.moved(db("b"), t0 + s(second));
        }
        assert_eq!(
            settling.take_due(t0 + longest),
            (Vec::new(), Some(t0 + s(1) + longest))
        );
        assert_eq!(
            settling.take_due(t0 + s(1) + longest),
            (vec![db("b")], None)
        );
    }
}
