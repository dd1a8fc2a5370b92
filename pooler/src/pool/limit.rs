//! Connection limits shared by several pools: `max_db_connections` (every pool of one
//! database) and `max_user_connections` (every pool of one user).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::{CheckoutError, Pool};

/// A cap on server connections across the pools that share it.
#[derive(Debug)]
pub struct Limit {
    name: String,
    slots: Arc<Semaphore>,
    /// The limit in force, which a reload may change.
    max: Mutex<usize>,
    /// Places still to be taken out of circulation after the limit was lowered; while
    /// nonzero, member pools close connections as they come back instead of keeping them.
    shrinking: Arc<AtomicUsize>,
    members: Mutex<Vec<Weak<Pool>>>,
}

impl Limit {
    /// A limit of `max` connections, named for logs (`max_db_connections for app`).
    pub fn new(name: String, max: usize) -> Arc<Limit> {
        Arc::new(Limit {
            name,
            slots: Arc::new(Semaphore::new(max)),
            max: Mutex::new(max),
            shrinking: Arc::new(AtomicUsize::new(0)),
            members: Mutex::new(Vec::new()),
        })
    }

    /// Changes the limit: raising it takes effect at once; lowering it closes idle
    /// connections now and others as they come back, until the new limit holds.
    pub fn set_max(&self, max: usize) {
        let mut current = self.max.lock().unwrap_or_else(|p| p.into_inner());
        if *current == max {
            return;
        }
        tracing::info!(limit = %self.name, from = *current, to = max, "limit changed");
        if max > *current {
            self.slots.add_permits(max - *current);
        } else {
            let excess = *current - max;
            self.shrinking.fetch_add(excess, Ordering::AcqRel);
            let slots = self.slots.clone();
            let shrinking = self.shrinking.clone();
            tokio::spawn(async move {
                for _ in 0..excess {
                    match slots.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                    shrinking.fetch_sub(1, Ordering::AcqRel);
                }
            });
            let mut evicted = 0;
            for member in self.members() {
                while evicted < excess && member.evict_idle() {
                    evicted += 1;
                }
            }
        }
        *current = max;
    }

    /// Whether the limit was lowered and still has more connections than it allows.
    pub fn is_shrinking(&self) -> bool {
        self.shrinking.load(Ordering::Acquire) > 0
    }

    fn members(&self) -> Vec<Arc<Pool>> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Registers a pool whose idle connections may be closed to make room for another's.
    pub(super) fn join(&self, pool: &Arc<Pool>) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m.strong_count() > 0);
        let member = Arc::downgrade(pool);
        if !members.iter().any(|m| m.ptr_eq(&member)) {
            members.push(member);
        }
    }

    /// A place for one more connection of `pool`. When the limit is reached, an idle
    /// connection of another member pool is closed first, as PgBouncer does; otherwise the
    /// caller waits until `deadline`.
    pub(super) async fn acquire(
        &self,
        pool: &Arc<Pool>,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, CheckoutError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let others = self.members();
        for other in others.iter().filter(|m| !Arc::ptr_eq(m, pool)) {
            if other.evict_idle() {
                tracing::debug!(limit = %self.name, evicted_from = %other.key(), "made room");
                break;
            }
        }
        timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| CheckoutError::Timeout)?
            .map_err(|_| CheckoutError::Closed)
    }
}
