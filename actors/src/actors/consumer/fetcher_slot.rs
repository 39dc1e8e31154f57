//! The one place the record fetcher lives: at most one fetcher polls the
//! input consumer at any time, whatever ended the previous one.
//!
//! ractor skips `post_stop` for an actor that failed or was killed, so a
//! fetcher stopped only there outlives a failed consumer supervisor: two
//! fetchers then poll one consumer, split its records between them and
//! route half of them to dead partition consumers (measured: a stored
//! offset 45,000 records past the last committed effect). The slot is
//! owned by the pipeline, not by an actor: starting a fetcher first stops
//! the previous one and waits until its task has ended, and the guard the
//! consumer supervisor keeps in its state stops it when that state is
//! dropped, on every path (stop, failure, kill).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A running fetcher task and the token that stops it.
#[derive(Debug)]
struct RunningFetcher {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Shared by the pipeline and every incarnation of the consumer supervisor.
#[derive(Debug, Clone, Default)]
pub struct FetcherSlot {
    running: Arc<Mutex<Option<RunningFetcher>>>,
}

/// Stops the fetcher when dropped (the consumer supervisor's state ends).
#[derive(Debug)]
pub struct FetcherGuard {
    _stop: DropGuard,
}

impl FetcherSlot {
    /// Stops the fetcher in the slot, if any, waits until its task has
    /// ended, then starts a new one with `start` (given the token that stops
    /// it) and keeps it. Returns the guard that stops it when dropped.
    pub async fn replace<T>(
        &self,
        parent: &CancellationToken,
        start: impl FnOnce(CancellationToken) -> (T, JoinHandle<()>),
    ) -> (T, FetcherGuard) {
        let mut running = self.running.lock().await;
        if let Some(previous) = running.take() {
            stop_and_wait(previous).await;
        }
        let stop = parent.child_token();
        let (handle, task) = start(stop.clone());
        let guard = FetcherGuard {
            _stop: stop.clone().drop_guard(),
        };
        *running = Some(RunningFetcher { stop, task });
        (handle, guard)
    }

    /// Stops the fetcher in the slot, if any, and waits until it has ended.
    pub async fn stop(&self) {
        if let Some(previous) = self.running.lock().await.take() {
            stop_and_wait(previous).await;
        }
    }
}

async fn stop_and_wait(fetcher: RunningFetcher) {
    fetcher.stop.cancel();
    let started = Instant::now();
    // A fetcher inside a rebalance callback ends when the callback returns
    // (the drain is bounded); it must have ended before another one polls.
    let _ = fetcher.task.await;
    let waited = started.elapsed();
    if waited > Duration::from_secs(1) {
        tracing::info!(
            waited_ms = waited.as_millis() as u64,
            "previous record fetcher took a while to stop"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_new_fetcher_starts_only_after_the_previous_one_ended() {
        let slot = FetcherSlot::default();
        let root = CancellationToken::new();
        let running = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let mut guards = Vec::new();
        for _ in 0..5 {
            let running = Arc::clone(&running);
            let most_at_once = Arc::clone(&most_at_once);
            let (_, guard) = slot
                .replace(&root, move |stop| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most_at_once.fetch_max(now, Ordering::SeqCst);
                    let task = tokio::spawn(async move {
                        stop.cancelled().await;
                        // Ending takes a while, as inside a rebalance callback.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    });
                    ((), task)
                })
                .await;
            // The guards are leaked on purpose (as by a killed actor whose
            // state is never dropped in time): the slot alone must stop them.
            guards.push(guard);
        }
        assert_eq!(most_at_once.load(Ordering::SeqCst), 1);
        slot.stop().await;
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_the_fetcher() {
        let slot = FetcherSlot::default();
        let root = CancellationToken::new();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        let (_, guard) = slot
            .replace(&root, move |stop| {
                let task = tokio::spawn(async move {
                    stop.cancelled().await;
                    let _ = stopped_tx.send(());
                });
                ((), task)
            })
            .await;
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), stopped_rx)
            .await
            .expect("the fetcher stops when its guard is dropped")
            .expect("the fetcher task reported");
    }
}
