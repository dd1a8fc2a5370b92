//! The Redis data path: a RESP listener beside the PostgreSQL one, in the same process, with
//! the same reload, metrics and drain. Ordinary commands are multiplexed over a few shared
//! connections per backend ([`shared`]); stateful and blocking ones borrow an exclusive
//! connection from a Tair-style pool ([`exclusive`]); Pub/Sub holds a connection of its own.
//! The pieces: [`resp`] (framing), [`command`] (routing), [`link`] (one server connection),
//! [`backend`] (budget and counters of a node), [`session`] (one client); for a Redis Cluster,
//! [`slots`] (hash slots, keys, the slot map) and [`cluster`] (a backend per master).

pub mod backend;
pub mod cluster;
pub mod command;
pub mod exclusive;
pub mod link;
pub mod resp;
pub mod session;
pub mod shared;
pub mod slots;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, RedisSettings, SecretKind};
use backend::Backend;
use cluster::Cluster;
use link::Login;

/// The running Redis side: settings, client credentials, the backend and its clients.
#[derive(Debug)]
pub struct Proxy {
    settings: Arc<ArcSwap<RedisSettings>>,
    /// `auth_file` users and their passwords; `None` without an `auth_file`.
    users: ArcSwap<Option<HashMap<String, String>>>,
    upstream: ArcSwap<Upstream>,
    clients: AtomicUsize,
    next_client: AtomicU64,
    draining: watch::Sender<bool>,
}

/// Where commands go: one standalone node, or the masters of a Redis Cluster.
#[derive(Debug)]
pub enum Upstream {
    /// `[redis] server`.
    Single(Arc<Backend>),
    /// `[redis] cluster_nodes`.
    Cluster(Arc<Cluster>),
}

impl Upstream {
    /// Every backend, for maintenance and statistics.
    fn backends(&self) -> Vec<Arc<Backend>> {
        match self {
            Upstream::Single(b) => vec![b.clone()],
            Upstream::Cluster(c) => c.backends(),
        }
    }
}

/// What `/metrics` and `/status` report of one backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendStats {
    /// `host:port`.
    pub backend: String,
    /// Shared connections open.
    pub shared: u32,
    /// Exclusive connections lent to clients.
    pub exclusive_in_use: u32,
    /// Exclusive connections idle in the pool.
    pub exclusive_idle: u32,
    /// Pub/Sub connections open.
    pub pubsub: u32,
    /// Exclusive connections taken from the pool.
    pub pool_hits: u64,
    /// Exclusive connections opened because none was idle.
    pub pool_misses: u64,
    /// Returned connections closed above `private_conn_pool_max_idle_per_db`.
    pub short_lived_closes: u64,
    /// Idle connections closed after `private_conn_idle_time_sec`.
    pub idle_closes: u64,
    /// Connections moved to another database with `SELECT`.
    pub select_switches: u64,
    /// Clients that waited for `max_server_connections`.
    pub waits: u64,
}

/// The plain passwords of `auth_file`; hashed entries cannot log in to Redis and are skipped.
fn load_users(settings: &RedisSettings) -> Option<HashMap<String, String>> {
    let path = settings.auth_file.as_ref()?;
    match config::load_userlist(path) {
        Ok(users) => Some(
            users
                .into_iter()
                .filter(|(user, pw)| {
                    let plain = config::secret_kind(pw) == SecretKind::Plain;
                    if !plain {
                        tracing::warn!(
                            user,
                            "[redis] auth_file: only plain passwords can log in to Redis; skipped"
                        );
                    }
                    plain
                })
                .collect(),
        ),
        Err(e) => {
            tracing::warn!("[redis] {e}; no Redis client can log in until a reload reads it");
            Some(HashMap::new())
        }
    }
}

impl Proxy {
    /// The Redis side for `settings`; `None` when it names neither a `server` nor
    /// `cluster_nodes`.
    pub fn new(settings: &RedisSettings) -> Option<Arc<Proxy>> {
        let shared = Arc::new(ArcSwap::from_pointee(settings.clone()));
        let upstream = upstream(settings, &shared)?;
        let proxy = Arc::new(Proxy {
            users: ArcSwap::from_pointee(load_users(settings)),
            settings: shared,
            upstream: ArcSwap::from_pointee(upstream),
            clients: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            draining: watch::Sender::new(false),
        });
        proxy.pre_open();
        Some(proxy)
    }

    /// Applies reloaded settings: the pool settings at once, new credentials to new
    /// connections, a new `server` to new clients (connected ones finish on the old one).
    pub fn reconfigure(&self, settings: &RedisSettings) {
        let old = self.settings.load_full();
        let changed = [
            ("listen_addr", old.listen_addr != settings.listen_addr),
            ("listen_port", old.listen_port != settings.listen_port),
        ];
        for (key, _) in changed.iter().filter(|(_, c)| *c) {
            tracing::warn!(
                setting = key,
                "[redis] changed, but takes effect only after a restart"
            );
        }
        self.users.store(Arc::new(load_users(settings)));
        self.settings.store(Arc::new(settings.clone()));
        let moved = match (&**self.upstream.load(), &settings.server) {
            (Upstream::Single(b), Some(server)) => b.addr != *server,
            // The map is read with weir's own login, so new credentials make a new cluster.
            (Upstream::Cluster(c), None) => {
                c.seeds() != settings.cluster_nodes.as_slice()
                    || (
                        old.server_user.as_ref(),
                        old.server_password.as_ref(),
                        &old.auth_file,
                    ) != (
                        settings.server_user.as_ref(),
                        settings.server_password.as_ref(),
                        &settings.auth_file,
                    )
            }
            _ => true,
        };
        if moved {
            if let Some(u) = upstream(settings, &self.settings) {
                self.upstream.store(Arc::new(u));
            }
        }
        self.pre_open();
        for b in self.upstream.load().backends() {
            b.wake_waiters();
        }
    }

    /// Marks the server login's database 0 for the minimum of idle connections.
    fn pre_open(&self) {
        if let Some(login) = self.server_login(2) {
            for b in self.upstream.load().backends() {
                exclusive::pre_open(&b, &login);
            }
        }
    }

    /// The login weir uses without an `auth_file`; `None` when clients log in themselves.
    fn server_login(&self, proto: u8) -> Option<Login> {
        let s = self.settings.load();
        s.auth_file.is_none().then(|| Login {
            user: s.server_user.clone(),
            password: s.server_password.clone(),
            proto,
            db: 0,
        })
    }

    /// The password of `user` in `auth_file`: `Err` when there is no `auth_file`.
    fn password_of(&self, user: &str) -> Result<Option<String>, ()> {
        match self.users.load().as_ref() {
            None => Err(()),
            Some(users) => Ok(users.get(user).cloned()),
        }
    }

    /// Clients connected to the Redis listener right now.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// Starts draining: the listener closes, clients are let go once nothing is in flight.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves once draining has begun.
    pub async fn drained(&self) {
        let mut rx = self.draining.subscribe();
        // The sender lives in `self`.
        let _ = rx.wait_for(|d| *d).await;
    }

    fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// What each backend (each master of a cluster) counted and holds right now.
    pub fn stats(&self) -> Vec<BackendStats> {
        self.upstream
            .load()
            .backends()
            .iter()
            .map(|b| stats_of(b))
            .collect()
    }

    /// Binds the RESP listener: `[redis] listen_addr` (else `pg_listen_addr`), `listen_port`.
    pub async fn bind(&self, pg_listen_addr: &str) -> std::io::Result<Vec<TcpListener>> {
        let s = self.settings.load_full();
        let addr = s.listen_addr.as_deref().unwrap_or(pg_listen_addr);
        let mut out = Vec::new();
        for host in addr.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let hosts: &[&str] = if host == "*" {
                &["0.0.0.0", "::"]
            } else {
                &[host]
            };
            for host in hosts {
                for addr in tokio::net::lookup_host((*host, s.listen_port)).await? {
                    out.push(bind_one(addr)?);
                }
            }
        }
        if out.is_empty() {
            return Err(std::io::Error::other("[redis] no address to listen on"));
        }
        Ok(out)
    }

    /// Accepts clients until draining begins, and keeps the pool maintained until then.
    pub async fn run(self: Arc<Proxy>, listeners: Vec<TcpListener>) {
        let mut tasks = tokio::task::JoinSet::new();
        for l in listeners {
            tasks.spawn(accept(l, self.clone()));
        }
        tasks.spawn(maintain(self.clone()));
        tokio::select! {
            () = async { while tasks.join_next().await.is_some() {} } => {}
            () = self.drained() => tasks.abort_all(),
        }
    }
}

/// The upstream `settings` name: a standalone `server`, else the `cluster_nodes`.
fn upstream(settings: &RedisSettings, shared: &Arc<ArcSwap<RedisSettings>>) -> Option<Upstream> {
    if let Some(server) = &settings.server {
        return Some(Upstream::Single(Backend::new(
            server.clone(),
            shared.clone(),
        )));
    }
    if settings.cluster_nodes.is_empty() {
        return None;
    }
    let server_login = settings.auth_file.is_none().then(|| Login {
        user: settings.server_user.clone(),
        password: settings.server_password.clone(),
        proto: 2,
        db: 0,
    });
    Some(Upstream::Cluster(Cluster::new(
        settings.cluster_nodes.clone(),
        shared.clone(),
        server_login,
    )))
}

fn stats_of(b: &Backend) -> BackendStats {
    let open = b.open();
    let idle = b.pool.idle_count() as u32;
    let c = &b.counters;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    BackendStats {
        backend: b.addr.clone(),
        shared: open.shared,
        exclusive_in_use: open.exclusive.saturating_sub(idle),
        exclusive_idle: idle,
        pubsub: open.pubsub,
        pool_hits: n(&c.hits),
        pool_misses: n(&c.misses),
        short_lived_closes: n(&c.short_lived_closes),
        idle_closes: n(&c.idle_closes),
        select_switches: n(&c.select_switches),
        waits: n(&c.waits),
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let s = tokio::net::TcpSocket::new_v6()?;
            socket2::SockRef::from(&s).set_only_v6(true)?;
            s
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let id = proxy.next_client.fetch_add(1, Ordering::Relaxed);
                proxy.clients.fetch_add(1, Ordering::AcqRel);
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    session::serve(&proxy, stream, id).await;
                    proxy.clients.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "[redis] accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn maintain(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(exclusive::MAINTENANCE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let upstream = proxy.upstream.load_full();
        if let Upstream::Cluster(c) = &*upstream {
            c.maintain().await;
        }
        for backend in upstream.backends() {
            exclusive::maintain(&backend).await;
        }
    }
}
