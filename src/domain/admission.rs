//! The bound on requests one replica serves at once (`HTTP_MAX_IN_FLIGHT`).
//!
//! Past its capacity a replica that queues every request makes every one of them late: the
//! store's calls wait behind thousands of others until they time out, work is done for answers
//! nobody waits for any more, and memory grows with the queue (measured in `loadtest/`, open
//! model past the maximum rate). Refusing the excess at once keeps the admitted requests fast.
//!
//! The bound counts work, not waiting: a request steps out of it ([`Admission::away`]) while it
//! waits on an outside provider (an SMS or captcha API), so a slow provider cannot fill the
//! places and starve requests that need only this replica, Redis and the database. Coming
//! back, it waits for a place before it touches the store again, ahead of new requests.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The places of one replica.
#[derive(Debug)]
pub struct InFlight {
    max: usize,
    places: Arc<Semaphore>,
}

impl InFlight {
    /// A bound of `max` requests at once; `None` when `max` is 0 (no bound).
    pub fn new(max: usize) -> Option<Arc<Self>> {
        (max > 0).then(|| {
            Arc::new(Self {
                max,
                places: Arc::new(Semaphore::new(max)),
            })
        })
    }

    /// A place for one more request, held until the last clone of the [`Admission`] drops;
    /// `None` when all are taken (or promised to requests coming back from a provider).
    pub fn enter(self: &Arc<Self>) -> Option<Admission> {
        let permit = self.places.clone().try_acquire_owned().ok()?;
        Some(Admission(Arc::new(Place {
            bound: self.clone(),
            permit: Mutex::new(Some(permit)),
        })))
    }

    /// Requests holding a place now.
    pub fn current(&self) -> usize {
        self.max - self.places.available_permits()
    }
}

/// One admitted request's place; its clones travel with the request (the login steps out of
/// it while a provider answers). Given back when the last clone drops: the request answered,
/// failed, or dropped with its connection.
#[derive(Clone)]
pub struct Admission(Arc<Place>);

struct Place {
    bound: Arc<InFlight>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.permit.lock().map(|p| p.is_some()).unwrap_or(false);
        f.debug_tuple("Admission").field(&held).finish()
    }
}

impl Admission {
    /// Runs `work` (a call to an outside provider) without holding the place, then waits for a
    /// place again before going on to the store and the database: the requests coming back
    /// from a provider are served before new ones are admitted (the semaphore is first come,
    /// first served), so a burst of answers cannot flood the store. Dropped while away or
    /// while waiting (the client left), nothing is owed.
    pub async fn away<F: Future>(&self, work: F) -> F::Output {
        let place = &self.0;
        let stepped_out = place
            .permit
            .lock()
            .map(|mut p| p.take().is_some())
            .unwrap_or(false);
        let out = work.await;
        if stepped_out {
            // Never fails: the semaphore is never closed.
            if let Ok(permit) = place.bound.places.clone().acquire_owned().await
                && let Ok(mut slot) = place.permit.lock()
            {
                *slot = Some(permit);
            }
        }
        out
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
        while bound.current() != 0 {
            tokio::task::yield_now().await;
        }
        let other = bound
            .enter()
            .expect("a place while the login waits on its provider");
        release.send(()).expect("release");
        // Back from the provider, the login waits for a place, and is served before any new
        // request is admitted.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !away.is_finished(),
            "the login waits for the place the other holds"
        );
        drop(other);
        assert!(
            bound.enter().is_none(),
            "the freed place went to the returning login"
        );
        away.await.expect("away");
        assert_eq!(
            bound.current(),
            0,
            "the login ended and gave its place back"
        );
        assert!(bound.enter().is_some());
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
