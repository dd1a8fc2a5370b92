//! Peering of the pooler pods, so that a cancel request reaching any pod through the Service
//! is forwarded to the pod holding the client (the pooler's `[peers]`, PgBouncer's design).
//!
//! Pods of a Deployment have no stable ordinal, so the operator gives each pod IP a peer id
//! and keeps it for as long as the IP is among the pods: ids in force stay, a new IP takes
//! the next id above every id in force (the lowest free one once ids run out), so surge pods
//! of a rolling update never share an id with the pods they replace and an id is not
//! reused while a peer may still know it under its old address. The IPs come from the
//! headless peers Service, which lists every pod, ready or not: a starting pod needs its id
//! before it takes clients, and a draining one still holds sessions. Each pod is started
//! with its own IP (`--peer-address`, from the downward API) and takes the id of the
//! `[peers]` entry with that host; until there is one it reports not ready.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use weir_pooler::config::{Config, PeerEntry};

/// Peer ids for the current pod IPs: `in_force` (id → IP, from the ConfigMap in force)
/// keeps the ids of IPs still present; new IPs, in address order, take fresh ids.
pub fn assign(in_force: &BTreeMap<u16, String>, pods: &BTreeSet<String>) -> BTreeMap<u16, String> {
    let mut assigned: BTreeMap<u16, String> = in_force
        .iter()
        .filter(|(_, ip)| pods.contains(*ip))
        .map(|(id, ip)| (*id, ip.clone()))
        .collect();
    let taken: BTreeSet<&String> = assigned.values().collect();
    let new: Vec<String> = pods
        .iter()
        .filter(|ip| !taken.contains(ip))
        .cloned()
        .collect();
    let mut next = in_force
        .keys()
        .chain(assigned.keys())
        .max()
        .copied()
        .unwrap_or(0);
    for ip in new {
        let id = match next.checked_add(1) {
            Some(id) => id,
            // Past 65535: the lowest id nobody holds.
            None => match (1..=u16::MAX).find(|id| !assigned.contains_key(id)) {
                Some(id) => id,
                None => break,
            },
        };
        next = id;
        assigned.insert(id, ip);
    }
    assigned
}

/// The `[peers]` section for `assigned` pods listening on `port`.
pub(crate) fn section(assigned: &BTreeMap<u16, String>, port: u16) -> BTreeMap<u16, PeerEntry> {
    assigned
        .iter()
        .map(|(id, ip)| {
            let entry = PeerEntry {
                host: ip.clone(),
                port,
                pool_size: None,
            };
            (*id, entry)
        })
        .collect()
}

/// The peer ids in force (id → host) in a rendered pgbouncer.ini, e.g. the ConfigMap's;
/// none when the text does not parse.
pub fn in_force(ini: &str) -> BTreeMap<u16, String> {
    Config::parse(ini, Path::new("pgbouncer.ini"))
        .map(|loaded| {
            loaded
                .config
                .peers
                .into_iter()
                .map(|(id, peer)| (id, peer.host))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ids(list: &[(u16, &str)]) -> BTreeMap<u16, String> {
        list.iter()
            .map(|(id, ip)| (*id, (*ip).to_owned()))
            .collect()
    }

    #[test]
    fn first_pods_are_numbered_from_one() {
        let got = assign(
            &BTreeMap::new(),
            &ips(&["10.0.0.9", "10.0.0.10", "10.0.1.2"]),
        );
        assert_eq!(
            got,
            ids(&[(1, "10.0.0.10"), (2, "10.0.0.9"), (3, "10.0.1.2")])
        );
        assert!(assign(&BTreeMap::new(), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_rolling_update_keeps_ids_and_never_shares_one() {
        let v1 = assign(&BTreeMap::new(), &ips(&["a", "b", "c"]));
        // Surge: a new pod next to the three old ones.
        let surge = assign(&v1, &ips(&["a", "b", "c", "d"]));
        assert_eq!(surge, ids(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]));
        // An old pod goes; the next new one does not take its id.
        let step = assign(&surge, &ips(&["b", "c", "d", "e"]));
        assert_eq!(step, ids(&[(2, "b"), (3, "c"), (4, "d"), (5, "e")]));
        let done = assign(&step, &ips(&["d", "e", "f"]));
        assert_eq!(done, ids(&[(4, "d"), (5, "e"), (6, "f")]));
        // Same pods, same ids: nothing to update.
        assert_eq!(assign(&done, &ips(&["d", "e", "f"])), done);
    }

    #[test]
    fn past_the_last_id_the_lowest_free_one_is_taken() {
        let got = assign(&ids(&[(65535, "a"), (1, "b")]), &ips(&["a", "b", "c", "d"]));
        assert_eq!(got, ids(&[(1, "b"), (2, "c"), (3, "d"), (65535, "a")]));
    }

    #[test]
    fn ids_in_force_are_read_back_from_the_rendered_file() {
        let ini = "[peers]\n3 = host=10.0.0.3 port=6432\n7 = host=10.0.0.7 port=6432\n\
                   [pgbouncer]\nlisten_port = 6432\nauth_type = any\n";
        assert_eq!(in_force(ini), ids(&[(3, "10.0.0.3"), (7, "10.0.0.7")]));
        assert!(in_force("not an ini").is_empty());
    }
}
