//! Producing a set of records inside the open transaction and waiting for
//! every acknowledgement.
//!
//! Guarantees: returns `Ok(n)` only when all `n` records were acknowledged
//! by the broker (so `commit_transaction` has nothing left to flush: the
//! design notes measured ~100 ms per commit otherwise); a full local queue
//! is waited out, never dropped; the first failure is returned as soon as
//! it is reported; the wait for acknowledgements is bounded by
//! `delivery_timeout` (seen on the real cluster: with the transaction
//! coordinator's broker SIGKILLed, deliveries of the open transaction never
//! completed and the cycle hung for minutes). The acknowledgements are
//! counted on one [`DeliveryTally`] per send, not a future per record.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseRecord;

use crate::kafka::delivery::{DeliveryShortfall, DeliveryTally, OutputProducer};
use crate::kafka::error::KafkaTxnError;
use crate::kafka::records::SendableRecord;

/// How long a send waits before it offers a record again to a full local
/// queue.
const FULL_QUEUE_PAUSE: Duration = Duration::from_millis(2);

/// Sends every record and waits for every acknowledgement, at most
/// `delivery_timeout` in all.
pub async fn send_all<R: SendableRecord>(
    producer: &OutputProducer,
    topic: &str,
    records: impl Iterator<Item = R>,
    delivery_timeout: Duration,
) -> Result<usize, KafkaTxnError> {
    let deadline = tokio::time::Instant::now() + delivery_timeout;
    let tally = DeliveryTally::new();
    let mut sent = 0usize;
    let mut scratch = Vec::new();
    for record in records {
        loop {
            // A failed delivery dooms the send: stop producing now.
            if let Some(source) = tally.failure() {
                return Err(shortfall(topic, DeliveryShortfall::Failed(source)));
            }
            // librdkafka copies the record when it accepts it, so the
            // scratch buffer is free again once `send` returns; a record
            // refused for a full queue is built again.
            let built = record.future_record(topic, &mut scratch);
            tally.expect_one();
            let refused = producer.send(BaseRecord {
                topic: built.topic,
                partition: built.partition,
                payload: built.payload,
                key: built.key,
                timestamp: built.timestamp,
                headers: built.headers,
                delivery_opaque: Arc::clone(&tally),
            });
            let Err((error, _record)) = refused else {
                sent += 1;
                break;
            };
            tally.refused();
            if error != KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                return Err(KafkaTxnError::Delivery {
                    topic: topic.to_owned(),
                    source: error,
                });
            }
            // The queue drains as acknowledgements arrive; the deadline
            // bounds the wait.
            if tokio::time::Instant::now() >= deadline {
                return Err(KafkaTxnError::DeliveryTimedOut {
                    topic: topic.to_owned(),
                });
            }
            tokio::time::sleep(FULL_QUEUE_PAUSE).await;
        }
    }
    tally
        .acknowledged_by(deadline)
        .await
        .map_err(|failure| shortfall(topic, failure))?;
    Ok(sent)
}

fn shortfall(topic: &str, failure: DeliveryShortfall) -> KafkaTxnError {
    match failure {
        DeliveryShortfall::Failed(source) => KafkaTxnError::Delivery {
            topic: topic.to_owned(),
            source,
        },
        DeliveryShortfall::TimedOut { outstanding } => {
            tracing::warn!(topic, outstanding, "deliveries unreported at the deadline");
            KafkaTxnError::DeliveryTimedOut {
                topic: topic.to_owned(),
            }
        }
    }
}
