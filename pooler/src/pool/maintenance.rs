//! Background upkeep of a pool: closing connections past `server_lifetime` or idle past
//! `server_idle_timeout`, keeping `min_pool_size` connections open, and probing and
//! measuring the hosts of a host list. What to close and
//! how many to open is decided by the pool's bookkeeping ([`super::inner`]); this runs it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::inner::Warm;
use super::{Opening, Pool};

/// How often upkeep runs; PgBouncer's janitor runs at about the same rate.
const PERIOD: Duration = Duration::from_secs(1);

/// Starts upkeep for `pool`; it stops by itself when the pool is dropped or closed.
pub(super) fn spawn(pool: &Arc<Pool>) {
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !run_once(&weak).await {
                return;
            }
        }
    });
}

/// One round of upkeep; false once the pool is gone.
async fn run_once(weak: &Weak<Pool>) -> bool {
    let Some(pool) = weak.upgrade() else {
        return false;
    };
    reap(&pool);
    pool.upkeep_hosts();
    loop {
        let place = {
            let settings = pool.settings.load();
            let now = Instant::now();
            let warm = pool
                .lock()
                .warm(now, &settings, pool.is_paused(), pool.places.taken());
            match warm {
                Warm::Closed => return false,
                Warm::Hold => break,
                Warm::Open(missing) => {
                    tracing::trace!(pool = %pool.key, missing, "warming min_pool_size");
                    // Taken by count, as a client may take the same place meanwhile.
                    match pool.places.try_take(settings.min_size) {
                        Some(place) => place,
                        None => break,
                    }
                }
            }
        };
        let mut opening = Opening::new(&pool, place);
        let deadline = tokio::time::Instant::now() + pool.target.load().connect_timeout.max(PERIOD);
        match opening.open(deadline, None).await {
            Ok(Some(slot)) => pool.add_warm(slot),
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(pool = %pool.key, error = %e, "could not warm min_pool_size");
                break;
            }
        }
    }
    true
}

/// Closes the idle connections the bookkeeping retires (see [`super::inner::Inner::reap`]).
fn reap(pool: &Pool) {
    let settings = pool.settings.load_full();
    let generation = pool.generation();
    let now = Instant::now();
    let retired = {
        let mut st = pool.lock();
        // Counted under the lock, as before: the idle ones cannot change meanwhile.
        let total = pool.places.taken();
        st.reap(now, &settings, generation, total)
    };
    for (slot, why) in retired {
        tracing::debug!(pool = %pool.key, server = slot.conn.id(), ?why, "closing an idle server connection");
        pool.forget(slot, true);
    }
}
