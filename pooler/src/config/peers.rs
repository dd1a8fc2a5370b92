//! The `[peers]` section: the other pooler processes of a peered group, to which cancel
//! requests carrying their keys are forwarded (PgBouncer 1.21+).

use serde::{Deserialize, Serialize};

use super::database::split_conn_string;
use super::error::ValueError;
use super::values;

/// The port of a peer whose entry names none, as in PgBouncer.
pub const DEFAULT_PEER_PORT: u16 = 6432;

/// One `[peers]` entry: `id = host=... [port=...] [pool_size=...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// Host name, IP address, or Unix socket directory (starting with `/`).
    pub host: String,
    /// Port (default 6432).
    pub port: u16,
    /// How many cancel requests may be in flight to this peer at once; unset:
    /// `default_pool_size`.
    pub pool_size: Option<u32>,
}

impl PeerEntry {
    /// Parses a `[peers]` value. Every parameter PgBouncer knows is implemented; an unknown
    /// one or a missing `host` is an error, as in PgBouncer.
    pub(crate) fn parse_conn_string(text: &str) -> Result<PeerEntry, ValueError> {
        let mut host = None;
        let mut port = DEFAULT_PEER_PORT;
        let mut pool_size = None;
        for (key, value) in split_conn_string(text)? {
            match key.as_str() {
                "host" => host = Some(value),
                "port" => port = values::port::parse(&value)?,
                "pool_size" => pool_size = Some(values::count::parse(&value)?),
                _ => {
                    return Err(ValueError(format!(
                        "unrecognized connection parameter: {key}"
                    )))
                }
            }
        }
        if port == 0 {
            return Err(ValueError("invalid port: 0".to_owned()));
        }
        let host = host.ok_or_else(|| ValueError("host was not provided".to_owned()))?;
        Ok(PeerEntry {
            host,
            port,
            pool_size,
        })
    }

    /// The entry as a `[peers]` value.
    pub fn to_conn_string(&self) -> String {
        let mut out = format!("host={} port={}", quote(&self.host), self.port);
        if let Some(size) = self.pool_size {
            out.push_str(&format!(" pool_size={size}"));
        }
        out
    }
}

/// A `[peers]` key: a peer id from 1 to 65535 (the two bytes the cancel key has for it).
pub(crate) fn parse_peer_id(key: &str) -> Result<u16, ValueError> {
    key.parse::<u16>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ValueError(format!(
            "ids of peers must be a number larger than 0 and at most 65535, not {key:?}"
        ))
    })
}

fn quote(value: &str) -> String {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '\'') {
        format!("'{}'", value.replace('\'', "''"))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_as_pgbouncer_documents_them() {
        let e = PeerEntry::parse_conn_string("host=host1.example.com").unwrap();
        assert_eq!(
            e,
            PeerEntry {
                host: "host1.example.com".to_owned(),
                port: 6432,
                pool_size: None
            }
        );
        let e =
            PeerEntry::parse_conn_string("host=/tmp/pgbouncer-2  port=5555 pool_size=4").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.pool_size),
            ("/tmp/pgbouncer-2", 5555, Some(4))
        );
        assert_eq!(
            e.to_conn_string(),
            "host=/tmp/pgbouncer-2 port=5555 pool_size=4"
        );
        assert_eq!(
            PeerEntry::parse_conn_string(&e.to_conn_string()).unwrap(),
            e
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        for (text, why) in [
            ("port=6432", "host was not provided"),
            (
                "host=a dbname=x",
                "unrecognized connection parameter: dbname",
            ),
            ("host=a port=0", "invalid port: 0"),
            ("host=a port=x", "port"),
        ] {
            let e = PeerEntry::parse_conn_string(text).unwrap_err();
            assert!(e.0.contains(why), "{text}: {e}");
        }
        assert_eq!(parse_peer_id("7").unwrap(), 7);
        assert_eq!(parse_peer_id("65535").unwrap(), 65535);
        for bad in ["0", "65536", "-1", "x"] {
            assert!(parse_peer_id(bad).is_err(), "{bad}");
        }
    }
}
