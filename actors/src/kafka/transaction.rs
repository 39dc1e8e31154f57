//! The steps of one Kafka transaction (begin, produce, send offsets,
//! commit, abort), each in its span and with its retries.
//!
//! Guarantees:
//! - a blocking transactional call runs on a blocking thread and is retried
//!   only while its error is retriable, at most [`KAFKA_CALL_ATTEMPTS`]
//!   times, with a growing pause;
//! - each step runs inside its span (`kafka.produce`, `kafka.send_offsets`,
//!   `kafka.commit_transaction`, `kafka.abort_transaction`,
//!   `kafka.init_transactions`), marked failed when the step fails;
//! - producing returns only once every record was acknowledged (see
//!   [`crate::kafka::send`]), so the commit has nothing left to flush.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::producer::Producer;

use crate::kafka::delivery::OutputProducer;
use uuid::Uuid;

use crate::kafka::blocking_call::{CALL_LIMIT_MARGIN, bounded_blocking};
use crate::kafka::error::{KafkaFailureClass, KafkaTxnError};
use crate::kafka::records::SendableRecord;
use crate::kafka::send::send_all;
use crate::telemetry::spans::in_span;

/// How many times a retriable Kafka call is tried.
pub const KAFKA_CALL_ATTEMPTS: u32 = 5;

/// One open transaction of the transactional producer.
pub struct KafkaTransaction<'p> {
    producer: &'p OutputProducer,
    txn_id: Uuid,
    timeout: Duration,
}

impl<'p> KafkaTransaction<'p> {
    /// Begins the transaction of cycle `txn_id`; `timeout` bounds each call
    /// of it (and the acknowledgements of what it produces). librdkafka's
    /// `begin_transaction` has no timeout of its own: it runs on the
    /// blocking pool, bounded like every other call.
    pub async fn begin(
        producer: &'p OutputProducer,
        txn_id: Uuid,
        timeout: Duration,
    ) -> Result<KafkaTransaction<'p>, KafkaTxnError> {
        let beginning = producer.clone();
        bounded_blocking(
            "begin_transaction",
            timeout + CALL_LIMIT_MARGIN,
            move || beginning.begin_transaction(),
        )
        .await?
        .map_err(|source| KafkaTxnError::Client {
            operation: "begin_transaction",
            source,
        })?;
        Ok(KafkaTransaction {
            producer,
            txn_id,
            timeout,
        })
    }

    /// The producer, for a step run by another actor (the DLQ forwarder).
    pub fn producer(&self) -> &'p OutputProducer {
        self.producer
    }

    /// Produces `count` records to `topic` in the transaction and waits for
    /// every acknowledgement (span `kafka.produce`).
    pub async fn produce<R: SendableRecord>(
        &self,
        topic: &str,
        count: usize,
        records: impl Iterator<Item = R>,
    ) -> Result<usize, KafkaTxnError> {
        produce(
            self.producer,
            self.txn_id,
            topic,
            count,
            records,
            self.timeout,
        )
        .await
    }

    /// Sends the consumed `offsets` of `topic` by group `group_id` (as of
    /// `group_metadata`) to the transaction (span `kafka.send_offsets`).
    pub async fn send_offsets(
        &self,
        offsets: TopicPartitionList,
        group_metadata: ConsumerGroupMetadata,
        topic: &str,
        group_id: &str,
    ) -> Result<(), KafkaTxnError> {
        let txn_id = self.txn_id;
        let timeout = self.timeout;
        let span = tracing::info_span!(
            "kafka.send_offsets",
            messaging.system = "kafka",
            messaging.destination.name = %topic,
            messaging.consumer.group.name = %group_id,
            partitions = offsets.count(),
            %txn_id
        );
        in_span(
            span,
            retry_blocking(
                "send_offsets_to_transaction",
                self.producer,
                timeout,
                move |producer| {
                    producer.send_offsets_to_transaction(&offsets, &group_metadata, timeout)
                },
            ),
        )
        .await
    }

    /// Commits the transaction (span `kafka.commit_transaction`).
    pub async fn commit(self) -> Result<(), KafkaTxnError> {
        let txn_id = self.txn_id;
        let timeout = self.timeout;
        let span = tracing::info_span!(
            "kafka.commit_transaction",
            messaging.system = "kafka",
            %txn_id
        );
        in_span(
            span,
            retry_blocking(
                "commit_transaction",
                self.producer,
                timeout,
                move |producer| producer.commit_transaction(timeout),
            ),
        )
        .await
    }
}

/// Produces `count` records of cycle `txn_id` to `topic` (in the open
/// transaction, if the producer has one) and waits for every
/// acknowledgement, at most `timeout` in all (span `kafka.produce`).
pub async fn produce<R: SendableRecord>(
    producer: &OutputProducer,
    txn_id: Uuid,
    topic: &str,
    count: usize,
    records: impl Iterator<Item = R>,
    timeout: Duration,
) -> Result<usize, KafkaTxnError> {
    let span = tracing::info_span!(
        "kafka.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.name = "send",
        messaging.destination.name = topic,
        messaging.batch.message_count = count,
        %txn_id
    );
    in_span(span, send_all(producer, topic, records, timeout)).await
}

impl std::fmt::Debug for KafkaTransaction<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaTransaction")
            .field("txn_id", &self.txn_id)
            .finish_non_exhaustive()
    }
}

/// Aborts the open transaction of cycle `txn_id` (span
/// `kafka.abort_transaction`).
pub async fn abort(
    producer: &OutputProducer,
    txn_id: Uuid,
    timeout: Duration,
) -> Result<(), KafkaTxnError> {
    let span = tracing::info_span!(
        "kafka.abort_transaction",
        messaging.system = "kafka",
        %txn_id
    );
    in_span(
        span,
        retry_blocking("abort_transaction", producer, timeout, move |producer| {
            producer.abort_transaction(timeout)
        }),
    )
    .await
}

/// The span of a producer's recreation after cycle `txn_id` failed.
pub fn init_transactions_span(txn_id: Uuid) -> tracing::Span {
    tracing::info_span!(
        "kafka.init_transactions",
        messaging.system = "kafka",
        %txn_id
    )
}

/// Runs a blocking transactional call on a blocking thread, retrying it while
/// its error is retriable. `timeout` is the call's own; each attempt is
/// waited for at most that plus [`CALL_LIMIT_MARGIN`] (see
/// [`crate::kafka::blocking_call`]).
pub async fn retry_blocking<F>(
    operation: &'static str,
    producer: &OutputProducer,
    timeout: Duration,
    call: F,
) -> Result<(), KafkaTxnError>
where
    F: Fn(&OutputProducer) -> rdkafka::error::KafkaResult<()> + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let mut attempt = 1;
    loop {
        let producer = producer.clone();
        let call = Arc::clone(&call);
        let result = bounded_blocking(operation, timeout + CALL_LIMIT_MARGIN, move || {
            call(&producer)
        })
        .await?;
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
