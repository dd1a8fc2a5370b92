//! The clients waiting for a pool's permits, as a synchronous state machine: no I/O, no
//! clock, no tokio.
//!
//! A pool lends at most `pool_size` connections at once (main permits), and up to
//! `reserve_pool_size` more (reserve permits) to clients that have waited
//! `reserve_pool_timeout`. A permit given back goes straight to the oldest client that may take
//! it (FIFO), with the connection it covered when that stays open, so that client needs no
//! wake-up of its own to look again. One sweep per pool, not a timer per client, ends the
//! waits past their deadline (`query_wait_timeout`) and opens the reserve to clients that
//! waited long enough. The waiter type `W` is whatever the shell wakes a client with.

use std::collections::VecDeque;
use std::time::Instant;

/// Which count a permit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// One of `pool_size`.
    Main,
    /// One of `reserve_pool_size`, for clients that waited `reserve_pool_timeout`.
    Reserve,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Main => 0,
            Kind::Reserve => 1,
        }
    }
}

/// What a client asking for a permit gets at once.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Take {
    /// A free permit of this kind.
    Granted(Kind),
    /// None is free (or others wait already): queue up.
    Wait,
    /// The pool is closed.
    Closed,
}

#[derive(Debug)]
struct Entry<W> {
    waiter: W,
    deadline: Instant,
    /// From when it may take a reserve permit; `None`: never.
    reserve_at: Option<Instant>,
}

impl<W> Entry<W> {
    fn may_take(&self, kind: Kind, now: Instant) -> bool {
        kind == Kind::Main || self.reserve_at.is_some_and(|at| at <= now)
    }

    /// The next moment the sweep has something to do for this waiter after `now`.
    fn due(&self, now: Instant) -> Instant {
        match self.reserve_at {
            Some(at) if at > now => at.min(self.deadline),
            _ => self.deadline,
        }
    }
}

/// What a sweep found.
#[derive(Debug)]
pub(super) struct Swept<W> {
    /// Waiters past their deadline, to be told so.
    pub(super) expired: Vec<W>,
    /// Waiters given a free permit of this kind.
    pub(super) granted: Vec<(W, Kind)>,
    /// When the next sweep is due; `None` while nobody waits.
    pub(super) next: Option<Instant>,
}

/// Free permits and the clients waiting for one, oldest first.
#[derive(Debug)]
pub(super) struct Queue<W> {
    waiters: VecDeque<Entry<W>>,
    /// Free permits, by [`Kind::index`].
    free: [usize; 2],
    /// Permits to take out of circulation as they are given back (the pool was made smaller).
    owed: [usize; 2],
    closed: bool,
    /// When the sweep is due, as it was last told; `None` while it waits for a waiter.
    sweep_at: Option<Instant>,
}

impl<W> Queue<W> {
    /// A queue with `size` main and `reserve` reserve permits, all free.
    pub(super) fn new(size: usize, reserve: usize) -> Queue<W> {
        Queue {
            waiters: VecDeque::new(),
            free: [size, reserve],
            owed: [0, 0],
            closed: false,
            sweep_at: None,
        }
    }

    /// How many clients wait.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Whether the pool was closed.
    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    /// A permit without waiting, at `now`, for a client that may take a reserve one from
    /// `reserve_at`. Nobody overtakes a client already waiting.
    pub(super) fn try_take(&mut self, now: Instant, reserve_at: Option<Instant>) -> Take {
        if self.closed {
            return Take::Closed;
        }
        if !self.waiters.is_empty() {
            return Take::Wait;
        }
        if self.free[0] > 0 {
            self.free[0] -= 1;
            return Take::Granted(Kind::Main);
        }
        if self.free[1] > 0 && reserve_at.is_some_and(|at| at <= now) {
            self.free[1] -= 1;
            return Take::Granted(Kind::Reserve);
        }
        Take::Wait
    }

    /// Queues `waiter` (after [`Queue::try_take`] said to) until `deadline`; true when the
    /// sweep must be told, as it is now due earlier than it knew.
    pub(super) fn push(
        &mut self,
        waiter: W,
        deadline: Instant,
        reserve_at: Option<Instant>,
    ) -> bool {
        let due = reserve_at.map_or(deadline, |at| at.min(deadline));
        self.waiters.push_back(Entry {
            waiter,
            deadline,
            reserve_at,
        });
        match self.sweep_at {
            Some(at) if at <= due => false,
            _ => {
                self.sweep_at = Some(due);
                true
            }
        }
    }

    /// The oldest live waiter that may take a permit of `kind` at `now`, taken out of the
    /// queue; `None` when there is none or the permit is owed (it must go out of circulation).
    /// Waiters that are `gone` (their client left) are dropped on the way.
    pub(super) fn next_waiter(
        &mut self,
        kind: Kind,
        now: Instant,
        gone: impl Fn(&W) -> bool,
    ) -> Option<W> {
        if self.owed[kind.index()] > 0 {
            return None;
        }
        let mut i = 0;
        while i < self.waiters.len() {
            let entry = &self.waiters[i];
            if gone(&entry.waiter) {
                self.waiters.remove(i);
            } else if entry.may_take(kind, now) {
                return self.waiters.remove(i).map(|e| e.waiter);
            } else {
                i += 1;
            }
        }
        None
    }

    /// A permit of `kind` given back at `now`: the waiter it goes to, or `None` when it was
    /// kept free or taken out of circulation.
    pub(super) fn give(
        &mut self,
        kind: Kind,
        now: Instant,
        gone: impl Fn(&W) -> bool,
    ) -> Option<W> {
        let k = kind.index();
        if self.owed[k] > 0 {
            self.owed[k] -= 1;
            return None;
        }
        let next = self.next_waiter(kind, now, gone);
        if next.is_none() {
            self.free[k] += 1;
        }
        next
    }

    /// Changes the count of `kind` permits from `old` to `new`: growing at once (the waiters
    /// returned get the new permits), shrinking by taking free permits now and the others as
    /// they are given back.
    pub(super) fn resize(
        &mut self,
        kind: Kind,
        old: usize,
        new: usize,
        now: Instant,
        gone: impl Fn(&W) -> bool,
    ) -> Vec<W> {
        let k = kind.index();
        let mut granted = Vec::new();
        if new > old {
            let forgiven = self.owed[k].min(new - old);
            self.owed[k] -= forgiven;
            for _ in 0..new - old - forgiven {
                granted.extend(self.give(kind, now, &gone));
            }
        } else {
            let excess = old - new;
            let taken = self.free[k].min(excess);
            self.free[k] -= taken;
            self.owed[k] += excess - taken;
        }
        granted
    }

    /// The sweep at `now`: ends the waits past their deadline, gives free reserve permits to
    /// those that waited `reserve_pool_timeout`, and says when it is due next.
    pub(super) fn sweep(&mut self, now: Instant, gone: impl Fn(&W) -> bool) -> Swept<W> {
        let mut swept = Swept {
            expired: Vec::new(),
            granted: Vec::new(),
            next: None,
        };
        let mut i = 0;
        while i < self.waiters.len() {
            let entry = &self.waiters[i];
            let kind = if self.free[0] > 0 {
                Some(Kind::Main)
            } else if self.free[1] > 0 && entry.may_take(Kind::Reserve, now) {
                Some(Kind::Reserve)
            } else {
                None
            };
            if gone(&entry.waiter) {
                self.waiters.remove(i);
            } else if entry.deadline <= now {
                swept
                    .expired
                    .extend(self.waiters.remove(i).map(|e| e.waiter));
            } else if let Some(kind) = kind {
                self.free[kind.index()] -= 1;
                swept
                    .granted
                    .extend(self.waiters.remove(i).map(|e| (e.waiter, kind)));
            } else {
                let due = entry.due(now);
                swept.next = Some(swept.next.map_or(due, |n: Instant| n.min(due)));
                i += 1;
            }
        }
        self.sweep_at = swept.next;
        swept
    }

    /// Closes the queue: every waiter is returned (to be told), and nothing is granted again.
    pub(super) fn close(&mut self) -> Vec<W> {
        self.closed = true;
        self.sweep_at = None;
        self.waiters.drain(..).map(|e| e.waiter).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SEC: Duration = Duration::from_secs(1);

    fn alive(_: &u32) -> bool {
        false
    }

    /// A queue of one main permit, taken, with waiters 1, 2, 3 due at t0 + 10 s.
    fn busy(t0: Instant) -> Queue<u32> {
        let mut q = Queue::new(1, 0);
        assert_eq!(q.try_take(t0, None), Take::Granted(Kind::Main));
        for id in 1..=3 {
            assert_eq!(q.try_take(t0, None), Take::Wait);
            q.push(id, t0 + 10 * SEC, None);
        }
        q
    }

    #[test]
    fn permits_given_back_go_to_the_oldest_waiter() {
        let t0 = Instant::now();
        let mut q = busy(t0);
        assert_eq!(q.give(Kind::Main, t0, alive), Some(1));
        assert_eq!(q.give(Kind::Main, t0, alive), Some(2));
        assert_eq!(q.next_waiter(Kind::Main, t0, alive), Some(3));
        assert_eq!(q.waiting(), 0);
        // Nobody waits: the permit is kept free for the next client.
        assert_eq!(q.give(Kind::Main, t0, alive), None);
        assert_eq!(q.try_take(t0, None), Take::Granted(Kind::Main));
    }

    #[test]
    fn a_newcomer_does_not_overtake_waiting_clients() {
        let t0 = Instant::now();
        let mut q = Queue::<u32>::new(1, 0);
        assert_eq!(q.try_take(t0, None), Take::Granted(Kind::Main));
        q.push(1, t0 + 10 * SEC, None);
        // A permit made free (the pool grew) goes to the waiter, not to whoever asks next.
        assert_eq!(q.resize(Kind::Main, 1, 2, t0, alive), vec![1]);
        assert_eq!(q.try_take(t0, None), Take::Wait);
    }

    #[test]
    fn clients_that_left_leave_no_hole() {
        let t0 = Instant::now();
        let mut q = busy(t0);
        let left = |id: &u32| *id != 3;
        assert_eq!(q.give(Kind::Main, t0, left), Some(3));
        assert_eq!(q.waiting(), 0, "the clients that left were dropped");
        // Only clients that left: the permit is free again, not lost.
        let mut q = busy(t0);
        assert_eq!(q.give(Kind::Main, t0, |_| true), None);
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.try_take(t0, None), Take::Granted(Kind::Main));
        // The sweep drops them too.
        let mut q = busy(t0);
        let swept = q.sweep(t0, |id| *id == 2);
        assert!(swept.expired.is_empty() && swept.granted.is_empty());
        assert_eq!(q.waiting(), 2);
    }

    #[test]
    fn the_sweep_ends_expired_waits_and_says_when_it_is_due() {
        let t0 = Instant::now();
        let mut q = busy(t0);
        q.push(4, t0 + 5 * SEC, None);
        q.push(5, t0 + 20 * SEC, None);
        let swept = q.sweep(t0 + 5 * SEC, alive);
        assert_eq!(swept.expired, [4]);
        assert_eq!(swept.next, Some(t0 + 10 * SEC));
        let swept = q.sweep(t0 + 10 * SEC, alive);
        assert_eq!(swept.expired, [1, 2, 3]);
        assert_eq!(swept.next, Some(t0 + 20 * SEC));
        let swept = q.sweep(t0 + 20 * SEC, alive);
        assert_eq!(swept.expired, [5]);
        assert_eq!(swept.next, None);
    }

    #[test]
    fn the_sweep_is_told_only_when_due_earlier() {
        let t0 = Instant::now();
        let mut q = Queue::<u32>::new(0, 0);
        assert!(
            q.push(1, t0 + 10 * SEC, None),
            "it was waiting for a waiter"
        );
        assert!(!q.push(2, t0 + 11 * SEC, None));
        assert!(q.push(3, t0 + 5 * SEC, None));
        let swept = q.sweep(t0, alive);
        assert_eq!(swept.next, Some(t0 + 5 * SEC));
        assert!(!q.push(4, t0 + 6 * SEC, None));
    }

    #[test]
    fn the_reserve_opens_after_reserve_pool_timeout_only() {
        let t0 = Instant::now();
        let mut q = Queue::<u32>::new(1, 1);
        assert_eq!(
            q.try_take(t0, Some(t0 + 5 * SEC)),
            Take::Granted(Kind::Main)
        );
        assert_eq!(q.try_take(t0, Some(t0 + 5 * SEC)), Take::Wait);
        assert!(q.push(1, t0 + 10 * SEC, Some(t0 + 5 * SEC)));
        q.push(2, t0 + 10 * SEC, None);
        let swept = q.sweep(t0, alive);
        assert!(swept.granted.is_empty());
        assert_eq!(swept.next, Some(t0 + 5 * SEC));
        let swept = q.sweep(t0 + 5 * SEC, alive);
        assert_eq!(swept.granted, [(1, Kind::Reserve)]);
        assert_eq!(swept.next, Some(t0 + 10 * SEC));
        // A reserve permit given back goes to no one who may not use the reserve.
        assert_eq!(q.give(Kind::Reserve, t0 + 6 * SEC, alive), None);
        assert_eq!(q.give(Kind::Main, t0 + 6 * SEC, alive), Some(2));
        // With no wait at all, a client takes the reserve at once.
        assert_eq!(q.try_take(t0, Some(t0)), Take::Granted(Kind::Reserve));
    }

    #[test]
    fn shrinking_takes_free_permits_now_and_others_as_they_come_back() {
        let t0 = Instant::now();
        let mut q = Queue::<u32>::new(3, 0);
        assert_eq!(q.try_take(t0, None), Take::Granted(Kind::Main));
        assert_eq!(q.try_take(t0, None), Take::Granted(Kind::Main));
        // One free, two lent; down to one: the free one goes now, one is owed.
        assert!(q.resize(Kind::Main, 3, 1, t0, alive).is_empty());
        assert_eq!(q.try_take(t0, None), Take::Wait);
        q.push(1, t0 + 10 * SEC, None);
        assert_eq!(q.next_waiter(Kind::Main, t0, alive), None, "owed");
        assert_eq!(q.give(Kind::Main, t0, alive), None);
        assert_eq!(q.give(Kind::Main, t0, alive), Some(1));
        // Growing first forgives what is owed.
        let mut q = Queue::<u32>::new(1, 0);
        assert_eq!(q.try_take(t0, None), Take::Granted(Kind::Main));
        assert!(q.resize(Kind::Main, 1, 0, t0, alive).is_empty());
        assert!(q.resize(Kind::Main, 0, 1, t0, alive).is_empty());
        assert_eq!(q.give(Kind::Main, t0, alive), None);
        assert_eq!(q.try_take(t0, None), Take::Granted(Kind::Main));
    }

    #[test]
    fn closing_returns_every_waiter_and_refuses_the_rest() {
        let t0 = Instant::now();
        let mut q = busy(t0);
        assert_eq!(q.close(), [1, 2, 3]);
        assert!(q.is_closed());
        assert_eq!(q.try_take(t0, None), Take::Closed);
    }
}
