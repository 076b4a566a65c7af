//! The bound on requests one replica serves at once (`HTTP_MAX_IN_FLIGHT`).
//!
//! Past its capacity a replica that queues every request makes every one of them late: the
//! store's calls wait behind thousands of others until they time out, work is done for answers
//! nobody waits for any more, and memory grows with the queue (measured in `loadtest/`, open
//! model past the maximum rate). Refusing the excess at once keeps the admitted requests fast.
//!
//! The bound counts work, not waiting: a request steps out of it ([`Admission::away`]) while it
//! waits on an outside provider (an SMS or captcha API), so a slow provider cannot fill the
//! places and starve requests that need only this replica, Redis and the database.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The places of one replica.
#[derive(Debug)]
pub struct InFlight {
    max: usize,
    now: AtomicUsize,
}

impl InFlight {
    /// A bound of `max` requests at once; `None` when `max` is 0 (no bound).
    pub fn new(max: usize) -> Option<Arc<Self>> {
        (max > 0).then(|| {
            Arc::new(Self {
                max,
                now: AtomicUsize::new(0),
            })
        })
    }

    /// A place for one more request, held until the last clone of the [`Admission`] drops;
    /// `None` when all are taken.
    pub fn enter(self: &Arc<Self>) -> Option<Admission> {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Admission(Arc::new(Place {
            bound: self.clone(),
            held: AtomicBool::new(true),
        })))
    }

    /// Requests holding a place now.
    pub fn current(&self) -> usize {
        self.now.load(Ordering::Acquire)
    }
}

/// One admitted request's place; its clones travel with the request (the login steps out of
/// it while a provider answers). Given back when the last clone drops: the request answered,
/// failed, or dropped with its connection.
#[derive(Clone)]
pub struct Admission(Arc<Place>);

struct Place {
    bound: Arc<InFlight>,
    held: AtomicBool,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Admission")
            .field(&self.0.held.load(Ordering::Relaxed))
            .finish()
    }
}

impl Admission {
    /// Runs `work` (a call to an outside provider) without holding the place, and takes it
    /// back after, even past the bound: the request was admitted, and its answer is nearly
    /// ready. Dropped while away (the client left), nothing is owed.
    pub async fn away<F: Future>(&self, work: F) -> F::Output {
        let place = &self.0;
        let stepped_out = place.held.swap(false, Ordering::AcqRel);
        if stepped_out {
            place.bound.now.fetch_sub(1, Ordering::AcqRel);
        }
        let out = work.await;
        if stepped_out {
            place.bound.now.fetch_add(1, Ordering::AcqRel);
            place.held.store(true, Ordering::Release);
        }
        out
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.held.load(Ordering::Acquire) {
            self.bound.now.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let bound = InFlight::new(2).expect("a bound");
        let a = bound.enter().expect("first");
        let b = bound.enter().expect("second");
        assert!(bound.enter().is_none(), "a third past a bound of 2");
        let a_clone = a.clone();
        drop(a);
        assert_eq!(bound.current(), 2, "a clone still holds the place");
        drop(a_clone);
        assert_eq!(bound.current(), 1);
        assert!(
            bound.enter().is_some(),
            "a freed place is taken again (and dropped)"
        );
        drop(b);
        assert_eq!(bound.current(), 0);
        assert!(InFlight::new(0).is_none(), "0: no bound");
    }

    #[tokio::test]
    async fn waiting_on_a_provider_holds_no_place() {
        let bound = InFlight::new(1).expect("a bound");
        let sending = bound.enter().expect("the login");
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let away = tokio::spawn({
            let sending = sending.clone();
            async move { sending.away(async { wait.await.ok() }).await }
        });
        drop(sending);
        tokio::task::yield_now().await;
        while bound.current() != 0 {
            tokio::task::yield_now().await;
        }
        let other = bound
            .enter()
            .expect("a place while the login waits on its provider");
        release.send(()).expect("release");
        away.await.expect("away");
        // The login is back (past the bound: it was admitted) and gone again with its task.
        assert_eq!(bound.current(), 1, "only the other request holds a place");
        drop(other);
        assert_eq!(bound.current(), 0);
    }

    #[tokio::test]
    async fn a_request_dropped_while_away_owes_nothing() {
        let bound = InFlight::new(1).expect("a bound");
        let admission = bound.enter().expect("the login");
        let stuck = tokio::spawn({
            let admission = admission.clone();
            async move { admission.away(std::future::pending::<()>()).await }
        });
        drop(admission);
        while bound.current() != 0 {
            tokio::task::yield_now().await;
        }
        stuck.abort();
        let _ = stuck.await;
        assert_eq!(bound.current(), 0);
        assert!(bound.enter().is_some());
    }
}
