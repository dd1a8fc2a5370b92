//! A network namespace to put a server in, so tests can break the path to it with real
//! network faults: packets dropped without a RST (a blackhole) or dropped at random (loss).
//!
//! [`NetNs::create`] makes a uniquely named namespace joined to the test's own by a veth pair
//! with a /30 of 10.201.0.0/16 that no interface uses yet; [`PgOptions::netns`] starts a
//! PostgreSQL cluster inside it. Faults are nftables rules inside the namespace (so they touch
//! no other test's traffic). Dropping the [`NetNs`] removes the veth pair and the namespace,
//! also while a failing test unwinds; stop what runs inside it first. A test process killed
//! outright leaves its namespaces behind (`ip netns list` shows them as `weir-nf-<pid>-<n>`).
//!
//! This kernel has no `netem` queueing discipline, so delay is not done here but by
//! [`crate::delay::DelayRelay`], a TCP relay in the test process.
//!
//! [`PgOptions::netns`]: crate::postgres::PgOptions::netns

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};

/// The nftables table holding a namespace's faults; deleting it heals them all.
const FAULT_TABLE: &str = "weirfault";

/// The network the /30 of each namespace is taken from: 10.201.0.0/16.
const NETWORK: [u8; 2] = [10, 201];

/// Namespaces made by this process so far, for unique names.
static MADE: AtomicU32 = AtomicU32::new(0);

/// Where a server inside a namespace listens and whom it lets in: what
/// [`crate::postgres::PgCluster`] needs to run there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InNetns {
    /// The namespace's name, for `ip netns exec`.
    pub name: String,
    /// The namespace's end of the veth pair: the server's address.
    pub address: Ipv4Addr,
    /// The /30 both ends are in, in CIDR notation: the clients the server lets in.
    pub subnet: String,
}

/// A network namespace with a veth pair to the test's namespace, removed on drop.
#[derive(Debug)]
pub struct NetNs {
    place: InNetns,
    host_if: String,
    host_address: Ipv4Addr,
}

impl NetNs {
    /// Why namespaces cannot be made here (not root, no `ip netns`), or `None` when they can;
    /// tests skip with this reason.
    pub fn unavailable() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("network namespaces need root".into());
        }
        match Command::new("ip").args(["netns", "list"]).output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(err) => Some(format!("cannot run `ip`: {err}")),
        }
    }

    /// Creates a namespace with its loopback up and a veth pair to the test's namespace,
    /// addressed from a /30 no interface holds yet.
    pub fn create() -> anyhow::Result<NetNs> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("weir-nf-{pid}-{n}");
        // Interface names have at most 15 characters.
        let host_if = format!("wnf{pid}-{n}h");
        let ns_if = format!("wnf{pid}-{n}n");
        let index = free_subnet(pid.wrapping_mul(16).wrapping_add(n))?;
        let base = index * 4;
        let octets = |last: u32| {
            Ipv4Addr::new(
                NETWORK[0],
                NETWORK[1],
                ((base + last) >> 8) as u8,
                ((base + last) & 0xff) as u8,
            )
        };
        let host_address = octets(1);
        let address = octets(2);
        let subnet = format!("{}/30", octets(0));

        ip(&["netns", "add", &name])?;
        // From here on Drop removes whatever was made.
        let netns = NetNs {
            place: InNetns {
                name: name.clone(),
                address,
                subnet,
            },
            host_if: host_if.clone(),
            host_address,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&[
            "addr",
            "add",
            &format!("{host_address}/30"),
            "dev",
            &host_if,
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        netns.exec(
            "ip",
            &["addr", "add", &format!("{address}/30"), "dev", &ns_if],
        )?;
        netns.exec("ip", &["link", "set", &ns_if, "up"])?;
        netns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// What a server needs to run inside this namespace.
    pub fn place(&self) -> &InNetns {
        &self.place
    }

    /// The address of the namespace's end: where a server inside listens.
    pub fn address(&self) -> Ipv4Addr {
        self.place.address
    }

    /// The address of the test's end of the veth pair.
    pub fn host_address(&self) -> Ipv4Addr {
        self.host_address
    }

    /// Drops every TCP packet to and from `port` inside the namespace, silently (no RST, no
    /// ICMP): the server seems to vanish, as behind a dead link.
    pub fn blackhole(&self, port: u16) -> anyhow::Result<()> {
        self.fault(
            &format!("tcp dport {port} drop"),
            &format!("tcp sport {port} drop"),
        )
    }

    /// Drops `percent` % of the TCP packets to `port` and, independently, of those from it.
    pub fn lose(&self, port: u16, percent: u8) -> anyhow::Result<()> {
        self.fault(
            &format!("tcp dport {port} numgen random mod 100 < {percent} drop"),
            &format!("tcp sport {port} numgen random mod 100 < {percent} drop"),
        )
    }

    /// Removes every fault: packets flow again.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.exec("nft", &["delete", "table", "inet", FAULT_TABLE])
    }

    /// Installs a fault table with one rule on incoming and one on outgoing packets.
    fn fault(&self, incoming: &str, outgoing: &str) -> anyhow::Result<()> {
        let rules = format!(
            "table inet {FAULT_TABLE} {{\n\
             chain input {{ type filter hook input priority 0; policy accept; {incoming}; }}\n\
             chain output {{ type filter hook output priority 0; policy accept; {outgoing}; }}\n\
             }}\n"
        );
        let path = tempfile::NamedTempFile::new().context("a file for nft rules")?;
        std::fs::write(path.path(), rules).context("writing nft rules")?;
        let file = path.path().to_string_lossy().into_owned();
        self.exec("nft", &["-f", &file])
    }

    /// Runs `program` inside the namespace, failing with its output if it fails.
    fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.place.name, program];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end removes the pair at once; the namespace itself goes lazily.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.place.name]);
    }
}

/// Runs `ip` with `args`, failing with its output if it fails.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The index of a /30 in 10.201.0.0/16 that no interface has an address in, starting from
/// `hint` (so concurrent test processes start apart).
fn free_subnet(hint: u32) -> anyhow::Result<u32> {
    const SUBNETS: u32 = 1 << 14;
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("listing addresses")?;
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    (0..SUBNETS)
        .map(|step| (hint.wrapping_add(step)) % SUBNETS)
        .find(|&index| {
            let base = index * 4;
            let prefix = format!("{}.{}.{}.", NETWORK[0], NETWORK[1], (base >> 8) as u8);
            (0..4).all(|last| {
                let address = format!("{prefix}{}/", (base & 0xff) + last);
                !listed.contains(&format!(" {address}"))
            })
        })
        .context("no free /30 in 10.201.0.0/16")
}
