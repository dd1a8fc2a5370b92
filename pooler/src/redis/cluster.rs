//! A Redis Cluster behind weir: the slot map (read with `CLUSTER SLOTS` from a known master
//! or a seed node), a [`Backend`] per master (its own shared connections, exclusive pool,
//! budget and counters), and when the map is read again: at once when a slot has no master,
//! at the next maintenance after a MOVED or a failed connection, and every
//! [`REFRESH_PERIOD`] otherwise; never more often than maintenance runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;

use super::backend::Backend;
use super::exclusive;
use super::link::{self, Login};
use super::resp::{self, Command};
use super::slots::SlotMap;
use crate::config::RedisSettings;

/// How often the slot map is read again when nothing asked for it.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(30);

/// How long a node may take to answer `CLUSTER SLOTS`.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's nodes as weir knows them.
#[derive(Debug)]
pub struct Cluster {
    seeds: Vec<String>,
    settings: Arc<ArcSwap<RedisSettings>>,
    map: ArcSwap<SlotMap>,
    /// Bumped by every map read, so callers that queued behind one read do not repeat it.
    generation: AtomicU64,
    reading: tokio::sync::Mutex<()>,
    last_read: Mutex<Instant>,
    wanted: AtomicBool,
    backends: Mutex<HashMap<String, Arc<Backend>>>,
    /// Who reads the map: weir's own login, else the latest client's.
    login: Mutex<Option<Login>>,
    /// Weir's own login, whose minimum of idle connections every master gets.
    server_login: Option<Login>,
}

impl Cluster {
    /// A cluster known by its `seeds`; the map is read when first needed.
    pub fn new(
        seeds: Vec<String>,
        settings: Arc<ArcSwap<RedisSettings>>,
        server_login: Option<Login>,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            seeds,
            settings,
            map: ArcSwap::from_pointee(SlotMap::default()),
            generation: AtomicU64::new(0),
            reading: tokio::sync::Mutex::new(()),
            last_read: Mutex::new(Instant::now()),
            wanted: AtomicBool::new(false),
            backends: Mutex::default(),
            login: Mutex::new(server_login.clone()),
            server_login,
        })
    }

    /// The seed nodes it was configured with.
    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// The backend of the master at `addr`, created when first named.
    pub fn backend(&self, addr: &str) -> Arc<Backend> {
        let mut backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        backends
            .entry(addr.to_owned())
            .or_insert_with(|| {
                let b = Backend::new(addr.to_owned(), self.settings.clone());
                if let Some(login) = &self.server_login {
                    exclusive::pre_open(&b, login);
                }
                b
            })
            .clone()
    }

    /// Every backend created so far, masters of the current map first in map order.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        let masters = self.map.load().masters.clone();
        let backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = masters
            .iter()
            .filter_map(|m| backends.get(m))
            .cloned()
            .collect();
        out.extend(
            backends
                .iter()
                .filter(|(a, _)| !masters.contains(a))
                .map(|(_, b)| b.clone()),
        );
        out
    }

    /// Remembers a client's login for reading the map when weir has none of its own.
    pub fn note_login(&self, login: &Login) {
        if self.server_login.is_none() {
            *self.login.lock().unwrap_or_else(|p| p.into_inner()) = Some(login.in_db(0));
        }
    }

    /// The master serving `slot`, reading the map first if no master is known for it.
    pub async fn for_slot(&self, slot: u16) -> Result<Arc<Backend>, String> {
        if let Some(m) = self.map.load().master(slot) {
            return Ok(self.backend(m));
        }
        self.read_map(self.generation.load(Ordering::Acquire))
            .await?;
        match self.map.load().master(slot) {
            Some(m) => Ok(self.backend(m)),
            None => Err(format!("CLUSTERDOWN Hash slot not served ({slot})")),
        }
    }

    /// The master of `slot` in the map as it is, without reading it.
    pub fn master_now(&self, slot: u16) -> Option<String> {
        self.map.load().master(slot).map(str::to_owned)
    }

    /// A master for a keyless command: `hint` (the client's id) spreads clients over them.
    pub async fn any(&self, hint: u64) -> Result<Arc<Backend>, String> {
        if self.map.load().is_empty() {
            self.read_map(self.generation.load(Ordering::Acquire))
                .await?;
        }
        let map = self.map.load();
        if map.masters.is_empty() {
            return Err("CLUSTERDOWN The cluster is down".to_owned());
        }
        Ok(self.backend(&map.masters[(hint % map.masters.len() as u64) as usize]))
    }

    /// A MOVED: the slot is `addr`'s from now on, and the whole map is read again soon.
    pub fn moved(&self, slot: u16, addr: &str) {
        let mut map = SlotMap::clone(&self.map.load());
        map.assign(slot, addr);
        self.map.store(Arc::new(map));
        self.refresh_soon();
    }

    /// Asks for the map to be read at the next maintenance (a node failed, or moved slots).
    pub fn refresh_soon(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    /// Maintenance: reads the map if asked to or if it is older than [`REFRESH_PERIOD`].
    pub async fn maintain(&self) {
        let due = self
            .last_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= REFRESH_PERIOD;
        if self.wanted.swap(false, Ordering::AcqRel) || due {
            if let Err(e) = self.read_map(self.generation.load(Ordering::Acquire)).await {
                tracing::warn!(error = %e, "[redis] cannot read the cluster's slot map");
            }
        }
    }

    /// Reads the map from the first node that answers: known masters, then the seeds.
    /// `seen` is the generation the caller saw; if another read finished meanwhile, done.
    async fn read_map(&self, seen: u64) -> Result<(), String> {
        let _reading = self.reading.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        *self.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let login = self
            .login
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(Login {
                user: None,
                password: None,
                proto: 2,
                db: 0,
            });
        let login = Login { proto: 2, ..login };
        let mut nodes = self.map.load().masters.clone();
        for seed in &self.seeds {
            if !nodes.contains(seed) {
                nodes.push(seed.clone());
            }
        }
        let mut last = "ERR weir: no cluster node to ask".to_owned();
        for node in nodes {
            match read_slots(&node, &login).await {
                Ok(map) if !map.is_empty() => {
                    self.map.store(Arc::new(map));
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
                Ok(_) => last = format!("CLUSTERDOWN {node} serves no slot"),
                Err(e) => last = e,
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Err(last)
    }
}

/// `CLUSTER SLOTS` from `node`, on a connection of its own, closed afterwards.
async fn read_slots(node: &str, login: &Login) -> Result<SlotMap, String> {
    let (mut stream, _, mut buf) = link::connect(node, login).await?;
    stream
        .write_all(&Command::from_args(["CLUSTER", "SLOTS"]).wire)
        .await
        .map_err(|e| format!("ERR weir: Redis at {node}: {e}"))?;
    let reply = tokio::time::timeout(READ_TIMEOUT, link::read_frame(&mut stream, &mut buf, node))
        .await
        .map_err(|_| format!("ERR weir: Redis at {node} did not answer CLUSTER SLOTS in time"))??;
    if resp::is_error(&reply) {
        return Err(String::from_utf8_lossy(&reply[1..]).trim_end().to_owned());
    }
    let host = node.rsplit_once(':').map_or(node, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    SlotMap::parse(&reply, host).map_err(|e| format!("ERR weir: {node}: {e}"))
}
