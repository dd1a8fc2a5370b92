//! Peering of the pooler pods, so that a cancel request reaching any pod through the Service
//! is forwarded to the pod holding the client (the pooler's `[peers]`, PgBouncer's design).
//!
//! Pods of a Deployment have no stable ordinal, so the operator gives each pod IP a peer id
//! and keeps it for as long as the IP is among the pods: ids in force stay, a new IP takes
//! the next id above every id in force (the lowest free one once ids run out), so surge pods
//! of a rolling update never share an id with the pods they replace and an id is not
//! reused while a peer may still know it under its old address. The IPs come from the
//! EndpointSlices of the pool's Service, which list every pod that has an address, ready or
//! not (and terminating): a starting pod needs its id before it takes clients, and a draining
//! one still holds sessions. Each pod is started
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

/// The ConfigMap annotation recording the peer ids (`id=ip` pairs), which an edit of the
/// ConfigMap's data leaves alone, so the ids survive a pgbouncer.ini put back after drift.
pub const PEER_IDS_ANNOTATION: &str = "weir.dev/peer-ids";

/// The annotation value for a `[peers]` section: `id=host` pairs, space-separated.
pub(crate) fn annotation(peers: &BTreeMap<u16, PeerEntry>) -> String {
    let pairs: Vec<String> = peers
        .iter()
        .map(|(id, p)| format!("{id}={}", p.host))
        .collect();
    pairs.join(" ")
}

/// The peer ids in force (id → host): from the ConfigMap's annotation when it has one, else
/// from the `[peers]` of its pgbouncer.ini; none when neither can be read.
pub fn in_force(annotation: Option<&str>, ini: Option<&str>) -> BTreeMap<u16, String> {
    if let Some(text) = annotation {
        return text
            .split_whitespace()
            .filter_map(|pair| {
                let (id, host) = pair.split_once('=')?;
                Some((id.parse().ok().filter(|id| *id > 0)?, host.to_owned()))
            })
            .collect();
    }
    let Some(ini) = ini else {
        return BTreeMap::new();
    };
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
    fn ids_in_force_are_read_back_from_the_annotation_or_the_file() {
        let ini = "[peers]\n3 = host=10.0.0.3 port=6432\n7 = host=10.0.0.7 port=6432\n\
                   [pgbouncer]\nlisten_port = 6432\nauth_type = any\n";
        let from_file = in_force(None, Some(ini));
        assert_eq!(from_file, ids(&[(3, "10.0.0.3"), (7, "10.0.0.7")]));
        let entries = section(&from_file, 6432);
        assert_eq!(annotation(&entries), "3=10.0.0.3 7=10.0.0.7");
        // The annotation wins over a clobbered file.
        let kept = in_force(Some(&annotation(&entries)), Some("[pgbouncer]\n"));
        assert_eq!(kept, from_file);
        assert_eq!(in_force(Some(""), Some(ini)), BTreeMap::new());
        assert!(in_force(None, Some("not an ini")).is_empty());
        assert!(in_force(Some("0=x junk 5=10.0.0.5"), None) == ids(&[(5, "10.0.0.5")]));
    }
}
