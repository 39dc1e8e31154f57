//! The Kafka phase of a commit cycle: one transaction with the outputs
//! still owed, the dead letters (produced by the DLQ forwarder), every
//! committed partition's end offset with the group metadata, and the
//! commit.
//!
//! Guarantees:
//! - Kafka offsets are sent only for partitions whose database transaction
//!   committed, so the stored offset never passes an effect that is not
//!   committed;
//! - the group metadata sent with the offsets is the one read when the
//!   cycle took its batches, and a partition no longer assigned when the
//!   offsets are sent or the transaction commits aborts the transaction: an
//!   old owner's commit is refused by the broker (stale generation) instead
//!   of landing after the new owner read the group offset.

use std::time::Instant;

use ractor::rpc::CallResult;
use rdkafka::consumer::ConsumerGroupMetadata;
use uuid::Uuid;

use super::database::CommittedBatch;
use super::state::CoordinatorState;
use crate::failpoints;
use crate::kafka::error::{ForwarderFailure, KafkaTxnError};
use crate::kafka::records::{self, DeadLetter};
use crate::kafka::transaction::KafkaTransaction;
use crate::messages::dlq_forwarder::{DlqForwarderMsg, ForwardRequest};

impl CoordinatorState {
    /// Runs the Kafka transaction of a cycle.
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
        let txn = KafkaTransaction::begin(producer, txn_id, settings.kafka_call_timeout)?;

        let (outputs, dead_letters) = records::owed_records(
            committed
                .iter()
                .map(|done| (&*done.batch, done.outcome.owed_records.as_slice())),
        );
        let txn_id_text = txn_id.to_string();
        let output_topic = settings.output_topic.as_str();
        let produced = outputs
            .iter()
            .map(|output| output.to_future_record(output_topic, &txn_id_text));
        txn.produce(output_topic, outputs.len(), produced).await?;
        if !dead_letters.is_empty() {
            self.forward_dead_letters(&txn, txn_id, dead_letters)
                .await?;
        }

        let offsets = records::end_offsets(
            &settings.input_topic,
            committed
                .iter()
                .map(|done| (done.batch.partition, done.batch.end_offset)),
        )
        .map_err(|source| KafkaTxnError::Client {
            operation: "send_offsets_to_transaction",
            source,
        })?;
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

    /// Has the DLQ forwarder produce the cycle's dead letters inside its
    /// open transaction, and waits for it (bounded).
    async fn forward_dead_letters(
        &self,
        txn: &KafkaTransaction<'_>,
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
            producer: txn.producer().clone(),
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
