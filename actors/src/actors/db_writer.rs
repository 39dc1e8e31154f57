//! A database writer actor of the writer pool: commits one partition batch
//! per database transaction, retrying transient errors with exponential
//! backoff and jitter, and reports every outcome to the circuit breaker.
//!
//! Guarantees: a write either commits whole or not at all (see
//! [`crate::store`]); retries are bounded by `db_retry_attempts`; a fenced
//! write is never retried. Records the database refuses on their own become
//! `processing` dead letters, round after round until the batch commits
//! (each round removes at least one), so a poison record never stalls its
//! partition and never counts against the database's health: only errors of
//! the database itself (not a fence, not a refused record) are reported to
//! the circuit breaker as failures. The actor holds no state across messages, so a
//! restart loses nothing. Each write runs in one `db.commit_batch` span, a
//! child of the commit cycle's span, with every retry as an event and a
//! failure as its status.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::Rng;

use crate::messages::circuit_breaker::CircuitBreakerMsg;
use crate::messages::db_writer::{DbWriterMsg, WriteRequest, WrittenBatch};
use crate::messages::names::ActorNames;
use crate::model::ad_event::DeadLetterKind;
use crate::model::record::RecordEffect;
use crate::store::Store;
use crate::store::error::StoreError;
use crate::store::types::BatchWriteOutcome;
use crate::telemetry::spans::in_span;

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
        }
        Ok(())
    }
}

/// Writes the batch; while the database refuses it for a data error, asks
/// the store which event records it refuses on their own (each written alone
/// by the batch's own statements, in-batch repeats included), turns exactly
/// those into `processing` dead letters and writes again, so a poison record
/// never stalls its partition. Every round removes at least one event, so
/// this ends: with a commit, with the data error when the probe names no
/// event (the batch is refused as a whole, not any one record), or with the
/// probe's own error when it could not run (the database's fault). A batch
/// whose events are all refused commits as dead letters.
async fn write_isolating_poison(
    state: &DbWriterArgs,
    request: WriteRequest,
) -> Result<WrittenBatch, StoreError> {
    let mut request = request;
    let mut rounds = 0_u32;
    loop {
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
        rounds += 1;
        let probe = state
            .store
            .find_unstorable_events(
                &request.group_id,
                &request.topic,
                request.txn_id,
                &request.batch,
            )
            .await;
        report_to_breaker(state, &probe);
        let unstorable = probe?;
        if unstorable.is_empty() {
            tracing::error!(
                partition = request.batch.partition,
                start_offset = request.batch.start_offset,
                txn_id = %request.txn_id,
                rounds,
                %error,
                "the database refuses the batch but no single event of it; not isolating"
            );
            return Err(error);
        }
        let mut rewritten = (*request.batch).clone();
        for (index, reason) in unstorable {
            let Some(record) = rewritten.records.get_mut(index) else {
                continue;
            };
            tracing::warn!(
                partition = record.partition,
                offset = record.offset,
                txn_id = %request.txn_id,
                rounds,
                %reason,
                "record refused by the database; sending it to the DLQ as `processing`"
            );
            record.effect = RecordEffect::DeadLetter {
                kind: DeadLetterKind::Processing,
                reason: format!("database refused the event: {reason}"),
            };
        }
        request = WriteRequest {
            batch: Arc::new(rewritten),
            ..request
        };
    }
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

/// Tells the breaker how the database did. A fence or a refused record
/// (a data error) says nothing about the database's health: a poison record
/// must never open the breaker.
fn report_to_breaker<T>(state: &DbWriterArgs, result: &Result<T, StoreError>) {
    let Some(message) = breaker_verdict(result) else {
        return;
    };
    state.names.tell_circuit_breaker(message);
}

/// What a store result tells the circuit breaker, if anything.
fn breaker_verdict<T>(result: &Result<T, StoreError>) -> Option<CircuitBreakerMsg> {
    match result {
        Ok(_) => Some(CircuitBreakerMsg::DatabaseSucceeded),
        Err(StoreError::Fenced { .. }) => None,
        Err(error) if error.is_data_error() => None,
        Err(_) => Some(CircuitBreakerMsg::DatabaseFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data error from a real (in-memory SQLite) CHECK violation.
    async fn data_error() -> StoreError {
        use sqlx::Connection;
        let mut connection = sqlx::sqlite::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory sqlite");
        sqlx::raw_sql("CREATE TABLE t (x INTEGER NOT NULL CHECK (x >= 0))")
            .execute(&mut connection)
            .await
            .expect("create");
        let error = sqlx::raw_sql("INSERT INTO t VALUES (-1)")
            .execute(&mut connection)
            .await
            .expect_err("violates the check");
        StoreError::from(error)
    }

    #[tokio::test]
    async fn only_the_databases_own_failures_reach_the_breaker() {
        let refused = data_error().await;
        assert!(refused.is_data_error(), "{refused}");
        assert!(breaker_verdict::<()>(&Err(refused)).is_none());
        let fenced = StoreError::Fenced {
            topic: "t".to_owned(),
            partition: 0,
            epoch: 1,
        };
        assert!(breaker_verdict::<()>(&Err(fenced)).is_none());
        assert!(matches!(
            breaker_verdict::<()>(&Err(StoreError::from(sqlx::Error::PoolTimedOut))),
            Some(CircuitBreakerMsg::DatabaseFailed)
        ));
        assert!(matches!(
            breaker_verdict(&Ok(())),
            Some(CircuitBreakerMsg::DatabaseSucceeded)
        ));
    }
}
