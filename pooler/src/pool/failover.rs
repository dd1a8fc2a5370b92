//! Failover decisions (`failover_hold`, a Weir extension), kept pure: which signals say the
//! primary went away, which pools hold their clients while a new one is looked for, how long
//! to wait between probes, and the hold's bookkeeping. The pool does the waiting and probing.

use std::time::{Duration, Instant};

use crate::config::TargetSessionAttrs;
use crate::server::ServerError;

/// The first pause between two probes of the host list.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two probes: held clients wait at most this past a promotion.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Whether a pool with these settings holds its clients while it looks for a new primary:
/// only one that must write (`read-write`, `primary`) or that has a host list to fail over in.
pub fn applies(hold: bool, attrs: TargetSessionAttrs, hosts: usize) -> bool {
    hold && match attrs {
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary => true,
        TargetSessionAttrs::Any => hosts > 1,
        _ => false,
    }
}

/// Whether an error with SQLSTATE `code` says the server stopped being a usable primary:
/// read-only transaction (25006), shut down or crashed (57P01, 57P02), not accepting
/// connections (57P03), or any connection exception (class 08).
pub fn signals(code: &[u8]) -> bool {
    matches!(code, b"25006" | b"57P01" | b"57P02" | b"57P03") || code.starts_with(b"08")
}

/// Whether a failed connect says the primary may have gone: the host did not answer, the
/// connection broke or timed out, no host was acceptable, or the server refused the login
/// for one of the reasons [`signals`] knows (e.g. 57P03 while it shuts down or starts).
/// A refused password or a TLS misconfiguration is not a failover.
pub fn connect_signals(e: &ServerError) -> bool {
    match e {
        ServerError::Connect { .. }
        | ServerError::Lost(_)
        | ServerError::Timeout
        | ServerError::QueryTimeout(_)
        | ServerError::NoMatchingHost { .. } => true,
        ServerError::Login(e) => signals(e.code.as_bytes()),
        _ => false,
    }
}

/// Whether a ParameterStatus says the server is now a standby.
pub fn signals_parameter(name: &str, value: &str) -> bool {
    name == "in_hot_standby" && value == "on"
}

/// Why what one relay saw says its server stopped being a usable primary, if it does: the
/// connection broke, an error [`signals`] knows came by (`error`), or the server newly
/// reported `in_hot_standby` (`standby_report`: its value, when it changed during the relay).
pub fn relay_signal(
    connection_failed: bool,
    error: Option<[u8; 5]>,
    standby_report: Option<&str>,
) -> Option<&'static str> {
    if connection_failed {
        Some("server connection failed")
    } else if error.is_some() {
        Some("server reported an error that ends its use as the primary")
    } else if standby_report.is_some_and(|v| signals_parameter("in_hot_standby", v)) {
        Some("server reports in_hot_standby = on")
    } else {
        None
    }
}

/// The pause before probe number `attempt` (0 is the first, at once): doubling from 50 ms
/// up to 500 ms, and never past `left`.
pub fn probe_delay(attempt: u32, left: Duration) -> Duration {
    let delay = match attempt {
        0 => Duration::ZERO,
        n => FIRST_BACKOFF
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(MAX_BACKOFF),
    };
    delay.min(left)
}

/// How long probing goes on before the hold is lifted: a probe runs for at least one
/// `server_connect_timeout` and the clients wait `query_wait_timeout` at most.
pub fn probe_window(query_wait_timeout: Duration, connect_timeout: Duration) -> Duration {
    let wait = if query_wait_timeout.is_zero() {
        // query_wait_timeout = 0 waits forever; the hold is still bounded.
        Duration::from_secs(120)
    } else {
        query_wait_timeout
    };
    wait.max(connect_timeout)
}

/// What the console and metrics show of a pool's failover handling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Whether the pool holds clients during a failover ([`applies`]).
    pub enabled: bool,
    /// Whether it is holding them now.
    pub holding: bool,
    /// The host it last connected to (`host:port`): the primary when it needs one.
    pub current: Option<String>,
    /// Failovers started.
    pub failovers: u64,
    /// Failovers that found a primary.
    pub recovered: u64,
    /// Clients held right now.
    pub held: usize,
}

/// A pool's failover state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Since when clients are held, while a probe looks for the primary.
    pub holding_since: Option<Instant>,
    /// The host the pool last connected to (`host:port`).
    pub current: Option<String>,
    /// The host in use when the running failover started.
    lost: Option<String>,
    /// Failovers started since the pooler started.
    pub failovers: u64,
    /// Failovers that found a primary.
    pub recovered: u64,
}

impl State {
    /// A signal from a connection of pool generation `generation` while the pool is at
    /// `current_generation`: true when it starts a failover. A signal from a connection
    /// already retired, or one during a failover, starts nothing; nor does one in a pool that
    /// never reached a server (there is no primary to fail over from: its clients are told
    /// why at once).
    pub fn suspect(&mut self, now: Instant, generation: u64, current_generation: u64) -> bool {
        if self.holding_since.is_some() || self.current.is_none() || generation < current_generation
        {
            return false;
        }
        self.holding_since = Some(now);
        self.lost = self.current.clone();
        self.failovers += 1;
        true
    }

    /// A probe connected to `host`: the hold ends. Returns how long it lasted, and whether
    /// the primary moved (then connections to the old one must be retired; the same host
    /// answering again, after a restart or a client's own read-only transaction, keeps them).
    pub fn found(&mut self, now: Instant, host: String) -> (Option<Duration>, bool) {
        let moved = self.lost.take().is_some_and(|lost| lost != host);
        self.current = Some(host);
        let Some(since) = self.holding_since.take() else {
            return (None, moved);
        };
        self.recovered += 1;
        (Some(now.saturating_duration_since(since)), moved)
    }

    /// Probing gave up: the hold ends, and the next signal starts a new failover.
    pub fn gave_up(&mut self) {
        self.holding_since = None;
        self.lost = None;
    }

    /// Whether clients are being held.
    pub fn holding(&self) -> bool {
        self.holding_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_pools_hold() {
        use TargetSessionAttrs::*;
        assert!(applies(true, ReadWrite, 1));
        assert!(applies(true, Primary, 2));
        assert!(applies(true, Any, 2));
        assert!(!applies(true, Any, 1));
        assert!(!applies(true, ReadOnly, 2));
        assert!(!applies(true, Standby, 2));
        assert!(!applies(true, PreferStandby, 2));
        assert!(!applies(false, ReadWrite, 2));
    }

    #[test]
    fn which_errors_signal() {
        for code in [
            "25006", "57P01", "57P02", "57P03", "08006", "08001", "08P01",
        ] {
            assert!(signals(code.as_bytes()), "{code}");
        }
        for code in ["57014", "40001", "23505", "25P02", "57P04", "0", ""] {
            assert!(!signals(code.as_bytes()), "{code}");
        }
        assert!(signals_parameter("in_hot_standby", "on"));
        assert!(!signals_parameter("in_hot_standby", "off"));
        assert!(!signals_parameter("default_transaction_read_only", "on"));
        assert_eq!(relay_signal(false, None, None), None);
        assert_eq!(relay_signal(false, None, Some("off")), None, "a promotion");
        assert!(relay_signal(false, None, Some("on")).is_some());
        assert!(relay_signal(false, Some(*b"57P01"), None).is_some());
        assert!(relay_signal(true, None, None).is_some());
        let refused =
            |code: &str| ServerError::Login(Box::new(crate::protocol::PgError::fatal(code, "no")));
        assert!(connect_signals(&refused("57P03")));
        assert!(!connect_signals(&refused("28P01")), "a wrong password");
        assert!(connect_signals(&ServerError::Timeout));
        assert!(!connect_signals(&ServerError::Tls("bad".into())));
        assert!(connect_signals(&ServerError::Connect {
            addr: crate::server::ServerAddr::new("a", 5432),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }));
    }

    #[test]
    fn probes_back_off_within_the_window() {
        let long = Duration::from_secs(60);
        let delays: Vec<_> = (0..7).map(|n| probe_delay(n, long)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [ms(0), ms(50), ms(100), ms(200), ms(400), ms(500), ms(500)]
        );
        assert_eq!(probe_delay(u32::MAX, long), MAX_BACKOFF);
        assert_eq!(probe_delay(4, ms(30)), ms(30));
        let s = Duration::from_secs;
        assert_eq!(probe_window(s(120), s(15)), s(120));
        assert_eq!(probe_window(s(5), s(15)), s(15));
        assert_eq!(probe_window(Duration::ZERO, s(15)), s(120));
    }

    #[test]
    fn one_failover_at_a_time() {
        let t0 = Instant::now();
        let mut state = State::default();
        assert!(!state.suspect(t0, 0, 0), "never had a server");
        state.current = Some("a:5432".into());
        assert!(state.suspect(t0, 0, 0));
        assert!(state.holding());
        assert!(!state.suspect(t0, 0, 1), "a second signal during the hold");
        state.current = Some("b:5432".into());
        let held = state.found(t0 + Duration::from_secs(3), "b:5432".into());
        assert_eq!(
            held,
            (Some(Duration::from_secs(3)), true),
            "moved from a, whatever opened meanwhile"
        );
        assert!(!state.holding());
        assert_eq!(state.current.as_deref(), Some("b:5432"));
        assert!(
            !state.suspect(t0, 0, 1),
            "a late signal from a retired connection"
        );
        assert!(state.suspect(t0, 1, 1));
        assert!(
            !state.found(t0, "b:5432".into()).1,
            "the same primary again"
        );
        assert!(state.suspect(t0, 1, 1));
        state.gave_up();
        assert!(!state.holding());
        assert_eq!((state.failovers, state.recovered), (3, 2));
        assert_eq!(
            state.found(t0, "a:5432".into()),
            (None, false),
            "not holding"
        );
    }
}
