//! Peering: this process's place in a group of poolers behind one load balancer, and the
//! forwarding of cancel requests whose key another peer issued (PgBouncer's `peer_id` and
//! `[peers]`). Each peer has a small pool: at most its `pool_size` cancels in flight at
//! once, the rest wait for a turn (SHOW PEER_POOLS).
//!
//! A process knows its own peer id from `peer_id`, or, when that is 0 and it was started
//! with a peer address (`--peer-address`, which the operator sets to the pod IP), from the
//! `[peers]` entry whose host is that address. Once known, the id stays until restart:
//! keys already issued carry it.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::cancel_key::CancelKey;
use crate::config::Config;
use crate::server::{self, ServerAddr};
use crate::stream::Keepalive;

/// The bound on reaching a peer when `server_connect_timeout` is 0 (PgBouncer's default).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Every peer pool, this process's peer id, and what became of forwarded cancels.
#[derive(Debug, Default)]
pub struct Peers {
    /// The address this process has in `[peers]`, if it was told one.
    address: Option<String>,
    /// This process's peer id; 0 while unknown or when peering is off.
    own: AtomicU16,
    pools: Mutex<BTreeMap<u16, Arc<PeerPool>>>,
    totals: Mutex<BTreeMap<u16, Totals>>,
    dropped_unknown_peer: AtomicU64,
    dropped_forwarded: AtomicU64,
}

/// Forwarded cancels to one peer since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Delivered to the peer.
    pub forwarded: u64,
    /// Not delivered: the peer could not be reached in time.
    pub failed: u64,
}

/// Cancels in flight to one peer.
#[derive(Debug)]
struct PeerPool {
    size: AtomicU32,
    permits: Semaphore,
    /// Turns to take back as they end, after a shrink found them in use.
    excess: AtomicU32,
    waiting: AtomicUsize,
    active: AtomicUsize,
    connecting: AtomicUsize,
    sending: AtomicUsize,
}

/// One row of SHOW PEER_POOLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPoolView {
    /// The peer id.
    pub peer_id: u16,
    /// Cancels with a turn, being forwarded (`cl_active_cancel_req`).
    pub active: usize,
    /// Cancels waiting for a turn (`cl_waiting_cancel_req`).
    pub waiting: usize,
    /// Connections that have sent their CancelRequest (`sv_active_cancel`).
    pub sending: usize,
    /// Connections being opened (`sv_login`).
    pub connecting: usize,
}

/// Counts one in-flight state for as long as it lives.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn enter(counter: &'a AtomicUsize) -> Gauge<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single map operation.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pool never has fewer than one turn: with none, every cancel would wait in vain.
fn turns(config: &Config, peer: u16) -> u32 {
    config
        .peers
        .get(&peer)
        .and_then(|p| p.pool_size)
        .unwrap_or(config.pgbouncer.default_pool_size)
        .max(1)
}

impl PeerPool {
    fn new(size: u32) -> PeerPool {
        PeerPool {
            size: AtomicU32::new(size),
            permits: Semaphore::new(size as usize),
            excess: AtomicU32::new(0),
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            connecting: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
        }
    }

    fn resize(&self, size: u32) {
        let old = self.size.swap(size, Ordering::Relaxed);
        if size > old {
            self.permits.add_permits((size - old) as usize);
        } else {
            let wanted = (old - size) as usize;
            let taken = self.permits.forget_permits(wanted);
            let owed = u32::try_from(wanted - taken).unwrap_or(u32::MAX);
            self.excess.fetch_add(owed, Ordering::Relaxed);
        }
    }

    /// Ends a turn: the permit goes back, unless a shrink is still owed one.
    fn give_back(&self, permit: tokio::sync::SemaphorePermit<'_>) {
        let owed = self
            .excess
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if owed.is_ok() {
            permit.forget();
        }
    }
}

impl Peers {
    /// No peer id yet; `address` is this process's host in `[peers]`, if known.
    pub fn new(address: Option<String>) -> Peers {
        Peers {
            address,
            ..Peers::default()
        }
    }

    /// Takes in a (re)loaded configuration: learns this process's peer id if it was not
    /// known yet, resizes the pools and drops those of peers no longer configured.
    pub fn configure(&self, config: &Config) {
        if self.own.load(Ordering::Relaxed) == 0 {
            let found = match config.pgbouncer.peer_id {
                0 => self.address.as_deref().and_then(|address| {
                    config
                        .peers
                        .iter()
                        .find(|(_, p)| p.host == address)
                        .map(|(id, _)| *id)
                }),
                id => Some(id),
            };
            if let Some(id) = found {
                self.own.store(id, Ordering::Relaxed);
                tracing::info!(peer_id = id, "peering on: cancel keys carry this peer id");
            }
        }
        let mut pools = lock(&self.pools);
        pools.retain(|id, _| config.peers.contains_key(id));
        for (id, pool) in pools.iter() {
            pool.resize(turns(config, *id));
        }
    }

    /// This process's peer id; 0 while peering is off or the id is not known yet.
    pub fn own_id(&self) -> u16 {
        self.own.load(Ordering::Relaxed)
    }

    /// Whether this process was given a peer address but `[peers]` has no entry for it yet:
    /// it must not take clients, whose cancel keys would not name it.
    pub fn awaiting_id(&self) -> bool {
        self.address.is_some() && self.own_id() == 0
    }

    /// Forwards a CancelRequest for `key`, issued by peer `peer`, to that peer. A peer not in
    /// `[peers]` means the key is stale or forged: dropped quietly, as PostgreSQL drops an
    /// unknown key. Reaching the peer is bounded by `server_connect_timeout`.
    pub async fn forward(&self, config: &Config, peer: u16, key: CancelKey) {
        let Some(entry) = config.peers.get(&peer) else {
            self.dropped_unknown_peer.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer, "cancel request for a key of an unknown peer dropped");
            return;
        };
        let pool = lock(&self.pools)
            .entry(peer)
            .or_insert_with(|| Arc::new(PeerPool::new(turns(config, peer))))
            .clone();
        let addr = ServerAddr::new(&entry.host, entry.port);
        let limit = match config.pgbouncer.server_connect_timeout {
            t if t.is_zero() => DEFAULT_CONNECT_TIMEOUT,
            t => t,
        };
        let keepalive = Keepalive::of(config);
        let reached = tokio::time::timeout(limit, async {
            let permit = {
                let _waiting = Gauge::enter(&pool.waiting);
                pool.permits.acquire().await.map_err(io::Error::other)?
            };
            let _active = Gauge::enter(&pool.active);
            let sent = async {
                let stream = {
                    let _connecting = Gauge::enter(&pool.connecting);
                    addr.connect(limit, &keepalive).await?
                };
                let _sending = Gauge::enter(&pool.sending);
                server::cancel_over(stream, key.process_id, key.secret_key).await
            }
            .await;
            pool.give_back(permit);
            sent
        })
        .await;
        let mut totals = lock(&self.totals);
        let totals = totals.entry(peer).or_default();
        match reached {
            Ok(Ok(())) => {
                totals.forwarded += 1;
                tracing::debug!(peer, %addr, "cancel request forwarded to its peer");
            }
            Ok(Err(e)) => {
                totals.failed += 1;
                tracing::warn!(peer, %addr, error = %e, "could not forward a cancel request");
            }
            Err(_) => {
                totals.failed += 1;
                tracing::warn!(peer, %addr, "could not forward a cancel request in time");
            }
        }
    }

    /// Records a cancel dropped because it had already been forwarded once.
    pub fn dropped_forwarded(&self) {
        self.dropped_forwarded.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("cancel request already forwarded by a peer dropped");
    }

    /// The peer pools, by peer id (SHOW PEER_POOLS).
    pub fn pools(&self) -> Vec<PeerPoolView> {
        lock(&self.pools)
            .iter()
            .map(|(id, p)| PeerPoolView {
                peer_id: *id,
                active: p.active.load(Ordering::Relaxed),
                waiting: p.waiting.load(Ordering::Relaxed),
                sending: p.sending.load(Ordering::Relaxed),
                connecting: p.connecting.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Forwarded cancels per peer since start.
    pub fn totals(&self) -> BTreeMap<u16, Totals> {
        lock(&self.totals).clone()
    }

    /// Cancels dropped since start: for an unknown peer, and already forwarded once.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_unknown_peer.load(Ordering::Relaxed),
            self.dropped_forwarded.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerEntry;

    fn config(peer_id: u16, peers: &[(u16, &str)]) -> Config {
        let mut c = Config::default();
        c.pgbouncer.peer_id = peer_id;
        c.peers = peers
            .iter()
            .map(|(id, host)| {
                let entry = PeerEntry {
                    host: (*host).to_owned(),
                    port: 6432,
                    pool_size: None,
                };
                (*id, entry)
            })
            .collect();
        c
    }

    #[test]
    fn the_own_id_comes_from_peer_id_or_the_own_address_and_then_stays() {
        let peers = Peers::new(None);
        peers.configure(&config(4, &[]));
        assert_eq!(peers.own_id(), 4);
        assert!(!peers.awaiting_id());

        let peers = Peers::new(Some("10.0.0.2".to_owned()));
        peers.configure(&config(0, &[(1, "10.0.0.1")]));
        assert_eq!(peers.own_id(), 0);
        assert!(peers.awaiting_id());
        peers.configure(&config(0, &[(1, "10.0.0.1"), (7, "10.0.0.2")]));
        assert_eq!(peers.own_id(), 7);
        assert!(!peers.awaiting_id());
        // A later [peers] that says otherwise does not change keys already issued.
        peers.configure(&config(0, &[(9, "10.0.0.2")]));
        assert_eq!(peers.own_id(), 7);

        let off = Peers::new(None);
        off.configure(&config(0, &[(1, "10.0.0.1")]));
        assert_eq!((off.own_id(), off.awaiting_id()), (0, false));
    }

    #[tokio::test]
    async fn a_key_of_an_unknown_peer_is_counted_and_dropped() {
        let peers = Peers::new(None);
        let c = config(1, &[(1, "127.0.0.1")]);
        peers.configure(&c);
        peers.forward(&c, 5, CancelKey::issue([1; 8], 5)).await;
        assert_eq!(peers.dropped(), (1, 0));
        assert!(peers.pools().is_empty());
        assert!(peers.totals().is_empty());
    }

    #[test]
    fn pools_follow_the_configured_sizes() {
        let pool = PeerPool::new(2);
        pool.resize(5);
        assert_eq!(pool.permits.available_permits(), 5);
        pool.resize(1);
        assert_eq!(pool.permits.available_permits(), 1);

        // Shrunk while both turns are in use: the first to end is taken back.
        pool.resize(2);
        let (a, b) = (pool.permits.try_acquire(), pool.permits.try_acquire());
        pool.resize(1);
        pool.give_back(a.expect("a turn"));
        assert_eq!(pool.permits.available_permits(), 0);
        pool.give_back(b.expect("a turn"));
        assert_eq!(pool.permits.available_permits(), 1);
    }
}
