//! A database writer actor of the writer pool: commits one partition batch
//! per database transaction, retrying transient errors with exponential
//! backoff and jitter, and reports every outcome to the circuit breaker.
//!
//! Guarantees: a write either commits whole or not at all (see
//! [`crate::store`]); retries are bounded by `db_retry_attempts`; a fenced
//! write is never retried. The actor holds no state across messages, so a
//! restart loses nothing.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;
use tracing::Instrument;
use uuid::Uuid;

use crate::actor_names::ActorNames;
use crate::circuit_breaker::CircuitBreakerMsg;
use crate::partition_batch::PartitionBatch;
use crate::store::{BatchWriteOutcome, Store};
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
}

/// Messages of a database writer.
#[derive(Debug)]
pub enum DbWriterMsg {
    /// commit a batch and reply with the outcome
    Write(
        WriteRequest,
        RpcReplyPort<Result<BatchWriteOutcome, StoreError>>,
    ),
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
        let DbWriterMsg::Write(request, reply) = message;
        let outcome = write_with_retries(state, &request).await;
        // The coordinator may have given up waiting; the write is idempotent,
        // so a reply nobody reads is harmless.
        let _ = reply.send(outcome);
        Ok(())
    }
}

async fn write_with_retries(
    state: &DbWriterArgs,
    request: &WriteRequest,
) -> Result<BatchWriteOutcome, StoreError> {
    let mut attempt = 1;
    loop {
        let span = tracing::info_span!(
            "db.write_batch",
            db.system.name = "postgresql",
            db.operation.name = "commit_batch",
            db.collection.name = "ad_events",
            messaging.destination.partition.id = request.batch.partition,
            txn_id = %request.txn_id,
            attempt
        );
        let result = state
            .store
            .write_batch(
                &request.group_id,
                &request.topic,
                request.owner_epoch,
                request.txn_id,
                &request.batch,
            )
            .instrument(span)
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
        Ok(_) => CircuitBreakerMsg::WriteSucceeded,
        // A fence says nothing about the database's health.
        Err(StoreError::Fenced { .. }) => return,
        Err(_) => CircuitBreakerMsg::WriteFailed,
    };
    if let Some(breaker) = ActorNames::lookup::<CircuitBreakerMsg>(&state.names.circuit_breaker()) {
        let _ = breaker.cast(message);
    }
}
