//! A database writer actor of the writer pool: commits one partition batch
//! per database transaction, retrying transient errors with exponential
//! backoff and jitter, and reports every outcome to the circuit breaker.
//!
//! Guarantees: a write either commits whole or not at all (see
//! [`crate::store`]); retries are bounded by `db_retry_attempts`; a fenced
//! write is never retried. The actor holds no state across messages, so a
//! restart loses nothing. Each write runs in one `db.commit_batch` span, a
//! child of the commit cycle's span, with every retry as an event and a
//! failure as its status.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;
use uuid::Uuid;

use crate::actor_names::ActorNames;
use crate::ad_event::DeadLetterKind;
use crate::circuit_breaker::CircuitBreakerMsg;
use crate::partition_batch::PartitionBatch;
use crate::processed_record::RecordEffect;
use crate::spans::in_span;
use crate::store::{BatchWriteOutcome, KafkaCommitConfirmation, Store};
use crate::store_error::StoreError;

/// One partition batch to commit.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// consumer group
    pub group_id: String,
    /// input topic
    pub topic: String,
    /// owner epoch of the partition held by this instance
    pub owner_epoch: i64,
    /// the commit cycle
    pub txn_id: Uuid,
    /// the batch
    pub batch: Arc<PartitionBatch>,
    /// the commit cycle's span, parent of the write's span
    pub parent: tracing::Span,
}

/// Messages of a database writer.
#[derive(Debug)]
pub enum DbWriterMsg {
    /// commit a batch and reply with the outcome
    Write(WriteRequest, RpcReplyPort<Result<WrittenBatch, StoreError>>),
    /// record Kafka offsets confirmed committed (bookkeeping)
    ConfirmKafkaCommit(Vec<KafkaCommitConfirmation>, RpcReplyPort<()>),
}

/// A committed batch: the one requested, or a copy in which the events the
/// database refuses became `processing` dead letters.
#[derive(Debug, Clone)]
pub struct WrittenBatch {
    /// the batch as committed
    pub batch: Arc<PartitionBatch>,
    /// what the commit did and what Kafka still owes
    pub outcome: BatchWriteOutcome,
}

/// Start arguments.
#[derive(Debug, Clone)]
pub struct DbWriterArgs {
    /// the store
    pub store: Store,
    /// actor names (to find the breaker)
    pub names: ActorNames,
    /// attempts while errors are transient
    pub retry_attempts: u32,
    /// first backoff
    pub retry_backoff: Duration,
    /// consumer group (for offset bookkeeping)
    pub group_id: String,
    /// input topic (for offset bookkeeping)
    pub topic: String,
}

/// The database writer actor.
#[derive(Debug)]
pub struct DbWriter;

impl Actor for DbWriter {
    type Msg = DbWriterMsg;
    type State = DbWriterArgs;
    type Arguments = DbWriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DbWriterMsg::Write(request, reply) => {
                let span = tracing::info_span!(
                    parent: &request.parent,
                    "db.commit_batch",
                    otel.kind = "client",
                    db.system.name = state.store.system_name(),
                    db.operation.name = "BATCH",
                    db.collection.name = "ad_events",
                    messaging.destination.partition.id = request.batch.partition,
                    onceflow.batch.start_offset = request.batch.start_offset,
                    onceflow.batch.end_offset = request.batch.end_offset,
                    onceflow.batch.records = request.batch.records.len(),
                    onceflow.new_events = tracing::field::Empty,
                    onceflow.duplicates = tracing::field::Empty,
                    txn_id = %request.txn_id,
                );
                let outcome = in_span(span.clone(), write_isolating_poison(state, request)).await;
                if let Ok(written) = &outcome {
                    span.record("onceflow.new_events", written.outcome.new_events);
                    span.record("onceflow.duplicates", written.outcome.duplicates);
                }
                // The coordinator may have given up waiting; the write is
                // idempotent, so a reply nobody reads is harmless.
                let _ = reply.send(outcome);
            }
            DbWriterMsg::ConfirmKafkaCommit(confirmations, reply) => {
                if let Err(error) = state
                    .store
                    .confirm_kafka_commit(&state.group_id, &state.topic, &confirmations)
                    .await
                {
                    tracing::warn!(%error, "could not record the confirmed kafka offsets; the group's offsets still hold them");
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

/// Writes the batch; if the database refuses some of its rows, turns
/// exactly those into `processing` dead letters and writes again, so a
/// poison record never stalls its partition. If every event is refused the
/// error stands: that is the database's problem, not the records'.
async fn write_isolating_poison(
    state: &DbWriterArgs,
    request: WriteRequest,
) -> Result<WrittenBatch, StoreError> {
    let error = match write_with_retries(state, &request).await {
        Ok(outcome) => {
            return Ok(WrittenBatch {
                batch: request.batch,
                outcome,
            });
        }
        Err(error) if error.is_data_error() => error,
        Err(error) => return Err(error),
    };
    let unstorable = state
        .store
        .find_unstorable_events(&request.topic, request.txn_id, &request.batch)
        .await?;
    let events = request
        .batch
        .records
        .iter()
        .filter(|record| matches!(record.effect, RecordEffect::Event { .. }))
        .count();
    if unstorable.is_empty() || unstorable.len() >= events {
        return Err(error);
    }
    let mut rewritten = (*request.batch).clone();
    for (index, reason) in unstorable {
        tracing::warn!(
            partition = rewritten.partition,
            offset = rewritten.records[index].offset,
            %reason,
            "record refused by the database; sending it to the DLQ as `processing`"
        );
        rewritten.records[index].effect = RecordEffect::DeadLetter {
            kind: DeadLetterKind::Processing,
            reason: format!("database refused the event: {reason}"),
        };
    }
    let request = WriteRequest {
        batch: Arc::new(rewritten),
        ..request
    };
    let outcome = write_with_retries(state, &request).await?;
    Ok(WrittenBatch {
        batch: request.batch,
        outcome,
    })
}

async fn write_with_retries(
    state: &DbWriterArgs,
    request: &WriteRequest,
) -> Result<BatchWriteOutcome, StoreError> {
    let mut attempt = 1;
    loop {
        let result = state
            .store
            .write_batch(
                &request.group_id,
                &request.topic,
                request.owner_epoch,
                request.txn_id,
                &request.batch,
            )
            .await;
        report_to_breaker(state, &result);
        match result {
            Err(error) if error.is_retriable() && attempt < state.retry_attempts => {
                let base = state
                    .retry_backoff
                    .saturating_mul(1 << (attempt - 1).min(10));
                let jitter = rand::rng().random_range(0..=base.as_millis().max(1) as u64);
                tracing::warn!(
                    partition = request.batch.partition,
                    txn_id = %request.txn_id,
                    attempt,
                    %error,
                    "transient database error; retrying"
                );
                tokio::time::sleep(base + Duration::from_millis(jitter)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn report_to_breaker(state: &DbWriterArgs, result: &Result<BatchWriteOutcome, StoreError>) {
    let message = match result {
        Ok(_) => CircuitBreakerMsg::DatabaseSucceeded,
        // A fence says nothing about the database's health.
        Err(StoreError::Fenced { .. }) => return,
        Err(_) => CircuitBreakerMsg::DatabaseFailed,
    };
    if let Some(breaker) = ActorNames::lookup::<CircuitBreakerMsg>(&state.names.circuit_breaker()) {
        let _ = breaker.cast(message);
    }
}
