//! Shared connections: `shared_connections` per login (user, protocol, database), each
//! carrying the ordinary commands of many clients. A client always uses the same one of a
//! group, so its commands reach Redis in the order it sent them and replies come back in it.
//!
//! Clients of RESP2 and RESP3 never share a connection: a reply's encoding is fixed by the
//! connection's protocol (maps, doubles, nulls differ), and converting RESP3 back to RESP2 is
//! what Redis does per connection, so a group per protocol lets Redis do it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::backend::{Backend, Kind};
use super::link::{Link, Login};

/// The shared connections of one login; a cell is empty until first used or after its
/// connection was lost.
#[derive(Debug)]
struct Group {
    cells: Vec<tokio::sync::Mutex<Option<Arc<Link>>>>,
}

/// Every group of a backend.
#[derive(Debug, Default)]
pub struct Groups {
    groups: Mutex<HashMap<Login, Arc<Group>>>,
}

/// The shared connection for client `client` and `login`, opened if needed.
pub async fn link(backend: &Arc<Backend>, login: &Login, client: u64) -> Result<Arc<Link>, String> {
    let size = backend.settings.load().shared_connections.max(1) as usize;
    let group = {
        let mut groups = backend
            .shared
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let group = groups
            .entry(login.clone())
            .or_insert_with(|| new_group(size));
        // A reload changed the size: later clients use a group of the new size, and the old
        // connections close once their clients have moved on.
        if group.cells.len() != size {
            *group = new_group(size);
        }
        group.clone()
    };
    let cell = &group.cells[(client % size as u64) as usize];
    let mut held = cell.lock().await;
    if let Some(link) = held.as_ref().filter(|l| l.is_alive()) {
        return Ok(link.clone());
    }
    *held = None;
    let slot = backend.slot(Kind::Shared).await;
    let link = Arc::new(Link::open(&backend.addr, login, slot).await?);
    *held = Some(link.clone());
    Ok(link)
}

fn new_group(size: usize) -> Arc<Group> {
    Arc::new(Group {
        cells: (0..size).map(|_| tokio::sync::Mutex::new(None)).collect(),
    })
}
