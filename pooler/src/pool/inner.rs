//! A pool's bookkeeping as a synchronous state machine: no I/O, no clock, no tokio.
//!
//! [`Inner`] holds the idle connections (most recently used last), the last failed login
//! and whether the pool is closed; its methods and the free functions here decide what
//! happens next — lend an idle connection, open one, wait, fail fast or refuse; keep a returned
//! connection or close it and why; which idle connections upkeep closes; how many to open
//! for `min_pool_size`. Every input (settings, the current generation, the count of
//! connections, pause, limits, the time) is an argument, so each transition is a plain
//! unit test. The async shell in `pool/mod.rs` holds this behind a mutex and does the
//! waiting (semaphores, `Notify`, timeouts) and the connecting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{PoolSettings, ServerCheck};

/// What the bookkeeping needs to know of a server connection.
pub(super) trait Conn {
    /// When it was opened (`server_lifetime`).
    fn created(&self) -> Instant;
    /// When it was last given back (`server_idle_timeout`, `server_check_delay`).
    fn last_used(&self) -> Instant;
    /// The pool generation it was opened in.
    fn generation(&self) -> u64;
    /// Whether nothing unread waits on it.
    fn is_clean(&self) -> bool;
    /// Its host's index in the pool's host list.
    fn host(&self) -> usize;
}

/// Why a connection is closed rather than lent or kept idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retire {
    /// `server_lifetime` reached, or its one use done under `server_lifetime = 0`.
    Lifetime,
    /// Opened in an older generation (a new target, RECONNECT, a new limit).
    Generation,
    /// A shared limit was lowered and still counts more connections than it allows.
    LimitShrinking,
    /// The pool is closed.
    Closed,
    /// Something unread waits on it: the server closed it or said something unasked.
    Dead,
    /// Idle past `server_idle_timeout` while the pool holds more than `min_pool_size`.
    IdleTimeout,
    /// The pool holds more than its size plus reserve (it was made smaller).
    Surplus,
    /// Its host is out of service, or holds more than its share of a balanced pool.
    Host(&'static str),
}

/// What a client holding a permit does next.
#[derive(Debug)]
pub(super) enum Step<C, P> {
    /// Lend this idle connection (the most recently used one).
    Reuse(C),
    /// Open a new connection in this place of the pool's count.
    Open(P),
    /// Every place is taken: wait for a connection or a place to be given back.
    Wait,
    /// A login failed less than `server_login_retry` ago: fail now with its error.
    LoginRetry(Arc<str>),
    /// The pool is closed.
    Closed,
}

/// What can be said of an idle connection about to be lent, without talking to its server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Vet {
    /// Lend it.
    Ready,
    /// Idle past `server_check_delay`: run `server_check_query` first.
    Check,
    /// Close it.
    Retire(Retire),
}

/// What `min_pool_size` upkeep does now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Warm {
    /// The pool is closed: upkeep stops for good.
    Closed,
    /// Open nothing now (enough connections, paused, or logins failing).
    Hold,
    /// This many connections are missing; open one and ask again.
    Open(usize),
}

/// The most connections a pool may hold: its size plus its reserve.
pub(super) fn capacity(settings: &PoolSettings) -> usize {
    settings.size + settings.reserve_size
}

/// When a client that found no free main permit at `now` may also take a reserve one: after
/// `reserve_pool_timeout`, if the pool has a reserve and that is before its `deadline`.
pub(super) fn reserve_at(
    settings: &PoolSettings,
    now: Instant,
    deadline: Instant,
) -> Option<Instant> {
    (settings.reserve_size > 0)
        .then(|| now + settings.reserve_timeout)
        .filter(|at| *at < deadline)
}

/// Whether an idle connection may be lent at `now` (in generation `generation`).
pub(super) fn vet(conn: &impl Conn, now: Instant, settings: &PoolSettings, generation: u64) -> Vet {
    if !conn.is_clean() {
        return Vet::Retire(Retire::Dead);
    }
    if conn.generation() != generation {
        return Vet::Retire(Retire::Generation);
    }
    if settings.check == ServerCheck::Off
        || now.duration_since(conn.last_used()) < settings.check_delay
    {
        return Vet::Ready;
    }
    Vet::Check
}

/// Whether a connection given back clean at `now` must close instead of going idle (the
/// pool being closed aside, which [`Inner::put_idle`] answers).
pub(super) fn returned(
    conn: &impl Conn,
    now: Instant,
    settings: &PoolSettings,
    generation: u64,
    limits_shrinking: bool,
) -> Option<Retire> {
    if settings
        .lifetime
        .expired_after_use(now.duration_since(conn.created()))
    {
        Some(Retire::Lifetime)
    } else if conn.generation() != generation {
        Some(Retire::Generation)
    } else if limits_shrinking {
        Some(Retire::LimitShrinking)
    } else {
        None
    }
}

/// A pool's idle connections, last failed login, and whether it is closed.
#[derive(Debug)]
pub(super) struct Inner<C> {
    /// Most recently used last: taken from the back so that spares idle out at the front.
    idle: VecDeque<C>,
    /// The last failed login, which makes new logins wait `server_login_retry`.
    last_failure: Option<(Instant, Arc<str>)>,
    closed: bool,
}

impl<C> Default for Inner<C> {
    fn default() -> Self {
        Inner {
            idle: VecDeque::new(),
            last_failure: None,
            closed: false,
        }
    }
}

impl<C: Conn> Inner<C> {
    /// How many connections are idle.
    pub(super) fn idle(&self) -> usize {
        self.idle.len()
    }

    /// The most recently used idle connection (with `round_robin`, the one idle longest),
    /// unless the pool is closed. With `ranks` (one per host, see
    /// [`super::hosts::HostTable::lend_ranks`]) it comes from the best-ranked host, and none
    /// from a host ranked `None`.
    pub(super) fn take_idle(
        &mut self,
        round_robin: bool,
        ranks: Option<&[Option<usize>]>,
    ) -> Option<C> {
        if self.closed {
            return None;
        }
        self.pop_idle(round_robin, ranks)
    }

    fn pop_idle(&mut self, round_robin: bool, ranks: Option<&[Option<usize>]>) -> Option<C> {
        let Some(ranks) = ranks else {
            return if round_robin {
                self.idle.pop_front()
            } else {
                self.idle.pop_back()
            };
        };
        let rank = |c: &C| ranks.get(c.host()).copied().flatten();
        let mut best: Option<(usize, usize)> = None;
        for (i, c) in self.idle.iter().enumerate() {
            let Some(r) = rank(c) else { continue };
            // Among equals the last found is the most recently used; round_robin keeps the first.
            let better = best.is_none_or(|(_, b)| r < b || (r == b && !round_robin));
            if better {
                best = Some((i, r));
            }
        }
        self.idle.remove(best?.0)
    }

    /// Takes out the idle connections to `host`, to be closed or checked.
    pub(super) fn take_idle_of(&mut self, host: usize, at_most: usize) -> Vec<C> {
        let mut taken = Vec::new();
        let mut i = 0;
        while i < self.idle.len() && taken.len() < at_most {
            if self.idle[i].host() == host {
                taken.extend(self.idle.remove(i));
            } else {
                i += 1;
            }
        }
        taken
    }

    /// The next step of a client holding a permit at `now`; `ranks` as in
    /// [`Inner::take_idle`]; `take_place` takes a place in the pool's count of connections,
    /// `None` when all are taken.
    pub(super) fn step<P>(
        &mut self,
        now: Instant,
        settings: &PoolSettings,
        ranks: Option<&[Option<usize>]>,
        take_place: impl FnOnce() -> Option<P>,
    ) -> Step<C, P> {
        if self.closed {
            return Step::Closed;
        }
        if let Some(conn) = self.pop_idle(settings.round_robin, ranks) {
            return Step::Reuse(conn);
        }
        let Some(place) = take_place() else {
            return Step::Wait;
        };
        match self.failing(now, settings.login_retry) {
            Some(why) => Step::LoginRetry(why.clone()),
            None => Step::Open(place),
        }
    }

    /// Keeps `conn` idle, or gives it back when the pool is closed.
    pub(super) fn put_idle(&mut self, conn: C) -> Result<(), C> {
        if self.closed {
            return Err(conn);
        }
        self.idle.push_back(conn);
        Ok(())
    }

    /// The least recently used idle connection, to be closed to make room elsewhere.
    pub(super) fn evict(&mut self) -> Option<C> {
        self.idle.pop_front()
    }

    /// Every idle connection, to be closed.
    pub(super) fn take_all_idle(&mut self) -> VecDeque<C> {
        std::mem::take(&mut self.idle)
    }

    /// Closes the pool: it refuses checkouts from now on; returns the idle connections.
    pub(super) fn close(&mut self) -> VecDeque<C> {
        self.closed = true;
        self.take_all_idle()
    }

    /// Records a failed login at `at`.
    pub(super) fn login_failed(&mut self, at: Instant, why: Arc<str>) {
        self.last_failure = Some((at, why));
    }

    /// Forgets the last failed login (one succeeded, or the target changed).
    pub(super) fn clear_failure(&mut self) {
        self.last_failure = None;
    }

    /// The error of a login that failed less than `login_retry` before `now`.
    fn failing(&self, now: Instant, login_retry: Duration) -> Option<&Arc<str>> {
        self.last_failure
            .as_ref()
            .filter(|(at, _)| now.duration_since(*at) < login_retry)
            .map(|(_, why)| why)
    }

    /// Takes out the idle connections upkeep closes at `now`, oldest-used first: past
    /// their lifetime, dead, of an older generation, beyond size plus reserve, or idle
    /// past `server_idle_timeout` while more than `min_pool_size` would remain. `total` is
    /// the pool's count of connections (idle, lent and being opened).
    pub(super) fn reap(
        &mut self,
        now: Instant,
        settings: &PoolSettings,
        generation: u64,
        total: usize,
    ) -> Vec<(C, Retire)> {
        let mut total = total;
        let mut retired = Vec::new();
        let mut i = 0;
        while i < self.idle.len() {
            let conn = &self.idle[i];
            let why = if !conn.is_clean() {
                Some(Retire::Dead)
            } else if conn.generation() != generation {
                Some(Retire::Generation)
            } else if settings
                .lifetime
                .expired_idle(now.duration_since(conn.created()))
            {
                Some(Retire::Lifetime)
            } else if total > capacity(settings) {
                Some(Retire::Surplus)
            } else if !settings.idle_timeout.is_zero()
                && now.duration_since(conn.last_used()) >= settings.idle_timeout
                && total > settings.min_size
            {
                Some(Retire::IdleTimeout)
            } else {
                None
            };
            match why.and_then(|why| Some((self.idle.remove(i)?, why))) {
                Some(taken) => {
                    retired.push(taken);
                    total -= 1;
                }
                None => i += 1,
            }
        }
        retired
    }

    /// What `min_pool_size` upkeep does at `now`, with `total` connections counted.
    pub(super) fn warm(
        &self,
        now: Instant,
        settings: &PoolSettings,
        paused: bool,
        total: usize,
    ) -> Warm {
        if self.closed {
            return Warm::Closed;
        }
        // A paused pool is being emptied on purpose; warming would undo that.
        if paused || self.failing(now, settings.login_retry).is_some() {
            return Warm::Hold;
        }
        match settings.min_size.saturating_sub(total) {
            0 => Warm::Hold,
            missing => Warm::Open(missing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PoolMode, ServerLifetime};

    /// An idle connection's bookkeeping, with an id to tell them apart.
    #[derive(Debug, PartialEq, Eq)]
    struct Fake {
        id: u32,
        created: Instant,
        last_used: Instant,
        generation: u64,
        clean: bool,
        host: usize,
    }

    impl Conn for Fake {
        fn created(&self) -> Instant {
            self.created
        }
        fn last_used(&self) -> Instant {
            self.last_used
        }
        fn generation(&self) -> u64 {
            self.generation
        }
        fn is_clean(&self) -> bool {
            self.clean
        }
        fn host(&self) -> usize {
            self.host
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    fn fake(id: u32, t0: Instant) -> Fake {
        Fake {
            id,
            created: t0,
            last_used: t0,
            generation: 0,
            clean: true,
            host: 0,
        }
    }

    fn settings() -> PoolSettings {
        PoolSettings {
            mode: PoolMode::Transaction,
            size: 2,
            min_size: 0,
            reserve_size: 1,
            reserve_timeout: 5 * SEC,
            lifetime: ServerLifetime::Max(3600 * SEC),
            idle_timeout: 600 * SEC,
            check_delay: 30 * SEC,
            check: ServerCheck::EmptyQuery,
            login_retry: 15 * SEC,
            max_db_connections: 0,
            max_user_connections: 0,
            round_robin: false,
            failover_hold: true,
            query_wait_timeout: 120 * SEC,
            replica_max_lag: Duration::ZERO,
        }
    }

    #[test]
    fn round_robin_lends_the_connection_idle_longest() {
        let t0 = Instant::now();
        let mut lifo = pool_of([fake(1, t0), fake(2, t0)]);
        assert_eq!(lifo.take_idle(false, None).map(|c| c.id), Some(2));
        let mut fifo = pool_of([fake(1, t0), fake(2, t0)]);
        let round_robin = PoolSettings {
            round_robin: true,
            ..settings()
        };
        match fifo.step(t0, &round_robin, None, || None::<()>) {
            Step::Reuse(c) => assert_eq!(c.id, 1),
            _ => panic!("an idle connection is there"),
        }
        assert_eq!(fifo.take_idle(true, None).map(|c| c.id), Some(2));
    }

    #[test]
    fn ranked_hosts_lend_from_the_best_ranked_host_only() {
        let t0 = Instant::now();
        let on = |id, host| Fake {
            host,
            ..fake(id, t0)
        };
        let mut inner = pool_of([on(1, 0), on(2, 1), on(3, 0), on(4, 1)]);
        let ranks = [Some(1), Some(0)];
        assert_eq!(inner.take_idle(false, Some(&ranks)).map(|c| c.id), Some(4));
        assert_eq!(inner.take_idle(true, Some(&ranks)).map(|c| c.id), Some(2));
        let out = [Some(0), None];
        assert_eq!(inner.take_idle(false, Some(&out)).map(|c| c.id), Some(3));
        assert_eq!(inner.take_idle(false, Some(&out)).map(|c| c.id), Some(1));
        assert!(inner.take_idle(false, Some(&[None, None])).is_none());
        let mut inner = pool_of([on(1, 0), on(2, 1), on(3, 0)]);
        let taken: Vec<u32> = inner.take_idle_of(0, 5).iter().map(|c| c.id).collect();
        assert_eq!(taken, [1, 3]);
        assert_eq!(inner.idle(), 1);
        assert!(inner.take_idle_of(1, 0).is_empty());
    }

    fn pool_of(conns: impl IntoIterator<Item = Fake>) -> Inner<Fake> {
        let mut inner = Inner::default();
        for c in conns {
            inner
                .put_idle(c)
                .expect("an open pool keeps idle connections");
        }
        inner
    }

    fn ids(retired: &[(Fake, Retire)]) -> Vec<(u32, Retire)> {
        retired.iter().map(|(c, why)| (c.id, *why)).collect()
    }

    #[test]
    fn capacity_is_size_plus_reserve() {
        let s = settings();
        assert_eq!(capacity(&s), 3);
        assert_eq!(
            capacity(&PoolSettings {
                reserve_size: 0,
                ..s
            }),
            2
        );
    }

    #[test]
    fn reserve_opens_after_its_timeout_only_before_the_deadline() {
        let t0 = Instant::now();
        let s = settings();
        assert_eq!(reserve_at(&s, t0, t0 + 10 * SEC), Some(t0 + 5 * SEC));
        // The wait would end before the reserve opens: no reserve.
        assert_eq!(reserve_at(&s, t0, t0 + 5 * SEC), None);
        let none = PoolSettings {
            reserve_size: 0,
            ..s
        };
        assert_eq!(reserve_at(&none, t0, t0 + 100 * SEC), None);
    }

    #[test]
    fn checkout_reuses_the_most_recently_used_idle_connection() {
        let t0 = Instant::now();
        let mut inner = pool_of([fake(1, t0), fake(2, t0), fake(3, t0)]);
        let s = settings();
        let mut took_place = false;
        let step = inner.step(t0, &s, None, || {
            took_place = true;
            Some(())
        });
        assert!(matches!(step, Step::Reuse(Fake { id: 3, .. })), "{step:?}");
        assert!(
            !took_place,
            "a place was taken although a connection was idle"
        );
        assert!(matches!(
            inner.take_idle(false, None),
            Some(Fake { id: 2, .. })
        ));
        assert_eq!(inner.idle(), 1);
    }

    #[test]
    fn checkout_opens_when_nothing_is_idle_and_a_place_is_free() {
        let mut inner = Inner::<Fake>::default();
        let step = inner.step(Instant::now(), &settings(), None, || Some("place"));
        assert!(matches!(step, Step::Open("place")), "{step:?}");
    }

    #[test]
    fn checkout_waits_when_every_place_is_taken() {
        let t0 = Instant::now();
        let mut inner = Inner::<Fake>::default();
        inner.login_failed(t0, "password authentication failed".into());
        // A full pool waits, failing login or not: only a new login would fail.
        let step = inner.step(t0, &settings(), None, || None::<()>);
        assert!(matches!(step, Step::Wait), "{step:?}");
    }

    #[test]
    fn a_recent_login_failure_fails_fast_until_login_retry_passes() {
        let t0 = Instant::now();
        let s = settings();
        let mut inner = Inner::<Fake>::default();
        inner.login_failed(t0, "no such database".into());
        let step = inner.step(t0 + 14 * SEC, &s, None, || Some(()));
        assert!(
            matches!(&step, Step::LoginRetry(why) if &**why == "no such database"),
            "{step:?}"
        );
        let step = inner.step(t0 + 15 * SEC, &s, None, || Some(()));
        assert!(matches!(step, Step::Open(())), "{step:?}");
    }

    #[test]
    fn failing_fast_gives_the_place_back() {
        /// A place that says when it is given back.
        struct Place<'a>(&'a std::cell::Cell<bool>);
        impl Drop for Place<'_> {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let t0 = Instant::now();
        let given_back = std::cell::Cell::new(false);
        let mut inner = Inner::<Fake>::default();
        inner.login_failed(t0, "refused".into());
        let step = inner.step(t0, &settings(), None, || Some(Place(&given_back)));
        assert!(matches!(step, Step::LoginRetry(_)));
        assert!(given_back.get(), "the place taken to open stays counted");
    }

    #[test]
    fn a_successful_login_clears_the_failure() {
        let t0 = Instant::now();
        let mut inner = Inner::<Fake>::default();
        inner.login_failed(t0, "refused".into());
        inner.clear_failure();
        let step = inner.step(t0, &settings(), None, || Some(()));
        assert!(matches!(step, Step::Open(())), "{step:?}");
    }

    #[test]
    fn a_closed_pool_refuses_checkouts_and_returned_connections() {
        let t0 = Instant::now();
        let mut inner = pool_of([fake(1, t0), fake(2, t0)]);
        let idle = inner.close();
        assert_eq!(idle.len(), 2);
        let step = inner.step(t0, &settings(), None, || Some(()));
        assert!(matches!(step, Step::Closed), "{step:?}");
        assert!(inner.take_idle(false, None).is_none());
        assert!(inner.put_idle(fake(3, t0)).is_err());
        assert_eq!(inner.warm(t0, &settings(), false, 0), Warm::Closed);
    }

    #[test]
    fn vetting_lends_recently_used_and_checks_long_idle_connections() {
        let t0 = Instant::now();
        let s = settings();
        let conn = fake(1, t0);
        assert_eq!(vet(&conn, t0 + 29 * SEC, &s, 0), Vet::Ready);
        assert_eq!(vet(&conn, t0 + 30 * SEC, &s, 0), Vet::Check);
        let off = PoolSettings {
            check: ServerCheck::Off,
            ..s
        };
        assert_eq!(vet(&conn, t0 + 3600 * SEC, &off, 0), Vet::Ready);
    }

    #[test]
    fn vetting_closes_dead_and_stale_connections() {
        let t0 = Instant::now();
        let s = settings();
        let dead = Fake {
            clean: false,
            ..fake(1, t0)
        };
        assert_eq!(vet(&dead, t0, &s, 0), Vet::Retire(Retire::Dead));
        assert_eq!(
            vet(&fake(2, t0), t0, &s, 1),
            Vet::Retire(Retire::Generation)
        );
    }

    #[test]
    fn a_returned_connection_goes_idle_until_its_lifetime() {
        let t0 = Instant::now();
        let s = PoolSettings {
            lifetime: ServerLifetime::Max(60 * SEC),
            ..settings()
        };
        let conn = fake(1, t0);
        assert_eq!(returned(&conn, t0 + 59 * SEC, &s, 0, false), None);
        assert_eq!(
            returned(&conn, t0 + 60 * SEC, &s, 0, false),
            Some(Retire::Lifetime)
        );
    }

    #[test]
    fn single_use_connections_close_after_one_use_but_wait_idle_for_it() {
        let t0 = Instant::now();
        let s = PoolSettings {
            lifetime: ServerLifetime::SingleUse,
            idle_timeout: Duration::ZERO,
            ..settings()
        };
        assert_eq!(
            returned(&fake(1, t0), t0, &s, 0, false),
            Some(Retire::Lifetime)
        );
        // One opened for min_pool_size and never lent is not reaped for its age.
        let mut inner = pool_of([fake(2, t0)]);
        assert!(inner.reap(t0 + 86400 * SEC, &s, 0, 1).is_empty());
    }

    #[test]
    fn a_generation_bump_retires_idle_and_returned_connections() {
        let t0 = Instant::now();
        let s = settings();
        let mut inner = pool_of([fake(1, t0), fake(2, t0)]);
        let retired = inner.reap(t0, &s, 1, 3);
        assert_eq!(
            ids(&retired),
            [(1, Retire::Generation), (2, Retire::Generation)]
        );
        assert_eq!(inner.idle(), 0);
        // The one that was lent during the bump closes when it comes back.
        assert_eq!(
            returned(&fake(3, t0), t0, &s, 1, false),
            Some(Retire::Generation)
        );
        let fresh = Fake {
            generation: 1,
            ..fake(4, t0)
        };
        assert_eq!(returned(&fresh, t0, &s, 1, false), None);
    }

    #[test]
    fn a_shrinking_limit_closes_returned_connections() {
        let t0 = Instant::now();
        assert_eq!(
            returned(&fake(1, t0), t0, &settings(), 0, true),
            Some(Retire::LimitShrinking)
        );
    }

    #[test]
    fn idle_timeout_never_goes_below_min_pool_size() {
        let t0 = Instant::now();
        let s = PoolSettings {
            size: 5,
            min_size: 2,
            idle_timeout: 60 * SEC,
            ..settings()
        };
        let mut inner = pool_of((1..=4).map(|id| fake(id, t0)));
        // Four idle, one more lent: three may go, but the lent one counts towards the minimum.
        let retired = inner.reap(t0 + 60 * SEC, &s, 0, 5);
        assert_eq!(
            ids(&retired),
            [
                (1, Retire::IdleTimeout),
                (2, Retire::IdleTimeout),
                (3, Retire::IdleTimeout)
            ]
        );
        assert_eq!(inner.idle(), 1);
        assert!(inner.reap(t0 + 600 * SEC, &s, 0, 2).is_empty());
    }

    #[test]
    fn idle_timeout_spares_recently_used_connections_and_zero_disables_it() {
        let t0 = Instant::now();
        let s = PoolSettings {
            idle_timeout: 60 * SEC,
            ..settings()
        };
        let used = Fake {
            last_used: t0 + 30 * SEC,
            ..fake(2, t0)
        };
        let mut inner = pool_of([fake(1, t0), used]);
        assert_eq!(
            ids(&inner.reap(t0 + 60 * SEC, &s, 0, 2)),
            [(1, Retire::IdleTimeout)]
        );
        let never = PoolSettings {
            idle_timeout: Duration::ZERO,
            ..s
        };
        assert!(inner.reap(t0 + 3599 * SEC, &never, 0, 1).is_empty());
    }

    #[test]
    fn reaping_closes_dead_and_old_connections() {
        let t0 = Instant::now();
        let s = PoolSettings {
            lifetime: ServerLifetime::Max(60 * SEC),
            idle_timeout: Duration::ZERO,
            ..settings()
        };
        let dead = Fake {
            clean: false,
            created: t0 + 30 * SEC,
            ..fake(1, t0)
        };
        let young = Fake {
            created: t0 + 30 * SEC,
            ..fake(3, t0)
        };
        let mut inner = pool_of([dead, fake(2, t0), young]);
        let retired = inner.reap(t0 + 60 * SEC, &s, 0, 3);
        assert_eq!(ids(&retired), [(1, Retire::Dead), (2, Retire::Lifetime)]);
        assert!(matches!(
            inner.take_idle(false, None),
            Some(Fake { id: 3, .. })
        ));
    }

    #[test]
    fn a_shrunk_pool_closes_idle_connections_beyond_size_plus_reserve() {
        let t0 = Instant::now();
        // Size 2 plus reserve 1; five counted, four idle: the two least recently used go.
        let mut inner = pool_of((1..=4).map(|id| fake(id, t0)));
        let retired = inner.reap(t0, &settings(), 0, 5);
        assert_eq!(ids(&retired), [(1, Retire::Surplus), (2, Retire::Surplus)]);
        assert_eq!(inner.idle(), 2);
    }

    #[test]
    fn eviction_takes_the_least_recently_used() {
        let t0 = Instant::now();
        let mut inner = pool_of([fake(1, t0), fake(2, t0)]);
        assert!(matches!(inner.evict(), Some(Fake { id: 1, .. })));
        assert!(matches!(inner.evict(), Some(Fake { id: 2, .. })));
        assert!(inner.evict().is_none());
    }

    #[test]
    fn warming_opens_what_min_pool_size_misses() {
        let t0 = Instant::now();
        let s = PoolSettings {
            min_size: 3,
            ..settings()
        };
        let inner = Inner::<Fake>::default();
        assert_eq!(inner.warm(t0, &s, false, 1), Warm::Open(2));
        assert_eq!(inner.warm(t0, &s, false, 3), Warm::Hold);
        assert_eq!(inner.warm(t0, &settings(), false, 0), Warm::Hold);
    }

    #[test]
    fn a_paused_pool_is_not_warmed() {
        let s = PoolSettings {
            min_size: 2,
            ..settings()
        };
        let inner = Inner::<Fake>::default();
        assert_eq!(inner.warm(Instant::now(), &s, true, 0), Warm::Hold);
    }

    #[test]
    fn warming_waits_out_a_failed_login() {
        let t0 = Instant::now();
        let s = PoolSettings {
            min_size: 2,
            ..settings()
        };
        let mut inner = Inner::<Fake>::default();
        inner.login_failed(t0, "refused".into());
        assert_eq!(inner.warm(t0 + 14 * SEC, &s, false, 0), Warm::Hold);
        assert_eq!(inner.warm(t0 + 15 * SEC, &s, false, 0), Warm::Open(2));
    }
}
