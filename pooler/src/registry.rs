//! Who is connected: a record of every logged-in client and every open server connection,
//! for the admin console (SHOW CLIENTS, SHOW SERVERS, KILL_CLIENT) and for cancel requests.
//!
//! The maps are locked only when a connection comes or goes, when the console lists them and
//! when a cancel request is looked up. While a client works, its task updates its own record
//! and its server's with relaxed atomic stores, which nothing else contends for.
//!
//! A cancel request reaches a server connection only while the client whose key it carries
//! holds it, and the connection is not lent to anyone else until every cancel forwarded for
//! the previous holder has been delivered: a cancel can never stop another client's query.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::task::AtomicWaker;
use rand::Rng;
use tokio::sync::Notify;

use crate::cancel_key::CancelKey;
use crate::server::{ServerAddr, ServerKey};
pub use crate::stream::Endpoint;

/// Identifies a pool: the database name clients use and the user the pool logs in as.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// The database name as clients see it (`[databases]` key).
    pub database: String,
    /// The user the pool's server connections belong to.
    pub user: String,
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.database, self.user)
    }
}

/// What a client said about itself when it logged in.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The user it logged in as (shared with every client of that name, see [`Admission`]).
    pub user: Arc<str>,
    /// The database it asked for (shared, as `user`).
    pub database: Arc<str>,
    /// Its `application_name` startup parameter (empty if none).
    pub application_name: Box<str>,
    /// Its address.
    pub peer: Endpoint,
    /// The pooler's address it connected to.
    pub local: Endpoint,
    /// The pool it takes server connections from (none for the admin console); the pool's
    /// own key, not a copy.
    pub pool: Option<Arc<PoolKey>>,
    /// SHOW CLIENTS `replication`: `none`, `logical` or `physical`.
    pub replication: &'static str,
}

/// A logged-in client.
#[derive(Debug)]
pub struct ClientRecord {
    /// Pooler-wide id (SHOW CLIENTS `id`, KILL_CLIENT's argument).
    pub id: u64,
    /// The process id the client was told in BackendKeyData.
    pub process_id: i32,
    /// The secret the client was told in BackendKeyData.
    pub secret_key: i32,
    /// Who the client is.
    pub info: ClientInfo,
    /// When it connected.
    pub connected_at: SystemTime,
    /// Microseconds since the epoch of its latest request; 0 before the first.
    request_at: AtomicU64,
    /// Microseconds since the epoch when its current wait for a server began; 0: not waiting.
    wait_since: AtomicU64,
    /// The server connection it holds; 0: none.
    link: AtomicU64,
    /// Prepared statements it has made (transaction and statement modes).
    prepared: AtomicUsize,
    /// Pinned to its server connection (SHOW CLIENTS `pinned`).
    pinned: AtomicBool,
    killed: AtomicBool,
    /// The session task waiting for a kill; an atomic slot rather than a `Notify` because
    /// it is polled every time the session wakes.
    kill: AtomicWaker,
}

/// An open server connection.
#[derive(Debug)]
pub struct ServerRecord {
    /// Pooler-wide id.
    pub id: u64,
    /// The pool it belongs to.
    pub pool: PoolKey,
    /// Where the server is.
    pub addr: Arc<ServerAddr>,
    /// The backend's cancel key (its process id is SHOW SERVERS' `remote_pid`).
    pub key: ServerKey,
    /// The pooler's end of the connection.
    pub local: Endpoint,
    /// The `application_name` the server reported at login.
    pub application_name: String,
    /// When it was opened.
    pub connected_at: SystemTime,
    /// Microseconds since the epoch of its latest checkout; 0 before the first.
    request_at: AtomicU64,
    /// The client it is lent to; 0: idle.
    link: AtomicU64,
    /// Prepared statements it holds, as of its latest return to the pool.
    prepared: AtomicUsize,
    /// Cancel requests being forwarded to the backend ([`CancelPermit`]s alive).
    cancels: AtomicUsize,
    /// Woken when the last forwarded cancel has been delivered.
    cancels_settled: Notify,
}

/// Microseconds since the epoch at `at`, counted from one wall-clock reading taken at the
/// first call: callers' monotonic readings serve for both, one clock read fewer each time.
fn micros_at(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(base, base_us) = ANCHOR.get_or_init(|| (Instant::now(), micros(SystemTime::now())));
    match at.checked_duration_since(base) {
        Some(after) => base_us.saturating_add(duration_us(after)),
        None => base_us.saturating_sub(duration_us(base - at)),
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(duration_us).unwrap_or(0)
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn time_of(us: u64) -> Option<SystemTime> {
    (us != 0).then(|| UNIX_EPOCH + Duration::from_micros(us))
}

impl ClientRecord {
    /// The cancel key the client was told.
    pub fn key(&self) -> CancelKey {
        CancelKey {
            process_id: self.process_id,
            secret_key: self.secret_key,
        }
    }

    /// When the client last asked for work.
    pub fn request_time(&self) -> Option<SystemTime> {
        time_of(self.request_at.load(Ordering::Relaxed))
    }

    /// How long the client has been waiting for a server connection, if it is.
    pub fn waiting_for(&self) -> Option<Duration> {
        let since = Some(self.wait_since.load(Ordering::Relaxed)).filter(|us| *us != 0)?;
        Some(Duration::from_micros(
            micros_at(Instant::now()).saturating_sub(since),
        ))
    }

    /// The id of the server connection the client holds, if any.
    pub fn link(&self) -> Option<u64> {
        Some(self.link.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// Prepared statements the client has made.
    pub fn prepared(&self) -> usize {
        self.prepared.load(Ordering::Relaxed)
    }

    /// Records that the client has had work since `now` and is waiting for a server connection.
    pub fn start_waiting(&self, now: Instant) {
        let now = micros_at(now);
        self.request_at.store(now, Ordering::Relaxed);
        self.wait_since.store(now, Ordering::Relaxed);
    }

    /// Records that the client holds `server` now.
    pub fn link_to(&self, server: &ServerRecord) {
        self.wait_since.store(0, Ordering::Relaxed);
        self.link.store(server.id, Ordering::Relaxed);
        // The client's request is what the server is now serving.
        let requested = self.request_at.load(Ordering::Relaxed);
        server.request_at.store(requested, Ordering::Relaxed);
        server.link.store(self.id, Ordering::Relaxed);
    }

    /// Records that the client gave `server` back (or that it was closed).
    /// Cancel requests that arrive from now on are dropped; wait for
    /// [`ServerRecord::cancels_delivered`] before lending `server` to anyone else.
    pub fn unlink(&self, server: &ServerRecord) {
        self.wait_since.store(0, Ordering::Relaxed);
        self.link.store(0, Ordering::Relaxed);
        // Ordered against `Registry::cancel_target` (see there).
        server.link.store(0, Ordering::SeqCst);
    }

    /// Records that the client stopped waiting without getting a connection.
    pub fn stop_waiting(&self) {
        self.wait_since.store(0, Ordering::Relaxed);
    }

    /// Records how many prepared statements the client has made.
    pub fn set_prepared(&self, n: usize) {
        self.prepared.store(n, Ordering::Relaxed);
    }

    /// Whether the client is pinned to its server connection.
    pub fn pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Records whether the client is pinned to its server connection.
    pub fn set_pinned(&self, pinned: bool) {
        self.pinned.store(pinned, Ordering::Relaxed);
    }

    /// Asks the client's task to end the session (KILL_CLIENT).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.wake();
    }

    /// Wakes the client's task without ending its session, so that it looks again at the
    /// pooler's state (a shutdown has begun). Waiting for [`ClientRecord::killed`] is what
    /// registers the task to be woken.
    pub fn nudge(&self) {
        self.kill.wake();
    }

    /// Resolves once [`ClientRecord::kill`] has been called. One task at a time may wait.
    pub async fn killed(&self) {
        std::future::poll_fn(|cx| {
            self.kill.register(cx.waker());
            if self.killed.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

impl ServerRecord {
    /// When the connection was last lent.
    pub fn request_time(&self) -> Option<SystemTime> {
        time_of(self.request_at.load(Ordering::Relaxed))
    }

    /// The id of the client it is lent to, if any.
    pub fn link(&self) -> Option<u64> {
        Some(self.link.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// Prepared statements it holds.
    pub fn prepared(&self) -> usize {
        self.prepared.load(Ordering::Relaxed)
    }

    /// Records how many prepared statements it holds.
    pub fn set_prepared(&self, n: usize) {
        self.prepared.store(n, Ordering::Relaxed);
    }

    /// Resolves once no cancel request is being forwarded to this connection's backend.
    /// Called after [`ClientRecord::unlink`], before the connection can serve another
    /// client, so that a cancel meant for the previous holder lands while it still holds it.
    pub async fn cancels_delivered(&self) {
        loop {
            if self.cancels.load(Ordering::SeqCst) == 0 {
                return;
            }
            let notified = self.cancels_settled.notified();
            tokio::pin!(notified);
            // Registered before the count is read again, so the last delivery cannot be missed.
            notified.as_mut().enable();
            if self.cancels.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Permission to forward one cancel request to a server connection's backend; the
/// connection is not lent to another client while it lives. Drop it once delivered.
#[derive(Debug)]
pub struct CancelPermit {
    server: Arc<ServerRecord>,
}

impl CancelPermit {
    /// Where the server is.
    pub fn addr(&self) -> &ServerAddr {
        &self.server.addr
    }

    /// The backend's cancel key.
    pub fn key(&self) -> ServerKey {
        self.server.key
    }
}

impl Drop for CancelPermit {
    fn drop(&mut self) {
        if self.server.cancels.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.server.cancels_settled.notify_waiters();
        }
    }
}

/// Every logged-in client and open server connection of the pooler.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    clients: Mutex<Clients>,
    servers: Mutex<HashMap<u64, Arc<ServerRecord>>>,
    admitted: Mutex<Admitted>,
}

/// Clients admitted per database and per user name, for `max_db_client_connections` and
/// `max_user_client_connections`.
#[derive(Debug, Default)]
struct Admitted {
    by_database: HashMap<Arc<str>, usize>,
    by_user: HashMap<Arc<str>, usize>,
}

/// Which client connection limit refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimit {
    /// `max_db_client_connections`.
    Database,
    /// `max_user_client_connections`.
    User,
}

impl ClientLimit {
    /// The message PgBouncer sends when the limit is reached.
    pub fn message(self) -> &'static str {
        match self {
            ClientLimit::Database => "client connections exceeded (max_db_client_connections)",
            ClientLimit::User => "client connections exceeded (max_user_client_connections)",
        }
    }
}

/// A client counted against its database's and user's client limits until dropped. Its names
/// are the counting maps' own keys, so clients of one database and user share one copy.
#[derive(Debug)]
pub struct Admission {
    registry: Arc<Registry>,
    database: Arc<str>,
    user: Arc<str>,
}

impl Admission {
    /// The database name, shared with every admitted client of that database.
    pub fn database(&self) -> &Arc<str> {
        &self.database
    }

    /// The user name, shared with every admitted client of that user.
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut guard = lock(&self.registry.admitted);
        let admitted = &mut *guard;
        for (map, key) in [
            (&mut admitted.by_database, &self.database),
            (&mut admitted.by_user, &self.user),
        ] {
            if let Some(n) = map.get_mut(key.as_ref()) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key.as_ref());
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Clients {
    by_id: HashMap<u64, Arc<ClientRecord>>,
    /// Client id by the cancel key it was told.
    by_key: HashMap<CancelKey, u64>,
}

/// What a new server connection is, for [`Registry::add_server`].
#[derive(Debug)]
pub struct NewServer {
    /// The pool it belongs to.
    pub pool: PoolKey,
    /// Where the server is.
    pub addr: Arc<ServerAddr>,
    /// The backend's cancel key.
    pub key: ServerKey,
    /// The pooler's end of the connection.
    pub local: Endpoint,
    /// The `application_name` the server reported.
    pub application_name: String,
}

/// Counts one more client under `name`; returns the map's key, shared by all of them.
fn count_in(map: &mut HashMap<Arc<str>, usize>, name: &str) -> Arc<str> {
    let key = map
        .get_key_value(name)
        .map_or_else(|| Arc::from(name), |(key, _)| key.clone());
    *map.entry(key.clone()).or_default() += 1;
    key
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single map insert or removal.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Counts a client of `database` as `user` unless that reaches past a limit (0:
    /// unlimited), as PgBouncer's `max_db_client_connections` and
    /// `max_user_client_connections` do.
    pub fn admit(
        self: &Arc<Self>,
        database: &str,
        user: &str,
        database_limit: u32,
        user_limit: u32,
    ) -> Result<Admission, ClientLimit> {
        let mut admitted = lock(&self.admitted);
        let full = |count: Option<&usize>, limit: u32| {
            limit > 0 && count.copied().unwrap_or(0) >= limit as usize
        };
        if full(admitted.by_database.get(database), database_limit) {
            return Err(ClientLimit::Database);
        }
        if full(admitted.by_user.get(user), user_limit) {
            return Err(ClientLimit::User);
        }
        Ok(Admission {
            registry: self.clone(),
            database: count_in(&mut admitted.by_database, database),
            user: count_in(&mut admitted.by_user, user),
        })
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a logged-in client, giving it an id and a cancel key no other connected
    /// client has, laid out for peer `peer_id` (0: no peering). The handle removes the
    /// record when dropped.
    pub fn add_client(self: &Arc<Self>, info: ClientInfo, peer_id: u16) -> ClientHandle {
        let mut rng = rand::thread_rng();
        let id = self.next_id();
        let mut clients = lock(&self.clients);
        let key = loop {
            let key = CancelKey::issue(rng.gen(), peer_id);
            // The whole key is unique: with peering only 15 bits of the process id vary.
            if key.process_id != 0 && !clients.by_key.contains_key(&key) {
                break key;
            }
        };
        let record = Arc::new(ClientRecord {
            id,
            process_id: key.process_id,
            secret_key: key.secret_key,
            info,
            connected_at: SystemTime::now(),
            request_at: AtomicU64::new(0),
            wait_since: AtomicU64::new(0),
            link: AtomicU64::new(0),
            prepared: AtomicUsize::new(0),
            pinned: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            kill: AtomicWaker::new(),
        });
        clients.by_key.insert(key, id);
        clients.by_id.insert(id, record.clone());
        ClientHandle {
            registry: self.clone(),
            record,
        }
    }

    /// Records an open server connection. The handle removes the record when dropped.
    pub fn add_server(self: &Arc<Self>, server: NewServer) -> ServerHandle {
        let record = Arc::new(ServerRecord {
            id: self.next_id(),
            pool: server.pool,
            addr: server.addr,
            key: server.key,
            local: server.local,
            application_name: server.application_name,
            connected_at: SystemTime::now(),
            request_at: AtomicU64::new(0),
            link: AtomicU64::new(0),
            prepared: AtomicUsize::new(0),
            cancels: AtomicUsize::new(0),
            cancels_settled: Notify::new(),
        });
        lock(&self.servers).insert(record.id, record.clone());
        ServerHandle {
            registry: self.clone(),
            record,
        }
    }

    /// Every logged-in client, oldest first.
    pub fn clients(&self) -> Vec<Arc<ClientRecord>> {
        let mut list: Vec<_> = lock(&self.clients).by_id.values().cloned().collect();
        list.sort_by_key(|c| c.id);
        list
    }

    /// For each pool, how long its longest-waiting client has waited for a server
    /// connection (SHOW POOLS `maxwait`). Pools nobody waits for are absent.
    pub fn longest_waits(&self) -> HashMap<PoolKey, Duration> {
        let mut waits: HashMap<PoolKey, Duration> = HashMap::new();
        for client in lock(&self.clients).by_id.values() {
            let (Some(pool), Some(waited)) = (&client.info.pool, client.waiting_for()) else {
                continue;
            };
            let longest = waits.entry(PoolKey::clone(pool)).or_default();
            *longest = (*longest).max(waited);
        }
        waits
    }

    /// Wakes every logged-in client's task ([`ClientRecord::nudge`]).
    pub fn nudge_clients(&self) {
        for client in lock(&self.clients).by_id.values() {
            client.nudge();
        }
    }

    /// Every open server connection, oldest first.
    pub fn servers(&self) -> Vec<Arc<ServerRecord>> {
        let mut list: Vec<_> = lock(&self.servers).values().cloned().collect();
        list.sort_by_key(|s| s.id);
        list
    }

    /// The client with this id, if it is connected.
    pub fn client(&self, id: u64) -> Option<Arc<ClientRecord>> {
        lock(&self.clients).by_id.get(&id).cloned()
    }

    /// Where a CancelRequest with this key should go: the server connection its client holds
    /// right now, which stays with that client until the permit is dropped. `None` for an
    /// unknown key, a wrong secret or a client holding nothing.
    pub fn cancel_target(&self, key: CancelKey) -> Option<CancelPermit> {
        let client = {
            let clients = lock(&self.clients);
            let id = clients.by_key.get(&key)?;
            clients.by_id.get(id)?.clone()
        };
        let server = lock(&self.servers).get(&client.link()?)?.clone();
        // Counted before the holder is checked, both sequentially consistent: a client giving
        // the connection back either sees this count and waits for the permit, or unlinked
        // first and the check fails.
        server.cancels.fetch_add(1, Ordering::SeqCst);
        let permit = CancelPermit { server };
        (permit.server.link.load(Ordering::SeqCst) == client.id).then_some(permit)
    }
}

/// A client's registration; dropping it removes the record.
#[derive(Debug)]
pub struct ClientHandle {
    registry: Arc<Registry>,
    record: Arc<ClientRecord>,
}

impl ClientHandle {
    /// The record itself, to watch for a kill while the handle is borrowed elsewhere.
    pub fn shared(&self) -> Arc<ClientRecord> {
        self.record.clone()
    }
}

impl std::ops::Deref for ClientHandle {
    type Target = ClientRecord;

    fn deref(&self) -> &ClientRecord {
        &self.record
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        let mut clients = lock(&self.registry.clients);
        clients.by_id.remove(&self.record.id);
        clients.by_key.remove(&self.record.key());
    }
}

/// A server connection's registration; dropping it removes the record.
#[derive(Debug)]
pub struct ServerHandle {
    registry: Arc<Registry>,
    record: Arc<ServerRecord>,
}

impl std::ops::Deref for ServerHandle {
    type Target = ServerRecord;

    fn deref(&self) -> &ServerRecord {
        &self.record
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        lock(&self.registry.servers).remove(&self.record.id);
    }
}

/// One connected client, counted against `max_client_conn` from accept until dropped.
#[derive(Debug)]
pub struct ClientCount(Arc<AtomicUsize>);

impl ClientCount {
    /// Counts one more client in `clients`; returns the guard and the count including it.
    pub fn new(clients: &Arc<AtomicUsize>) -> (ClientCount, usize) {
        let n = clients.fetch_add(1, Ordering::AcqRel) + 1;
        (ClientCount(clients.clone()), n)
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_limits_count_per_database_and_per_user_until_dropped() {
        let registry = Arc::new(Registry::default());
        let first = registry.admit("db", "alice", 2, 1).expect("room");
        assert_eq!(
            registry.admit("db", "alice", 2, 1).err(),
            Some(ClientLimit::User)
        );
        let second = registry.admit("db", "bob", 2, 1).expect("room");
        assert_eq!(
            registry.admit("db", "carol", 2, 0).err(),
            Some(ClientLimit::Database)
        );
        registry
            .admit("other", "carol", 2, 0)
            .expect("another database");
        drop(first);
        registry.admit("db", "alice", 2, 1).expect("alice left");
        drop(second);
        // 0 means unlimited.
        let many: Vec<_> = (0..5)
            .map(|_| registry.admit("db2", "dave", 0, 0).expect("unlimited"))
            .collect();
        assert_eq!(many.len(), 5);
    }

    #[test]
    fn admitted_clients_share_their_names() {
        let registry = Arc::new(Registry::default());
        let first = registry.admit("db", "alice", 0, 0).expect("unlimited");
        let second = registry.admit("db", "alice", 0, 0).expect("unlimited");
        assert!(Arc::ptr_eq(first.database(), second.database()));
        assert!(Arc::ptr_eq(first.user(), second.user()));
        let other = registry.admit("db", "bob", 0, 0).expect("unlimited");
        assert!(Arc::ptr_eq(first.database(), other.database()));
        assert_eq!(&**other.user(), "bob");
    }

    #[test]
    fn a_client_record_fits_a_small_allocation() {
        // One per logged-in client, with the Arc's two counts: within a 224-byte size class.
        let size = std::mem::size_of::<ClientRecord>();
        assert!(size <= 208, "ClientRecord is {size} bytes");
    }

    fn info() -> ClientInfo {
        ClientInfo {
            user: "alice".into(),
            database: "app".into(),
            application_name: "psql".into(),
            peer: Endpoint::tcp("10.0.0.7:40000".parse().unwrap()),
            local: Endpoint::unix(6432),
            pool: Some(Arc::new(app_pool())),
            replication: "none",
        }
    }

    fn app_pool() -> PoolKey {
        PoolKey {
            database: "app".into(),
            user: "alice".into(),
        }
    }

    fn server(registry: &Arc<Registry>, pid: i32) -> ServerHandle {
        registry.add_server(NewServer {
            pool: PoolKey {
                database: "app".into(),
                user: "alice".into(),
            },
            addr: Arc::new(ServerAddr::new("127.0.0.1", 5432)),
            key: ServerKey {
                process_id: pid,
                secret_key: 99,
            },
            local: Endpoint::tcp("127.0.0.1:50000".parse().unwrap()),
            application_name: String::new(),
        })
    }

    #[test]
    fn records_come_and_go_with_their_handles() {
        let registry = Arc::new(Registry::default());
        let a = registry.add_client(info(), 0);
        let b = registry.add_client(info(), 0);
        let s = server(&registry, 4242);
        assert_ne!(a.id, b.id);
        assert_ne!(a.process_id, b.process_id);
        assert!(a.process_id > 0);
        assert_eq!(registry.clients().len(), 2);
        assert_eq!(
            registry.clients().iter().map(|c| c.id).collect::<Vec<_>>(),
            [a.id, b.id]
        );
        assert_eq!(registry.servers()[0].id, s.id);
        let a_id = a.id;
        drop(a);
        assert!(registry.client(a_id).is_none());
        assert!(registry.client(b.id).is_some());
        drop(s);
        assert!(registry.servers().is_empty());
    }

    #[test]
    fn request_times_read_off_the_monotonic_clock_are_wall_clock_times() {
        let registry = Arc::new(Registry::default());
        let c = registry.add_client(info(), 0);
        let before = SystemTime::now();
        c.start_waiting(Instant::now());
        let after = SystemTime::now();
        let at = c.request_time().unwrap_or(UNIX_EPOCH);
        // The conversion's two first readings are apart by however long the thread waited
        // between them: a generous bound still catches a wrong unit or sign.
        let slack = Duration::from_secs(1);
        assert!(
            at + slack >= before && at <= after + slack,
            "{at:?} {before:?} {after:?}"
        );
        // Instants on either side of the first reading convert alike (up to rounding).
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(micros_at(now + hour) - micros_at(now), 3_600_000_000);
        if let Some(earlier) = now.checked_sub(hour) {
            let apart = micros_at(now) - micros_at(earlier);
            assert!((3_599_999_999..=3_600_000_000).contains(&apart), "{apart}");
        }
    }

    #[test]
    fn linking_and_waiting_are_recorded_on_both_sides() {
        let registry = Arc::new(Registry::default());
        let c = registry.add_client(info(), 0);
        let s = server(&registry, 1);
        assert!(c.request_time().is_none());
        assert!(c.waiting_for().is_none());
        c.start_waiting(Instant::now());
        assert!(c.waiting_for().is_some());
        assert!(c.request_time().is_some());
        c.link_to(&s);
        assert!(c.waiting_for().is_none());
        assert_eq!(c.link(), Some(s.id));
        assert_eq!(s.link(), Some(c.id));
        assert!(s.request_time().is_some());
        c.unlink(&s);
        assert_eq!(c.link(), None);
        assert_eq!(s.link(), None);
    }

    #[test]
    fn longest_waits_are_kept_per_pool_for_waiting_clients_only() {
        let registry = Arc::new(Registry::default());
        let other = PoolKey {
            database: "app".into(),
            user: "bob".into(),
        };
        let first = registry.add_client(info(), 0);
        let second = registry.add_client(info(), 0);
        let elsewhere = registry.add_client(
            ClientInfo {
                pool: Some(Arc::new(other.clone())),
                ..info()
            },
            0,
        );
        let console = registry.add_client(
            ClientInfo {
                pool: None,
                ..info()
            },
            0,
        );
        assert!(registry.longest_waits().is_empty());
        // Wait times have a microsecond resolution; the older wait began 2 ms earlier.
        first.start_waiting(Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(2));
        second.start_waiting(Instant::now());
        elsewhere.start_waiting(Instant::now());
        console.start_waiting(Instant::now());
        let waits = registry.longest_waits();
        assert_eq!(waits.len(), 2, "{waits:?}");
        let app = waits[&app_pool()];
        assert!(app >= Duration::from_millis(2), "{app:?}");
        assert!(waits[&other] < app);
        let s = server(&registry, 5);
        first.link_to(&s);
        assert!(registry.longest_waits()[&app_pool()] < app);
    }

    #[test]
    fn cancel_goes_to_the_linked_server_only_with_the_right_secret() {
        let registry = Arc::new(Registry::default());
        let c = registry.add_client(info(), 0);
        let s = server(&registry, 777);
        assert!(registry.cancel_target(c.key()).is_none());
        c.link_to(&s);
        let permit = registry.cancel_target(c.key()).unwrap();
        assert_eq!(*permit.addr(), ServerAddr::new("127.0.0.1", 5432));
        assert_eq!(permit.key().process_id, 777);
        drop(permit);
        assert!(registry
            .cancel_target(CancelKey {
                secret_key: c.secret_key.wrapping_add(1),
                ..c.key()
            })
            .is_none());
        assert!(registry
            .cancel_target(CancelKey {
                process_id: c.process_id.wrapping_add(1),
                ..c.key()
            })
            .is_none());
        drop(s);
        assert!(registry.cancel_target(c.key()).is_none());
    }

    #[tokio::test]
    async fn a_connection_given_back_waits_for_cancels_of_its_holder() {
        let registry = Arc::new(Registry::default());
        let a = registry.add_client(info(), 0);
        let b = registry.add_client(info(), 0);
        let s = server(&registry, 778);
        a.link_to(&s);
        let permit = registry.cancel_target(a.key()).unwrap();
        a.unlink(&s);
        // Given back: later cancels of a are dropped, b's (holding nothing) too.
        assert!(registry.cancel_target(a.key()).is_none());
        assert!(registry.cancel_target(b.key()).is_none());
        let delivered = {
            let s = s.record.clone();
            tokio::spawn(async move { s.cancels_delivered().await })
        };
        tokio::task::yield_now().await;
        assert!(
            !delivered.is_finished(),
            "lent again with a cancel in flight"
        );
        drop(permit);
        tokio::time::timeout(Duration::from_secs(5), delivered)
            .await
            .expect("resolves once the cancel is delivered")
            .unwrap();
        // Nothing in flight: at once, and refused lookups left no count behind.
        tokio::time::timeout(Duration::from_secs(5), s.cancels_delivered())
            .await
            .expect("resolves at once");
        b.link_to(&s);
        assert!(registry.cancel_target(a.key()).is_none());
        assert!(registry.cancel_target(b.key()).is_some());
    }

    #[tokio::test]
    async fn kill_wakes_the_waiting_session_and_a_later_look() {
        let registry = Arc::new(Registry::default());
        let c = Arc::new(registry.add_client(info(), 0));
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.killed().await })
        };
        tokio::task::yield_now().await;
        c.kill();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("killed() resolves")
            .unwrap();
        // Asked after the kill, it resolves at once.
        tokio::time::timeout(Duration::from_secs(5), c.killed())
            .await
            .expect("killed() resolves after the fact");
    }

    #[test]
    fn with_peering_every_key_names_the_peer_and_stays_unique() {
        let registry = Arc::new(Registry::default());
        let clients: Vec<_> = (0..2000)
            .map(|_| registry.add_client(info(), 513))
            .collect();
        let keys: std::collections::HashSet<CancelKey> = clients.iter().map(|c| c.key()).collect();
        assert_eq!(keys.len(), clients.len());
        assert!(keys.iter().all(|k| k.peer_id() == 513 && k.process_id > 0));
    }
}
