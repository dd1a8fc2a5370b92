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
    /// Places still to be taken out of circulation after the limit was lowered: the places
    /// of connections that close while this is nonzero are not given back. While nonzero,
    /// member pools also close connections as they come back instead of keeping them idle.
    owed: AtomicUsize,
    members: Mutex<Vec<Weak<Pool>>>,
}

/// One connection's place under a limit; given back when the connection closes, unless the
/// limit was lowered and still owes places.
#[derive(Debug)]
pub struct LimitPermit {
    limit: Arc<Limit>,
    permit: Option<OwnedSemaphorePermit>,
}

impl LimitPermit {
    /// Whether its limit was lowered and still has more connections than it allows.
    pub fn is_shrinking(&self) -> bool {
        self.limit.is_shrinking()
    }
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            if self.limit.take_owed(1) == 1 {
                permit.forget();
            }
        }
    }
}

impl Limit {
    /// A limit of `max` connections, named for logs (`max_db_connections for app`).
    pub fn new(name: String, max: usize) -> Arc<Limit> {
        Arc::new(Limit {
            name,
            slots: Arc::new(Semaphore::new(max)),
            max: Mutex::new(max),
            owed: AtomicUsize::new(0),
            members: Mutex::new(Vec::new()),
        })
    }

    /// Takes up to `n` from what is owed; returns how much was taken.
    fn take_owed(&self, n: usize) -> usize {
        let mut taken = 0;
        let _ = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                taken = owed.min(n);
                (taken > 0).then(|| owed - taken)
            });
        taken
    }

    /// Changes the limit. Raising it takes effect at once. Lowering it takes free places out
    /// of circulation at once, closes idle connections of member pools, and takes the places
    /// of other connections as they close (connections coming back close while any are owed),
    /// so no new connection opens until the lower limit holds.
    pub fn set_max(&self, max: usize) {
        let mut current = self.max.lock().unwrap_or_else(|p| p.into_inner());
        if *current == max {
            return;
        }
        tracing::info!(limit = %self.name, from = *current, to = max, "limit changed");
        if max > *current {
            let raise = max - *current;
            let forgiven = self.take_owed(raise);
            self.slots.add_permits(raise - forgiven);
        } else {
            let excess = *current - max;
            let freed = self.slots.forget_permits(excess);
            let owed = excess - freed;
            if owed > 0 {
                self.owed.fetch_add(owed, Ordering::AcqRel);
                let mut evicted = 0;
                for member in self.members() {
                    while evicted < owed && member.evict_idle() {
                        evicted += 1;
                    }
                }
            }
        }
        *current = max;
    }

    /// Whether the limit was lowered and still has more connections than it allows.
    pub fn is_shrinking(&self) -> bool {
        self.owed.load(Ordering::Acquire) > 0
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
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        deadline: Instant,
    ) -> Result<LimitPermit, CheckoutError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
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
                    .map_err(|_| CheckoutError::Closed)?
            }
        };
        Ok(LimitPermit {
            limit: self.clone(),
            permit: Some(permit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(limit: &Arc<Limit>) -> LimitPermit {
        LimitPermit {
            limit: limit.clone(),
            permit: Some(
                limit
                    .slots
                    .clone()
                    .try_acquire_owned()
                    .expect("a free place"),
            ),
        }
    }

    #[test]
    fn lowering_takes_free_places_now_and_held_ones_as_they_close() {
        let limit = Limit::new("test".into(), 3);
        let a = permit(&limit);
        let b = permit(&limit);
        // One place is free, two are held; lowering to 1 forgets the free one now and owes one.
        limit.set_max(1);
        assert_eq!(limit.slots.available_permits(), 0);
        assert!(limit.is_shrinking());
        drop(a);
        assert!(!limit.is_shrinking());
        assert_eq!(
            limit.slots.available_permits(),
            0,
            "the owed place was not given back"
        );
        drop(b);
        assert_eq!(limit.slots.available_permits(), 1);
    }

    #[test]
    fn raising_first_forgives_what_is_owed() {
        let limit = Limit::new("test".into(), 2);
        let a = permit(&limit);
        let b = permit(&limit);
        limit.set_max(0);
        assert!(limit.is_shrinking());
        limit.set_max(1);
        // One of the two owed places is forgiven; nothing is added.
        assert!(limit.is_shrinking());
        assert_eq!(limit.slots.available_permits(), 0);
        drop(a);
        assert!(!limit.is_shrinking());
        assert_eq!(limit.slots.available_permits(), 0);
        drop(b);
        assert_eq!(limit.slots.available_permits(), 1);
    }
}
