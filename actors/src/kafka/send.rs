//! Producing a set of records inside the open transaction and waiting for
//! every acknowledgement.
//!
//! Guarantees: returns `Ok(n)` only when all `n` records were acknowledged
//! by the broker (so `commit_transaction` has nothing left to flush: the
//! design notes measured ~100 ms per commit otherwise); a full local queue
//! is waited out, never dropped; the first failure is returned; the wait for
//! acknowledgements is bounded by `delivery_timeout` (seen on the real
//! cluster: with the transaction coordinator's broker SIGKILLed, deliveries
//! of the open transaction never completed and the cycle hung for minutes).

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer};

use crate::kafka::error::KafkaTxnError;
use crate::kafka::records::SendableRecord;

/// Sends every record and waits for every acknowledgement, at most
/// `delivery_timeout` in all.
pub async fn send_all<R: SendableRecord>(
    producer: &FutureProducer,
    topic: &str,
    records: impl Iterator<Item = R>,
    delivery_timeout: Duration,
) -> Result<usize, KafkaTxnError> {
    let deadline = tokio::time::Instant::now() + delivery_timeout;
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut sent = 0usize;
    let mut scratch = Vec::new();
    for record in records {
        loop {
            // librdkafka copies the record when it accepts it, so the
            // scratch buffer is free again once `send_result` returns; a
            // record refused for a full queue is built again.
            match producer.send_result(record.future_record(topic, &mut scratch)) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    sent += 1;
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match pending.pop_front() {
                        Some(oldest) => await_delivery(oldest, topic, deadline).await?,
                        None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                    }
                }
                Err((source, _)) => {
                    return Err(KafkaTxnError::Delivery {
                        topic: topic.to_owned(),
                        source,
                    });
                }
            }
        }
    }
    while let Some(delivery) = pending.pop_front() {
        await_delivery(delivery, topic, deadline).await?;
    }
    Ok(sent)
}

async fn await_delivery(
    delivery: DeliveryFuture,
    topic: &str,
    deadline: tokio::time::Instant,
) -> Result<(), KafkaTxnError> {
    let Ok(delivered) = tokio::time::timeout_at(deadline, delivery).await else {
        return Err(KafkaTxnError::DeliveryTimedOut {
            topic: topic.to_owned(),
        });
    };
    match delivered {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((source, _))) => Err(KafkaTxnError::Delivery {
            topic: topic.to_owned(),
            source,
        }),
        Err(_canceled) => Err(KafkaTxnError::Delivery {
            topic: topic.to_owned(),
            source: KafkaError::Canceled,
        }),
    }
}
