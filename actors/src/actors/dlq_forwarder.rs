//! The DLQ forwarder actor: turns dead letters into dead-letter records
//! (original key and value, context headers) inside the coordinator's open
//! Kafka transaction.
//!
//! Guarantees: it produces through the producer it is handed, so its
//! records commit or abort with the cycle's transaction and its offsets;
//! it replies only after every record was acknowledged, or with the first
//! failure (the coordinator then aborts the cycle). Its `dlq.forward` span
//! is a child of the cycle's span, marked failed on a failure.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::kafka::error::KafkaTxnError;
use crate::kafka::headers::TXN_ID_HEADER;
use crate::kafka::send::send_all;
use crate::messages::dlq_forwarder::DlqForwarderMsg;
use crate::telemetry::spans::in_span;
use crate::telemetry::trace_context::TRACEPARENT_HEADER;

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
        let records = request.dead_letters.iter().map(|dead_letter| {
            let partition = dead_letter.partition.to_string();
            let offset = dead_letter.offset.to_string();
            let traceparent = dead_letter.trace.to_header();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "onceflow-error-kind",
                    value: Some(dead_letter.kind.as_str()),
                })
                .insert(Header {
                    key: "onceflow-error",
                    value: Some(dead_letter.reason.as_str()),
                })
                .insert(Header {
                    key: "onceflow-source-topic",
                    value: Some(request.source_topic.as_str()),
                })
                .insert(Header {
                    key: "onceflow-source-partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "onceflow-source-offset",
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: TXN_ID_HEADER,
                    value: Some(txn_id.as_str()),
                })
                .insert(Header {
                    key: TRACEPARENT_HEADER,
                    value: Some(traceparent.as_str()),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(dlq_topic.as_str()).headers(headers);
            if let Some(key) = &dead_letter.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &dead_letter.payload {
                record = record.payload(payload.as_slice());
            }
            record
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
