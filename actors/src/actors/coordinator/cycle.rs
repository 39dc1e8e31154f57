//! One commit cycle, start to end: take a batch from every positioned
//! partition, commit them to the database ([`super::database`]), then in
//! one Kafka transaction ([`super::kafka_phase`]); settle what committed and
//! rewind what did not.
//!
//! Guarantees:
//! - database first (it is idempotent), Kafka second; on any failure before
//!   the Kafka commit is confirmed, the transaction is aborted (or the
//!   producer recreated) and the partitions are rewound to their recovery
//!   positions;
//! - every way a cycle ends badly goes through one path ([`CycleAborted`]:
//!   log line, metric, span outcome, then the rewind);
//! - once Kafka committed, the partitions' `kafka_committed_here` moves
//!   first, whatever happens to the bookkeeping after it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{ActorProcessingErr, ActorRef};
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use tracing::Instrument;
use uuid::Uuid;

use super::database::{CommittedBatch, DatabaseOutcome};
use super::state::CoordinatorState;
use crate::failpoints;
use crate::kafka::error::KafkaTxnError;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::partition::PartitionConsumerMsg;
use crate::model::batch::PartitionBatch;
use crate::model::record::RecordEffect;
use crate::telemetry::events::{
    COMMIT_EVENTS_TARGET, CycleAborted, CycleCommitted, CycleEnd, end_cycle_span,
};
use crate::telemetry::metrics::BreakerState;
use crate::telemetry::spans::{self, RecordSpan};

/// How long a partition consumer has to hand over its batch. A late reply
/// costs nothing: the batch stays in flight and is handed over again.
const TAKE_BATCH_DEADLINE: Duration = Duration::from_secs(2);

/// When a cycle started, and how long its database and Kafka phases took.
#[derive(Debug, Clone, Copy)]
struct CycleTimings {
    started: Instant,
    database: Duration,
    kafka: Duration,
}

/// The `process` spans of the records of `batches`.
fn record_spans<'a>(
    batches: impl Iterator<Item = &'a Arc<PartitionBatch>>,
) -> impl Iterator<Item = &'a RecordSpan> {
    batches.flat_map(|batch| batch.records.iter().map(|record| &record.span))
}

impl CoordinatorState {
    /// Runs one cycle, if there is anything to commit, inside its
    /// `commit_cycle` span.
    pub(super) async fn run_cycle(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if self.producer.is_none() || self.args.status.breaker_state() == BreakerState::Open {
            return Ok(());
        }
        // The group metadata of the generation the batches are taken in: the
        // broker refuses their offsets if the group has moved on by the time
        // they are sent (an old owner's late commit), instead of taking them
        // under the new generation.
        let Some(group_metadata) = self.args.consumer.group_metadata() else {
            return Ok(()); // not a group member yet
        };
        let batches = self.take_batches().await;
        if batches.is_empty() {
            return Ok(());
        }
        let txn_id = Uuid::now_v7();
        let record_count: usize = batches.iter().map(|batch| batch.records.len()).sum();
        let span = tracing::info_span!(
            "commit_cycle",
            %txn_id,
            partitions = batches.len(),
            messaging.system = "kafka",
            messaging.operation.name = "commit",
            messaging.batch.message_count = record_count,
            messaging.consumer.group.name = %self.args.settings.group_id,
            onceflow.outcome = tracing::field::Empty,
        );
        // Parent: the first traced record's `process` span; links to the others.
        spans::tie_cycle_to_records(&span, txn_id, record_spans(batches.iter()));
        self.commit_cycle(me, txn_id, group_metadata, batches)
            .instrument(span)
            .await
    }

    /// Asks every positioned partition's consumer for its batch.
    async fn take_batches(&self) -> Vec<Arc<PartitionBatch>> {
        let mut batches = Vec::new();
        for (partition, owned) in &self.partitions {
            if self.awaiting_position.contains(partition) {
                continue;
            }
            match owned
                .consumer
                .call(PartitionConsumerMsg::TakeBatch, Some(TAKE_BATCH_DEADLINE))
                .await
            {
                Ok(CallResult::Success(Some(batch))) => batches.push(batch),
                Ok(CallResult::Success(None)) => {}
                Ok(CallResult::Timeout) => {
                    // Nothing is lost: the batch, if one was taken, stays in
                    // flight and is handed over again at the next cycle.
                    tracing::warn!(
                        partition,
                        "partition consumer did not hand over its batch in time; asking again next cycle"
                    );
                }
                Ok(CallResult::SenderError) | Err(_) => {
                    // Its supervisor restarts it and announces the successor.
                    tracing::debug!(
                        partition,
                        "partition consumer gone; waiting for its successor"
                    );
                }
            }
        }
        batches
    }

    /// Commits the batches: database first, Kafka second.
    async fn commit_cycle(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        txn_id: Uuid,
        group_metadata: ConsumerGroupMetadata,
        batches: Vec<Arc<PartitionBatch>>,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        let partitions: Vec<i32> = batches.iter().map(|batch| batch.partition).collect();
        if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_BEFORE_DB_COMMIT) {
            let aborted = CycleAborted::InjectedBeforeDatabase { fault: &fault };
            self.abort(me, aborted, &batches, &partitions).await;
            return Ok(());
        }

        // 1. Database first.
        let DatabaseOutcome { committed, failed } = self.write_batches(txn_id, &batches).await;
        let database = started.elapsed();
        if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_AFTER_DB_COMMIT) {
            let aborted = CycleAborted::InjectedAfterDatabase { fault: &fault };
            self.abort(me, aborted, &batches, &partitions).await;
            return Ok(());
        }
        if !failed.is_empty() {
            let failed_batches: Vec<Arc<PartitionBatch>> = batches
                .iter()
                .filter(|batch| failed.contains(&batch.partition))
                .cloned()
                .collect();
            let aborted = CycleAborted::Database {
                failed: &failed,
                partly: !committed.is_empty(),
            };
            self.abort(me, aborted, &failed_batches, &failed).await;
        }
        if committed.is_empty() {
            return Ok(());
        }

        // 2. Kafka second, in one transaction.
        let committed_partitions: Vec<i32> = committed.iter().map(|c| c.batch.partition).collect();
        let kafka_started = Instant::now();
        let kafka_result = self.kafka_phase(txn_id, group_metadata, &committed).await;
        let timings = CycleTimings {
            started,
            database,
            kafka: kafka_started.elapsed(),
        };
        self.args.status.txn_closed();
        let committed_batches: Vec<Arc<PartitionBatch>> = committed
            .iter()
            .map(|committed_batch| Arc::clone(&committed_batch.batch))
            .collect();
        match kafka_result {
            Ok(()) => {
                let whole = failed.is_empty();
                self.settle(me, txn_id, &committed, whole, timings).await;
            }
            Err(error) => {
                self.abort_kafka(
                    me,
                    txn_id,
                    &error,
                    &committed_batches,
                    &committed_partitions,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// The one place a cycle ends badly: the event (log line, metric, span
    /// outcome), then the rewind of `partitions`.
    async fn abort(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        aborted: CycleAborted<'_>,
        batches: &[Arc<PartitionBatch>],
        partitions: &[i32],
    ) {
        aborted.emit(&self.args.status, record_spans(batches.iter()));
        self.rewind(me, partitions).await;
    }

    /// The Kafka transaction failed: the abort event, the producer aborted
    /// or recreated, then the rewind.
    async fn abort_kafka(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        txn_id: Uuid,
        error: &KafkaTxnError,
        batches: &[Arc<PartitionBatch>],
        partitions: &[i32],
    ) -> Result<(), ActorProcessingErr> {
        let class = error.class();
        CycleAborted::Kafka {
            txn_id,
            error,
            class: &class,
            reason: class.abort_reason(),
        }
        .emit(&self.args.status, record_spans(batches.iter()));
        self.recover_producer(txn_id, class).await?;
        self.rewind(me, partitions).await;
        Ok(())
    }

    /// Kafka committed the cycle's `committed` batches (`whole`: all of the
    /// cycle's): records it, confirms the offsets in the store, tells the
    /// partition consumers, counts, and emits [`CycleCommitted`].
    async fn settle(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        txn_id: Uuid,
        committed: &[CommittedBatch],
        whole: bool,
        timings: CycleTimings,
    ) {
        let committed_at_ms = chrono::Utc::now().timestamp_millis();
        // Kafka has these offsets now, whatever happens to the bookkeeping
        // below: rewinds in this ownership start from here.
        for committed_batch in committed {
            let batch = &committed_batch.batch;
            if let Some(owned) = self.partitions.get_mut(&batch.partition) {
                owned.kafka_committed_here = owned.kafka_committed_here.max(Some(batch.end_offset));
            }
        }
        let committed_spans = || {
            record_spans(
                committed
                    .iter()
                    .map(|committed_batch| &committed_batch.batch),
            )
        };
        if whole {
            end_cycle_span(committed_spans(), CycleEnd::Committed, None);
        } else {
            spans::record_outcome(committed_spans(), CycleEnd::Committed.record_outcome());
        }
        let partitions: Vec<i32> = committed.iter().map(|c| c.batch.partition).collect();
        if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_AFTER_KAFKA_COMMIT) {
            // Both sides committed; the partitions replay [a, b) and find
            // nothing owed. Exercises the "both landed" recovery case.
            tracing::warn!(target: COMMIT_EVENTS_TARGET, %fault, "bookkeeping skipped after the kafka commit");
            self.rewind(me, &partitions).await;
            return;
        }
        self.confirm_kafka_commit(committed).await;
        self.count_committed(committed, committed_at_ms);
        CycleCommitted {
            txn_id,
            partitions: &partitions,
            elapsed: timings.started.elapsed(),
            database: timings.database,
            kafka: timings.kafka,
            records: committed
                .iter()
                .map(|committed_batch| committed_batch.batch.records.len())
                .sum(),
        }
        .emit(&self.args.status);
    }

    /// Tells each committed batch's consumer, counts the events,
    /// duplicates and dead letters committed, and observes each record's
    /// end-to-end latency (its timestamp to `committed_at_ms`, when Kafka
    /// confirmed the commit).
    fn count_committed(&self, committed: &[CommittedBatch], committed_at_ms: i64) {
        let status = &self.args.status;
        let metrics = status.metrics();
        for committed_batch in committed {
            let batch = &committed_batch.batch;
            if let Some(owned) = self.partitions.get(&batch.partition) {
                let _ = owned.consumer.cast(PartitionConsumerMsg::Committed {
                    end_offset: batch.end_offset,
                });
            }
            for record in &batch.records {
                if let Some(timestamp_ms) = record.timestamp_ms {
                    let latency_ms = committed_at_ms.saturating_sub(timestamp_ms).max(0);
                    metrics.end_to_end_latency.observe(latency_ms as f64 / 1e3);
                }
            }
            metrics
                .events_committed
                .inc_by(committed_batch.outcome.new_events);
            metrics
                .duplicates
                .inc_by(committed_batch.outcome.duplicates);
            for index in &committed_batch.outcome.owed_records {
                if let RecordEffect::DeadLetter { kind, .. } = &batch.records[*index].effect {
                    status.count_dead_letter(kind.as_str());
                }
            }
        }
    }
}
