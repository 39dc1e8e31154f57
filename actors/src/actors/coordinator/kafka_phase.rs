//! The Kafka phase of a commit cycle. Under `exactly-once`: one
//! transaction with the outputs still owed and the dead letters (produced
//! by the DLQ forwarder, beside the outputs), every committed partition's
//! end offset with the group metadata, and the commit. Under
//! `at-least-once`: the same records produced without a transaction, then
//! the offsets committed by the consumer once every record was
//! acknowledged.
//!
//! Guarantees:
//! - Kafka offsets are sent only for partitions whose database transaction
//!   committed, so the stored offset never passes an effect that is not
//!   committed;
//! - the group metadata sent with the offsets is the one read when the
//!   cycle took its batches, and a partition no longer assigned when the
//!   offsets are sent or the transaction commits aborts the transaction: an
//!   old owner's commit is refused by the broker (stale generation) instead
//!   of landing after the new owner read the group offset;
//! - under `at-least-once`, the offsets are committed only after every
//!   output and dead letter of the cycle was acknowledged: a failure in
//!   between replays them (produced again), never skips them.

use std::time::Instant;

use ractor::rpc::CallResult;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerGroupMetadata};
use uuid::Uuid;

use super::database::CommittedBatch;
use super::state::CoordinatorState;
use crate::failpoints;
use crate::kafka::delivery::OutputProducer;
use crate::kafka::error::{ForwarderFailure, KafkaTxnError};
use crate::kafka::records::{self, DeadLetter};
use crate::kafka::transaction::{self, KafkaTransaction};
use crate::messages::dlq_forwarder::{DlqForwarderMsg, ForwardRequest};
use crate::telemetry::spans::in_span;

impl CoordinatorState {
    /// Runs the Kafka phase of a cycle for the configured guarantee.
    pub(super) async fn kafka_phase(
        &self,
        txn_id: Uuid,
        group_metadata: ConsumerGroupMetadata,
        committed: &[CommittedBatch],
    ) -> Result<(), KafkaTxnError> {
        let producer = self.producer.as_ref().ok_or(KafkaTxnError::NoProducer)?;
        let settings = &self.args.settings;
        let opened = Instant::now();
        self.args.status.txn_opened();
        if !settings.guarantee.is_transactional() {
            self.produce_owed(producer, txn_id, committed).await?;
            let offsets = self.end_offsets(committed)?;
            // Produced and acknowledged, offsets not committed: the replay
            // produces them again.
            failpoints::hit(failpoints::COORDINATOR_DURING_KAFKA_COMMIT)?;
            self.refuse_revoked("commit offsets", committed)?;
            return self.commit_offsets(txn_id, offsets).await;
        }
        let txn = KafkaTransaction::begin(producer, txn_id, settings.kafka_call_timeout).await?;
        self.produce_owed(txn.producer(), txn_id, committed).await?;
        let offsets = self.end_offsets(committed)?;
        // A partition revoked while the cycle ran is never committed here:
        // its new owner may already have read the group offset.
        self.refuse_revoked("send_offsets_to_transaction", committed)?;
        txn.send_offsets(
            offsets,
            group_metadata,
            &settings.input_topic,
            &settings.group_id,
        )
        .await?;
        failpoints::hit(failpoints::COORDINATOR_DURING_KAFKA_COMMIT)?;
        self.refuse_revoked("commit_transaction", committed)?;
        txn.commit().await?;
        let open_for = opened.elapsed();
        if open_for > settings.open_txn_warn {
            tracing::warn!(%txn_id, open_ms = open_for.as_millis() as u64, "transaction was open too long");
        }
        Ok(())
    }

    /// Produces the outputs and dead letters the committed batches still
    /// owe (in the open transaction, if there is one), side by side, and
    /// waits for every acknowledgement. A failed delivery ends the wait of
    /// its own send at once; the step then still waits for the other send
    /// (at most the Kafka call timeout, twice that for the forwarder).
    async fn produce_owed(
        &self,
        producer: &OutputProducer,
        txn_id: Uuid,
        committed: &[CommittedBatch],
    ) -> Result<(), KafkaTxnError> {
        let settings = &self.args.settings;
        let txn_id_text = txn_id.to_string();
        let (outputs, dead_letters) = records::owed_records(
            committed
                .iter()
                .map(|done| (&*done.batch, done.outcome.owed_records.as_slice())),
            &txn_id_text,
        );
        let output_topic = settings.output_topic.as_str();
        let producing_outputs = transaction::produce(
            producer,
            txn_id,
            output_topic,
            outputs.len(),
            outputs.iter().copied(),
            settings.kafka_call_timeout,
        );
        let forwarding_dead_letters = async {
            if dead_letters.is_empty() {
                return Ok(());
            }
            self.forward_dead_letters(producer, txn_id, dead_letters)
                .await
        };
        // Both at once: their acknowledgements are waited for side by side,
        // not one round trip after the other. Each is waited for to its end
        // (each bounded), even when the other failed. When both fail, the
        // graver failure is the one handled: a forwarder that did not answer
        // in time may still be producing, and only a new producer fences
        // that, where an abort would let its dead letters land in the next
        // transaction.
        match tokio::join!(producing_outputs, forwarding_dead_letters) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(failure), Ok(())) | (Ok(_), Err(failure)) => Err(failure),
            (Err(outputs_failed), Err(dead_letters_failed)) => {
                let (handled, other) = outputs_failed.graver(dead_letters_failed);
                tracing::warn!(
                    %txn_id,
                    error = %other,
                    handled = %handled,
                    "outputs and dead letters both failed; handling the graver failure"
                );
                Err(handled)
            }
        }
    }

    /// Every committed partition's end offset.
    fn end_offsets(
        &self,
        committed: &[CommittedBatch],
    ) -> Result<TopicPartitionList, KafkaTxnError> {
        records::end_offsets(
            &self.args.settings.input_topic,
            committed
                .iter()
                .map(|done| (done.batch.partition, done.batch.end_offset)),
        )
        .map_err(|source| KafkaTxnError::Client {
            operation: "list the cycle's offsets",
            source,
        })
    }

    /// Under `at-least-once`: commits `offsets` through the consumer,
    /// synchronously and bounded by the Kafka call timeout (span
    /// `kafka.commit_offsets`). The commit carries the consumer's generation
    /// when it is sent (not the cycle's, as a transaction's offsets do): a
    /// commit after a rejoin can land and move the group offset back, which
    /// costs duplicates, never a loss. A failure or timeout rewinds the
    /// cycle; the producer is kept.
    async fn commit_offsets(
        &self,
        txn_id: Uuid,
        offsets: TopicPartitionList,
    ) -> Result<(), KafkaTxnError> {
        let settings = &self.args.settings;
        let span = tracing::info_span!(
            "kafka.commit_offsets",
            messaging.system = "kafka",
            messaging.destination.name = %settings.input_topic,
            messaging.consumer.group.name = %settings.group_id,
            partitions = offsets.count(),
            %txn_id
        );
        let consumer = std::sync::Arc::clone(&self.args.consumer);
        let timeout = settings.kafka_call_timeout;
        let committing =
            tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync));
        in_span(span, async move {
            match tokio::time::timeout(timeout, committing).await {
                Err(_) => Err(KafkaTxnError::OffsetCommit {
                    reason: format!("no answer within {} ms", timeout.as_millis()),
                }),
                Ok(Err(error)) => Err(KafkaTxnError::TaskLost {
                    operation: "commit offsets",
                    reason: error.to_string(),
                }),
                Ok(Ok(result)) => result.map_err(|source| KafkaTxnError::OffsetCommit {
                    reason: source.to_string(),
                }),
            }
        })
        .await
    }

    /// Fails with the first partition of the cycle that Kafka no longer
    /// assigns here, before `operation`.
    fn refuse_revoked(
        &self,
        operation: &'static str,
        committed: &[CommittedBatch],
    ) -> Result<(), KafkaTxnError> {
        match self.first_unassigned(committed.iter().map(|done| done.batch.partition)) {
            Some(partition) => Err(KafkaTxnError::PartitionRevoked {
                operation,
                partition,
            }),
            None => Ok(()),
        }
    }

    /// Has the DLQ forwarder produce the cycle's dead letters (inside the
    /// open transaction, if there is one), and waits for it (bounded).
    async fn forward_dead_letters(
        &self,
        producer: &OutputProducer,
        txn_id: Uuid,
        dead_letters: Vec<DeadLetter>,
    ) -> Result<(), KafkaTxnError> {
        let unavailable = KafkaTxnError::ForwarderUnavailable;
        let forwarder = self
            .args
            .names
            .find_dlq_forwarder()
            .ok_or(unavailable(ForwarderFailure::Restarting))?;
        let settings = &self.args.settings;
        let request = ForwardRequest {
            producer: producer.clone(),
            parent: tracing::Span::current(),
            txn_id,
            source_topic: settings.input_topic.clone(),
            dead_letters,
            delivery_timeout: settings.kafka_call_timeout,
        };
        let timeout = settings.kafka_call_timeout * 2;
        match forwarder
            .call(
                |reply| DlqForwarderMsg::Forward(request, reply),
                Some(timeout),
            )
            .await
        {
            Ok(CallResult::Success(result)) => result.map(|_| ()),
            Ok(CallResult::Timeout) => Err(unavailable(ForwarderFailure::TimedOut)),
            Ok(CallResult::SenderError) | Err(_) => Err(unavailable(ForwarderFailure::Died)),
        }
    }
}
