//! One commit cycle, stage by stage: take a batch from every positioned
//! partition, commit them to the database ([`super::database`]), then in
//! one Kafka transaction ([`super::kafka_phase`]); settle what committed and
//! rewind what did not. [`super::pipelining`] runs the stages, overlapping
//! one cycle's Kafka phase with the next one's database phase under a
//! backlog.
//!
//! Guarantees:
//! - database first (it is idempotent), Kafka second; on any failure before
//!   the Kafka commit is confirmed, the transaction is aborted (or the
//!   producer recreated) and the partitions are rewound to their recovery
//!   positions;
//! - every way a cycle ends badly goes through one path ([`CycleAborted`]:
//!   log line, metric, span outcome, then the rewind), inside the cycle's
//!   own span;
//! - a batch goes into a Kafka phase only under the positioning it was
//!   taken in: a partition rewound since (by any path) is left out, since
//!   its replay owns those records now;
//! - once Kafka committed, the partitions' `kafka_committed_here` moves
//!   first, whatever happens to the bookkeeping after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{ActorProcessingErr, ActorRef};
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use tracing::Instrument;
use uuid::Uuid;

use super::database::{CommittedBatch, DatabaseOutcome};
use super::state::CoordinatorState;
use crate::failpoints::{self, InjectedFault};
use crate::kafka::error::KafkaTxnError;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::partition::{BatchWanted, PartitionConsumerMsg};
use crate::model::batch::PartitionBatch;
use crate::model::position_ticket::PositionTicket;
use crate::model::record::RecordEffect;
use crate::telemetry::events::{
    COMMIT_EVENTS_TARGET, CycleAborted, CycleCommitted, CycleEnd, end_cycle_span,
};
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

/// A cycle whose batches were taken.
pub(super) struct TakenCycle {
    pub(super) txn_id: Uuid,
    /// the group generation the batches were taken in
    group_metadata: ConsumerGroupMetadata,
    pub(super) batches: Vec<Arc<PartitionBatch>>,
    /// each batch's partition's positioning when it was taken
    tickets: BTreeMap<i32, PositionTicket>,
    pub(super) span: tracing::Span,
    started: Instant,
}

impl TakenCycle {
    fn partitions(&self) -> Vec<i32> {
        self.batches.iter().map(|batch| batch.partition).collect()
    }
}

/// How a cycle's database phase ended, before its consequences (rewinds)
/// are carried out.
pub(super) enum DatabasePhaseEnd {
    /// a kill point fired before the writes
    InjectedBefore(InjectedFault),
    /// a kill point fired after the writes
    InjectedAfter(InjectedFault),
    /// the writes ended; `fenced`: partitions whose write a newer claim fenced
    Written {
        outcome: DatabaseOutcome,
        fenced: Vec<i32>,
    },
}

/// A cycle whose database phase committed at least one batch: its Kafka
/// phase is next (with the group metadata it was taken in, kept beside it:
/// the Kafka phase consumes that).
pub(super) struct DatabaseCommittedCycle {
    pub(super) txn_id: Uuid,
    pub(super) committed: Vec<CommittedBatch>,
    tickets: BTreeMap<i32, PositionTicket>,
    /// whether every batch of the cycle committed to the database
    whole: bool,
    pub(super) span: tracing::Span,
    started: Instant,
    database: Duration,
}

impl DatabaseCommittedCycle {
    /// Whether a batch of the cycle is as large as a batch may be: the
    /// partition had more waiting (a backlog).
    pub(super) fn has_full_batch(&self, max_batch_records: usize) -> bool {
        self.committed
            .iter()
            .any(|committed| committed.batch.records.len() >= max_batch_records)
    }

    /// The end offset of each committed batch: where the next batch of its
    /// partition must start.
    pub(super) fn held_ends(&self) -> BTreeMap<i32, i64> {
        self.committed
            .iter()
            .map(|committed| (committed.batch.partition, committed.batch.end_offset))
            .collect()
    }
}

/// How a cycle's Kafka phase ended, and how long it took.
pub(super) struct KafkaPhaseEnd {
    result: Result<(), KafkaTxnError>,
    took: Duration,
}

impl CoordinatorState {
    /// Takes a batch from every positioned partition (after the batch the
    /// coordinator holds for it, if `held_ends` names one) and opens the
    /// cycle's `commit_cycle` span; `None` if there is nothing to commit or
    /// the consumer is not a group member yet.
    pub(super) async fn take_cycle(&self, held_ends: &BTreeMap<i32, i64>) -> Option<TakenCycle> {
        // The group metadata of the generation the batches are taken in: the
        // broker refuses their offsets if the group has moved on by the time
        // they are sent (an old owner's late commit), instead of taking them
        // under the new generation.
        let group_metadata = self.args.consumer.group_metadata()?;
        let batches = self.take_batches(held_ends).await;
        if batches.is_empty() {
            return None;
        }
        let tickets = batches
            .iter()
            .filter_map(|batch| {
                let owned = self.partitions.get(&batch.partition)?;
                Some((batch.partition, owned.ticket))
            })
            .collect();
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
        tracing::debug!(
            target: COMMIT_EVENTS_TARGET,
            %txn_id,
            beside_a_held_cycle = !held_ends.is_empty(),
            records_by_partition = ?batches
                .iter()
                .map(|batch| (batch.partition, batch.records.len()))
                .collect::<Vec<_>>(),
            "cycle taken"
        );
        // Parent: the first traced record's `process` span; links to the others.
        spans::tie_cycle_to_records(&span, txn_id, record_spans(batches.iter()));
        Some(TakenCycle {
            txn_id,
            group_metadata,
            batches,
            tickets,
            span,
            started: Instant::now(),
        })
    }

    /// Asks every positioned partition's consumer for its batch: the one
    /// after the batch held for it in `held_ends`, else its oldest.
    async fn take_batches(&self, held_ends: &BTreeMap<i32, i64>) -> Vec<Arc<PartitionBatch>> {
        let mut batches = Vec::new();
        for (partition, owned) in &self.partitions {
            if self.awaiting_position.contains(partition) {
                continue;
            }
            let wanted = held_ends
                .get(partition)
                .map_or(BatchWanted::Oldest, |held_end| {
                    BatchWanted::After(*held_end)
                });
            match owned
                .consumer
                .call(
                    |reply| PartitionConsumerMsg::TakeBatch(wanted, reply),
                    Some(TAKE_BATCH_DEADLINE),
                )
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

    /// The database phase of `cycle`: every batch written, in parallel.
    /// Changes nothing in the coordinator, so it can run beside the previous
    /// cycle's Kafka phase; [`Self::conclude_database`] carries out what
    /// its end calls for.
    pub(super) async fn database_phase(&self, cycle: &TakenCycle) -> (DatabasePhaseEnd, Duration) {
        let started = Instant::now();
        if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_BEFORE_DB_COMMIT) {
            return (DatabasePhaseEnd::InjectedBefore(fault), started.elapsed());
        }
        let (outcome, fenced) = self
            .write_batches(cycle.txn_id, &cycle.batches)
            .instrument(cycle.span.clone())
            .await;
        let took = started.elapsed();
        if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_AFTER_DB_COMMIT) {
            return (DatabasePhaseEnd::InjectedAfter(fault), took);
        }
        (DatabasePhaseEnd::Written { outcome, fenced }, took)
    }

    /// Carries out the end of `cycle`'s database phase: re-claims fenced
    /// partitions still assigned here, rewinds every partition whose batch
    /// did not commit, and returns the cycle if any batch did.
    pub(super) async fn conclude_database(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        cycle: TakenCycle,
        (end, database): (DatabasePhaseEnd, Duration),
    ) -> Option<(DatabaseCommittedCycle, ConsumerGroupMetadata)> {
        let span = cycle.span.clone();
        let partitions = cycle.partitions();
        let DatabaseOutcome { committed, failed } = match end {
            DatabasePhaseEnd::InjectedBefore(fault) => {
                let aborted = CycleAborted::InjectedBeforeDatabase { fault: &fault };
                self.abort(me, aborted, &cycle.batches, &partitions)
                    .instrument(span)
                    .await;
                return None;
            }
            DatabasePhaseEnd::InjectedAfter(fault) => {
                let aborted = CycleAborted::InjectedAfterDatabase { fault: &fault };
                self.abort(me, aborted, &cycle.batches, &partitions)
                    .instrument(span)
                    .await;
                return None;
            }
            DatabasePhaseEnd::Written { outcome, fenced } => {
                self.reclaim_if_still_assigned(&fenced);
                outcome
            }
        };
        if !failed.is_empty() {
            let failed_batches: Vec<Arc<PartitionBatch>> = cycle
                .batches
                .iter()
                .filter(|batch| failed.contains(&batch.partition))
                .cloned()
                .collect();
            let aborted = CycleAborted::Database {
                failed: &failed,
                partly: !committed.is_empty(),
            };
            self.abort(me, aborted, &failed_batches, &failed)
                .instrument(span.clone())
                .await;
        }
        if committed.is_empty() {
            return None;
        }
        let committed_cycle = DatabaseCommittedCycle {
            txn_id: cycle.txn_id,
            committed,
            tickets: cycle.tickets,
            whole: failed.is_empty(),
            span,
            started: cycle.started,
            database,
        };
        Some((committed_cycle, cycle.group_metadata))
    }

    /// Leaves out of `cycle` every batch whose partition was rewound (or
    /// forgotten) since the batch was taken: its replay owns those records,
    /// and committing them here would produce their outputs twice. Returns
    /// whether anything is left.
    pub(super) fn drop_rewound_batches(&self, cycle: &mut DatabaseCommittedCycle) -> bool {
        let before = cycle.committed.len();
        cycle.committed.retain(|committed| {
            let partition = committed.batch.partition;
            let current = self.partitions.get(&partition).map(|owned| owned.ticket);
            current.is_some() && current == cycle.tickets.get(&partition).copied()
        });
        if cycle.committed.len() < before {
            cycle.whole = false;
            tracing::info!(
                target: COMMIT_EVENTS_TARGET,
                txn_id = %cycle.txn_id,
                dropped = before - cycle.committed.len(),
                "batches of partitions rewound since they were taken left out of the kafka phase"
            );
        }
        !cycle.committed.is_empty()
    }

    /// The Kafka phase of `cycle`, in its span. Changes nothing in the
    /// coordinator, so it can run beside the next cycle's database phase;
    /// [`Self::conclude_kafka`] carries out its end.
    pub(super) async fn kafka_phase_of(
        &self,
        cycle: &DatabaseCommittedCycle,
        group_metadata: ConsumerGroupMetadata,
    ) -> KafkaPhaseEnd {
        let started = Instant::now();
        let result = self
            .kafka_phase(cycle.txn_id, group_metadata, &cycle.committed)
            .instrument(cycle.span.clone())
            .await;
        KafkaPhaseEnd {
            result,
            took: started.elapsed(),
        }
    }

    /// Carries out the end of `cycle`'s Kafka phase: settles it, or aborts
    /// it (producer aborted or recreated, partitions rewound). Returns
    /// whether the cycle committed and its partitions were left where they
    /// were (no rewind).
    pub(super) async fn conclude_kafka(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        cycle: DatabaseCommittedCycle,
        end: KafkaPhaseEnd,
    ) -> Result<bool, ActorProcessingErr> {
        self.args.status.txn_closed();
        let timings = CycleTimings {
            started: cycle.started,
            database: cycle.database,
            kafka: end.took,
        };
        let span = cycle.span.clone();
        match end.result {
            Ok(()) => Ok(self
                .settle(me, cycle.txn_id, &cycle.committed, cycle.whole, timings)
                .instrument(span)
                .await),
            Err(error) => {
                let batches: Vec<Arc<PartitionBatch>> = cycle
                    .committed
                    .iter()
                    .map(|committed| Arc::clone(&committed.batch))
                    .collect();
                let partitions: Vec<i32> = batches.iter().map(|batch| batch.partition).collect();
                self.abort_kafka(me, cycle.txn_id, &error, &batches, &partitions)
                    .instrument(span)
                    .await?;
                Ok(false)
            }
        }
    }

    /// `cycle` ran its database phase beside its predecessor's Kafka phase,
    /// which failed: whatever its database phase did, none of it goes to
    /// Kafka (its offsets would pass the predecessor's records); its
    /// partitions are rewound and replay it.
    pub(super) async fn abandon_after_failed_predecessor(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        cycle: TakenCycle,
        (end, _): (DatabasePhaseEnd, Duration),
        predecessor: Uuid,
    ) {
        if let DatabasePhaseEnd::Written { fenced, .. } = &end {
            self.reclaim_if_still_assigned(fenced);
        }
        let partitions = cycle.partitions();
        let aborted = CycleAborted::PredecessorFailed { predecessor };
        self.abort(me, aborted, &cycle.batches, &partitions)
            .instrument(cycle.span.clone())
            .await;
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
    /// partition consumers, counts, and emits [`CycleCommitted`]. Returns
    /// whether its partitions were left where they were (the bookkeeping
    /// ran; a skipped one rewinds them).
    async fn settle(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        txn_id: Uuid,
        committed: &[CommittedBatch],
        whole: bool,
        timings: CycleTimings,
    ) -> bool {
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
            return false;
        }
        self.confirm_kafka_commit(committed);
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
        true
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
