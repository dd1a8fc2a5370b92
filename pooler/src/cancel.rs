//! Cancel requests. Each client is given its own BackendKeyData; a CancelRequest carrying it
//! is forwarded, with the real server's key, to whichever server connection that client is
//! using at that moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::server::{ServerAddr, ServerKey};

/// Where a client's query is running right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The server's address.
    pub addr: Arc<ServerAddr>,
    /// The server backend's key.
    pub key: ServerKey,
}

/// The slot a client updates when it gets or gives back a server connection.
pub type CancelSlot = Arc<Mutex<Option<CancelTarget>>>;

#[derive(Debug)]
struct Entry {
    secret: i32,
    slot: CancelSlot,
}

/// Every logged-in client's cancel key.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, Entry>>,
}

/// A client's registration; unregisters on drop.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    /// The process id the client was told.
    pub process_id: i32,
    /// The secret the client was told.
    pub secret_key: i32,
    /// Where the client's current query runs.
    pub slot: CancelSlot,
}

impl CancelRegistry {
    /// Gives a client a fresh random key that no other connected client has.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut rng = rand::thread_rng();
        let slot: CancelSlot = Arc::new(Mutex::new(None));
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (process_id, secret_key) = loop {
            // Positive ids look like real PIDs to tools that print them.
            let pid = rng.gen_range(1..i32::MAX);
            if !clients.contains_key(&pid) {
                break (pid, rng.gen::<i32>());
            }
        };
        clients.insert(
            process_id,
            Entry {
                secret: secret_key,
                slot: slot.clone(),
            },
        );
        CancelHandle {
            registry: self.clone(),
            process_id,
            secret_key,
            slot,
        }
    }

    /// The server a CancelRequest with this key should go to, if the key is valid and its
    /// client is running something.
    pub fn lookup(&self, process_id: i32, secret_key: i32) -> Option<CancelTarget> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let entry = clients.get(&process_id)?;
        if entry.secret != secret_key {
            return None;
        }
        let target = entry.slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        target
    }

    /// How many clients are registered.
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no client is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CancelHandle {
    /// Records the server the client now uses, or `None` when it gave it back.
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.process_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CancelTarget {
        CancelTarget {
            addr: Arc::new(ServerAddr::new("127.0.0.1", 5432)),
            key: ServerKey {
                process_id: 42,
                secret_key: 7,
            },
        }
    }

    #[test]
    fn cancel_reaches_the_current_server_only_with_the_right_secret() {
        let registry = Arc::new(CancelRegistry::default());
        let handle = registry.register();
        assert!(registry
            .lookup(handle.process_id, handle.secret_key)
            .is_none());
        handle.set(Some(target()));
        let found = registry.lookup(handle.process_id, handle.secret_key);
        assert_eq!(found.map(|t| t.key.process_id), Some(42));
        assert!(registry
            .lookup(handle.process_id, handle.secret_key.wrapping_add(1))
            .is_none());
        handle.set(None);
        assert!(registry
            .lookup(handle.process_id, handle.secret_key)
            .is_none());
    }

    #[test]
    fn keys_are_unique_and_dropped_with_the_client() {
        let registry = Arc::new(CancelRegistry::default());
        let handles: Vec<_> = (0..1000).map(|_| registry.register()).collect();
        let mut ids: Vec<i32> = handles.iter().map(|h| h.process_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 1000);
        drop(handles);
        assert!(registry.is_empty());
    }
}
