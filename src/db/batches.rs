//! A bounded queue that one background task drains in batches: the shape of the audit writer
//! and of the login-time writer. Pushing never waits (a full queue drops the item and counts
//! it); the task takes up to `max` items at a time, optionally waiting `linger` after the first
//! so a batch fills under load; at shutdown [`BatchQueue::close`] stops new items and lets the
//! task write what is queued, without lingering.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The pushing side (cheap to clone).
pub struct BatchQueue<T> {
    queue: mpsc::Sender<T>,
    dropped: prometheus::IntCounter,
    closing: Arc<watch::Sender<bool>>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl<T> Clone for BatchQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            dropped: self.dropped.clone(),
            closing: self.closing.clone(),
            task: self.task.clone(),
        }
    }
}

impl<T: Send + 'static> BatchQueue<T> {
    /// A queue of `capacity` items, drained by `task` (spawned on the current runtime) through
    /// the [`Batches`] it is given; `dropped` counts the items a full queue turned away.
    pub fn start<F, Fut>(
        capacity: usize,
        max: usize,
        linger: Duration,
        dropped: prometheus::IntCounter,
        task: F,
    ) -> Self
    where
        F: FnOnce(Batches<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (queue, pending) = mpsc::channel(capacity.max(1));
        let (closing, closed) = watch::channel(false);
        let task = tokio::spawn(task(Batches {
            pending,
            closed,
            max: max.max(1),
            linger,
        }));
        Self {
            queue,
            dropped,
            closing: Arc::new(closing),
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Queues `item`. False when the queue is full or closed (the item is dropped and counted).
    pub fn push(&self, item: T) -> bool {
        let queued = self.queue.try_send(item).is_ok();
        if !queued {
            self.dropped.inc();
        }
        queued
    }

    /// At shutdown: nothing more is queued, and the task writes what is (for at most
    /// `timeout`). Whether it finished.
    pub async fn close(&self, timeout: Duration) -> bool {
        self.closing.send_replace(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        match task {
            // Finished, not cancelled nor panicked.
            Some(task) => matches!(tokio::time::timeout(timeout, task).await, Ok(Ok(()))),
            // Closed before: whoever took the task waited for it.
            None => true,
        }
    }
}

/// The draining side, owned by the task.
pub struct Batches<T> {
    pending: mpsc::Receiver<T>,
    closed: watch::Receiver<bool>,
    max: usize,
    linger: Duration,
}

impl<T> Batches<T> {
    /// Waits for the next batch and appends it to `batch` (up to `max` items); false once the
    /// queue is closed and empty (the task should end).
    pub async fn next(&mut self, batch: &mut Vec<T>) -> bool {
        let received = tokio::select! {
            received = self.pending.recv_many(batch, self.max) => received,
            () = closing(&mut self.closed) => {
                // Nothing more comes in; what is queued is still received.
                self.pending.close();
                self.pending.recv_many(batch, self.max).await
            }
        };
        if received == 0 {
            return false;
        }
        if !self.linger.is_zero() && batch.len() < self.max && !*self.closed.borrow() {
            tokio::select! {
                () = tokio::time::sleep(self.linger) => {}
                () = closing(&mut self.closed) => {}
            }
            while batch.len() < self.max {
                match self.pending.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        true
    }
}

/// Resolves once the queue is closing.
async fn closing(closed: &mut watch::Receiver<bool>) {
    // An error: every sender is gone, which closes the queue too.
    let _ = closed.wait_for(|closed| *closed).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("dropped", "dropped").unwrap()
    }

    #[tokio::test]
    async fn lingers_for_a_full_batch_and_flushes_at_close() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let queue = BatchQueue::start(
            16,
            4,
            Duration::from_secs(3600),
            counter(),
            |mut batches| async move {
                let mut batch = Vec::new();
                while batches.next(&mut batch).await {
                    tx.send(std::mem::take(&mut batch)).unwrap();
                }
            },
        );
        for i in 0..5 {
            assert!(queue.push(i));
        }
        // A full batch goes at once; the fifth waits for more (an hour here).
        assert_eq!(rx.recv().await, Some(vec![0, 1, 2, 3]));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());
        // Closing writes it without waiting, then refuses new items.
        assert!(queue.close(Duration::from_secs(5)).await);
        assert_eq!(rx.recv().await, Some(vec![4]));
        assert_eq!(rx.recv().await, None, "the task ended");
        assert!(!queue.push(9));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let dropped = counter();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let queue = BatchQueue::start(
            2,
            8,
            Duration::ZERO,
            dropped.clone(),
            |batches| async move {
                let _keep = batches;
                let _ = wait.await;
            },
        );
        assert!(queue.push(1));
        assert!(queue.push(2));
        assert!(!queue.push(3));
        assert_eq!(dropped.get(), 1);
        drop(release);
    }
}
