//! The pool of exclusive connections, per login and database, with Tair's four settings:
//! `private_conn_pool_enabled` (off: every exclusive use opens and closes its own
//! connection), `private_conn_idle_time_sec` (idle connections older than this are closed;
//! 0 closes them at once), `private_conn_pool_max_idle_per_db` (a connection returned when
//! this many are idle is closed: short-lived mode) and `private_conn_pool_min_idle_per_db`
//! (never reaped below this, and opened in advance). Settings are read at each decision, so
//! a reload applies at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::backend::{Backend, Kind};
use super::link::{Link, Login};
use super::resp::{self, Command};

/// An idle connection and since when.
#[derive(Debug)]
struct Idle {
    link: Link,
    since: Instant,
}

/// Idle exclusive connections by login (database included).
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<Login, Vec<Idle>>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Login, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Idle connections right now.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Makes sure `login` gets its minimum of idle connections at the next maintenance.
    fn remember(&self, login: &Login) {
        self.lock().entry(login.clone()).or_default();
    }

    fn take(&self, login: &Login) -> Option<Link> {
        let mut idle = self.lock();
        let list = idle.get_mut(login)?;
        list.retain(|i| i.link.is_alive());
        // The most recently used: its peers age out sooner, so a quiet pool shrinks.
        list.pop().map(|i| i.link)
    }

    /// An idle connection of the same user and protocol in another database.
    fn take_other_db(&self, login: &Login) -> Option<Link> {
        let mut idle = self.lock();
        idle.iter_mut()
            .filter(|(k, _)| k.db != login.db && k.user == login.user && k.proto == login.proto)
            .filter(|(k, _)| k.password == login.password)
            .find_map(|(_, list)| {
                list.retain(|i| i.link.is_alive());
                list.pop().map(|i| i.link)
            })
    }
}

/// An exclusive connection for `login`: from the pool when one is idle (a hit), else a new
/// one (a miss). At `max_server_connections` an idle connection of another database is
/// switched over with `SELECT` (counted), or the client waits for one to be freed.
pub async fn acquire(backend: &Arc<Backend>, login: &Login) -> Result<Link, String> {
    let enabled = backend.settings.load().private_conn_pool_enabled;
    if enabled {
        backend.pool.remember(login);
        if let Some(link) = backend.pool.take(login) {
            backend.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(link);
        }
        backend.counters.misses.fetch_add(1, Ordering::Relaxed);
    }
    let mut waited = false;
    loop {
        let freed = backend.freed();
        if enabled {
            if let Some(link) = backend.pool.take(login) {
                return Ok(link);
            }
        }
        if let Some(slot) = backend.try_slot(Kind::Exclusive) {
            return Link::open(&backend.addr, login, slot).await;
        }
        if enabled {
            if let Some(link) = backend.pool.take_other_db(login) {
                return switch_db(backend, link, login.db).await;
            }
        }
        if !waited {
            waited = true;
            backend.counters.waits.fetch_add(1, Ordering::Relaxed);
        }
        freed.await;
    }
}

async fn switch_db(backend: &Backend, link: Link, db: u32) -> Result<Link, String> {
    let select = Command::from_args(["SELECT", &db.to_string()]);
    let reply = link
        .send(select.wire)
        .await
        .await
        .map_err(|_| "ERR weir: server connection lost".to_owned())?;
    if resp::is_error(&reply) {
        return Err(String::from_utf8_lossy(&reply[1..]).trim_end().to_owned());
    }
    backend
        .counters
        .select_switches
        .fetch_add(1, Ordering::Relaxed);
    Ok(link)
}

/// Gives an exclusive connection back. `clean` says the client left nothing on it (no
/// transaction, watch, pending reply or pinned setting); anything else is closed.
pub fn release(backend: &Backend, link: Link, login: &Login, clean: bool) {
    let s = backend.settings.load();
    if clean && s.private_conn_pool_enabled && link.is_alive() {
        link.set_push_sink(None);
        let mut idle = backend.pool.lock();
        let list = idle.entry(login.clone()).or_default();
        let n = list.len() as u32;
        if n >= s.private_conn_pool_max_idle_per_db {
            backend
                .counters
                .short_lived_closes
                .fetch_add(1, Ordering::Relaxed);
        } else if s.private_conn_idle_time_sec == 0 && n >= s.private_conn_pool_min_idle_per_db {
            backend.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
        } else {
            list.push(Idle {
                link,
                since: Instant::now(),
            });
        }
    }
    // Whatever was not kept is closed by now; either way a waiter may proceed.
    backend.wake_waiters();
}

/// How often idle connections are reaped and the minimum is topped up.
pub const MAINTENANCE_PERIOD: Duration = Duration::from_millis(500);

/// Closes idle connections past their time (keeping the minimum per database), closes all
/// when the pool is off, and opens connections up to the minimum.
pub async fn maintain(backend: &Arc<Backend>) {
    let s = backend.settings.load_full();
    let mut short = Vec::new();
    {
        let mut idle = backend.pool.lock();
        for (login, list) in idle.iter_mut() {
            list.retain(|i| i.link.is_alive());
            let keep = if s.private_conn_pool_enabled {
                s.private_conn_pool_min_idle_per_db as usize
            } else {
                0
            };
            let max = if s.private_conn_pool_enabled {
                s.private_conn_pool_max_idle_per_db as usize
            } else {
                0
            };
            // Oldest first; the newest are at the end.
            while list.len() > keep
                && (list.len() > max || list[0].since.elapsed() >= s.idle_time())
            {
                backend.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                list.remove(0);
            }
            if list.len() < keep {
                short.push((login.clone(), keep - list.len()));
            }
        }
    }
    backend.wake_waiters();
    if !s.private_conn_pool_enabled {
        return;
    }
    for (login, missing) in short {
        for _ in 0..missing {
            let Some(slot) = backend.try_slot(Kind::Exclusive) else {
                return;
            };
            match Link::open(&backend.addr, &login, slot).await {
                Ok(link) => backend
                    .pool
                    .lock()
                    .entry(login.clone())
                    .or_default()
                    .push(Idle {
                        link,
                        since: Instant::now(),
                    }),
                Err(e) => {
                    tracing::warn!(backend = %backend.addr, error = %e, "cannot pre-open a Redis connection");
                    return;
                }
            }
        }
    }
}

/// Opens the minimum of idle connections for `login` at the next maintenance.
pub fn pre_open(backend: &Backend, login: &Login) {
    backend.pool.remember(login);
}
