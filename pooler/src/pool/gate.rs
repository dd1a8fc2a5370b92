//! A pool's gate: its permits and the clients queued for them (decided by [`super::queue`]),
//! and the one task per pool that sweeps the queue for `query_wait_timeout` and the reserve.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{oneshot, Notify};

use super::queue::{Kind, Queue, Take};
use super::{CheckoutError, Slot};

/// What a waiting client is handed: a permit, and the connection given back with it when
/// that stayed open, with the moment it was given back (when the client's wait ended: no
/// clock is read again after the wake-up).
pub(super) struct Grant {
    pub(super) permit: Permit,
    pub(super) slot: Option<(Slot, Instant)>,
}

/// How a queued client is woken: with its grant, or why it waited in vain.
type Waiter = oneshot::Sender<Result<Grant, CheckoutError>>;

/// A client that left dropped its receiver: its place in the queue is skipped.
fn gone(waiter: &Waiter) -> bool {
    waiter.is_closed()
}

/// A pool's permits and queue, and the wake-up for its sweep.
pub(super) struct Gate {
    queue: Mutex<Queue<Waiter>>,
    sweep: Notify,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate of `size` main and `reserve` reserve permits, with its sweep running until the
    /// gate is closed.
    pub(super) fn new(size: usize, reserve: usize) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            queue: Mutex::new(Queue::new(size, reserve)),
            sweep: Notify::new(),
        });
        tokio::spawn(sweeper(gate.clone()));
        gate
    }

    fn lock(&self) -> MutexGuard<'_, Queue<Waiter>> {
        // The queue's methods do not panic midway; a poisoned lock holds a consistent queue.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A main permit if one is free and nobody waits for one.
    pub(super) fn try_main(self: &Arc<Self>, now: Instant) -> Option<Permit> {
        match self.lock().try_take(now, None) {
            Take::Granted(kind) => Some(Permit::new(self, kind)),
            Take::Wait | Take::Closed => None,
        }
    }

    /// A permit now, or a place in the queue until `deadline`; the client may take a reserve
    /// permit from `reserve_at`.
    pub(super) fn acquire<'a>(
        self: &Arc<Self>,
        back: &'a dyn TakeBack,
        now: Instant,
        deadline: Instant,
        reserve_at: Option<Instant>,
    ) -> Result<Acquire<'a>, CheckoutError> {
        let mut queue = self.lock();
        match queue.try_take(now, reserve_at) {
            Take::Granted(kind) => Ok(Acquire::Now(Some(Permit::new(self, kind)))),
            Take::Closed => Err(CheckoutError::Closed),
            Take::Wait => {
                let (tx, rx) = oneshot::channel();
                let tell = queue.push(tx, deadline, reserve_at);
                drop(queue);
                if tell {
                    self.sweep.notify_one();
                }
                Ok(Acquire::Queued(Queued {
                    rx,
                    back,
                    answered: false,
                }))
            }
        }
    }

    /// Hands `slot`, given back clean, with its permit to the oldest client that may take
    /// them; gives them back when there is none.
    pub(super) fn hand_over(
        &self,
        permit: Permit,
        slot: Slot,
        now: Instant,
    ) -> Option<(Permit, Slot)> {
        let mut grant = Grant {
            permit,
            slot: Some((slot, now)),
        };
        loop {
            let waiter = self.lock().next_waiter(grant.permit.kind, now, gone);
            let Some(waiter) = waiter else {
                let Grant { permit, slot } = grant;
                return slot.map(|(slot, _)| (permit, slot));
            };
            match waiter.send(Ok(grant)) {
                Ok(()) => return None,
                // The client left just now: try the next one.
                Err(Ok(back)) => grant = back,
                Err(Err(_)) => return None,
            }
        }
    }

    /// A permit of `kind` given back: to the oldest client that may take it, or kept free.
    fn give(self: &Arc<Self>, kind: Kind) {
        let waiter = self.lock().give(kind, Instant::now(), gone);
        if let Some(waiter) = waiter {
            // Should the client have left just now, the grant dropped gives the permit back.
            let _ = waiter.send(Ok(Grant {
                permit: Permit::new(self, kind),
                slot: None,
            }));
        }
    }

    /// Changes the count of `kind` permits from `old` to `new` (see [`Queue::resize`]).
    pub(super) fn resize(self: &Arc<Self>, kind: Kind, old: usize, new: usize) {
        let granted = self.lock().resize(kind, old, new, Instant::now(), gone);
        for waiter in granted {
            let _ = waiter.send(Ok(Grant {
                permit: Permit::new(self, kind),
                slot: None,
            }));
        }
    }

    /// Refuses every waiting and future client.
    pub(super) fn close(&self) {
        let waiters = self.lock().close();
        for waiter in waiters {
            let _ = waiter.send(Err(CheckoutError::Closed));
        }
        self.sweep.notify_one();
    }

    /// Whether the gate was closed.
    pub(super) fn is_closed(&self) -> bool {
        self.lock().is_closed()
    }
}

/// The pool's one timer: ends waits past their deadline and opens the reserve to clients
/// that waited `reserve_pool_timeout`, sleeping until the queue says it is due.
async fn sweeper(gate: Arc<Gate>) {
    loop {
        let swept = {
            let mut queue = gate.lock();
            if queue.is_closed() {
                return;
            }
            queue.sweep(Instant::now(), gone)
        };
        for waiter in swept.expired {
            let _ = waiter.send(Err(CheckoutError::Timeout));
        }
        for (waiter, kind) in swept.granted {
            let _ = waiter.send(Ok(Grant {
                permit: Permit::new(&gate, kind),
                slot: None,
            }));
        }
        match swept.next {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {}
                () = gate.sweep.notified() => {}
            },
            None => gate.sweep.notified().await,
        }
    }
}

/// One permit of a pool, given back (to the oldest waiting client) when dropped.
pub(super) struct Permit {
    gate: Arc<Gate>,
    kind: Kind,
}

impl Permit {
    fn new(gate: &Arc<Gate>, kind: Kind) -> Permit {
        Permit {
            gate: gate.clone(),
            kind,
        }
    }

    /// Whether it is one of the reserve's.
    pub(super) fn is_reserve(&self) -> bool {
        self.kind == Kind::Reserve
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Permit").field(&self.kind).finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.give(self.kind);
    }
}

/// A permit had at once, or a client's place in the queue.
pub(super) enum Acquire<'a> {
    Now(Option<Permit>),
    Queued(Queued<'a>),
}

impl Future for Acquire<'_> {
    type Output = Result<Grant, CheckoutError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Acquire::Now(permit) => match permit.take() {
                Some(permit) => Poll::Ready(Ok(Grant { permit, slot: None })),
                None => Poll::Ready(Err(CheckoutError::Closed)),
            },
            Acquire::Queued(queued) => Pin::new(&mut queued.rx).poll(cx).map(|woken| {
                queued.answered = true;
                // The sender is only dropped unsent when the gate itself is gone.
                woken.unwrap_or(Err(CheckoutError::Closed))
            }),
        }
    }
}

/// Where a connection handed to a client that left meanwhile goes back to (its pool).
pub(super) trait TakeBack: Sync {
    /// Takes back a clean connection and its permit.
    fn take_back(&self, slot: Slot, permit: Permit);
}

/// A client's place in the queue. Dropped (the client left), a grant that reached it
/// meanwhile goes back: no permit or connection is lost.
pub(super) struct Queued<'a> {
    rx: oneshot::Receiver<Result<Grant, CheckoutError>>,
    back: &'a dyn TakeBack,
    /// The one answer was taken: nothing can reach the receiver any more.
    answered: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.rx.close();
        if let Ok(Ok(Grant { permit, slot })) = self.rx.try_recv() {
            match slot {
                Some((slot, _)) => self.back.take_back(slot, permit),
                None => drop(permit),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// No connection is ever handed over here: only permits.
    struct Nowhere;

    impl TakeBack for Nowhere {
        fn take_back(&self, _: Slot, _: Permit) {}
    }

    #[tokio::test]
    async fn waiters_are_served_in_order_past_those_that_left_and_swept_at_their_deadline() {
        let gate = Gate::new(1, 0);
        let held = gate.try_main(Instant::now()).expect("the one permit");
        let far = Instant::now() + Duration::from_secs(60);
        let first = gate
            .acquire(&Nowhere, Instant::now(), far, None)
            .expect("open");
        let left = gate
            .acquire(&Nowhere, Instant::now(), far, None)
            .expect("open");
        let second = gate
            .acquire(&Nowhere, Instant::now(), far, None)
            .expect("open");
        let soon = Instant::now() + Duration::from_millis(20);
        let short = gate
            .acquire(&Nowhere, Instant::now(), soon, None)
            .expect("open");
        // No timer of its own: the pool's sweep ends the wait.
        assert!(matches!(short.await, Err(CheckoutError::Timeout)));
        assert!(Instant::now() >= soon);
        drop(left);
        drop(held);
        let grant = first.await.expect("the oldest waiter is served first");
        assert!(grant.slot.is_none());
        drop(grant);
        let grant = second
            .await
            .expect("the next one, past the client that left");
        drop(grant);
        // Nobody waits any more: the permit is free, not lost.
        let again = gate.try_main(Instant::now()).expect("the permit is back");
        let closed = gate
            .acquire(&Nowhere, Instant::now(), far, None)
            .expect("open");
        gate.close();
        assert!(matches!(closed.await, Err(CheckoutError::Closed)));
        drop(again);
        assert!(
            gate.try_main(Instant::now()).is_none(),
            "a closed gate grants nothing"
        );
    }
}
