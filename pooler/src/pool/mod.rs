//! Server connection pools: one per (database, user), lending connections to clients.
//!
//! A client first takes a permit from the pool's gate — `pool_size` permits, plus
//! `reserve_pool_size` more for clients that have waited `reserve_pool_timeout` — and then an
//! idle connection, or opens a new one. Clients that find no permit queue in FIFO order; a
//! connection given back goes straight to the oldest with its permit, and one sweep per pool
//! ends the waits past `query_wait_timeout`. The [`Checkout`] guard gives the connection
//! back only when told it is clean; dropped any other way it closes the connection, so a
//! client that vanishes mid-transaction can never leave a dirty connection in the pool.
//!
//! The module is split in two. `inner` is the bookkeeping as a pure state machine — idle
//! connections, the last failed login, closed — whose functions decide every transition
//! (reuse, open, wait, fail fast; keep or close a returned connection; what upkeep closes
//! and opens) from arguments alone, time included, and are unit-tested one by one. The
//! async shell here and in `maintenance` holds it behind a short-lived mutex and does what
//! it decides: permits (main and reserve, in `gate`, decided by `queue`), pause, wake-ups, timeouts, connecting,
//! and the guards ([`Checkout`], `Place`, `Opening`) that uncount a connection on drop.

mod counts;
pub mod failover;
mod gate;
pub mod hosts;
mod inner;
mod limit;
mod maintenance;
mod queue;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use futures::future::Either;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};
use tokio::time::timeout_at;

pub use counts::Counts;
use gate::{Gate, Permit};
use hosts::{Change, Fault, HostCounts, HostStatus, HostTable, WalPosition};
use inner::{Inner, Retire, Step, Vet};
pub use limit::Limit;
use limit::LimitPermit;

pub use crate::config::PoolSettings;
use crate::config::TargetSessionAttrs;
use crate::params::ParamSet;
use crate::protocol::PgError;
pub use crate::registry::PoolKey;
use crate::registry::{NewServer, Registry, ServerHandle, ServerRecord};
use crate::server::{HostOutcome, ServerConn, ServerError, ServerTarget, WalReport};

/// Why no server connection could be lent.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// `query_wait_timeout` passed.
    #[error("query_wait_timeout: no server connection became available in time")]
    Timeout,
    /// Opening a connection failed.
    #[error("{0}")]
    Server(#[from] ServerError),
    /// A recent login failed and `server_login_retry` has not passed.
    #[error("server login has been failing, try again later (server_login_retry): {0}")]
    LoginRetry(Arc<str>),
    /// The pool was closed (database removed or pooler shutting down).
    #[error("pool closed")]
    Closed,
    /// `query_wait_timeout` passed while the pool was looking for a new primary.
    #[error("query_wait_timeout: no primary server was found in time (failover_hold)")]
    NoPrimary,
}

impl CheckoutError {
    /// What the waiting client is told.
    pub fn to_client_error(&self) -> PgError {
        match self {
            CheckoutError::Server(e) => e.to_client_error(),
            CheckoutError::Timeout => PgError::fatal("57014", self.to_string()),
            CheckoutError::LoginRetry(_) => PgError::fatal("08006", self.to_string()),
            CheckoutError::Closed => PgError::fatal("57P01", "pool closed by the pooler"),
            // connection_failure: the client may reconnect and try again.
            CheckoutError::NoPrimary => PgError::fatal("08006", self.to_string()),
        }
    }
}

/// A server connection plus the database- and user-wide permits it occupies.
#[derive(Debug)]
struct Slot {
    /// Boxed: slots move in and out of the idle list and through checkout futures.
    conn: Box<ServerConn>,
    /// Its entry in the registry, removed when the slot is dropped.
    record: ServerHandle,
    /// Its places under the `max_db_connections` / `max_user_connections` limits.
    limits: Vec<LimitPermit>,
    /// Its place in the pool's count, given back whenever the slot is dropped.
    _place: Place,
    /// Its count in its generation, for WAIT_CLOSE.
    _era: Era,
    /// Its count on its host.
    seat: Seat,
}

impl inner::Conn for Slot {
    fn created(&self) -> Instant {
        self.conn.created()
    }
    fn last_used(&self) -> Instant {
        self.conn.last_used()
    }
    fn generation(&self) -> u64 {
        self.conn.generation()
    }
    fn is_clean(&self) -> bool {
        self.conn.is_clean()
    }
    fn host(&self) -> usize {
        self.conn.host_index()
    }
}

/// Live counters for the admin console and metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Clients waiting for a connection right now.
    pub waiting: AtomicUsize,
    /// Connections lent out right now.
    pub active: AtomicUsize,
    /// Checkouts served since start.
    pub checkouts: AtomicU64,
    /// Total microseconds clients spent waiting for a connection.
    pub wait_us: AtomicU64,
    /// Connections opened since start.
    pub opened: AtomicU64,
    /// Attempts to open a connection that failed (refused login, unreachable server).
    pub login_failures: AtomicU64,
    /// Clients logged in to this pool right now.
    pub clients: AtomicUsize,
    /// Requests completed (ReadyForQuery messages).
    pub queries: AtomicU64,
    /// Transactions completed (ReadyForQuery reporting idle).
    pub transactions: AtomicU64,
    /// Bytes from clients to servers.
    pub bytes_received: AtomicU64,
    /// Bytes from servers (and the pooler) to clients.
    pub bytes_sent: AtomicU64,
    /// Microseconds server connections spent lent to clients.
    pub server_us: AtomicU64,
    /// ErrorResponses by SQLSTATE class.
    pub errors: Mutex<std::collections::BTreeMap<[u8; 2], u64>>,
    /// Clients held right now while a new primary is looked for.
    pub held: AtomicUsize,
}

impl PoolStats {
    /// Adds what one relay saw.
    pub fn add(&self, counts: &Counts, lent: Duration) {
        self.queries.fetch_add(counts.queries, Ordering::Relaxed);
        self.transactions
            .fetch_add(counts.transactions, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(counts.bytes_received, Ordering::Relaxed);
        self.bytes_sent
            .fetch_add(counts.bytes_sent, Ordering::Relaxed);
        self.server_us.fetch_add(
            u64::try_from(lent.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if !counts.errors.is_empty() {
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            for class in &counts.errors {
                *errors.entry(*class).or_default() += 1;
            }
        }
    }
}

/// A client's view of its pool's settings: the snapshot it read last, kept while it is still
/// the one in force, which one pointer comparison tells (a load from the shared cell costs
/// tens of instructions, where a transaction lends a connection and takes it back).
pub type SettingsCache = Cache<SettingsSource, Arc<PoolSettings>>;

/// A pool, as the place a [`SettingsCache`] looks for its settings in force.
pub struct SettingsSource(Arc<Pool>);

impl std::ops::Deref for SettingsSource {
    type Target = ArcSwap<PoolSettings>;

    fn deref(&self) -> &ArcSwap<PoolSettings> {
        &self.0.settings
    }
}

/// One pool of server connections.
#[derive(Debug)]
pub struct Pool {
    key: Arc<PoolKey>,
    target: ArcSwap<ServerTarget>,
    settings: ArcSwap<PoolSettings>,
    /// Bumped when the target changes; connections of an older generation are closed.
    generation: AtomicU64,
    /// How many connections exist of each generation.
    eras: Arc<Mutex<BTreeMap<u64, usize>>>,
    /// Its permits (main and reserve) and the clients queued for them.
    gate: Arc<Gate>,
    /// Clients holding a permit that wait for a connection or a place to be given back; while
    /// any do, returned connections go idle for them rather than to the queue.
    seeking: AtomicUsize,
    /// The bookkeeping: idle connections, the last failed login, closed.
    state: Mutex<Inner<Slot>>,
    /// The count of connections that exist, and the wake-up for clients waiting for one.
    places: Arc<Places>,
    /// The `max_db_connections` / `max_user_connections` limits new connections count against.
    limits: ArcSwap<Vec<Arc<Limit>>>,
    welcome: Mutex<Option<ParamSet>>,
    stats: PoolStats,
    /// Set by the admin console's PAUSE: checkouts wait until it is cleared.
    paused: watch::Sender<bool>,
    /// Where its connections are recorded for the admin console and cancel requests.
    registry: Arc<Registry>,
    /// Its series of the checkout wait-time histogram.
    wait_histogram: Option<prometheus::Histogram>,
    /// Failover: the primary in use, and whether clients are held while one is looked for.
    failover: Mutex<failover::State>,
    /// True while clients are held (a failover is looking for the new primary).
    held: watch::Sender<bool>,
    /// Its series of the failover hold-time histogram.
    hold_histogram: Option<prometheus::Histogram>,
    /// The auth file credential generation its server logins use (0: none from the file).
    credential_generation: AtomicU64,
    /// The health of each host of its host list, and its connections per host.
    hosts: Mutex<HostBook>,
    /// Whether it measures its hosts' replay lag and whether it has a host list, derived
    /// from `settings` and `target` whenever they change: read on every checkout and return.
    tracks_hosts: AtomicU8,
}

/// Bits of [`Pool::tracks_hosts`].
const MEASURES_LAG: u8 = 1;
const HOST_LIST: u8 = 2;

/// What [`Pool::tracks_hosts`] holds for these settings and this target.
fn tracks_hosts(settings: &PoolSettings, target: &ServerTarget) -> u8 {
    host_tracking(
        settings.replica_max_lag,
        target.session_attrs,
        target.hosts.len(),
    )
}

/// A pool measures replay lag when `replica_max_lag` is set and its `target_session_attrs`
/// accept standbys; it keeps host health when it has a host list or measures lag.
fn host_tracking(replica_max_lag: Duration, attrs: TargetSessionAttrs, hosts: usize) -> u8 {
    let measures_lag = !replica_max_lag.is_zero()
        && !matches!(
            attrs,
            TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary
        );
    u8::from(measures_lag) * MEASURES_LAG + u8::from(hosts > 1) * HOST_LIST
}

/// A pool's host table and per-host counts, replaced together when the host list changes.
#[derive(Debug)]
struct HostBook {
    table: HostTable,
    counts: Arc<HostCounts>,
}

impl HostBook {
    fn new(hosts: usize) -> HostBook {
        HostBook {
            table: HostTable::new(hosts, Instant::now()),
            counts: Arc::new(HostCounts::new(hosts)),
        }
    }
}

impl Pool {
    /// Creates a pool and starts its maintenance (reaping and `min_pool_size` warming).
    /// `limits` are the `max_db_connections` / `max_user_connections` it shares with others;
    /// its connections are recorded in `registry`, its clients' waits in `wait_histogram` and
    /// their failover holds in `hold_histogram`.
    pub fn new(
        key: PoolKey,
        target: ServerTarget,
        settings: PoolSettings,
        limits: Vec<Arc<Limit>>,
        registry: Arc<Registry>,
        wait_histogram: Option<prometheus::Histogram>,
        hold_histogram: Option<prometheus::Histogram>,
    ) -> Arc<Pool> {
        let hosts = target.hosts.len();
        let tracks = tracks_hosts(&settings, &target);
        let pool = Arc::new(Pool {
            key: Arc::new(key),
            target: ArcSwap::from_pointee(target),
            generation: AtomicU64::new(0),
            eras: Arc::default(),
            gate: Gate::new(settings.size, settings.reserve_size),
            seeking: AtomicUsize::new(0),
            settings: ArcSwap::from_pointee(settings),
            state: Mutex::new(Inner::default()),
            places: Arc::default(),
            limits: ArcSwap::from_pointee(limits),
            welcome: Mutex::new(None),
            stats: PoolStats::default(),
            paused: watch::Sender::new(false),
            registry,
            wait_histogram,
            failover: Mutex::default(),
            held: watch::Sender::new(false),
            hold_histogram,
            credential_generation: AtomicU64::new(0),
            tracks_hosts: AtomicU8::new(tracks),
            hosts: Mutex::new(HostBook::new(hosts)),
        });
        for limit in pool.limits.load().iter() {
            limit.join(&pool);
        }
        maintenance::spawn(&pool);
        pool
    }

    /// The pool's identity.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// The pool's identity, shared (each client's registry record points at it).
    pub fn shared_key(&self) -> Arc<PoolKey> {
        self.key.clone()
    }

    /// The pool's settings in force.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// The pool's settings for a client that reads them at every transaction.
    pub fn settings_cache(self: &Arc<Self>) -> SettingsCache {
        SettingsCache::new(SettingsSource(self.clone()))
    }

    /// Where the pool's connections go.
    pub fn target(&self) -> Arc<ServerTarget> {
        self.target.load_full()
    }

    /// The auth file credential generation its server logins use.
    pub fn credential_generation(&self) -> u64 {
        self.credential_generation.load(Ordering::Acquire)
    }

    /// Records which credential generation its server logins use.
    pub fn set_credential_generation(&self, generation: u64) {
        self.credential_generation
            .store(generation, Ordering::Release);
    }

    /// Applies reloaded settings without dropping anyone: the pool grows at once and shrinks
    /// as connections come back; a new target (host, port, database, credentials) makes every
    /// existing connection close when it is next idle.
    pub fn reconfigure(self: &Arc<Self>, settings: PoolSettings, target: ServerTarget) {
        let old = self.settings.load_full();
        self.gate.resize(queue::Kind::Main, old.size, settings.size);
        self.gate.resize(
            queue::Kind::Reserve,
            old.reserve_size,
            settings.reserve_size,
        );
        if *self.target.load_full() != target {
            if self.target.load().hosts != target.hosts {
                *self.book() = HostBook::new(target.hosts.len());
            }
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.target.store(Arc::new(target));
            // A failed login against the old target says nothing about the new one.
            self.lock().clear_failure();
        }
        if *old != settings {
            tracing::info!(pool = %self.key, size = settings.size, reserve = settings.reserve_size, "pool reconfigured");
        }
        let tracks = tracks_hosts(&settings, &self.target.load());
        self.settings.store(Arc::new(settings));
        self.tracks_hosts.store(tracks, Ordering::Release);
        self.places.freed.notify_waiters();
    }

    /// Applies reloaded `max_db_connections` / `max_user_connections` limits. A limit the
    /// pool did not count against before makes its connections reopen as they come back
    /// (as RECONNECT does), so that every connection counts against it; no client is dropped.
    pub fn set_limits(self: &Arc<Self>, limits: Vec<Arc<Limit>>) {
        let old = self.limits.load_full();
        let added = limits
            .iter()
            .filter(|l| !old.iter().any(|o| Arc::ptr_eq(o, l)))
            .count();
        if added == 0 && limits.len() == old.len() {
            return;
        }
        for limit in &limits {
            limit.join(self);
        }
        self.limits.store(Arc::new(limits));
        if added > 0 {
            tracing::info!(pool = %self.key, "new connection limit: reopening connections as they are returned");
            self.retire_all();
        }
    }

    /// Live counters.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// (idle, total) connection counts right now.
    pub fn counts(&self) -> (usize, usize) {
        let idle = self.lock().idle();
        (idle, self.places.taken())
    }

    fn lock(&self) -> MutexGuard<'_, Inner<Slot>> {
        // A panic while holding the lock cannot leave the bookkeeping inconsistent in a way
        // that matters more than stopping the pooler would, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation connections must belong to.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Lends a server connection for a request made at `requested`, waiting in FIFO order
    /// until `deadline` (and, while the pool is paused, until it is resumed); `settings` are
    /// the pool's, as the caller last read them (see [`SettingsCache`]).
    pub async fn checkout(
        self: &Arc<Self>,
        requested: Instant,
        deadline: Instant,
        settings: &PoolSettings,
    ) -> Result<Checkout, CheckoutError> {
        let open = !*self.paused.borrow() && !*self.held.borrow();
        // The common case takes the pool's two locks once each: a free permit and an idle
        // connection, nobody queued before this client. The request's time stands for "now"
        // until the client has to wait: no clock is read.
        let mut permit = None;
        if open {
            if let Some(p) = self.gate.try_main(requested) {
                let ranks = self.lend_ranks();
                let idle = self
                    .lock()
                    .take_idle(settings.round_robin, ranks.as_deref());
                if let Some(slot) = idle {
                    if let Some(slot) = self.vet(slot, requested, deadline.into(), settings).await {
                        self.lent(Duration::ZERO);
                        return Ok(Checkout::new(self, slot, p, requested));
                    }
                }
                permit = Some(p);
            }
        }
        let started = requested;
        let waiter = Waiter::new(self);
        // The common wait: queued for a permit, then handed the connection given back with
        // it. Its future is small; the rest (pause, failover hold, opening a connection) is
        // boxed, so that a client task, sized for its largest state, stays small while idle.
        if open && permit.is_none() {
            let waiting = self.permit(requested, deadline, settings)?;
            let gate::Grant { permit: p, slot } = self.granted(waiting.await?);
            if let Some((slot, now)) = slot {
                if let Some(slot) = self.vet(slot, now, deadline.into(), settings).await {
                    drop(waiter);
                    self.lent(now.saturating_duration_since(started));
                    return Ok(Checkout::new(self, slot, p, now));
                }
            }
            permit = Some(p);
        }
        Box::pin(self.checkout_waiting(deadline, started, waiter, permit)).await
    }

    /// Checkout for a client that must open a connection, or wait while the pool is paused or
    /// holds its clients; `permit` is one it holds already.
    async fn checkout_waiting(
        self: &Arc<Self>,
        deadline: Instant,
        started: Instant,
        waiter: Waiter<'_>,
        mut permit: Option<Permit>,
    ) -> Result<Checkout, CheckoutError> {
        let result = loop {
            let attempt = async {
                // A client holding a permit already found the pool open.
                if permit.is_none() {
                    self.unpaused(deadline.into()).await?;
                    self.unheld(deadline.into()).await?;
                }
                self.checkout_inner(deadline, permit.take()).await
            }
            .await;
            match attempt {
                // The failed connect started (or joined) a failover: wait for its outcome.
                Err(CheckoutError::Server(e))
                    if failover::connect_signals(&e) && self.failover_state().holding() =>
                {
                    if Instant::now() >= deadline {
                        break Err(CheckoutError::NoPrimary);
                    }
                }
                other => break other,
            }
        };
        drop(waiter);
        if let Ok(checkout) = &result {
            self.lent(checkout.lent_at.saturating_duration_since(started));
        }
        result
    }

    /// Counts a checkout that waited `waited`.
    fn lent(&self, waited: Duration) {
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        self.stats.wait_us.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(h) = &self.wait_histogram {
            h.observe(waited.as_secs_f64());
        }
    }

    /// Waits while the pool is paused, at most until `deadline`.
    async fn unpaused(&self, deadline: tokio::time::Instant) -> Result<(), CheckoutError> {
        if !*self.paused.borrow() {
            return Ok(());
        }
        let mut rx = self.paused.subscribe();
        let resumed = async { rx.wait_for(|paused| !paused).await.map(|_| ()) };
        match timeout_at(deadline, resumed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CheckoutError::Closed),
            Err(_) => Err(CheckoutError::Timeout),
        }
    }

    /// Waits while clients are held for a failover, at most until `deadline`; the wait is
    /// observed in the hold-time histogram.
    async fn unheld(&self, deadline: tokio::time::Instant) -> Result<(), CheckoutError> {
        if !*self.held.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        self.stats.held.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.held.subscribe();
        let result = timeout_at(deadline, rx.wait_for(|held| !held)).await;
        self.stats.held.fetch_sub(1, Ordering::Relaxed);
        if let Some(h) = &self.hold_histogram {
            h.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(CheckoutError::Closed),
            Err(_) => Err(CheckoutError::NoPrimary),
        }
    }

    /// Whether this pool holds its clients while it looks for a new primary.
    pub fn fails_over(&self) -> bool {
        let target = self.target.load();
        failover::applies(
            self.settings.load().failover_hold,
            target.session_attrs,
            target.hosts.len(),
        )
    }

    fn failover_state(&self) -> MutexGuard<'_, failover::State> {
        self.failover.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the console and metrics show of the pool's failover handling.
    pub fn failover_status(&self) -> failover::Status {
        let state = self.failover_state().clone();
        failover::Status {
            enabled: self.fails_over(),
            holding: state.holding(),
            current: state.current,
            failovers: state.failovers,
            recovered: state.recovered,
            held: self.stats.held.load(Ordering::Relaxed),
        }
    }

    /// A connection of generation `generation` saw its server go away or turn read-only
    /// (`why`). When the pool fails over and this is news, clients are held and a probe looks
    /// for the primary. Returns whether clients are held now.
    pub fn suspect(self: &Arc<Self>, generation: u64, why: &str) -> bool {
        if !self.fails_over() {
            return false;
        }
        let mut state = self.failover_state();
        let started = state.suspect(Instant::now(), generation, self.generation());
        let holding = state.holding();
        drop(state);
        if !started {
            return holding;
        }
        tracing::warn!(pool = %self.key, why, "primary lost: holding clients while looking for a new one (failover_hold)");
        self.held.send_replace(true);
        let pool = self.clone();
        tokio::spawn(async move { pool.probe().await });
        true
    }

    /// Looks for the primary through the host list (each attempt bounded by
    /// `server_connect_timeout`, with backoff between them) until one answers or the probe
    /// window passes; either way the hold ends. A primary found on another host retires the
    /// connections to the old one first: idle ones now, lent ones as they come back.
    async fn probe(self: Arc<Self>) {
        let started = Instant::now();
        let window = failover::probe_window(
            self.settings.load().query_wait_timeout,
            self.target.load().connect_timeout,
        );
        let mut attempt = 0;
        loop {
            let left = window.saturating_sub(started.elapsed());
            if left.is_zero() || self.gate.is_closed() {
                tracing::warn!(pool = %self.key, "no primary found; clients are no longer held");
                self.failover_state().gave_up();
                self.held.send_replace(false);
                return;
            }
            tokio::time::sleep(failover::probe_delay(attempt, left)).await;
            attempt = attempt.saturating_add(1);
            match ServerConn::connect(&self.target.load_full()).await {
                Ok(conn) => {
                    let host = conn.cancel_target().0.to_string();
                    conn.close();
                    let (held, moved) = self.failover_state().found(Instant::now(), host.clone());
                    if moved {
                        self.retire_all();
                    }
                    self.lock().clear_failure();
                    self.held.send_replace(false);
                    tracing::warn!(pool = %self.key, primary = %host, moved, held_ms = held.unwrap_or_default().as_millis(), "primary found; serving held clients");
                    return;
                }
                Err(e) => {
                    tracing::info!(pool = %self.key, attempt, error = %e, "looking for a new primary");
                }
            }
        }
    }

    fn book(&self) -> MutexGuard<'_, HostBook> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the pool keeps track of its hosts' health: it has a host list, or a lag bound.
    fn balances(&self) -> bool {
        self.tracks_hosts.load(Ordering::Acquire) != 0
    }

    /// Whether the pool measures its hosts' replay lag: `replica_max_lag` is set and its
    /// `target_session_attrs` accepts standbys.
    fn measures_lag(&self) -> bool {
        self.tracks_hosts.load(Ordering::Acquire) & MEASURES_LAG != 0
    }

    /// Which idle connections may be lent, best first (see [`HostTable::lend_ranks`]);
    /// `None` for a pool that does not balance (any idle connection, as always).
    fn lend_ranks(&self) -> Option<Vec<Option<usize>>> {
        if !self.balances() {
            return None;
        }
        let mode = self.target.load().load_balance;
        Some(self.book().table.lend_ranks(mode))
    }

    /// Why a connection given back must close to keep the hosts even, if it must.
    fn surplus(&self, slot: &Slot) -> Option<Retire> {
        if !self.balances() || !Arc::ptr_eq(&slot.seat.counts, &self.book().counts) {
            return None;
        }
        let mode = self.target.load().load_balance;
        let counts = &slot.seat.counts;
        hosts::surplus_on_return(slot.seat.host, &counts.open(), &counts.up(), mode)
            .map(Retire::Host)
    }

    /// Opens a server connection. A balancing pool picks the host (see
    /// [`HostTable::open_order`]), records what became of each host tried, and with a lag
    /// bound turns down a standby that lags beyond it and tries the next host.
    async fn connect_server(&self, target: &ServerTarget) -> Result<ServerConn, ServerError> {
        if !self.balances() {
            return ServerConn::connect(target).await;
        }
        let mut skip = Vec::new();
        let mut lagging = Vec::new();
        loop {
            let order = {
                let mut book = self.book();
                let open = book.counts.open();
                book.table.open_order(&open, target.load_balance, &skip)
            };
            if order.is_empty() {
                return Err(ServerError::NoMatchingHost {
                    attrs: target.session_attrs,
                    reasons: lagging.join("; "),
                });
            }
            let attempt = ServerConn::connect_order(target, &order).await;
            for (host, outcome) in attempt.tried {
                self.record_outcome(host, outcome, target.session_attrs);
            }
            let mut conn = match attempt.result {
                Ok(conn) => conn,
                Err(e) if lagging.is_empty() => return Err(e),
                Err(e) => {
                    lagging.push(e.to_string());
                    return Err(ServerError::NoMatchingHost {
                        attrs: target.session_attrs,
                        reasons: lagging.join("; "),
                    });
                }
            };
            let host = conn.host_index();
            if self.measures_lag() {
                match self.measure(&mut conn).await {
                    Ok(lag) if lag > self.settings.load().replica_max_lag => {
                        let addr = target.hosts.get(host).map(ToString::to_string);
                        lagging.push(format!(
                            "{}: replay lag {:.1} s exceeds replica_max_lag",
                            addr.unwrap_or_default(),
                            lag.as_secs_f64()
                        ));
                        conn.close();
                        skip.push(host);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.host_failed(host, Fault::Down, &e.to_string());
                        skip.push(host);
                        lagging.push(e.to_string());
                        continue;
                    }
                }
            }
            self.host_connected(host);
            return Ok(conn);
        }
    }

    /// Takes what became of a host a connect tried into account.
    fn record_outcome(&self, host: usize, outcome: HostOutcome, attrs: TargetSessionAttrs) {
        match outcome {
            HostOutcome::Failed { why, down: true } => self.host_failed(host, Fault::Down, &why),
            HostOutcome::Failed { down: false, .. } => {}
            // prefer-standby refuses a primary on its first pass only to take it on the second.
            HostOutcome::Refused(_) if attrs == TargetSessionAttrs::PreferStandby => {}
            HostOutcome::Refused(why) => self.host_failed(host, Fault::Role, why),
        }
    }

    /// `host` failed (`why`): taken out of service, its idle connections closed (lent ones
    /// close as they come back), and probed later. Nothing for a pool that does not balance.
    fn host_failed(&self, host: usize, fault: Fault, why: &str) {
        if !self.balances() {
            return;
        }
        let newly = {
            let mut book = self.book();
            let newly = book.table.failed(host, fault, why, Instant::now());
            book.counts.set_up(host, false);
            newly
        };
        if newly {
            self.host_taken_out(host, why);
        }
    }

    /// Closes the idle connections to a host just taken out of service.
    fn host_taken_out(&self, host: usize, why: &str) {
        let addr = self.target.load().hosts.get(host).map(ToString::to_string);
        tracing::warn!(pool = %self.key, server = addr.unwrap_or_default(), why, "server taken out of service");
        let idle = self.lock().take_idle_of(host, usize::MAX);
        for slot in idle {
            self.forget(slot, true);
        }
    }

    /// A connection to `host` was opened and accepted: it is in service.
    fn host_connected(&self, host: usize) {
        let back = {
            let mut book = self.book();
            book.counts.set_up(host, true);
            book.table.connected(host, Instant::now())
        };
        if back {
            let addr = self.target.load().hosts.get(host).map(ToString::to_string);
            tracing::warn!(pool = %self.key, server = addr.unwrap_or_default(), "server back in service");
        }
    }

    /// Measures the replay lag of `conn`'s host and records it; a host whose lag exceeds the
    /// bound is taken out of service.
    async fn measure(&self, conn: &mut ServerConn) -> Result<Duration, ServerError> {
        let host = conn.host_index();
        let report = conn.wal_position().await?;
        let Some(position) = wal_position(&report) else {
            return Err(ServerError::Query(Box::new(PgError::error(
                "XX000",
                format!("unreadable WAL position {report:?}"),
            ))));
        };
        let max = self.settings.load().replica_max_lag;
        let (lag, change) = {
            let mut book = self.book();
            let observed = book.table.observed(host, position, max, Instant::now());
            if observed.1 == Change::Lagging {
                book.counts.set_up(host, false);
            }
            observed
        };
        if change == Change::Lagging {
            self.host_taken_out(
                host,
                &format!(
                    "replay lag {:.1} s exceeds replica_max_lag",
                    lag.as_secs_f64()
                ),
            );
        }
        Ok(lag)
    }

    /// Measures the replay lag on a connection just given back (or idle), then keeps it idle;
    /// it closes when the measurement fails or its host was taken out.
    async fn check_lag(self: Arc<Self>, mut slot: Slot) {
        let host = slot.conn.host_index();
        match self.measure(&mut slot.conn).await {
            Ok(_) if self.book().table.state(host) == Some(hosts::HostState::Up) => {
                self.add_warm(slot)
            }
            Ok(_) => self.forget(slot, true),
            Err(e) => {
                self.host_failed(host, Fault::Down, &e.to_string());
                self.forget(slot, false);
            }
        }
    }

    /// Upkeep of the hosts' health, run by maintenance: probes the hosts out of service
    /// whose pause has passed, and measures the replay lag of hosts in service on one of
    /// their idle connections (one given back later does it when none is idle).
    fn upkeep_hosts(self: &Arc<Self>) {
        if !self.balances() || self.gate.is_closed() {
            return;
        }
        let now = Instant::now();
        let (probes, checks) = {
            let mut book = self.book();
            let checks = if self.measures_lag() {
                book.table.due_checks(now)
            } else {
                Vec::new()
            };
            (book.table.due_probes(now), checks)
        };
        for host in probes {
            let pool = self.clone();
            tokio::spawn(async move { pool.probe_host(host).await });
        }
        for host in checks {
            let idle = self.lock().take_idle_of(host, 1).pop();
            match idle {
                Some(slot) => {
                    let pool = self.clone();
                    tokio::spawn(async move { pool.check_lag(slot).await });
                }
                None => self.book().table.not_checked(host),
            }
        }
    }

    /// Probes a host out of service with a connection of its own (closed right after): it is
    /// brought back when it answers, `target_session_attrs` accepts it and it does not lag.
    async fn probe_host(self: Arc<Self>, host: usize) {
        let target = self.target.load_full();
        let attempt = ServerConn::connect_order(&target, &[host]).await;
        let mut conn = match attempt.result {
            Ok(conn) => conn,
            Err(e) => {
                let fault = match attempt.tried.first() {
                    Some((_, HostOutcome::Refused(_))) => Fault::Role,
                    _ => Fault::Down,
                };
                tracing::debug!(pool = %self.key, host, error = %e, "server still out of service");
                self.book()
                    .table
                    .probe_failed(host, fault, &e.to_string(), Instant::now());
                return;
            }
        };
        let fit = if self.measures_lag() {
            match self.measure(&mut conn).await {
                Ok(lag) => lag <= self.settings.load().replica_max_lag,
                Err(e) => {
                    let mut book = self.book();
                    book.table
                        .probe_failed(host, Fault::Down, &e.to_string(), Instant::now());
                    false
                }
            }
        } else {
            true
        };
        conn.close();
        if fit {
            self.host_connected(host);
        }
    }

    /// What a relay saw of its server (`failed`: the connection broke; `error`: an SQLSTATE
    /// [`failover::signals`] knows; `standby_report`: a new `in_hot_standby` value): a lost
    /// primary starts a failover ([`Pool::suspect`]), a host that went away or changed role
    /// is taken out of service.
    pub fn relay_ended(
        self: &Arc<Self>,
        server: &ServerConn,
        failed: bool,
        error: Option<[u8; 5]>,
        standby_report: Option<&str>,
    ) {
        // The common end, a clean one, says nothing of the server.
        if !failed && error.is_none() && standby_report.is_none() {
            return;
        }
        if let Some(why) = failover::relay_signal(failed, error, standby_report) {
            self.suspect(server.generation(), why);
        }
        let attrs = self.target.load().session_attrs;
        if let Some((fault, why)) = hosts::relay_fault(failed, error, standby_report, attrs) {
            self.host_failed(server.host_index(), fault, why);
        }
    }

    /// Each host's health and connections, for the console, `/status` and metrics.
    pub fn host_status(&self) -> Vec<HostStatus> {
        let names: Vec<String> = self
            .target
            .load()
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect();
        let book = self.book();
        book.table
            .status(&names, &book.counts.open(), &book.counts.lent())
    }

    /// Pauses (checkouts wait) or resumes the pool.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Whether the pool is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Connections lent out right now.
    pub fn in_use(&self) -> usize {
        self.stats.active.load(Ordering::Relaxed)
    }

    /// Closes every idle connection now; returns how many were closed.
    pub fn close_idle(&self) -> usize {
        let idle = self.lock().take_all_idle();
        let n = idle.len();
        for slot in idle {
            self.forget(slot, true);
        }
        n
    }

    /// Connections of an older generation still open: they close when returned (PgBouncer's
    /// `close_needed`, which WAIT_CLOSE waits out).
    pub fn close_needed(&self) -> usize {
        let current = self.generation();
        let eras = self.eras.lock().unwrap_or_else(|p| p.into_inner());
        eras.range(..current).map(|(_, n)| n).sum()
    }

    /// Closes idle connections now and every lent one when it is returned, so that new
    /// connections are opened afresh (the admin console's RECONNECT).
    pub fn retire_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.close_idle();
    }

    async fn checkout_inner(
        self: &Arc<Self>,
        deadline: Instant,
        permit: Option<Permit>,
    ) -> Result<Checkout, CheckoutError> {
        let permit = match permit {
            Some(permit) => permit,
            None => {
                let settings = self.settings.load_full();
                let waiting = self.permit(Instant::now(), deadline, &settings)?;
                let gate::Grant { permit, slot } = self.granted(waiting.await?);
                if let Some((slot, now)) = slot {
                    if let Some(slot) = self.vet(slot, now, deadline.into(), &settings).await {
                        return Ok(Checkout::new(self, slot, permit, now));
                    }
                }
                permit
            }
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let _seeking = Seeking::new(self);
        // Registered for a wake-up only once a look found nothing to take (registering takes
        // a lock, and most looks find an idle connection); the look is then repeated before
        // sleeping, so a connection returned in between is not missed.
        let mut returned: Option<Pin<Box<Notified<'_>>>> = None;
        loop {
            // One look at the settings per step, held (an `Arc`) through its awaits.
            let settings = self.settings.load_full();
            let now = Instant::now();
            let capacity = inner::capacity(&settings);
            let ranks = self.lend_ranks();
            let step = self.lock().step(now, &settings, ranks.as_deref(), || {
                self.places.try_take(capacity)
            });
            match step {
                Step::Closed => return Err(CheckoutError::Closed),
                Step::LoginRetry(why) => return Err(CheckoutError::LoginRetry(why)),
                Step::Reuse(slot) => {
                    if let Some(slot) = self.vet(slot, now, deadline, &settings).await {
                        return Ok(Checkout::new(self, slot, permit, now));
                    }
                }
                Step::Open(place) => {
                    let mut opening = Opening::new(self, place);
                    loop {
                        // A connection given back while this one waits for a shared limit is
                        // taken instead: with `max_db_connections` below the pool size,
                        // waiting for a limit that only closing frees would otherwise never end.
                        let mut give_way = self.listen();
                        if let Some(slot) = opening.open(deadline, Some(give_way.as_mut())).await? {
                            return Ok(Checkout::new(self, slot, permit, Instant::now()));
                        }
                        // Still counted as opening, so taking it back cannot wake this client
                        // again; if another client took the connection first, keep on opening.
                        let ranks = self.lend_ranks();
                        let idle = self
                            .lock()
                            .take_idle(settings.round_robin, ranks.as_deref());
                        if let Some(slot) = idle {
                            drop(opening);
                            let now = Instant::now();
                            if let Some(slot) = self.vet(slot, now, deadline, &settings).await {
                                return Ok(Checkout::new(self, slot, permit, now));
                            }
                            break;
                        }
                    }
                }
                Step::Wait => match returned.take() {
                    None => returned = Some(self.listen()),
                    Some(wake) => {
                        // Only warming connections can be in flight here; wait for one.
                        timeout_at(deadline, wake)
                            .await
                            .map_err(|_| CheckoutError::Timeout)?;
                    }
                },
            }
        }
    }

    /// A registered wait for the next connection given back.
    fn listen(&self) -> Pin<Box<Notified<'_>>> {
        let mut wake = Box::pin(self.places.freed.notified());
        wake.as_mut().enable();
        wake
    }

    /// A main permit, or after `reserve_pool_timeout` a main or reserve one, by `deadline`,
    /// with the connection given back with it if it came from a client that returned one
    /// (see [`Pool::granted`]). Not an `async fn`: the gate's own future is awaited, without
    /// a layer of state machine around it.
    fn permit(
        &self,
        now: Instant,
        deadline: Instant,
        settings: &PoolSettings,
    ) -> Result<gate::Acquire<'_>, CheckoutError> {
        let reserve_at = inner::reserve_at(settings, now, deadline);
        self.gate.acquire(self, now, deadline, reserve_at)
    }

    /// A grant [`Pool::permit`]'s wait ended with, a reserve permit logged.
    fn granted(&self, grant: gate::Grant) -> gate::Grant {
        if grant.permit.is_reserve() {
            tracing::info!(pool = %self.key, "using the reserve pool");
        }
        grant
    }

    /// Checks an idle connection before lending it at `now`; `None` means it was closed.
    ///
    /// Not an `async fn`: in the common case, a connection lent as it is, nothing is awaited,
    /// and its future would be made and moved for every checkout all the same.
    fn vet(
        &self,
        slot: Slot,
        now: Instant,
        deadline: tokio::time::Instant,
        settings: &PoolSettings,
    ) -> impl Future<Output = Option<Slot>> + Send + '_ {
        match self.vet_now(slot, now, settings) {
            Vetted::Ready(slot) => Either::Left(std::future::ready(Some(slot))),
            Vetted::Check(slot) => Either::Right(self.check(slot, deadline)),
            Vetted::Closed => Either::Left(std::future::ready(None)),
        }
    }

    /// What can be said of an idle connection without talking to its server.
    fn vet_now(&self, slot: Slot, now: Instant, settings: &PoolSettings) -> Vetted {
        match inner::vet(&slot, now, settings, self.generation()) {
            Vet::Ready => Vetted::Ready(slot),
            Vet::Check => Vetted::Check(slot),
            Vet::Retire(why) => {
                tracing::debug!(pool = %self.key, server = slot.conn.id(), ?why, "idle server connection went bad");
                self.forget(slot, false);
                Vetted::Closed
            }
        }
    }

    /// Runs `server_check_query` on an idle connection; `None` means it failed and was closed.
    /// Dropped midway (the client left), the slot and so its place in the pool go with it.
    /// Boxed: rare, and its future would otherwise enlarge every client task.
    fn check(
        &self,
        mut slot: Slot,
        deadline: tokio::time::Instant,
    ) -> Pin<Box<impl Future<Output = Option<Slot>> + Send + '_>> {
        Box::pin(async move {
            let settings = self.settings.load_full();
            let sql = settings.check.sql().unwrap_or_default();
            match timeout_at(deadline, slot.conn.simple_query(sql)).await {
                Ok(Ok(())) => Some(slot),
                _ => {
                    tracing::info!(pool = %self.key, server = slot.conn.id(), "server_check_query failed");
                    self.host_failed(
                        slot.conn.host_index(),
                        Fault::Down,
                        "server_check_query failed",
                    );
                    self.forget(slot, false);
                    None
                }
            }
        })
    }

    /// Opens a new connection for the place `place` holds. `None` means `give_way` fired
    /// while waiting for a shared limit, and nothing was opened (the place is kept).
    async fn open(
        self: &Arc<Self>,
        place: &mut Option<Place>,
        deadline: tokio::time::Instant,
        mut give_way: Option<Pin<&mut Notified<'_>>>,
    ) -> Result<Option<Slot>, CheckoutError> {
        let limits = self.limits.load_full();
        let mut permits = Vec::with_capacity(limits.len());
        for limit in limits.iter() {
            let acquire = limit.acquire(self, deadline);
            let permit = match give_way.as_mut() {
                Some(returned) => tokio::select! {
                    p = acquire => p?,
                    () = returned.as_mut() => return Ok(None),
                },
                None => acquire.await?,
            };
            permits.push(permit);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let counts = self.book().counts.clone();
        match self.connect_server(&self.target.load_full()).await {
            Ok(mut conn) => {
                conn.set_generation(generation);
                self.stats.opened.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pool = %self.key, server = conn.id(), "server connection opened");
                {
                    let mut welcome = self.welcome.lock().unwrap_or_else(|p| p.into_inner());
                    if welcome.is_none() {
                        *welcome = Some(conn.params().clone());
                    }
                }
                self.lock().clear_failure();
                let (addr, key) = conn.cancel_target();
                let host = addr.to_string();
                let mut failover = self.failover_state();
                if failover.current.as_deref() != Some(host.as_str()) {
                    failover.current = Some(host);
                }
                drop(failover);
                let record = self.registry.add_server(NewServer {
                    pool: PoolKey::clone(&self.key),
                    addr,
                    key,
                    local: conn.local_endpoint(),
                    application_name: conn
                        .params()
                        .get("application_name")
                        .unwrap_or_default()
                        .to_owned(),
                });
                let Some(place) = place.take() else {
                    return Err(CheckoutError::Closed);
                };
                let seat = Seat::new(counts, conn.host_index());
                Ok(Some(Slot {
                    conn: Box::new(conn),
                    record,
                    limits: permits,
                    _place: place,
                    _era: Era::new(&self.eras, generation),
                    seat,
                }))
            }
            Err(e) => {
                tracing::warn!(pool = %self.key, error = %e, "server login failed");
                self.stats.login_failures.fetch_add(1, Ordering::Relaxed);
                // While clients are held the failover's probe, not server_login_retry, paces them.
                let held =
                    failover::connect_signals(&e) && self.suspect(generation, &e.to_string());
                if !held {
                    self.lock()
                        .login_failed(Instant::now(), e.to_string().into());
                }
                Err(e.into())
            }
        }
    }

    /// The parameters a newly logged-in client is told about (the server's), opening a first
    /// connection if the pool has never had one.
    pub async fn welcome_params(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Result<ParamSet, CheckoutError> {
        if let Some(p) = self.cached_welcome() {
            return Ok(p);
        }
        let settings = self.settings.load_full();
        let checkout = self.checkout(Instant::now(), deadline, &settings).await?;
        checkout.release();
        self.cached_welcome().ok_or(CheckoutError::Closed)
    }

    fn cached_welcome(&self) -> Option<ParamSet> {
        self.welcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes back a clean connection and its permit: kept idle (or handed to the oldest
    /// queued client), closed, or first checked for replay lag when its host's measurement
    /// is due.
    fn checkin(
        self: &Arc<Self>,
        mut slot: Slot,
        permit: Permit,
        now: Instant,
        settings: &PoolSettings,
    ) {
        let returned = self.vet_return(&mut slot, now, settings);
        if returned.is_none()
            && self.measures_lag()
            && self
                .book()
                .table
                .take_due_check(slot.conn.host_index(), now)
        {
            // The permit goes on to a queued client, which opens or finds another connection.
            drop(permit);
            let pool = self.clone();
            tokio::spawn(async move { pool.check_lag(slot).await });
            return;
        }
        self.settle(slot, permit, returned, now);
    }

    /// Records a connection's return; why it must close, if it must.
    fn vet_return(&self, slot: &mut Slot, now: Instant, settings: &PoolSettings) -> Option<Retire> {
        slot.conn.returned_at(now);
        slot.record
            .set_prepared(slot.conn.carried().statement_count());
        // The connection's own places, not the pool's limits: no second load, and it holds
        // a place under each of them (one added since it opened makes it reopen anyway).
        let shrinking = slot.limits.iter().any(LimitPermit::is_shrinking);
        inner::returned(slot, now, settings, self.generation(), shrinking)
            .or_else(|| self.surplus(slot))
    }

    /// Keeps a returned connection (for the oldest queued client, or idle) or closes it;
    /// `now` is when it came back.
    fn settle(&self, mut slot: Slot, mut permit: Permit, returned: Option<Retire>, now: Instant) {
        let why = match returned {
            Some(why) => why,
            None => {
                // Straight to the oldest queued client, unless a client holding a permit
                // waits for a connection to be given back (it was there first).
                if self.seeking.load(Ordering::Acquire) == 0 {
                    match self.gate.hand_over(permit, slot, now) {
                        None => return,
                        // Kept until the connection is idle: whoever it goes to finds it.
                        Some((p, back)) => (permit, slot) = (p, back),
                    }
                }
                let kept = self.lock().put_idle(slot);
                match kept {
                    Ok(()) => {
                        self.places.freed.notify_one();
                        drop(permit);
                        return;
                    }
                    Err(back) => {
                        slot = back;
                        Retire::Closed
                    }
                }
            }
        };
        tracing::debug!(pool = %self.key, server = slot.conn.id(), ?why, "closing a returned server connection");
        self.forget(slot, true);
        drop(permit);
    }

    /// Puts a connection opened to keep `min_pool_size`, or just checked for replay lag, among
    /// the idle ones: `server_lifetime = 0` (one use) does not close it, as it served nobody
    /// since its last return was vetted.
    fn add_warm(&self, slot: Slot) {
        let kept = self.lock().put_idle(slot);
        match kept {
            Ok(()) => self.places.freed.notify_one(),
            Err(slot) => self.forget(slot, true),
        }
    }

    /// Closes a connection that is no longer counted as idle; dropping the slot frees its
    /// place. `clean` says the connection may be told goodbye (Terminate).
    fn forget(&self, slot: Slot, clean: bool) {
        let Slot { conn, .. } = slot;
        if clean {
            conn.close();
        }
    }

    /// Closes one idle connection to make room elsewhere (`max_db_connections`); false when
    /// there was none.
    pub fn evict_idle(&self) -> bool {
        let slot = self.lock().evict();
        match slot {
            Some(slot) => {
                self.forget(slot, true);
                true
            }
            None => false,
        }
    }

    /// Closes every idle connection and refuses new checkouts.
    pub fn close(&self) {
        let idle = self.lock().close();
        for slot in idle {
            self.forget(slot, true);
        }
        self.gate.close();
    }
}

/// A server's WAL report as positions; `None` when it cannot be read.
fn wal_position(report: &WalReport) -> Option<WalPosition> {
    let replayed = hosts::parse_lsn(report.replayed.as_deref()?)?;
    let received = match report.received.as_deref() {
        Some(text) => hosts::parse_lsn(text)?,
        // A standby that never streamed holds what it replayed.
        None => replayed,
    };
    Some(WalPosition {
        standby: report.standby,
        received,
        replayed,
    })
}

/// A connection counted on its host (of one host list) until it is dropped.
#[derive(Debug)]
struct Seat {
    counts: Arc<HostCounts>,
    host: usize,
}

impl Seat {
    fn new(counts: Arc<HostCounts>, host: usize) -> Seat {
        counts.add_open(host, true);
        Seat { counts, host }
    }

    /// Counts the connection as lent until the returned mark is dropped.
    fn lend(&self) -> LentMark {
        self.counts.add_lent(self.host, true);
        LentMark {
            counts: self.counts.clone(),
            host: self.host,
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.counts.add_open(self.host, false);
    }
}

/// A lent connection counted on its host until dropped.
#[derive(Debug)]
struct LentMark {
    counts: Arc<HostCounts>,
    host: usize,
}

impl Drop for LentMark {
    fn drop(&mut self) {
        self.counts.add_lent(self.host, false);
    }
}

impl gate::TakeBack for Pool {
    fn take_back(&self, mut slot: Slot, permit: Permit) {
        let now = Instant::now();
        let returned = self.vet_return(&mut slot, now, &self.settings.load());
        self.settle(slot, permit, returned, now);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Ends the gate's sweep, which would otherwise keep the gate alive.
        self.gate.close();
    }
}

/// A client counted as waiting for a connection until dropped, even when the waiting client
/// goes away mid-wait.
struct Waiter<'a> {
    pool: &'a Pool,
}

impl<'a> Waiter<'a> {
    fn new(pool: &'a Pool) -> Waiter<'a> {
        pool.stats.waiting.fetch_add(1, Ordering::Relaxed);
        Waiter { pool }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.pool.stats.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client holding a permit, counted while it looks for a connection (see `Pool::seeking`).
struct Seeking<'a> {
    pool: &'a Pool,
}

impl<'a> Seeking<'a> {
    fn new(pool: &'a Pool) -> Seeking<'a> {
        pool.seeking.fetch_add(1, Ordering::AcqRel);
        Seeking { pool }
    }
}

impl Drop for Seeking<'_> {
    fn drop(&mut self) {
        self.pool.seeking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Pool::vet_now`] found.
enum Vetted {
    /// Fit to lend.
    Ready(Slot),
    /// Idle long enough that `server_check_query` must run first.
    Check(Slot),
    /// Gone bad; it was closed.
    Closed,
}

/// One place in a pool's count of connections (idle, lent out or being opened). Whoever
/// holds it — a connection being opened, then the connection's slot — gives it back by being
/// dropped, on every path: a client that leaves mid-connect or mid-check loses nothing.
#[derive(Debug)]
struct Place(Arc<Places>);

/// A pool's count of connections and the wake-up for clients waiting for one.
#[derive(Debug, Default)]
struct Places {
    taken: AtomicUsize,
    /// Notified when a connection is given back or a place is freed.
    freed: Notify,
}

impl Places {
    /// A place, if fewer than `capacity` are taken.
    fn try_take(self: &Arc<Self>, capacity: usize) -> Option<Place> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(self.clone()))
    }

    fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// A connection counted in its generation until it is dropped.
#[derive(Debug)]
struct Era {
    eras: Arc<Mutex<BTreeMap<u64, usize>>>,
    generation: u64,
}

impl Era {
    fn new(eras: &Arc<Mutex<BTreeMap<u64, usize>>>, generation: u64) -> Era {
        *eras
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(generation)
            .or_default() += 1;
        Era {
            eras: eras.clone(),
            generation,
        }
    }
}

impl Drop for Era {
    fn drop(&mut self) {
        let mut eras = self.eras.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = eras.get_mut(&self.generation) {
            *n -= 1;
            if *n == 0 {
                eras.remove(&self.generation);
            }
        }
    }
}

/// A connection being opened for a place already taken.
struct Opening {
    pool: Arc<Pool>,
    place: Option<Place>,
}

impl Opening {
    fn new(pool: &Arc<Pool>, place: Place) -> Opening {
        Opening {
            pool: pool.clone(),
            place: Some(place),
        }
    }

    /// Opens the connection; `None` when `give_way` fired first (see [`Pool::open`]), and
    /// the place stays taken until this is dropped.
    async fn open(
        &mut self,
        deadline: tokio::time::Instant,
        give_way: Option<Pin<&mut Notified<'_>>>,
    ) -> Result<Option<Slot>, CheckoutError> {
        self.pool.open(&mut self.place, deadline, give_way).await
    }
}

/// A lent server connection. [`Checkout::release`] returns it; dropping it closes it.
#[derive(Debug)]
pub struct Checkout {
    pool: Arc<Pool>,
    slot: Option<Slot>,
    permit: Option<Permit>,
    _lent: LentMark,
    lent_at: Instant,
}

impl Checkout {
    fn new(pool: &Arc<Pool>, slot: Slot, permit: Permit, lent_at: Instant) -> Checkout {
        Checkout {
            pool: pool.clone(),
            _lent: slot.seat.lend(),
            slot: Some(slot),
            permit: Some(permit),
            lent_at,
        }
    }

    /// When the connection was lent.
    pub fn lent_at(&self) -> Instant {
        self.lent_at
    }

    /// The connection.
    pub fn server(&mut self) -> &mut ServerConn {
        match self.slot.as_mut() {
            Some(slot) => &mut slot.conn,
            // `slot` is only taken by release() and drop(), which consume the guard.
            None => unreachable!("checkout used after release"),
        }
    }

    /// The connection's entry in the registry.
    pub fn record(&self) -> &ServerRecord {
        match self.slot.as_ref() {
            Some(slot) => &slot.record,
            None => unreachable!("checkout used after release"),
        }
    }

    /// The pool it came from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns a connection that is idle and in a clean protocol state.
    #[inline]
    pub fn release(self) {
        let settings = self.pool.settings.load_full();
        self.release_at(Instant::now(), &settings);
    }

    /// [`Checkout::release`] of a connection idle since `now`, a clock reading the caller took
    /// anyway.
    pub fn release_at(mut self, now: Instant, settings: &PoolSettings) {
        if let (Some(slot), Some(permit)) = (self.slot.take(), self.permit.take()) {
            self.pool.checkin(slot, permit, now, settings);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(slot) = self.slot.take() {
            tracing::debug!(pool = %self.pool.key, server = slot.conn.id(), "closing a server connection in an unknown state");
            self.pool.forget(slot, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tracking_follows_the_lag_bound_the_attributes_and_the_host_count() {
        let lag = Duration::from_secs(5);
        let none = Duration::ZERO;
        assert_eq!(host_tracking(none, TargetSessionAttrs::Any, 1), 0);
        assert_eq!(host_tracking(none, TargetSessionAttrs::Any, 2), HOST_LIST);
        assert_eq!(host_tracking(lag, TargetSessionAttrs::Any, 1), MEASURES_LAG);
        assert_eq!(
            host_tracking(lag, TargetSessionAttrs::PreferStandby, 3),
            MEASURES_LAG | HOST_LIST
        );
        // Only a primary is accepted: there is no standby whose lag could matter.
        assert_eq!(host_tracking(lag, TargetSessionAttrs::ReadWrite, 1), 0);
        assert_eq!(
            host_tracking(lag, TargetSessionAttrs::Primary, 2),
            HOST_LIST
        );
    }

    #[test]
    fn places_are_bounded_and_given_back_on_drop() {
        let places = Arc::new(Places::default());
        let a = places.try_take(2).expect("first place");
        let b = places.try_take(2).expect("second place");
        assert!(
            places.try_take(2).is_none(),
            "a third place in a pool of two"
        );
        assert_eq!(places.taken(), 2);
        drop(a);
        assert_eq!(places.taken(), 1);
        let c = places.try_take(2).expect("the freed place");
        drop((b, c));
        assert_eq!(places.taken(), 0);
    }

    #[tokio::test]
    async fn a_freed_place_wakes_a_waiter() {
        let places = Arc::new(Places::default());
        let held = places.try_take(1).expect("a place");
        let waiter = {
            let places = places.clone();
            tokio::spawn(async move {
                loop {
                    let mut freed = Box::pin(places.freed.notified());
                    freed.as_mut().enable();
                    if let Some(place) = places.try_take(1) {
                        return place;
                    }
                    freed.await;
                }
            })
        };
        tokio::task::yield_now().await;
        drop(held);
        let place = waiter.await.expect("the waiter got the place");
        assert_eq!(places.taken(), 1);
        drop(place);
    }
}
