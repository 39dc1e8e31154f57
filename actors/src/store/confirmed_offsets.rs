//! Records the Kafka offsets the coordinator confirmed committed
//! (`consumer_offsets.kafka_committed_offset`) beside the commit cycles,
//! instead of on their path: the coordinator hands each cycle's
//! confirmations over and goes on with its next Kafka phase, and one
//! background task writes them.
//!
//! Guarantees:
//! - only the newest confirmation of a partition waits (the recorded offset
//!   never moves backwards anyway: the store takes the larger one, and only
//!   for the owner epoch the commit was made under), so what waits is
//!   bounded by the partitions, whatever the database's pace;
//! - a confirmation stays waiting until a write of it succeeded: a write
//!   that fails, times out or is cancelled (a flush at its deadline, a task
//!   stopped) loses nothing, and a newer confirmation handed over while an
//!   older one was being written is written in its turn;
//! - on PostgreSQL one `UPDATE` per partition, each its own transaction: the
//!   recorder never holds one partition's row while it waits for another's,
//!   so a batch transaction never waits behind the recorder for a row that
//!   another partition's batch holds (the recorder's own writes after a
//!   held row wait instead). On SQLite, whose one write lock serialises
//!   everything anyway, one transaction for all;
//! - the store refusing a write (an error) keeps the confirmation, written
//!   again after [`RETRY_DELAY`], doubling up to [`MAX_RETRY_DELAY`], or at
//!   once when new confirmations arrive; a write under an owner epoch a
//!   newer claim replaced succeeds and changes nothing (the store's fence);
//! - [`ConfirmedOffsets::flush`] returns once everything handed over before
//!   it was written, or at its deadline (what it did not write still waits):
//!   the coordinator flushes before it reads recovery positions and before a
//!   drain lets partitions go (a claim bumps the owner epoch, after which an
//!   older ownership's confirmation changes nothing), and the pipeline before
//!   it ends;
//! - losing confirmations (a crash, a missed deadline) is the recovery
//!   table's "committed, but the process died before bookkeeping" case: the
//!   recorded offset is a lower bound of what Kafka holds, never more.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{KafkaCommitConfirmation, Store};

/// How long a refused confirmation first waits before it is written again;
/// the wait doubles while the store keeps refusing, up to
/// [`MAX_RETRY_DELAY`].
pub const RETRY_DELAY: Duration = Duration::from_millis(500);

/// The longest wait between two attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// The recorder: a cheap handle to clone; the background task runs from
/// [`ConfirmedOffsets::start`] until [`ConfirmedOffsets::close`] or the
/// last handle's drop.
#[derive(Clone)]
pub struct ConfirmedOffsets {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    group_id: String,
    topic: String,
    /// the newest confirmation of each partition not written yet
    waiting: Mutex<BTreeMap<i32, KafkaCommitConfirmation>>,
    /// wakes the background task (which holds it apart from the rest, so
    /// that it waits without keeping the recorder alive)
    handed_over: Arc<Notify>,
    /// held while confirmations taken from `waiting` are written: a flush
    /// taking it knows that no earlier write is still under way
    writing: tokio::sync::Mutex<()>,
    /// the background task (aborted when the last handle goes)
    task: Mutex<Option<JoinHandle<()>>>,
    /// set by [`ConfirmedOffsets::close`]
    closed: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for ConfirmedOffsets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ConfirmedOffsets")
            .field("group_id", &self.shared.group_id)
            .field("topic", &self.shared.topic)
            .field("waiting", &self.waiting_partitions())
            .finish()
    }
}

impl ConfirmedOffsets {
    /// A recorder for `group_id` and `topic`, its background task started
    /// (on the current Tokio runtime).
    pub fn start(store: Store, group_id: &str, topic: &str) -> ConfirmedOffsets {
        let recorder = ConfirmedOffsets {
            shared: Arc::new(Shared {
                store,
                group_id: group_id.to_owned(),
                topic: topic.to_owned(),
                waiting: Mutex::new(BTreeMap::new()),
                handed_over: Arc::new(Notify::new()),
                writing: tokio::sync::Mutex::new(()),
                task: Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        };
        // The task holds a weak reference: the recorder ends with its last
        // handle.
        let shared = Arc::downgrade(&recorder.shared);
        let handed_over = Arc::clone(&recorder.shared.handed_over);
        let task = tokio::spawn(async move {
            let mut retry_delay = RETRY_DELAY;
            loop {
                let notified = handed_over.notified();
                let Some(recorder) = shared.upgrade().map(|shared| ConfirmedOffsets { shared })
                else {
                    return;
                };
                if recorder.waiting_partitions().is_empty() {
                    drop(recorder);
                    notified.await;
                    continue;
                }
                if recorder.write_waiting().await {
                    retry_delay = RETRY_DELAY;
                } else {
                    drop(recorder);
                    // New confirmations (the store answers cycles again) end
                    // the wait early.
                    let handed_over_again = handed_over.notified();
                    tokio::select! {
                        () = tokio::time::sleep(retry_delay) => {
                            retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                        }
                        () = handed_over_again => retry_delay = RETRY_DELAY,
                    }
                }
            }
        });
        *recorder
            .shared
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        recorder
    }

    /// Hands `confirmations` over to be written; returns at once.
    pub fn record(&self, confirmations: impl IntoIterator<Item = KafkaCommitConfirmation>) {
        {
            let mut waiting = self.lock_waiting();
            for confirmation in confirmations {
                waiting.insert(confirmation.partition, confirmation);
            }
        }
        if self.shared.closed.load(Ordering::SeqCst) {
            tracing::warn!(
                partitions = ?self.waiting_partitions(),
                "confirmed kafka offsets handed over after the recorder closed are not recorded"
            );
        }
        self.shared.handed_over.notify_one();
    }

    /// Writes what was handed over before this call (waiting for a write
    /// already under way), bounded by `deadline`. Whether everything was
    /// written.
    pub async fn flush(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.write_waiting())
            .await
            .unwrap_or(false)
    }

    /// Flushes (bounded by `deadline`), then stops the background task.
    /// Whether everything was written.
    pub async fn close(&self, deadline: Duration) -> bool {
        let written = self.flush(deadline).await;
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(task) = self
            .shared
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        written
    }

    /// The partitions with a confirmation not written yet.
    pub fn waiting_partitions(&self) -> Vec<i32> {
        self.lock_waiting().keys().copied().collect()
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, KafkaCommitConfirmation>> {
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes every waiting confirmation (see the module doc for the
    /// statements); each leaves the waiting ones once written, unless a
    /// newer one replaced it meanwhile. Whether every write succeeded.
    async fn write_waiting(&self) -> bool {
        let _writing = self.shared.writing.lock().await;
        let snapshot: Vec<KafkaCommitConfirmation> =
            self.lock_waiting().values().copied().collect();
        let units: Vec<&[KafkaCommitConfirmation]> = match &self.shared.store {
            Store::Postgres(_) => snapshot.chunks(1).collect(),
            Store::Sqlite(_) => vec![snapshot.as_slice()],
        };
        let mut all_written = true;
        for unit in units {
            if unit.is_empty() {
                continue;
            }
            let written = self
                .shared
                .store
                .confirm_kafka_commit(&self.shared.group_id, &self.shared.topic, unit)
                .await;
            match written {
                Ok(()) => {
                    let mut waiting = self.lock_waiting();
                    for confirmation in unit {
                        if waiting.get(&confirmation.partition) == Some(confirmation) {
                            waiting.remove(&confirmation.partition);
                        }
                    }
                }
                Err(error) => {
                    all_written = false;
                    tracing::warn!(
                        %error,
                        partitions = ?unit.iter().map(|c| c.partition).collect::<Vec<_>>(),
                        "could not record the confirmed kafka offsets yet; until they land, only the group's offsets and this ownership's memory of its commits bound a replay"
                    );
                }
            }
        }
        all_written
    }
}
