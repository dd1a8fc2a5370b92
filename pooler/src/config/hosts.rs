//! Host lists in `[databases]` entries: which servers a pool may connect to, in what order
//! (`load_balance_hosts`), and which of them it accepts (`target_session_attrs`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ValueError;

/// `load_balance_hosts`: how a pool with a host list picks the host for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalanceHosts {
    /// Each new connection starts at the next host in the list (PgBouncer's default).
    #[default]
    RoundRobin,
    /// New connections keep using one host until a connection to it fails.
    Disable,
}

impl FromStr for LoadBalanceHosts {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s.to_ascii_lowercase().as_str() {
            "round-robin" => Ok(LoadBalanceHosts::RoundRobin),
            "disable" => Ok(LoadBalanceHosts::Disable),
            _ => Err(ValueError::expected("round-robin or disable", s)),
        }
    }
}

impl fmt::Display for LoadBalanceHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadBalanceHosts::RoundRobin => "round-robin",
            LoadBalanceHosts::Disable => "disable",
        })
    }
}

/// `target_session_attrs`: which servers a new connection accepts, as libpq defines it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Any server.
    #[default]
    Any,
    /// A server whose sessions accept writes by default.
    ReadWrite,
    /// A server whose sessions are read-only by default (a standby, or
    /// `default_transaction_read_only = on`).
    ReadOnly,
    /// A server not in recovery.
    Primary,
    /// A server in recovery (hot standby).
    Standby,
    /// A standby if any host is one, else any server.
    PreferStandby,
}

impl FromStr for TargetSessionAttrs {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => {
                return Err(ValueError::expected(
                    "any, read-write, read-only, primary, standby or prefer-standby",
                    s,
                ))
            }
        })
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        })
    }
}

/// What a server told about itself that `target_session_attrs` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRole {
    /// In recovery (`in_hot_standby`, or `pg_is_in_recovery()`).
    pub standby: bool,
    /// Sessions start read-only (`default_transaction_read_only`, or a standby).
    pub read_only: bool,
}

impl TargetSessionAttrs {
    /// Whether a server of `role` is acceptable, and if not, why (libpq's wording). On the
    /// first pass `prefer-standby` takes standbys only; `second_pass` takes any server.
    pub fn refuses(self, role: ServerRole, second_pass: bool) -> Option<&'static str> {
        match self {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite if role.read_only => Some("session is read-only"),
            TargetSessionAttrs::ReadOnly if !role.read_only => Some("session is not read-only"),
            TargetSessionAttrs::Primary if role.standby => Some("server is in hot standby mode"),
            TargetSessionAttrs::Standby if !role.standby => {
                Some("server is not in hot standby mode")
            }
            TargetSessionAttrs::PreferStandby if !role.standby && !second_pass => {
                Some("server is not in hot standby mode")
            }
            _ => None,
        }
    }

    /// Whether a server's role must be learnt before it can be accepted.
    pub fn needs_role(self) -> bool {
        self != TargetSessionAttrs::Any
    }
}

/// Splits a `host` value into its comma-separated entries.
pub fn split_hosts(host: &str) -> Vec<&str> {
    host.split(',').map(str::trim).collect()
}

/// Parses a `port` value: one port, or a comma-separated list of them.
pub fn parse_ports(value: &str) -> Result<Vec<u16>, ValueError> {
    value
        .split(',')
        .map(|p| match p.trim().parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(ValueError::expected("a port number (1-65535)", p.trim())),
        })
        .collect()
}

/// Pairs each host with its port, as libpq does: one port for all hosts, or one per host.
pub fn pair_ports<'a>(
    hosts: &[&'a str],
    ports: &[u16],
    default_port: u16,
) -> Result<Vec<(&'a str, u16)>, ValueError> {
    match ports {
        [] => Ok(hosts.iter().map(|h| (*h, default_port)).collect()),
        [port] => Ok(hosts.iter().map(|h| (*h, *port)).collect()),
        _ if ports.len() == hosts.len() => {
            Ok(hosts.iter().copied().zip(ports.iter().copied()).collect())
        }
        _ => Err(ValueError(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            hosts.len()
        ))),
    }
}

/// The order in which to try `count` hosts for one new connection, starting at `start`.
pub fn try_order(start: usize, count: usize) -> impl Iterator<Item = usize> {
    let count_or_one = count.max(1);
    // Reduced first: `start` is a counter that may reach usize::MAX.
    let start = start % count_or_one;
    (0..count).map(move |i| (start + i) % count_or_one)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for text in ["round-robin", "disable"] {
            let v: LoadBalanceHosts = text.parse().expect(text);
            assert_eq!(v.to_string(), text);
        }
        for text in [
            "any",
            "read-write",
            "read-only",
            "primary",
            "standby",
            "prefer-standby",
        ] {
            let v: TargetSessionAttrs = text.parse().expect(text);
            assert_eq!(v.to_string(), text);
        }
        assert!("roundrobin".parse::<LoadBalanceHosts>().is_err());
        assert!("master".parse::<TargetSessionAttrs>().is_err());
        assert_eq!("READ-WRITE".parse(), Ok(TargetSessionAttrs::ReadWrite));
    }

    #[test]
    fn which_servers_each_attribute_accepts() {
        let primary = ServerRole {
            standby: false,
            read_only: false,
        };
        let ro_primary = ServerRole {
            standby: false,
            read_only: true,
        };
        let standby = ServerRole {
            standby: true,
            read_only: true,
        };
        use TargetSessionAttrs::*;
        let table = [
            (Any, [true, true, true]),
            (ReadWrite, [true, false, false]),
            (ReadOnly, [false, true, true]),
            (Primary, [true, true, false]),
            (Standby, [false, false, true]),
            (PreferStandby, [false, false, true]),
        ];
        for (attrs, accepts) in table {
            for (role, want) in [primary, ro_primary, standby].into_iter().zip(accepts) {
                assert_eq!(
                    attrs.refuses(role, false).is_none(),
                    want,
                    "{attrs} {role:?}"
                );
            }
        }
        assert_eq!(PreferStandby.refuses(primary, true), None);
        assert_eq!(
            ReadWrite.refuses(standby, true),
            Some("session is read-only")
        );
    }

    #[test]
    fn ports_pair_with_hosts_as_in_libpq() {
        let hosts = split_hosts("a, b,c");
        assert_eq!(hosts, ["a", "b", "c"]);
        assert_eq!(pair_ports(&hosts, &[], 5432).unwrap()[2], ("c", 5432));
        assert_eq!(pair_ports(&hosts, &[7], 5432).unwrap()[1], ("b", 7));
        assert_eq!(
            pair_ports(&hosts, &[1, 2, 3], 5432).unwrap(),
            vec![("a", 1), ("b", 2), ("c", 3)]
        );
        let err = pair_ports(&hosts, &[1, 2], 5432).unwrap_err();
        assert_eq!(err.0, "could not match 2 port numbers to 3 hosts");
        assert_eq!(parse_ports("5432,5433"), Ok(vec![5432, 5433]));
        assert!(parse_ports("5432,0").is_err());
        assert!(parse_ports("5432,").is_err());
    }

    #[test]
    fn try_order_wraps_around() {
        assert_eq!(try_order(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(try_order(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(try_order(usize::MAX, 2).collect::<Vec<_>>(), [1, 0]);
    }
}
