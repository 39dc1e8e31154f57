//! The transaction coordinator actor: owns the transactional producer and
//! runs the commit cycles, one at a time.
//!
//! One cycle: take a batch from every positioned partition; commit each
//! batch to the database through the writer pool (database first: it is
//! idempotent); then, in one Kafka transaction, produce the outputs still
//! owed, have the DLQ forwarder produce the dead letters, send every
//! committed partition's end offset with the group metadata, and commit.
//! On any failure before the Kafka commit is confirmed, the transaction is
//! aborted (or the producer recreated) and the partitions are rewound to
//! their recovery positions.
//!
//! Guarantees:
//! - Kafka offsets are sent only for partitions whose database transaction
//!   committed, so the stored offset never passes an effect that is not
//!   committed;
//! - recovery positions are computed between cycles, after the producer has
//!   been initialised (fencing the previous incarnation), so they never see a
//!   half-finished cycle of this instance;
//! - the coordinator keeps nothing recovery needs: a restarted coordinator
//!   fences its predecessor, re-claims the partitions and rewinds them;
//! - the group metadata sent with the offsets is the one read when the
//!   cycle took its batches, and a partition no longer assigned when the
//!   offsets are sent or the transaction commits aborts the transaction: an
//!   old owner's commit is refused by the broker (stale generation) instead
//!   of landing after the new owner read the group offset;
//! - one cycle at a time and one tick pending at most: the next tick is
//!   scheduled when a cycle ends, so drain, assignment, breaker and
//!   shutdown messages never wait behind a queue of ticks;
//! - every rewind carries a new positioning ticket (see
//!   [`crate::model::position_ticket`]): the latest decision wins everywhere;
//! - a write fenced while Kafka still assigns the partition to this
//!   instance re-claims it (the claim that fenced it was stale); only a
//!   newer incarnation of this very instance makes it stop as a zombie.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::Instrument;
use uuid::Uuid;

use crate::failpoints;
use crate::kafka::clients::{InputConsumer, create_transactional_producer};
use crate::kafka::error::{KafkaFailureClass, KafkaTxnError};
use crate::kafka::headers::TXN_ID_HEADER;
use crate::kafka::records::DeadLetter;
use crate::kafka::send::send_all;
use crate::messages::circuit_breaker::CircuitBreakerMsg;
use crate::messages::consumer_supervisor::ConsumerSupervisorMsg;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::db_writer::{DbWriterMsg, WriteRequest};
use crate::messages::dlq_forwarder::{DlqForwarderMsg, ForwardRequest};
use crate::messages::names::ActorNames;
use crate::messages::partition::PartitionConsumerMsg;
use crate::messages::partition::PositionOrder;
use crate::model::batch::PartitionBatch;
use crate::model::position_ticket::{PositionTicket, PositionTickets};
use crate::model::record::RecordEffect;
use crate::recovery::recovery_position;
use crate::settings::Settings;
use crate::store::Store;
use crate::store::error::StoreError;
use crate::store::types::{BatchWriteOutcome, KafkaCommitConfirmation, StoredPartition};
use crate::telemetry::events::COMMIT_EVENTS_TARGET;
use crate::telemetry::spans::{self, in_span, mark_failed};
use crate::telemetry::status::{BreakerState, PipelineStatus};
use crate::telemetry::trace_context::TRACEPARENT_HEADER;

/// How many times a retriable Kafka call is tried.
const KAFKA_CALL_ATTEMPTS: u32 = 5;

/// How long a partition consumer has to hand over its batch. A late reply
/// costs nothing: the batch stays in flight and is handed over again.
const TAKE_BATCH_DEADLINE: Duration = Duration::from_secs(2);

/// Start arguments.
#[derive(Clone)]
pub struct CoordinatorArgs {
    /// settings
    pub settings: Arc<Settings>,
    /// the store
    pub store: Store,
    /// the input consumer (group metadata, committed offsets)
    pub consumer: Arc<InputConsumer>,
    /// actor names
    pub names: ActorNames,
    /// metrics and health
    pub status: PipelineStatus,
    /// the positioning tickets (shared with every incarnation)
    pub tickets: PositionTickets,
}

#[derive(Debug)]
struct OwnedPartition {
    owner_epoch: Option<i64>,
    /// the latest positioning decided for the partition
    ticket: PositionTicket,
    consumer: ActorRef<PartitionConsumerMsg>,
    /// End offset of the last Kafka transaction this coordinator committed
    /// for the partition while owning it: a lower bound of the group's
    /// committed offset that holds even when recording it in the store
    /// failed (a store outage right after the commit), so a rewind in the
    /// same ownership never replays outputs Kafka already has.
    kafka_committed_here: Option<i64>,
}

/// State of the coordinator.
pub struct CoordinatorState {
    args: CoordinatorArgs,
    producer: Option<FutureProducer>,
    partitions: BTreeMap<i32, OwnedPartition>,
    awaiting_position: BTreeSet<i32>,
    retry_scheduled: bool,
}

/// The transaction coordinator actor.
#[derive(Debug)]
pub struct TransactionCoordinator;

impl Actor for TransactionCoordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.status.set_coordinator_ready(false);
        // A predecessor killed mid-transaction left it "open"; init fences it.
        args.status.txn_closed();
        Ok(CoordinatorState {
            args,
            producer: None,
            partitions: BTreeMap::new(),
            awaiting_position: BTreeSet::new(),
            retry_scheduled: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Fencing first: recovery must not read offsets before the previous
        // incarnation's transaction is aborted or completed.
        let producer = new_producer(&state.args.settings).await?;
        state.producer = Some(producer);
        state.args.status.set_coordinator_ready(true);
        tracing::info!(
            transactional_id = %state.args.settings.transactional_id(),
            "transactional producer initialised"
        );
        state
            .args
            .names
            .cast_consumer_supervisor(ConsumerSupervisorMsg::ReportAssignment);
        myself.send_after(state.args.settings.commit_interval(), || {
            CoordinatorMsg::Tick
        });
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.args.status.set_coordinator_ready(false);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CoordinatorMsg::Tick => {
                let started = Instant::now();
                run_cycle(&myself, state).await?;
                // One tick pending at most: the next one is due a commit
                // interval after this one started, or at once if the cycle
                // took longer than that.
                let next = state
                    .args
                    .settings
                    .commit_interval()
                    .saturating_sub(started.elapsed());
                myself.send_after(next, || CoordinatorMsg::Tick);
            }
            CoordinatorMsg::PartitionsAssigned(assigned) => {
                for (partition, consumer) in assigned {
                    // The same consumer announced twice (by the rebalance and by
                    // the report asked for at start) is already positioned.
                    if state
                        .partitions
                        .get(&partition)
                        .is_some_and(|owned| owned.consumer.get_id() == consumer.get_id())
                    {
                        continue;
                    }
                    let ticket = state.args.tickets.issue();
                    // A consumer that died meanwhile is restarted and
                    // announced again; nothing to do for this one.
                    let _ = consumer.cast(PartitionConsumerMsg::BeginRewind { ticket });
                    state.partitions.insert(
                        partition,
                        OwnedPartition {
                            owner_epoch: None,
                            ticket,
                            consumer,
                            kafka_committed_here: None,
                        },
                    );
                    state.awaiting_position.insert(partition);
                }
                position_partitions(&myself, state).await;
            }
            CoordinatorMsg::PartitionsRevoked(revoked) => {
                for partition in revoked {
                    state.partitions.remove(&partition);
                    state.awaiting_position.remove(&partition);
                }
            }
            CoordinatorMsg::RetryRecovery => {
                state.retry_scheduled = false;
                position_partitions(&myself, state).await;
            }
            CoordinatorMsg::Flush(reply) => {
                run_cycle(&myself, state).await?;
                let _ = reply.send(());
            }
            CoordinatorMsg::BreakerOpened => {
                let partitions: Vec<i32> = state.partitions.keys().copied().collect();
                tracing::warn!(
                    ?partitions,
                    "database unavailable: rewinding and pausing every partition"
                );
                for partition in &partitions {
                    begin_rewind(state, *partition);
                }
                state
                    .args
                    .names
                    .cast_consumer_supervisor(ConsumerSupervisorMsg::PausePartitions(partitions));
            }
            CoordinatorMsg::BreakerClosed => position_partitions(&myself, state).await,
            CoordinatorMsg::DrainPartitions(partitions, reply) => {
                // Handled between cycles: the cycle that held these partitions
                // has committed or been rewound. Forget them so that no later
                // cycle takes their batches.
                for partition in &partitions {
                    state.partitions.remove(partition);
                    state.awaiting_position.remove(partition);
                }
                tracing::info!(?partitions, "partitions drained before revocation");
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

async fn new_producer(settings: &Arc<Settings>) -> Result<FutureProducer, KafkaTxnError> {
    let settings = Arc::clone(settings);
    tokio::task::spawn_blocking(move || create_transactional_producer(&settings))
        .await
        .map_err(|error| KafkaTxnError::TaskLost {
            operation: "init_transactions",
            reason: error.to_string(),
        })?
}

/// Decides a new positioning of `partition`: a new ticket, its consumer
/// told to drop what it holds and wait for it, the partition awaiting its
/// recovery position.
fn begin_rewind(state: &mut CoordinatorState, partition: i32) {
    let Some(owned) = state.partitions.get_mut(&partition) else {
        return;
    };
    owned.ticket = state.args.tickets.issue();
    let _ = owned.consumer.cast(PartitionConsumerMsg::BeginRewind {
        ticket: owned.ticket,
    });
    state.awaiting_position.insert(partition);
}

/// Rewinds `partitions`: drops what their consumers hold and positions them
/// at their recovery positions.
async fn rewind(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
    partitions: &[i32],
) {
    for partition in partitions {
        begin_rewind(state, *partition);
    }
    position_partitions(myself, state).await;
}

/// Reads the recovery positions of the partitions awaiting one and has the
/// fetcher seek there; on failure, retries later.
async fn position_partitions(myself: &ActorRef<CoordinatorMsg>, state: &mut CoordinatorState) {
    if state.awaiting_position.is_empty() {
        return;
    }
    if state.args.status.breaker_state() == BreakerState::Open {
        // The breaker says the database is down: do not hammer it; the
        // breaker's close message positions the partitions.
        return;
    }
    let inputs = read_recovery_inputs(state).await;
    // The breaker sees every database outcome, recovery reads included: while
    // the database is down no batch is written, so without these it would
    // never learn of the outage.
    match &inputs {
        Ok(_) => tell_breaker(state, CircuitBreakerMsg::DatabaseSucceeded),
        Err(RecoveryReadError::Store(StoreError::Fenced { .. })) => {}
        Err(RecoveryReadError::Store(_)) => tell_breaker(state, CircuitBreakerMsg::DatabaseFailed),
        Err(_) => {}
    }
    match inputs {
        Ok(inputs) => {
            for (partition, stored, group_committed) in inputs {
                let committed_here = state
                    .partitions
                    .get(&partition)
                    .and_then(|owned| owned.kafka_committed_here);
                let kafka_committed = group_committed.max(committed_here);
                let position = recovery_position(Some(stored), kafka_committed);
                tracing::info!(
                    partition,
                    db_next_offset = ?stored.next_offset,
                    group_start_offset = ?stored.start_offset,
                    db_kafka_committed = ?stored.kafka_committed_offset,
                    ?group_committed,
                    ?committed_here,
                    start = ?position.start,
                    outputs_from = position.outputs_from,
                    "recovery position"
                );
                let Some(owned) = state.partitions.get(&partition) else {
                    continue;
                };
                state
                    .args
                    .names
                    .cast_consumer_supervisor(ConsumerSupervisorMsg::Position(PositionOrder {
                        partition,
                        ticket: owned.ticket,
                        start: position.start,
                        outputs_from: position.outputs_from,
                        target: owned.consumer.clone(),
                    }));
                state.awaiting_position.remove(&partition);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read recovery positions yet; retrying");
            if !state.retry_scheduled {
                state.retry_scheduled = true;
                myself.send_after(Duration::from_millis(500), || CoordinatorMsg::RetryRecovery);
            }
        }
    }
}

fn tell_breaker(state: &CoordinatorState, message: CircuitBreakerMsg) {
    if let Some(breaker) =
        ActorNames::lookup::<CircuitBreakerMsg>(&state.args.names.circuit_breaker())
    {
        let _ = breaker.cast(message);
    }
}

#[derive(Debug, thiserror::Error)]
enum RecoveryReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading committed offsets: {0}")]
    Kafka(String),
}

async fn read_recovery_inputs(
    state: &mut CoordinatorState,
) -> Result<Vec<(i32, StoredPartition, Option<i64>)>, RecoveryReadError> {
    let settings = Arc::clone(&state.args.settings);
    let instance_id = settings.instance_id();
    let mut stored_by_partition = Vec::new();
    for partition in state.awaiting_position.clone() {
        let Some(owned) = state.partitions.get_mut(&partition) else {
            continue;
        };
        let stored = match owned.owner_epoch {
            // First positioning since assignment: claim, fencing older owners.
            None => {
                let claimed = state
                    .args
                    .store
                    .claim_partition(
                        &settings.group_id,
                        &settings.input_topic,
                        partition,
                        &instance_id,
                    )
                    .await?;
                owned.owner_epoch = Some(claimed.owner_epoch);
                state
                    .args
                    .status
                    .record_claim(partition, claimed.owner_epoch);
                claimed
            }
            Some(epoch) => state
                .args
                .store
                .read_partition(&settings.group_id, &settings.input_topic, partition)
                .await?
                .unwrap_or(StoredPartition {
                    next_offset: None,
                    start_offset: None,
                    kafka_committed_offset: None,
                    owner_epoch: epoch,
                }),
        };
        stored_by_partition.push((partition, stored));
    }
    let mut list = TopicPartitionList::new();
    for (partition, _) in &stored_by_partition {
        list.add_partition(&settings.input_topic, *partition);
    }
    let consumer = Arc::clone(&state.args.consumer);
    let timeout = settings.kafka_call_timeout();
    let committed = tokio::task::spawn_blocking(move || consumer.committed_offsets(list, timeout))
        .await
        .map_err(|error| RecoveryReadError::Kafka(error.to_string()))?
        .map_err(|error| RecoveryReadError::Kafka(error.to_string()))?;
    Ok(stored_by_partition
        .into_iter()
        .map(|(partition, stored)| {
            let kafka_committed = committed
                .find_partition(&settings.input_topic, partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            (partition, stored, kafka_committed)
        })
        .collect())
}

/// A batch whose database transaction committed, with what Kafka still owes.
struct CommittedBatch {
    batch: Arc<PartitionBatch>,
    outcome: BatchWriteOutcome,
}

async fn run_cycle(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
) -> Result<(), ActorProcessingErr> {
    if state.producer.is_none() || state.args.status.breaker_state() == BreakerState::Open {
        return Ok(());
    }
    // The group metadata of the generation the batches are taken in: the
    // broker refuses their offsets if the group has moved on by the time
    // they are sent (an old owner's late commit), instead of taking them
    // under the new generation.
    let Some(group_metadata) = state.args.consumer.group_metadata() else {
        return Ok(()); // not a group member yet
    };
    let batches = take_batches(state).await;
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
        messaging.consumer.group.name = %state.args.settings.group_id,
        onceflow.outcome = tracing::field::Empty,
    );
    // Parent: the first traced record's `process` span; links to the others.
    spans::tie_cycle_to_records(
        &span,
        txn_id,
        batches
            .iter()
            .flat_map(|batch| batch.records.iter().map(|record| &record.span)),
    );
    commit_cycle(myself, state, txn_id, group_metadata, batches)
        .instrument(span)
        .await
}

/// Records how the cycle ended on its span (the current one) and on the
/// `process` spans of the records of `batches`.
fn end_cycle_span<'a>(
    batches: impl Iterator<Item = &'a Arc<PartitionBatch>>,
    outcome: &'static str,
    error: Option<&dyn std::fmt::Display>,
) {
    let span = tracing::Span::current();
    span.record("onceflow.outcome", outcome);
    if let Some(error) = error {
        mark_failed(&span, error);
    }
    let record_outcome = if outcome == "committed" {
        "committed"
    } else {
        "rewound"
    };
    spans::record_outcome(
        batches.flat_map(|batch| batch.records.iter().map(|record| &record.span)),
        record_outcome,
    );
}

async fn take_batches(state: &mut CoordinatorState) -> Vec<Arc<PartitionBatch>> {
    let mut batches = Vec::new();
    for (partition, owned) in &state.partitions {
        if state.awaiting_position.contains(partition) {
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

async fn commit_cycle(
    myself: &ActorRef<CoordinatorMsg>,
    state: &mut CoordinatorState,
    txn_id: Uuid,
    group_metadata: ConsumerGroupMetadata,
    batches: Vec<Arc<PartitionBatch>>,
) -> Result<(), ActorProcessingErr> {
    let started = Instant::now();
    let partitions: Vec<i32> = batches.iter().map(|batch| batch.partition).collect();
    if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_BEFORE_DB_COMMIT) {
        tracing::warn!(target: COMMIT_EVENTS_TARGET, %fault, "cycle aborted before the database commit");
        end_cycle_span(batches.iter(), "aborted", Some(&fault));
        state.args.status.count_abort("injected");
        rewind(myself, state, &partitions).await;
        return Ok(());
    }

    // 1. Database first.
    let (committed, failed, fenced) = write_batches(state, txn_id, &batches).await;
    reclaim_if_still_assigned(state, &fenced);
    if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_AFTER_DB_COMMIT) {
        tracing::warn!(target: COMMIT_EVENTS_TARGET, %fault, "cycle aborted after the database commit");
        end_cycle_span(batches.iter(), "aborted", Some(&fault));
        state.args.status.count_abort("injected");
        rewind(myself, state, &partitions).await;
        return Ok(());
    }
    if !failed.is_empty() {
        let failed_batches = batches
            .iter()
            .filter(|batch| failed.contains(&batch.partition));
        let reason = format!("database write failed for partitions {failed:?}");
        end_cycle_span(
            failed_batches,
            if committed.is_empty() {
                "aborted"
            } else {
                "partly_committed"
            },
            Some(&reason),
        );
        state.args.status.count_abort("database");
        rewind(myself, state, &failed).await;
    }
    if committed.is_empty() {
        return Ok(());
    }

    // 2. Kafka second, in one transaction.
    let committed_partitions: Vec<i32> = committed.iter().map(|c| c.batch.partition).collect();
    let kafka_result = commit_to_kafka(state, txn_id, group_metadata, &committed).await;
    state.args.status.txn_closed();
    let committed_batches = || {
        committed
            .iter()
            .map(|committed_batch| &committed_batch.batch)
    };
    match kafka_result {
        Ok(()) => {
            // Kafka has these offsets now, whatever happens to the
            // bookkeeping below: rewinds in this ownership start from here.
            for committed_batch in &committed {
                let batch = &committed_batch.batch;
                if let Some(owned) = state.partitions.get_mut(&batch.partition) {
                    owned.kafka_committed_here =
                        owned.kafka_committed_here.max(Some(batch.end_offset));
                }
            }
            if failed.is_empty() {
                end_cycle_span(committed_batches(), "committed", None);
            } else {
                spans::record_outcome(
                    committed_batches()
                        .flat_map(|batch| batch.records.iter().map(|record| &record.span)),
                    "committed",
                );
            }
            if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_AFTER_KAFKA_COMMIT) {
                // Both sides committed; the partitions replay [a, b) and find
                // nothing owed. Exercises the "both landed" recovery case.
                tracing::warn!(target: COMMIT_EVENTS_TARGET, %fault, "bookkeeping skipped after the kafka commit");
                rewind(myself, state, &committed_partitions).await;
                return Ok(());
            }
            confirm_kafka_commit(state, &committed).await;
            let metrics = state.args.status.metrics();
            for committed_batch in &committed {
                let batch = &committed_batch.batch;
                if let Some(owned) = state.partitions.get(&batch.partition) {
                    let _ = owned.consumer.cast(PartitionConsumerMsg::Committed {
                        end_offset: batch.end_offset,
                    });
                }
                metrics
                    .events_committed
                    .inc_by(committed_batch.outcome.new_events);
                metrics
                    .duplicates
                    .inc_by(committed_batch.outcome.duplicates);
                for index in &committed_batch.outcome.owed_records {
                    if let RecordEffect::DeadLetter { kind, .. } = &batch.records[*index].effect {
                        state.args.status.count_dead_letter(kind.as_str());
                    }
                }
            }
            state.args.status.count_commit();
            let elapsed = started.elapsed();
            metrics.commit_duration.observe(elapsed.as_secs_f64());
            tracing::debug!(
                target: COMMIT_EVENTS_TARGET,
                %txn_id,
                partitions = ?committed_partitions,
                elapsed_ms = elapsed.as_millis() as u64,
                "cycle committed"
            );
        }
        Err(error) => {
            tracing::warn!(target: COMMIT_EVENTS_TARGET, %txn_id, %error, class = ?error.class(), "kafka transaction failed");
            end_cycle_span(committed_batches(), "aborted", Some(&error));
            state.args.status.count_abort(match error.class() {
                KafkaFailureClass::RecreateProducer => "fenced_or_fatal",
                KafkaFailureClass::AbortTransaction => "abortable",
                KafkaFailureClass::RetryCall => "retries_exhausted",
            });
            recover_producer(state, txn_id, error.class()).await?;
            rewind(myself, state, &committed_partitions).await;
        }
    }
    Ok(())
}

/// Has a database writer record the Kafka offsets just confirmed committed,
/// before the next cycle (so a rewind in that cycle sees them). Bounded in
/// time. A failure is not harmless: on a broker whose group offsets cannot
/// be read back (librdkafka's mock cluster discards them; a read can return
/// a stale offset), the stored `kafka_committed_offset` is what keeps a
/// rewind from producing committed outputs again. Within this ownership
/// `kafka_committed_here` covers it; after a restart, a failed confirmation
/// leaves the group's offsets as the only bound.
async fn confirm_kafka_commit(state: &CoordinatorState, committed: &[CommittedBatch]) {
    if let Err(fault) = failpoints::hit(failpoints::COORDINATOR_CONFIRM_KAFKA_COMMIT) {
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
                owner_epoch: state.partitions.get(&partition)?.owner_epoch?,
            })
        })
        .collect();
    if let Some(writer) = ActorNames::lookup::<DbWriterMsg>(&state.args.names.db_writer(0)) {
        let confirmed = writer
            .call(
                |reply| DbWriterMsg::ConfirmKafkaCommit(confirmations, reply),
                Some(Duration::from_secs(2)),
            )
            .await;
        if !matches!(confirmed, Ok(CallResult::Success(()))) {
            tracing::debug!("confirmed kafka offsets not recorded in time");
        }
    }
}

/// Why a partition's batch did not commit to the database.
#[derive(Debug, thiserror::Error)]
enum BatchWriteFailure {
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

/// Commits every batch through the writer pool, in parallel; returns the
/// committed ones, the partitions that failed, and among those the ones
/// whose write was fenced by a newer claim.
async fn write_batches(
    state: &CoordinatorState,
    txn_id: Uuid,
    batches: &[Arc<PartitionBatch>],
) -> (Vec<CommittedBatch>, Vec<i32>, Vec<i32>) {
    let settings = &state.args.settings;
    let writer_timeout = Duration::from_millis(
        settings
            .db_statement_timeout_ms
            .saturating_mul(u64::from(settings.db_retry_attempts) + 1)
            .saturating_add(5_000),
    );
    let writes = batches.iter().map(|batch| {
        let owner_epoch = state
            .partitions
            .get(&batch.partition)
            .and_then(|owned| owned.owner_epoch);
        let index = usize::try_from(batch.partition).unwrap_or(0) % settings.db_writers;
        let writer = ActorNames::lookup::<DbWriterMsg>(&state.args.names.db_writer(index));
        let request = owner_epoch.map(|owner_epoch| WriteRequest {
            group_id: settings.group_id.clone(),
            topic: settings.input_topic.clone(),
            owner_epoch,
            txn_id,
            batch: Arc::clone(batch),
            parent: tracing::Span::current(),
        });
        async move {
            let result = match (writer, request) {
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
            };
            (Arc::clone(batch), result)
        }
    });
    let results = join_all(writes).await;
    let mut committed = Vec::new();
    let mut failed = Vec::new();
    let mut fenced = Vec::new();
    for (batch, result) in results {
        match result {
            Ok(written) => committed.push(CommittedBatch {
                batch: written.batch,
                outcome: written.outcome,
            }),
            Err(error) => {
                tracing::warn!(target: COMMIT_EVENTS_TARGET, partition = batch.partition, %txn_id, %error, "database write failed");
                if matches!(error, BatchWriteFailure::Store(StoreError::Fenced { .. })) {
                    fenced.push(batch.partition);
                }
                failed.push(batch.partition);
            }
        }
    }
    (committed, failed, fenced)
}

/// Partitions whose write was fenced by a newer claim: if Kafka still
/// assigns them to this instance, that claim was stale (an instance that
/// has since lost them, or a zombie) and this one claims them again at its
/// rewind; otherwise their revocation is on its way and removes them.
fn reclaim_if_still_assigned(state: &mut CoordinatorState, fenced: &[i32]) {
    for partition in fenced {
        let assigned = is_assigned(&state.args, *partition);
        if let Some(owned) = state.partitions.get_mut(partition)
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

/// Whether the input consumer's assignment holds `partition` now.
fn is_assigned(args: &CoordinatorArgs, partition: i32) -> bool {
    args.consumer.assignment().is_ok_and(|list| {
        list.find_partition(&args.settings.input_topic, partition)
            .is_some()
    })
}

/// The first of the cycle's partitions Kafka no longer assigns here.
fn first_unassigned(args: &CoordinatorArgs, committed: &[CommittedBatch]) -> Option<i32> {
    committed
        .iter()
        .map(|committed_batch| committed_batch.batch.partition)
        .find(|partition| !is_assigned(args, *partition))
}

/// Runs the Kafka transaction of a cycle.
async fn commit_to_kafka(
    state: &CoordinatorState,
    txn_id: Uuid,
    group_metadata: ConsumerGroupMetadata,
    committed: &[CommittedBatch],
) -> Result<(), KafkaTxnError> {
    let Some(producer) = state.producer.clone() else {
        return Err(KafkaTxnError::TaskLost {
            operation: "begin_transaction",
            reason: "no producer".to_owned(),
        });
    };
    let settings = &state.args.settings;
    let opened = Instant::now();
    state.args.status.txn_opened();
    producer
        .begin_transaction()
        .map_err(|source| KafkaTxnError::Client {
            operation: "begin_transaction",
            source,
        })?;

    let txn_id_text = txn_id.to_string();
    let mut dead_letters = Vec::new();
    let mut outputs = Vec::new();
    for committed_batch in committed {
        for index in &committed_batch.outcome.owed_records {
            let record = &committed_batch.batch.records[*index];
            match &record.effect {
                RecordEffect::Event {
                    event,
                    output_value,
                } => {
                    outputs.push((
                        event.campaign_id.as_str(),
                        output_value.as_slice(),
                        record.trace.to_header(),
                    ));
                }
                RecordEffect::DeadLetter { kind, reason } => dead_letters.push(DeadLetter {
                    partition: record.partition,
                    offset: record.offset,
                    kind: *kind,
                    reason: reason.clone(),
                    key: record.key.clone(),
                    payload: record.payload.clone(),
                    trace: record.trace,
                }),
            }
        }
    }
    let output_topic = settings.output_topic.as_str();
    let records = outputs.iter().map(|(campaign_id, value, traceparent)| {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: TXN_ID_HEADER,
                value: Some(txn_id_text.as_str()),
            })
            .insert(Header {
                key: TRACEPARENT_HEADER,
                value: Some(traceparent.as_str()),
            });
        FutureRecord::<[u8], [u8]>::to(output_topic)
            .key(campaign_id.as_bytes())
            .payload(value)
            .headers(headers)
    });
    let produce_span = tracing::info_span!(
        "kafka.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.name = "send",
        messaging.destination.name = output_topic,
        messaging.batch.message_count = outputs.len(),
        %txn_id
    );
    in_span(
        produce_span,
        send_all(
            &producer,
            output_topic,
            records,
            state.args.settings.kafka_call_timeout(),
        ),
    )
    .await?;
    if !dead_letters.is_empty() {
        forward_dead_letters(state, &producer, txn_id, dead_letters).await?;
    }

    let mut offsets = TopicPartitionList::new();
    for committed_batch in committed {
        // Plain offsets, without leader epochs (see the design notes).
        offsets
            .add_partition_offset(
                &settings.input_topic,
                committed_batch.batch.partition,
                Offset::Offset(committed_batch.batch.end_offset),
            )
            .map_err(|source| KafkaTxnError::Client {
                operation: "send_offsets_to_transaction",
                source,
            })?;
    }
    // A partition revoked while the cycle ran is never committed here: its
    // new owner may already have read the group offset.
    if let Some(partition) = first_unassigned(&state.args, committed) {
        return Err(KafkaTxnError::PartitionRevoked {
            operation: "send_offsets_to_transaction",
            partition,
        });
    }
    let timeout = settings.kafka_call_timeout();
    let offsets_span = tracing::info_span!(
        "kafka.send_offsets",
        messaging.system = "kafka",
        messaging.destination.name = %settings.input_topic,
        messaging.consumer.group.name = %settings.group_id,
        partitions = committed.len(),
        %txn_id
    );
    in_span(
        offsets_span,
        retry_blocking("send_offsets_to_transaction", &producer, move |producer| {
            producer.send_offsets_to_transaction(&offsets, &group_metadata, timeout)
        }),
    )
    .await?;
    failpoints::hit(failpoints::COORDINATOR_DURING_KAFKA_COMMIT)?;
    if let Some(partition) = first_unassigned(&state.args, committed) {
        return Err(KafkaTxnError::PartitionRevoked {
            operation: "commit_transaction",
            partition,
        });
    }
    let commit_span = tracing::info_span!(
        "kafka.commit_transaction",
        messaging.system = "kafka",
        %txn_id
    );
    in_span(
        commit_span,
        retry_blocking("commit_transaction", &producer, move |producer| {
            producer.commit_transaction(timeout)
        }),
    )
    .await?;
    let open_for = opened.elapsed();
    if open_for > Duration::from_millis(settings.open_txn_warn_ms) {
        tracing::warn!(%txn_id, open_ms = open_for.as_millis() as u64, "transaction was open too long");
    }
    Ok(())
}

async fn forward_dead_letters(
    state: &CoordinatorState,
    producer: &FutureProducer,
    txn_id: Uuid,
    dead_letters: Vec<DeadLetter>,
) -> Result<(), KafkaTxnError> {
    let forwarder = ActorNames::lookup::<DlqForwarderMsg>(&state.args.names.dlq_forwarder())
        .ok_or(KafkaTxnError::TaskLost {
            operation: "dlq forward",
            reason: "dlq forwarder is restarting".to_owned(),
        })?;
    let request = ForwardRequest {
        producer: producer.clone(),
        parent: tracing::Span::current(),
        txn_id,
        source_topic: state.args.settings.input_topic.clone(),
        dead_letters,
        delivery_timeout: state.args.settings.kafka_call_timeout(),
    };
    let timeout = state.args.settings.kafka_call_timeout() * 2;
    match forwarder
        .call(
            |reply| DlqForwarderMsg::Forward(request, reply),
            Some(timeout),
        )
        .await
    {
        Ok(CallResult::Success(result)) => result.map(|_| ()),
        Ok(CallResult::Timeout) => Err(KafkaTxnError::TaskLost {
            operation: "dlq forward",
            reason: "timed out".to_owned(),
        }),
        Ok(CallResult::SenderError) | Err(_) => Err(KafkaTxnError::TaskLost {
            operation: "dlq forward",
            reason: "dlq forwarder died".to_owned(),
        }),
    }
}

/// Runs a blocking transactional call on a blocking thread, retrying it while
/// its error is retriable.
async fn retry_blocking<F>(
    operation: &'static str,
    producer: &FutureProducer,
    call: F,
) -> Result<(), KafkaTxnError>
where
    F: Fn(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let mut attempt = 1;
    loop {
        let producer = producer.clone();
        let call = Arc::clone(&call);
        let result = tokio::task::spawn_blocking(move || call(&producer))
            .await
            .map_err(|error| KafkaTxnError::TaskLost {
                operation,
                reason: error.to_string(),
            })?;
        match result {
            Ok(()) => return Ok(()),
            Err(source) => {
                let error = KafkaTxnError::Client { operation, source };
                if error.class() == KafkaFailureClass::RetryCall && attempt < KAFKA_CALL_ATTEMPTS {
                    tracing::warn!(operation, attempt, %error, "retriable kafka error; retrying the call");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    attempt += 1;
                    continue;
                }
                return Err(error);
            }
        }
    }
}

/// The first owned partition claimed since by a newer incarnation of this
/// very instance (same instance id, hence same `transactional.id`): proof
/// that this incarnation is a zombie. A claim by another instance proves
/// nothing of the kind (a rebalance moved the partition), and neither does
/// a database that cannot be read: `None`.
async fn partition_claimed_by_a_newer_incarnation(state: &CoordinatorState) -> Option<i32> {
    let settings = &state.args.settings;
    let instance_id = settings.instance_id();
    for (partition, owned) in &state.partitions {
        let Some(epoch) = owned.owner_epoch else {
            continue;
        };
        let Ok(Some(owner)) = state
            .args
            .store
            .partition_owner(&settings.group_id, &settings.input_topic, *partition)
            .await
        else {
            continue;
        };
        if owner.owner_epoch > epoch && owner.owner_instance.as_deref() == Some(&instance_id) {
            return Some(*partition);
        }
    }
    None
}

/// After a failed transaction: abort it, or recreate the producer when it
/// is unusable. Fails the actor (for its supervisor to restart) if even a
/// new producer cannot be made.
async fn recover_producer(
    state: &mut CoordinatorState,
    txn_id: Uuid,
    class: KafkaFailureClass,
) -> Result<(), ActorProcessingErr> {
    if class != KafkaFailureClass::RecreateProducer
        && let Some(producer) = state.producer.clone()
    {
        let timeout = state.args.settings.kafka_call_timeout();
        let abort_span = tracing::info_span!(
            "kafka.abort_transaction",
            messaging.system = "kafka",
            %txn_id
        );
        match in_span(
            abort_span,
            retry_blocking("abort_transaction", &producer, move |producer| {
                producer.abort_transaction(timeout)
            }),
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(error) => tracing::warn!(%error, "abort failed; recreating the producer"),
        }
    }
    state.producer = None;
    state.args.status.set_coordinator_ready(false);
    if let Some(partition) = partition_claimed_by_a_newer_incarnation(state).await {
        // A newer incarnation with our transactional.id fenced us and
        // claimed our partitions: we are the zombie. Re-initialising would
        // fence it in turn; stop instead.
        let reason = format!(
            "fenced: partition {partition} was claimed by a newer incarnation of instance {}",
            state.args.settings.instance_id()
        );
        tracing::error!(%reason, "stopping this incarnation");
        state.args.status.fail_fatally(reason.clone());
        return Err(reason.into());
    }
    let init_span = tracing::info_span!(
        "kafka.init_transactions",
        messaging.system = "kafka",
        %txn_id
    );
    let producer = in_span(init_span, new_producer(&state.args.settings)).await?;
    state.producer = Some(producer);
    state.args.status.set_coordinator_ready(true);
    tracing::info!("transactional producer recreated");
    Ok(())
}

impl std::fmt::Debug for CoordinatorArgs {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CoordinatorArgs")
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CoordinatorState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CoordinatorState")
            .finish_non_exhaustive()
    }
}
