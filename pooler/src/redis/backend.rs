//! One Redis node behind weir: its connection budget (`max_server_connections`, all kinds
//! together), its shared connections and its pool of exclusive ones, and what they counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::exclusive::Pool;
use super::shared::Groups;
use crate::config::RedisSettings;

/// What a server connection is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Multiplexed among clients.
    Shared,
    /// Lent to one client at a time, pooled or not.
    Exclusive,
    /// Held by one Pub/Sub or MONITOR client, outside the pool.
    PubSub,
}

/// Events counted since the backend was created.
#[derive(Debug, Default)]
pub struct Counters {
    /// Exclusive connections taken from the pool.
    pub hits: AtomicU64,
    /// Exclusive connections opened because the pool had none idle.
    pub misses: AtomicU64,
    /// Returned exclusive connections closed because `max_idle_per_db` were idle already.
    pub short_lived_closes: AtomicU64,
    /// Idle exclusive connections closed after `private_conn_idle_time_sec`.
    pub idle_closes: AtomicU64,
    /// Idle connections moved to another database with `SELECT` to serve a client.
    pub select_switches: AtomicU64,
    /// Clients that waited because `max_server_connections` were open.
    pub waits: AtomicU64,
}

/// Open connections by kind, under one lock so a budget check and its count agree.
#[derive(Debug, Default, Clone, Copy)]
pub struct Open {
    /// Shared connections.
    pub shared: u32,
    /// Exclusive connections, lent or idle.
    pub exclusive: u32,
    /// Pub/Sub connections.
    pub pubsub: u32,
}

impl Open {
    fn total(&self) -> u32 {
        self.shared + self.exclusive + self.pubsub
    }

    fn of(&mut self, kind: Kind) -> &mut u32 {
        match kind {
            Kind::Shared => &mut self.shared,
            Kind::Exclusive => &mut self.exclusive,
            Kind::PubSub => &mut self.pubsub,
        }
    }
}

/// A Redis node and everything weir keeps for it.
#[derive(Debug)]
pub struct Backend {
    /// `host:port`, the `backend` label of the metrics.
    pub addr: String,
    /// The `[redis]` settings in force, shared with the proxy so a reload reaches here.
    pub settings: Arc<ArcSwap<RedisSettings>>,
    open: Mutex<Open>,
    freed: Notify,
    /// What happened so far.
    pub counters: Counters,
    /// Shared connections by login.
    pub shared: Groups,
    /// Exclusive connections by login (database included).
    pub pool: Pool,
}

/// A place in a backend's connection budget; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    backend: Arc<Backend>,
    kind: Kind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.backend.lock_open().of(self.kind) -= 1;
        self.backend.freed.notify_waiters();
    }
}

impl Backend {
    /// A backend at `addr` with nothing open yet.
    pub fn new(addr: String, settings: Arc<ArcSwap<RedisSettings>>) -> Arc<Backend> {
        Arc::new(Backend {
            addr,
            settings,
            open: Mutex::new(Open::default()),
            freed: Notify::new(),
            counters: Counters::default(),
            shared: Groups::default(),
            pool: Pool::default(),
        })
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections open right now, by kind.
    pub fn open(&self) -> Open {
        *self.lock_open()
    }

    /// How many connections of `kind` the budget allows in all. Exclusive and Pub/Sub
    /// connections leave room for one group of shared ones, so that ordinary commands are
    /// never starved by blocked consumers.
    fn cap(&self, kind: Kind) -> Option<u32> {
        let s = self.settings.load();
        match (s.max_server_connections, kind) {
            (0, _) => None,
            (max, Kind::Shared) => Some(max),
            (max, _) => Some(max.saturating_sub(s.shared_connections).max(1)),
        }
    }

    /// Takes a place in the budget if there is one free.
    pub fn try_slot(self: &Arc<Backend>, kind: Kind) -> Option<Slot> {
        let cap = self.cap(kind);
        let mut open = self.lock_open();
        if cap.is_some_and(|cap| open.total() >= cap) {
            return None;
        }
        *open.of(kind) += 1;
        Some(Slot {
            backend: self.clone(),
            kind,
        })
    }

    /// Takes a place in the budget, waiting for one to be freed if needed (counted once as
    /// a wait).
    pub async fn slot(self: &Arc<Backend>, kind: Kind) -> Slot {
        let mut waited = false;
        loop {
            let freed = self.freed.notified();
            if let Some(slot) = self.try_slot(kind) {
                return slot;
            }
            if !waited {
                waited = true;
                self.counters.waits.fetch_add(1, Ordering::Relaxed);
            }
            freed.await;
        }
    }

    /// Wakes clients waiting for a connection, e.g. when one went idle in the pool.
    pub fn wake_waiters(&self) {
        self.freed.notify_waiters();
    }

    /// A future that resolves when a connection is freed or returned.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }
}
