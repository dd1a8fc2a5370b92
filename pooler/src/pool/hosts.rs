//! The health of each host of a pool's host list, kept pure: which hosts are in service
//! (`up`), taken out after a failure (`out`) or for replay lag beyond `replica_max_lag`
//! (`lagging`); when each out host is probed again (with backoff); which host a new server
//! connection goes to and which idle one is lent, so that a pool balanced over several
//! servers (`load_balance_hosts = round-robin`) spreads its connections and its load evenly
//! over the hosts in service; and the replay lag of standbys, measured against the WAL
//! positions the pool has seen. The pool does the connecting, probing and querying.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{LoadBalanceHosts, TargetSessionAttrs};

/// The first pause before an out host is probed again.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between two probes of a host that failed or lags.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest pause between two probes of a host `target_session_attrs` refused: only a
/// promotion or a rebuild changes its role.
const MAX_ROLE_BACKOFF: Duration = Duration::from_secs(30);
/// How often the replay lag of each host in service is measured (with `replica_max_lag`).
pub const LAG_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// The most WAL positions remembered; beyond it every other one is forgotten.
const WAL_SAMPLES: usize = 256;

/// A host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// In service: new connections may go there.
    Up,
    /// Taken out: its connect, a check or a connection failed, or its role does not match.
    Out,
    /// Taken out: its replay lag exceeds `replica_max_lag`.
    Lagging,
}

impl HostState {
    /// The name the console, `/status` and metrics show.
    pub fn name(self) -> &'static str {
        match self {
            HostState::Up => "up",
            HostState::Out => "out",
            HostState::Lagging => "lagging",
        }
    }
}

/// Why a host was taken out, which sets how patiently it is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It did not answer, or a connection to it broke.
    Down,
    /// `target_session_attrs` refuses it.
    Role,
}

/// One host's bookkeeping.
#[derive(Debug, Clone)]
struct Host {
    state: HostState,
    fault: Fault,
    /// Probes that failed since it was taken out.
    attempts: u32,
    /// When it may be probed next (out or lagging).
    next_probe: Instant,
    /// A probe or lag check runs now.
    busy: bool,
    /// When its lag was last measured.
    last_check: Option<Instant>,
    /// Its replay lag when last measured (standbys only).
    lag: Option<Duration>,
    /// Why it is out, for the logs and the console.
    why: Option<String>,
}

/// Where a server stands in the WAL: what it has received and what it has replayed (both
/// the current position on a primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    /// In recovery (a standby).
    pub standby: bool,
    /// The furthest WAL position it holds.
    pub received: u64,
    /// The WAL position its data reflects.
    pub replayed: u64,
}

/// What a host's health looks like now, for the console, `/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// `host:port`.
    pub host: String,
    /// `up`, `out` or `lagging`.
    pub state: &'static str,
    /// Server connections of the pool open to it (idle and lent).
    pub server_connections: usize,
    /// Of those, lent to clients.
    pub active: usize,
    /// Its replay lag when last measured (standbys, with `replica_max_lag` set).
    pub lag: Option<Duration>,
    /// Why it is out.
    pub why: Option<String>,
}

/// The pause before probe number `attempts` of a host taken out for `fault`: doubling from
/// 200 ms up to 2 s (30 s for a refused role).
pub fn probe_delay(fault: Fault, attempts: u32) -> Duration {
    let cap = match fault {
        Fault::Down => MAX_BACKOFF,
        Fault::Role => MAX_ROLE_BACKOFF,
    };
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempts.min(16))
        .min(cap)
}

/// The WAL positions the pool has seen received, each with when it was first seen: a host
/// that has not replayed a position seen at `t` lags by at least `now - t`. An idle primary
/// adds nothing, so idle standbys never look behind; a host whose replay stopped falls behind
/// what the others (or its own WAL receiver) report.
#[derive(Debug, Clone, Default)]
struct WalHistory {
    /// (first seen, position), positions increasing.
    samples: VecDeque<(Instant, u64)>,
}

impl WalHistory {
    /// Records that a server held WAL up to `received` at `now`; samples older than
    /// `horizon` are forgotten (so a cluster rebuilt at lower positions is learnt again).
    fn observe(&mut self, now: Instant, received: u64, horizon: Duration) {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > horizon)
        {
            self.samples.pop_front();
        }
        if self.samples.back().is_some_and(|(_, lsn)| *lsn >= received) {
            return;
        }
        if self.samples.len() >= WAL_SAMPLES {
            // Thinning keeps the lag a lower bound: a later first-seen time only shortens it.
            let kept: VecDeque<_> = self.samples.iter().copied().step_by(2).collect();
            self.samples = kept;
        }
        self.samples.push_back((now, received));
    }

    /// How long ago the oldest WAL a server has not replayed (it is at `replayed`) was first
    /// seen anywhere; zero when it has replayed everything seen.
    fn lag(&self, now: Instant, replayed: u64) -> Duration {
        self.samples
            .iter()
            .find(|(_, lsn)| *lsn > replayed)
            .map_or(Duration::ZERO, |(t, _)| now.saturating_duration_since(*t))
    }
}

/// The health of a pool's hosts.
#[derive(Debug, Clone)]
pub struct HostTable {
    hosts: Vec<Host>,
    /// Turns on every choice, so that ties go to each host in turn.
    rotation: usize,
    /// The host new connections stick to under `load_balance_hosts = disable`.
    sticky: usize,
    wal: WalHistory,
}

impl HostTable {
    /// A table of `count` hosts, all in service.
    pub fn new(count: usize, now: Instant) -> HostTable {
        let host = Host {
            state: HostState::Up,
            fault: Fault::Down,
            attempts: 0,
            next_probe: now,
            busy: false,
            last_check: None,
            lag: None,
            why: None,
        };
        HostTable {
            hosts: vec![host; count],
            rotation: 0,
            sticky: 0,
            wal: WalHistory::default(),
        }
    }

    /// The state of `host`.
    pub fn state(&self, host: usize) -> Option<HostState> {
        self.hosts.get(host).map(|h| h.state)
    }

    /// The order in which to try the hosts for a new connection, leaving out `skip` (hosts
    /// this connect already turned down). Under `round-robin` the hosts in service come with
    /// the fewest connections (`open`) first, ties taken in turn; under `disable`, the host
    /// last connected to first, then the list in order. Hosts out of service are tried only
    /// when no host is in service, as a last resort.
    pub fn open_order(
        &mut self,
        open: &[usize],
        mode: LoadBalanceHosts,
        skip: &[usize],
    ) -> Vec<usize> {
        let n = self.hosts.len();
        self.rotation = self.rotation.wrapping_add(1);
        let candidates: Vec<usize> = (0..n).filter(|h| !skip.contains(h)).collect();
        let up: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|h| self.hosts[*h].state == HostState::Up)
            .collect();
        let mut order = if up.is_empty() { candidates } else { up };
        match mode {
            LoadBalanceHosts::RoundRobin => {
                let rotation = self.rotation;
                order.sort_by_key(|h| (open.get(*h).copied().unwrap_or(0), turn(*h, rotation, n)));
            }
            LoadBalanceHosts::Disable => {
                let sticky = self.sticky;
                order.sort_by_key(|h| turn(*h, sticky, n));
            }
        }
        order
    }

    /// Which idle connections may be lent, and in what preference: for each host, `None` when
    /// it is out of service, else its rank (lower first). Under `round-robin` with several
    /// hosts each checkout starts at the next host, so that requests alternate over the hosts
    /// in service whatever the reuse order (a host with no idle connection is passed over);
    /// otherwise every host in service ranks the same.
    pub fn lend_ranks(&mut self, mode: LoadBalanceHosts) -> Vec<Option<usize>> {
        let n = self.hosts.len();
        self.rotation = self.rotation.wrapping_add(1);
        let rotation = self.rotation;
        (0..n)
            .map(|h| {
                (self.hosts[h].state == HostState::Up).then(|| match mode {
                    LoadBalanceHosts::RoundRobin => turn(h, rotation, n),
                    LoadBalanceHosts::Disable => 0,
                })
            })
            .collect()
    }

    /// A connection to `host` was opened and accepted at `now`: the host is in service. Returns
    /// true when that brings it back.
    pub fn connected(&mut self, host: usize, now: Instant) -> bool {
        self.sticky = host;
        let Some(h) = self.hosts.get_mut(host) else {
            return false;
        };
        let back = h.state != HostState::Up;
        h.state = HostState::Up;
        h.attempts = 0;
        h.busy = false;
        h.why = None;
        h.last_check = h.last_check.or(Some(now));
        back
    }

    /// `host` failed (`fault`, `why`) at `now`: it is taken out and probed after a pause.
    /// Returns true when this takes it out (its idle connections are then closed). A failed
    /// probe of a host already out only lengthens the pause.
    pub fn failed(&mut self, host: usize, fault: Fault, why: &str, now: Instant) -> bool {
        let Some(h) = self.hosts.get_mut(host) else {
            return false;
        };
        let newly = h.state == HostState::Up;
        if newly {
            h.attempts = 0;
        } else {
            h.attempts = h.attempts.saturating_add(1);
        }
        h.state = HostState::Out;
        h.fault = fault;
        h.busy = false;
        h.lag = None;
        h.why = Some(why.to_owned());
        h.next_probe = now + probe_delay(fault, h.attempts);
        newly
    }

    /// A probe of `host` failed (`fault`, `why`) at `now`: the pause before the next one
    /// grows. Nothing when the host came back meanwhile (another connection reached it).
    pub fn probe_failed(&mut self, host: usize, fault: Fault, why: &str, now: Instant) {
        if self.state(host) != Some(HostState::Up) {
            self.failed(host, fault, why, now);
        }
    }

    /// `host` reported `position` at `now`; with the bound `max_lag` a standby whose replay
    /// lag exceeds it is taken out (`lagging`) and one caught up is brought back. Returns the
    /// host's lag and what changed.
    pub fn observed(
        &mut self,
        host: usize,
        position: WalPosition,
        max_lag: Duration,
        now: Instant,
    ) -> (Duration, Change) {
        // Positions are remembered well past the bound, so that a lag just over it is seen.
        let horizon = max_lag.saturating_mul(10).max(Duration::from_secs(60));
        self.wal
            .observe(now, position.received.max(position.replayed), horizon);
        let lag = if position.standby {
            self.wal.lag(now, position.replayed)
        } else {
            Duration::ZERO
        };
        let Some(h) = self.hosts.get_mut(host) else {
            return (lag, Change::None);
        };
        h.last_check = Some(now);
        h.busy = false;
        h.lag = position.standby.then_some(lag);
        let change = match (h.state, lag > max_lag) {
            (HostState::Up, true) => {
                h.state = HostState::Lagging;
                h.attempts = 0;
                h.fault = Fault::Down;
                h.why = Some(format!(
                    "replay lag {:.1} s exceeds replica_max_lag",
                    lag.as_secs_f64()
                ));
                h.next_probe = now + probe_delay(Fault::Down, 0);
                Change::Lagging
            }
            (HostState::Lagging, true) => {
                h.attempts = h.attempts.saturating_add(1);
                h.next_probe = now + probe_delay(Fault::Down, h.attempts);
                Change::None
            }
            (_, true) => Change::None,
            (HostState::Up, false) => Change::None,
            (_, false) => Change::CaughtUp,
        };
        (lag, change)
    }

    /// The hosts out of service whose probe is due at `now`; each is marked busy until its
    /// outcome is recorded.
    pub fn due_probes(&mut self, now: Instant) -> Vec<usize> {
        self.take_due(|h| h.state != HostState::Up && h.next_probe <= now)
    }

    /// The hosts in service whose replay lag is due to be measured at `now`; each is marked
    /// busy until its outcome is recorded.
    pub fn due_checks(&mut self, now: Instant) -> Vec<usize> {
        self.take_due(|h| {
            h.state == HostState::Up
                && h.last_check
                    .is_none_or(|at| now.saturating_duration_since(at) >= LAG_CHECK_PERIOD)
        })
    }

    /// Whether `host` is in service and its lag is due at `now`; if so it is marked busy.
    pub fn take_due_check(&mut self, host: usize, now: Instant) -> bool {
        match self.hosts.get_mut(host) {
            Some(h)
                if !h.busy
                    && h.state == HostState::Up
                    && h.last_check
                        .is_none_or(|at| now.saturating_duration_since(at) >= LAG_CHECK_PERIOD) =>
            {
                h.busy = true;
                true
            }
            _ => false,
        }
    }

    /// A probe or check of `host` ended without an outcome (nothing to check it on).
    pub fn not_checked(&mut self, host: usize) {
        if let Some(h) = self.hosts.get_mut(host) {
            h.busy = false;
        }
    }

    fn take_due(&mut self, due: impl Fn(&Host) -> bool) -> Vec<usize> {
        let mut found = Vec::new();
        for (i, h) in self.hosts.iter_mut().enumerate() {
            if !h.busy && due(h) {
                h.busy = true;
                found.push(i);
            }
        }
        found
    }

    /// Each host's status, with its connection counts.
    pub fn status(&self, names: &[String], open: &[usize], lent: &[usize]) -> Vec<HostStatus> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| HostStatus {
                host: names.get(i).cloned().unwrap_or_default(),
                state: h.state.name(),
                server_connections: open.get(i).copied().unwrap_or(0),
                active: lent.get(i).copied().unwrap_or(0),
                lag: h.lag,
                why: h.why.clone(),
            })
            .collect()
    }
}

/// What a lag measurement changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// The host was taken out for lag.
    Lagging,
    /// The host was out and now answers with no lag beyond the bound: back in service.
    CaughtUp,
}

/// `h`'s place in a turn that starts at `start % n`.
fn turn(h: usize, start: usize, n: usize) -> usize {
    let n = n.max(1);
    (h + n - start % n) % n
}

/// Whether a connection to `host` given back clean must close rather than go idle, so that
/// the pool's connections spread evenly: its host is out of service (`up[host]` false), or,
/// balancing `round-robin` over several hosts, it holds two or more connections more than
/// the host in service with the fewest (`open`), which the next new connection goes to.
pub fn surplus_on_return(
    host: usize,
    open: &[usize],
    up: &[bool],
    mode: LoadBalanceHosts,
) -> Option<&'static str> {
    if !up.get(host).copied().unwrap_or(true) {
        return Some("its host is out of service");
    }
    if mode != LoadBalanceHosts::RoundRobin || open.len() < 2 {
        return None;
    }
    let fewest = open
        .iter()
        .zip(up)
        .filter(|(_, up)| **up)
        .map(|(n, _)| *n)
        .min()?;
    (open.get(host).copied().unwrap_or(0) >= fewest + 2)
        .then_some("its host holds more than its share of the pool")
}

/// Why what one relay saw says its server's host should be taken out, if it does: the
/// connection broke, the server is shutting down or not accepting connections (57P01,
/// 57P02, 57P03, class 08), or it newly reported `in_hot_standby` (`standby_report`) with a
/// value `attrs` refuses. A client's own error (a write on a standby: 25006) says nothing of
/// the host.
pub fn relay_fault(
    connection_failed: bool,
    error: Option<[u8; 5]>,
    standby_report: Option<&str>,
    attrs: TargetSessionAttrs,
) -> Option<(Fault, &'static str)> {
    if connection_failed {
        return Some((Fault::Down, "server connection failed"));
    }
    if let Some(code) = error {
        if matches!(&code, b"57P01" | b"57P02" | b"57P03") || code.starts_with(b"08") {
            return Some((Fault::Down, "server is shutting down or unreachable"));
        }
    }
    let standby = standby_report? == "on";
    let role = crate::config::ServerRole {
        standby,
        read_only: standby,
    };
    attrs
        .refuses(role, false)
        .filter(|_| attrs != TargetSessionAttrs::PreferStandby)
        .map(|why| (Fault::Role, why))
}

/// Parses a WAL position as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Per-host connection counts and whether each host is in service, shared by the pool's
/// connections (each counts itself while it exists and while it is lent).
#[derive(Debug, Default)]
pub struct HostCounts {
    open: Vec<AtomicUsize>,
    lent: Vec<AtomicUsize>,
    up: Vec<AtomicBool>,
}

impl HostCounts {
    /// Counts for `count` hosts, all in service.
    pub fn new(count: usize) -> HostCounts {
        HostCounts {
            open: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            lent: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            up: (0..count).map(|_| AtomicBool::new(true)).collect(),
        }
    }

    /// Connections open to each host.
    pub fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .collect()
    }

    /// Connections lent out on each host.
    pub fn lent(&self) -> Vec<usize> {
        self.lent
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .collect()
    }

    /// Whether each host is in service.
    pub fn up(&self) -> Vec<bool> {
        self.up.iter().map(|u| u.load(Ordering::Acquire)).collect()
    }

    /// Records whether `host` is in service.
    pub fn set_up(&self, host: usize, up: bool) {
        if let Some(u) = self.up.get(host) {
            u.store(up, Ordering::Release);
        }
    }

    /// Counts one connection more (`opened`) or less on `host`.
    pub fn add_open(&self, host: usize, opened: bool) {
        add(&self.open, host, opened);
    }

    /// Counts one connection more (`lent`) or less lent out on `host`.
    pub fn add_lent(&self, host: usize, lent: bool) {
        add(&self.lent, host, lent);
    }
}

fn add(counts: &[AtomicUsize], host: usize, up: bool) {
    if let Some(n) = counts.get(host) {
        if up {
            n.fetch_add(1, Ordering::AcqRel);
        } else {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);
    const RR: LoadBalanceHosts = LoadBalanceHosts::RoundRobin;

    #[test]
    fn new_connections_go_to_the_host_in_service_with_the_fewest() {
        let t0 = Instant::now();
        let mut table = HostTable::new(3, t0);
        assert_eq!(table.open_order(&[2, 0, 1], RR, &[]), [1, 2, 0]);
        // Ties are taken in turn, so that equal hosts each get the next connection.
        let firsts: Vec<usize> = (0..6)
            .map(|_| table.open_order(&[0, 0, 0], RR, &[])[0])
            .collect();
        let mut seen = firsts.clone();
        seen.sort_unstable();
        assert_eq!(seen, [0, 0, 1, 1, 2, 2], "{firsts:?}");
        assert!(table.failed(1, Fault::Down, "refused", t0));
        assert_eq!(table.open_order(&[2, 0, 1], RR, &[]), [2, 0]);
        assert_eq!(table.open_order(&[2, 0, 1], RR, &[2]), [0]);
        // Nothing in service: every host not yet turned down is a last resort.
        assert!(table.failed(0, Fault::Down, "refused", t0));
        assert!(table.failed(2, Fault::Down, "refused", t0));
        let mut last = table.open_order(&[0, 0, 0], RR, &[0]);
        last.sort_unstable();
        assert_eq!(last, [1, 2]);
    }

    #[test]
    fn disable_sticks_to_the_host_last_connected() {
        let t0 = Instant::now();
        let mut table = HostTable::new(3, t0);
        let d = LoadBalanceHosts::Disable;
        assert_eq!(table.open_order(&[0, 0, 0], d, &[]), [0, 1, 2]);
        table.connected(1, t0);
        assert_eq!(table.open_order(&[0, 5, 0], d, &[]), [1, 2, 0]);
        table.failed(1, Fault::Down, "gone", t0);
        assert_eq!(table.open_order(&[0, 5, 0], d, &[]), [2, 0]);
    }

    #[test]
    fn idle_connections_are_lent_from_each_host_in_turn() {
        let t0 = Instant::now();
        let mut table = HostTable::new(2, t0);
        // Each checkout prefers the other host, so a lone client alternates between them.
        let a = table.lend_ranks(RR);
        let b = table.lend_ranks(RR);
        assert_ne!(a[0] < a[1], b[0] < b[1], "{a:?} {b:?}");
        table.failed(0, Fault::Down, "gone", t0);
        assert_eq!(table.lend_ranks(RR)[0], None);
        assert_eq!(HostTable::new(1, t0).lend_ranks(RR), [Some(0)]);
        let mut d = HostTable::new(2, t0);
        assert_eq!(d.lend_ranks(LoadBalanceHosts::Disable), [Some(0), Some(0)]);
    }

    #[test]
    fn out_hosts_are_probed_with_backoff_and_brought_back() {
        let t0 = Instant::now();
        let mut table = HostTable::new(2, t0);
        assert!(table.failed(0, Fault::Down, "connection refused", t0));
        assert!(!table.failed(0, Fault::Down, "again", t0), "already out");
        assert_eq!(table.state(0), Some(HostState::Out));
        assert!(table.due_probes(t0).is_empty(), "backing off");
        let at = t0 + 400 * MS;
        assert_eq!(table.due_probes(at), [0]);
        assert!(table.due_probes(at).is_empty(), "one probe at a time");
        table.failed(0, Fault::Down, "still refused", at);
        assert!(table.due_probes(at + 700 * MS).is_empty());
        assert_eq!(table.due_probes(at + 800 * MS), [0]);
        assert!(table.connected(0, at + SEC));
        assert!(!table.connected(0, at + SEC), "already up");
        table.probe_failed(0, Fault::Down, "a late probe", at + SEC);
        assert_eq!(
            table.state(0),
            Some(HostState::Up),
            "a late probe's failure"
        );
        assert_eq!(table.state(0), Some(HostState::Up));
        assert!(table.due_probes(t0 + 60 * SEC).is_empty());
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let delays: Vec<u128> = (0..6)
            .map(|n| probe_delay(Fault::Down, n).as_millis())
            .collect();
        assert_eq!(delays, [200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(probe_delay(Fault::Role, 40), MAX_ROLE_BACKOFF);
    }

    fn standby(received: u64, replayed: u64) -> WalPosition {
        WalPosition {
            standby: true,
            received,
            replayed,
        }
    }

    #[test]
    fn an_idle_primary_makes_no_standby_lag() {
        let t0 = Instant::now();
        let mut table = HostTable::new(2, t0);
        let max = SEC;
        // Nothing written for an hour: both standbys replayed all they received.
        for s in 0..5 {
            let now = t0 + 3600 * SEC * s;
            assert_eq!(
                table.observed(0, standby(100, 100), max, now),
                (Duration::ZERO, Change::None)
            );
            assert_eq!(
                table.observed(1, standby(100, 100), max, now),
                (Duration::ZERO, Change::None)
            );
        }
    }

    #[test]
    fn a_standby_that_stops_replaying_is_taken_out_and_brought_back() {
        let t0 = Instant::now();
        let mut table = HostTable::new(2, t0);
        let max = 2 * SEC;
        table.observed(0, standby(100, 100), max, t0);
        table.observed(1, standby(100, 100), max, t0);
        // Host 0 receives new WAL but does not replay it (replay paused); host 1 keeps up.
        table.observed(1, standby(200, 200), max, t0 + SEC);
        let (lag, change) = table.observed(0, standby(200, 100), max, t0 + 2 * SEC);
        assert_eq!((lag, change), (SEC, Change::None));
        let (lag, change) = table.observed(0, standby(300, 100), max, t0 + 3 * SEC + MS);
        assert!(lag > max);
        assert_eq!(change, Change::Lagging);
        assert_eq!(table.state(0), Some(HostState::Lagging));
        // Host 1, which replayed everything, never lags.
        assert_eq!(
            table.observed(1, standby(300, 300), max, t0 + 4 * SEC).0,
            Duration::ZERO
        );
        // Replay resumes and catches up.
        let (lag, change) = table.observed(0, standby(300, 300), max, t0 + 5 * SEC);
        assert_eq!((lag, change), (Duration::ZERO, Change::CaughtUp));
        table.connected(0, t0 + 5 * SEC);
        assert_eq!(table.state(0), Some(HostState::Up));
    }

    #[test]
    fn a_standby_cut_off_from_its_primary_lags_behind_the_others() {
        let t0 = Instant::now();
        let mut table = HostTable::new(2, t0);
        let max = SEC;
        // Host 0 stopped receiving at 100; host 1 goes on receiving and replaying.
        for s in 0..4u64 {
            table.observed(
                1,
                standby(100 + s * 10, 100 + s * 10),
                max,
                t0 + SEC * s as u32,
            );
        }
        let (lag, change) = table.observed(0, standby(100, 100), max, t0 + 4 * SEC);
        assert_eq!(lag, 3 * SEC);
        assert_eq!(change, Change::Lagging);
        // A primary never lags.
        let primary = WalPosition {
            standby: false,
            received: 130,
            replayed: 130,
        };
        assert_eq!(
            table.observed(1, primary, max, t0 + 9 * SEC).0,
            Duration::ZERO
        );
    }

    #[test]
    fn wal_history_is_bounded_and_forgets_old_positions() {
        let t0 = Instant::now();
        let mut wal = WalHistory::default();
        for i in 0..1000u64 {
            wal.observe(t0 + MS * i as u32, i + 1, 3600 * SEC);
        }
        assert!(wal.samples.len() <= WAL_SAMPLES);
        assert!(wal.lag(t0 + SEC, 0) >= wal.lag(t0 + SEC, 999));
        // A rebuilt cluster at lower positions is learnt again once the horizon passes.
        wal.observe(t0 + 120 * SEC, 5, 60 * SEC);
        assert_eq!(wal.lag(t0 + 121 * SEC, 5), Duration::ZERO);
        assert_eq!(wal.lag(t0 + 121 * SEC, 4), SEC);
    }

    #[test]
    fn checks_fall_due_every_period_one_at_a_time() {
        let t0 = Instant::now();
        let mut table = HostTable::new(2, t0);
        assert_eq!(table.due_checks(t0), [0, 1], "never measured");
        assert!(table.due_checks(t0).is_empty(), "running");
        table.observed(0, standby(1, 1), SEC, t0);
        table.not_checked(1);
        assert_eq!(table.due_checks(t0 + MS), [1]);
        assert!(!table.take_due_check(0, t0 + MS));
        assert!(table.take_due_check(0, t0 + LAG_CHECK_PERIOD));
        assert!(!table.take_due_check(0, t0 + LAG_CHECK_PERIOD), "running");
    }

    #[test]
    fn returned_connections_close_to_even_out_the_hosts() {
        let up = [true, true];
        assert_eq!(surplus_on_return(0, &[2, 1], &up, RR), None);
        assert!(surplus_on_return(0, &[3, 1], &up, RR).is_some());
        assert_eq!(surplus_on_return(1, &[3, 1], &up, RR), None);
        assert_eq!(
            surplus_on_return(0, &[3, 1], &up, LoadBalanceHosts::Disable),
            None
        );
        // A host out of service does not count as the one with the fewest.
        assert_eq!(surplus_on_return(0, &[3, 0], &[true, false], RR), None);
        assert!(surplus_on_return(1, &[3, 1], &[true, false], RR).is_some());
        assert_eq!(surplus_on_return(0, &[9], &[true], RR), None);
    }

    #[test]
    fn relay_faults() {
        use TargetSessionAttrs::*;
        assert_eq!(relay_fault(false, None, None, Standby), None);
        assert_eq!(
            relay_fault(true, None, None, Any).map(|f| f.0),
            Some(Fault::Down)
        );
        assert_eq!(
            relay_fault(false, Some(*b"57P01"), None, Standby).map(|f| f.0),
            Some(Fault::Down)
        );
        assert_eq!(
            relay_fault(false, Some(*b"08006"), None, Standby).map(|f| f.0),
            Some(Fault::Down)
        );
        assert_eq!(
            relay_fault(false, Some(*b"25006"), None, Standby),
            None,
            "a client's write"
        );
        assert_eq!(
            relay_fault(false, None, Some("off"), Standby).map(|f| f.0),
            Some(Fault::Role)
        );
        assert_eq!(relay_fault(false, None, Some("on"), Standby), None);
        assert_eq!(relay_fault(false, None, Some("off"), PreferStandby), None);
        assert_eq!(relay_fault(false, None, Some("on"), Any), None);
    }

    #[test]
    fn lsns_parse_as_postgresql_prints_them() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        for bad in ["", "16", "x/1", "1/", "/1", "100000000/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
    }

    #[test]
    fn counts_per_host() {
        let c = HostCounts::new(2);
        c.add_open(1, true);
        c.add_open(1, true);
        c.add_lent(1, true);
        c.add_open(5, true);
        c.add_open(1, false);
        assert_eq!((c.open(), c.lent()), (vec![0, 1], vec![0, 1]));
        c.set_up(0, false);
        assert_eq!(c.up(), [false, true]);
    }

    #[test]
    fn status_names_each_host() {
        let t0 = Instant::now();
        let mut table = HostTable::new(2, t0);
        table.failed(1, Fault::Down, "refused", t0);
        table.observed(0, standby(5, 5), SEC, t0);
        let names = ["a:1".to_owned(), "b:2".to_owned()];
        let st = table.status(&names, &[2, 0], &[1, 0]);
        assert_eq!(st[0].state, "up");
        assert_eq!(st[0].lag, Some(Duration::ZERO));
        assert_eq!((st[0].server_connections, st[0].active), (2, 1));
        assert_eq!(st[1].state, "out");
        assert_eq!(st[1].why.as_deref(), Some("refused"));
        assert_eq!(st[1].host, "b:2");
    }
}
