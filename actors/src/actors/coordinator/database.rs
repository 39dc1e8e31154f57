//! The database phase of a commit cycle: every batch committed through the
//! writer pool, in parallel, each in its own database transaction; and,
//! after the Kafka commit, its offsets handed to the recorder of confirmed
//! offsets ([`crate::store::ConfirmedOffsets`]), which writes them beside
//! the next cycles.
//!
//! Guarantees:
//! - a batch counts as committed only when its writer replied with the
//!   committed outcome; every other end (a store error, a writer that timed
//!   out, died or is restarting, a partition not claimed yet) is a typed
//!   [`BatchWriteFailure`] and its partition is rewound;
//! - a write fenced while Kafka still assigns the partition to this
//!   instance re-claims it at its rewind (the claim that fenced it was
//!   stale).

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use ractor::rpc::CallResult;
use uuid::Uuid;

use super::state::CoordinatorState;
use crate::messages::db_writer::{DbWriterMsg, WriteRequest};
use crate::model::batch::PartitionBatch;
use crate::store::error::StoreError;
use crate::store::types::{BatchWriteOutcome, KafkaCommitConfirmation};
use crate::telemetry::events::COMMIT_EVENTS_TARGET;

/// How long a positioning or a drain waits for the confirmed Kafka offsets
/// handed over before it to be recorded (a store that does not answer in
/// this long is down, and a positioning's own reads fail too).
const CONFIRM_FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// Added to a write's worst case (every attempt timing out) to bound the
/// wait for its writer.
const WRITER_MARGIN: Duration = Duration::from_secs(5);

/// A batch whose database transaction committed, with what Kafka still owes.
pub(super) struct CommittedBatch {
    pub(super) batch: Arc<PartitionBatch>,
    pub(super) outcome: BatchWriteOutcome,
}

/// Why a partition's batch did not commit to the database.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchWriteFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database writer timed out")]
    WriterTimedOut,
    #[error("database writer died")]
    WriterDied,
    #[error("database writer is restarting")]
    WriterRestarting,
    #[error("partition is not claimed yet")]
    NotClaimed,
}

/// What the database phase did.
pub(super) struct DatabaseOutcome {
    /// the batches that committed
    pub(super) committed: Vec<CommittedBatch>,
    /// the partitions whose write failed
    pub(super) failed: Vec<i32>,
}

impl CoordinatorState {
    /// Commits every batch through the writer pool, in parallel. Also
    /// returns the partitions whose write was fenced by a newer claim (see
    /// [`Self::reclaim_if_still_assigned`]). Changes nothing in the
    /// coordinator: it runs beside the previous cycle's Kafka phase.
    pub(super) async fn write_batches(
        &self,
        txn_id: Uuid,
        batches: &[Arc<PartitionBatch>],
    ) -> (DatabaseOutcome, Vec<i32>) {
        let writes = batches.iter().map(|batch| {
            let write = self.write_batch(txn_id, batch);
            async move { (batch.partition, write.await) }
        });
        let mut outcome = DatabaseOutcome {
            committed: Vec::new(),
            failed: Vec::new(),
        };
        let mut fenced = Vec::new();
        for (partition, result) in join_all(writes).await {
            match result {
                Ok(written) => outcome.committed.push(CommittedBatch {
                    batch: written.batch,
                    outcome: written.outcome,
                }),
                Err(error) => {
                    tracing::warn!(target: COMMIT_EVENTS_TARGET, partition, %txn_id, %error, "database write failed");
                    if matches!(error, BatchWriteFailure::Store(StoreError::Fenced { .. })) {
                        fenced.push(partition);
                    }
                    outcome.failed.push(partition);
                }
            }
        }
        (outcome, fenced)
    }

    /// Has the batch's writer commit it, bounded in time.
    fn write_batch(
        &self,
        txn_id: Uuid,
        batch: &Arc<PartitionBatch>,
    ) -> impl Future<Output = Result<crate::messages::db_writer::WrittenBatch, BatchWriteFailure>>
    + 'static {
        let settings = &self.args.settings;
        let writer_timeout = settings
            .db_statement_timeout
            .saturating_mul(settings.db_retry_attempts.saturating_add(1))
            .saturating_add(WRITER_MARGIN);
        let owner_epoch = self
            .partitions
            .get(&batch.partition)
            .and_then(|owned| owned.owner_epoch);
        let index = usize::try_from(batch.partition).unwrap_or(0) % settings.db_writers;
        let writer = self.args.names.find_db_writer(index);
        let request = owner_epoch.map(|owner_epoch| WriteRequest {
            group_id: settings.group_id.clone(),
            topic: settings.input_topic.clone(),
            owner_epoch,
            txn_id,
            batch: Arc::clone(batch),
            parent: tracing::Span::current(),
        });
        async move {
            match (writer, request) {
                (_, None) => Err(BatchWriteFailure::NotClaimed),
                (None, Some(_)) => Err(BatchWriteFailure::WriterRestarting),
                (Some(writer), Some(request)) => match writer
                    .call(
                        |reply| DbWriterMsg::Write(request, reply),
                        Some(writer_timeout),
                    )
                    .await
                {
                    Ok(CallResult::Success(outcome)) => outcome.map_err(BatchWriteFailure::from),
                    Ok(CallResult::Timeout) => Err(BatchWriteFailure::WriterTimedOut),
                    Ok(CallResult::SenderError) | Err(_) => Err(BatchWriteFailure::WriterDied),
                },
            }
        }
    }

    /// Partitions whose write was fenced by a newer claim: if Kafka still
    /// assigns them to this instance, that claim was stale (an instance that
    /// has since lost them, or a zombie) and this one claims them again at
    /// its rewind; otherwise their revocation is on its way and removes them.
    pub(super) fn reclaim_if_still_assigned(&mut self, fenced: &[i32]) {
        for partition in fenced {
            let assigned = self.is_assigned(*partition);
            if let Some(owned) = self.partitions.get_mut(partition)
                && assigned
            {
                tracing::warn!(
                    partition,
                    stale_epoch = ?owned.owner_epoch,
                    "write fenced by another claim while kafka still assigns the partition here; claiming it again"
                );
                owned.owner_epoch = None;
            }
        }
    }

    /// Hands the Kafka offsets just confirmed committed to the recorder,
    /// which writes them beside the next cycles, not on their path. A lost
    /// one is not harmless: on a broker whose group offsets cannot be read
    /// back (librdkafka's mock cluster discards them; a read can return a
    /// stale offset), the stored `kafka_committed_offset` is what keeps a
    /// rewind from producing committed outputs again. Within this ownership
    /// `kafka_committed_here` covers it; every positioning first flushes the
    /// recorder (see `position_partitions`), so a restarted coordinator reads
    /// what its predecessor confirmed; after a crash, what had not landed
    /// leaves the group's offsets as the only bound.
    pub(super) fn confirm_kafka_commit(&self, committed: &[CommittedBatch]) {
        if let Err(fault) =
            crate::failpoints::hit(crate::failpoints::COORDINATOR_CONFIRM_KAFKA_COMMIT)
        {
            tracing::warn!(%fault, "committed kafka offsets not recorded in the store");
            return;
        }
        let confirmations: Vec<KafkaCommitConfirmation> = committed
            .iter()
            .filter_map(|committed_batch| {
                let partition = committed_batch.batch.partition;
                Some(KafkaCommitConfirmation {
                    partition,
                    end_offset: committed_batch.batch.end_offset,
                    owner_epoch: self.partitions.get(&partition)?.owner_epoch?,
                })
            })
            .collect();
        self.args.confirmed_offsets.record(confirmations);
    }

    /// Waits (bounded) until the confirmed offsets handed over so far are
    /// recorded, before `what` lets anyone read them: a positioning (its
    /// claim bumps the owner epoch, after which the store refuses an older
    /// ownership's confirmation) or a drain (the next owner claims next).
    pub(super) async fn flush_confirmed_offsets(&self, what: &'static str) {
        if !self
            .args
            .confirmed_offsets
            .flush(CONFIRM_FLUSH_DEADLINE)
            .await
        {
            tracing::debug!(
                before = what,
                waiting = ?self.args.confirmed_offsets.waiting_partitions(),
                "confirmed kafka offsets not all recorded in time"
            );
        }
    }
}
