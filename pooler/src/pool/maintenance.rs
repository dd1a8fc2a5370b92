//! Background upkeep of a pool: closing connections past `server_lifetime` or idle past
//! `server_idle_timeout`, and keeping `min_pool_size` connections open.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

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
    loop {
        let place = {
            let st = pool.lock();
            let settings = pool.settings.load();
            let recently_failed = st
                .last_failure
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < settings.login_retry);
            if st.closed {
                return false;
            }
            // A paused pool is being emptied on purpose; warming would undo that.
            if recently_failed || pool.is_paused() {
                break;
            }
            match pool.places.try_take(settings.min_size) {
                Some(place) => place,
                None => break,
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

/// Closes idle connections past their lifetime, and those idle too long beyond the minimum.
fn reap(pool: &Pool) {
    let s = pool.settings.load_full();
    let generation = pool.generation.load(std::sync::atomic::Ordering::Acquire);
    let now = Instant::now();
    let expired = {
        let mut st = pool.lock();
        let mut keep_total = pool.places.taken();
        let mut expired = Vec::new();
        let mut i = 0;
        while i < st.idle.len() {
            let conn = &st.idle[i].conn;
            let too_old = s.lifetime.expired_idle(now.duration_since(conn.created));
            let too_idle = !s.idle_timeout.is_zero()
                && now.duration_since(conn.last_used) >= s.idle_timeout
                && keep_total > s.min_size;
            // A connection the server closed (restart, pg_terminate_backend) is gone already;
            // one to an old target or beyond a shrunk pool goes.
            let dead = !conn.is_clean();
            let stale = conn.generation != generation;
            let surplus = keep_total > s.size + s.reserve_size;
            if too_old || too_idle || dead || stale || surplus {
                if let Some(slot) = st.idle.remove(i) {
                    expired.push(slot);
                    keep_total -= 1;
                }
            } else {
                i += 1;
            }
        }
        expired
    };
    for slot in expired {
        tracing::debug!(pool = %pool.key, server = slot.conn.id, "closing an expired idle server connection");
        pool.forget(slot, true);
    }
}
