//! `SHOW PEERS` and `SHOW PEER_POOLS`, with PgBouncer's columns: the `[peers]` entries, and
//! the cancel requests in flight to each peer a cancel has been forwarded to.

use crate::config::Config;
use crate::peers::PeerPoolView;

use super::show::ResultSet;

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// One row per `[peers]` entry, this process's own included, by peer id; an unset
/// `pool_size` shows `default_pool_size`.
pub fn peers(config: &Config) -> ResultSet {
    let mut rs = ResultSet::new(&["peer_id", "host", "port", "pool_size"]);
    for (id, peer) in &config.peers {
        let pool_size = peer.pool_size.unwrap_or(config.pgbouncer.default_pool_size);
        rs.push(vec![
            text(id),
            text(&peer.host),
            text(peer.port),
            text(pool_size),
        ]);
    }
    rs
}

/// One row per peer pool; as in PgBouncer, a peer gets a pool when the first cancel is
/// forwarded to it.
pub fn peer_pools(pools: &[PeerPoolView]) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "peer_id",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active_cancel",
        "sv_login",
    ]);
    for p in pools {
        rs.push(vec![
            text(p.peer_id),
            text(p.active),
            text(p.waiting),
            text(p.sending),
            text(p.connecting),
        ]);
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerEntry;

    #[test]
    fn peers_rows_fill_in_the_default_pool_size() {
        let mut config = Config::default();
        config.pgbouncer.default_pool_size = 20;
        config.peers.insert(
            2,
            PeerEntry {
                host: "10.0.0.2".to_owned(),
                port: 6432,
                pool_size: None,
            },
        );
        config.peers.insert(
            1,
            PeerEntry {
                host: "/tmp/a".to_owned(),
                port: 5555,
                pool_size: Some(3),
            },
        );
        let rs = peers(&config);
        assert_eq!(rs.columns, ["peer_id", "host", "port", "pool_size"]);
        let rows: Vec<Vec<&str>> = rs
            .rows
            .iter()
            .map(|r| r.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect())
            .collect();
        assert_eq!(
            rows,
            [
                ["1", "/tmp/a", "5555", "3"],
                ["2", "10.0.0.2", "6432", "20"]
            ]
        );
    }

    #[test]
    fn peer_pools_rows() {
        let rs = peer_pools(&[PeerPoolView {
            peer_id: 3,
            active: 2,
            waiting: 5,
            sending: 1,
            connecting: 1,
        }]);
        assert_eq!(rs.columns[0], "peer_id");
        assert_eq!(
            rs.rows[0],
            ["3", "2", "5", "1", "1"].map(|v| Some(v.to_owned()))
        );
    }
}
