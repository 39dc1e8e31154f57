//! The DLQ forwarder actor: produces dead-letter records (original key and
//! value, context headers; built by [`crate::kafka::records`]) inside the
//! coordinator's open Kafka transaction (under `at-least-once`, with the
//! coordinator's producer, before the offsets are committed).
//!
//! Guarantees: it produces through the producer it is handed, so its
//! records commit or abort with the cycle's transaction and its offsets;
//! it replies only after every record was acknowledged, or with the first
//! failure (the coordinator then aborts the cycle). Its `dlq.forward` span
//! is a child of the cycle's span, marked failed on a failure.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::kafka::error::KafkaTxnError;
use crate::kafka::records::DeadLetterRecord;
use crate::kafka::send::send_all;
use crate::messages::dlq_forwarder::DlqForwarderMsg;
use crate::telemetry::spans::in_span;

/// The DLQ forwarder actor; its argument is the DLQ topic.
#[derive(Debug)]
pub struct DlqForwarder;

impl Actor for DlqForwarder {
    type Msg = DlqForwarderMsg;
    type State = String;
    type Arguments = String;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        dlq_topic: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(dlq_topic)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        dlq_topic: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let DlqForwarderMsg::Forward(request, reply) = message;
        if let Err(fault) = crate::failpoints::hit(crate::failpoints::DLQ_FORWARDER) {
            let _ = reply.send(Err(KafkaTxnError::Injected(fault)));
            return Ok(());
        }
        let span = tracing::info_span!(
            parent: &request.parent,
            "dlq.forward",
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.name = "send",
            messaging.destination.name = %dlq_topic,
            messaging.batch.message_count = request.dead_letters.len(),
            txn_id = %request.txn_id
        );
        let txn_id = request.txn_id.to_string();
        let records = request
            .dead_letters
            .iter()
            .map(|dead_letter| DeadLetterRecord {
                dead_letter,
                source_topic: &request.source_topic,
                txn_id: &txn_id,
            });
        let result = in_span(
            span,
            send_all(
                &request.producer,
                dlq_topic,
                records,
                request.delivery_timeout,
            ),
        )
        .await;
        let _ = reply.send(result);
        Ok(())
    }
}
