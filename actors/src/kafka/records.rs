//! The Kafka records a commit cycle produces: the output records of new
//! events and the dead-letter records of invalid ones, built apart from
//! sending them.
//!
//! Guarantees: building is pure (no producer, no I/O), so what a cycle
//! sends is decided here and unit-tested; an output record's value and
//! trace headers are written when it is sent ([`SendableRecord`]), from the
//! event and trace context its buffered record holds, so a cycle's records
//! hold no copy of them while they wait; a dead-letter record carries the
//! original key and value unchanged and its context in headers. Every
//! output and dead-letter record carries its record's trace context as the
//! process's OpenTelemetry propagator writes it: always `traceparent`, and
//! `tracestate` and `baggage` when the context has them (see
//! [`crate::telemetry::trace_context`]).

use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::headers::{
    ERROR_HEADER, ERROR_KIND_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER, TXN_ID_HEADER,
};
use crate::model::ad_event::{AdEvent, DeadLetterKind};
use crate::model::batch::PartitionBatch;
use crate::model::record::RecordEffect;
use crate::processing::write_output_value;
use crate::telemetry::carrier::InjectedHeaders;
use crate::telemetry::trace_context::TraceContext;

/// A record the producer sends ([`crate::kafka::send::send_all`]), built
/// at the moment it is sent.
pub trait SendableRecord {
    /// The record for `topic`. Bytes made for it go into `scratch` (whatever
    /// it held is replaced): the producer copies a record when it accepts
    /// it, so one buffer serves every record of a send.
    fn future_record<'r>(
        &'r self,
        topic: &'r str,
        scratch: &'r mut Vec<u8>,
    ) -> FutureRecord<'r, [u8], [u8]>;
}

/// One output record a cycle owes: a new event (or an own replay whose
/// output Kafka has not committed).
#[derive(Debug, Clone, Copy)]
pub struct OutputRecord<'a> {
    /// the event; the record key is its campaign id, the value
    /// [`crate::processing::output_value`] of it
    pub event: &'a AdEvent,
    /// the record's trace context, written into the output's headers by
    /// the propagator
    pub trace: &'a TraceContext,
    /// the cycle's id, stamped on the output
    pub txn_id: &'a str,
}

impl SendableRecord for OutputRecord<'_> {
    /// The output record for `topic`: keyed by campaign, its value written
    /// into `scratch`, stamped with the cycle's id and the trace headers.
    fn future_record<'r>(
        &'r self,
        topic: &'r str,
        scratch: &'r mut Vec<u8>,
    ) -> FutureRecord<'r, [u8], [u8]> {
        write_output_value(self.event, scratch);
        let headers = self.trace.fold_headers(
            OwnedHeaders::new_with_capacity(2).insert(Header {
                key: TXN_ID_HEADER,
                value: Some(self.txn_id),
            }),
            with_header,
        );
        let value: &'r [u8] = scratch;
        FutureRecord::<[u8], [u8]>::to(topic)
            .key(self.event.campaign_id.as_bytes())
            .payload(value)
            .headers(headers)
    }
}

/// What a cycle with id `txn_id` owes Kafka for its committed batches, in
/// batch and record order: the output records and the dead letters.
/// `batches` pairs each committed batch with the indexes of its records
/// whose Kafka record is owed (the store's answer).
pub fn owed_records<'a>(
    batches: impl Iterator<Item = (&'a PartitionBatch, &'a [usize])>,
    txn_id: &'a str,
) -> (Vec<OutputRecord<'a>>, Vec<DeadLetter>) {
    let mut outputs = Vec::new();
    let mut dead_letters = Vec::new();
    for (batch, owed) in batches {
        for index in owed {
            let record = &batch.records[*index];
            match &record.effect {
                RecordEffect::Event { event } => outputs.push(OutputRecord {
                    event,
                    trace: &record.trace,
                    txn_id,
                }),
                RecordEffect::DeadLetter { kind, reason } => dead_letters.push(DeadLetter {
                    partition: record.partition,
                    offset: record.offset,
                    kind: *kind,
                    reason: reason.clone(),
                    key: record.key.clone(),
                    payload: record.payload.clone(),
                    trace_headers: record.trace.headers(),
                }),
            }
        }
    }
    (outputs, dead_letters)
}

/// The offsets a cycle sends to its transaction: each committed partition's
/// end offset, plain (without leader epochs, see the design notes).
pub fn end_offsets(
    topic: &str,
    ends: impl Iterator<Item = (i32, i64)>,
) -> KafkaResult<TopicPartitionList> {
    let mut offsets = TopicPartitionList::new();
    for (partition, end_offset) in ends {
        offsets.add_partition_offset(topic, partition, Offset::Offset(end_offset))?;
    }
    Ok(offsets)
}

/// One dead letter to forward.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// source partition
    pub partition: i32,
    /// source offset
    pub offset: i64,
    /// contract error kind
    pub kind: DeadLetterKind,
    /// one-line reason
    pub reason: String,
    /// original key
    pub key: Option<Vec<u8>>,
    /// original value
    pub payload: Option<Vec<u8>>,
    /// the trace headers the propagator wrote (`traceparent`, …)
    pub trace_headers: InjectedHeaders,
}

impl DeadLetter {
    /// The dead-letter record for `dlq_topic`: the original key and value,
    /// the reason and source position in headers, stamped with the cycle's
    /// `txn_id`.
    pub fn to_future_record<'r>(
        &'r self,
        dlq_topic: &'r str,
        source_topic: &str,
        txn_id: &str,
    ) -> FutureRecord<'r, [u8], [u8]> {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: ERROR_KIND_HEADER,
                value: Some(self.kind.as_str()),
            })
            .insert(Header {
                key: ERROR_HEADER,
                value: Some(self.reason.as_str()),
            })
            .insert(Header {
                key: SOURCE_TOPIC_HEADER,
                value: Some(source_topic),
            })
            .insert(Header {
                key: SOURCE_PARTITION_HEADER,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: SOURCE_OFFSET_HEADER,
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: TXN_ID_HEADER,
                value: Some(txn_id),
            });
        let headers = with_trace_headers(headers, &self.trace_headers);
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        record
    }
}

/// A dead letter on its way to the DLQ topic: from `source_topic`, stamped
/// with the cycle's `txn_id`.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterRecord<'a> {
    /// the dead letter
    pub dead_letter: &'a DeadLetter,
    /// the input topic it was read from
    pub source_topic: &'a str,
    /// the cycle's id
    pub txn_id: &'a str,
}

impl SendableRecord for DeadLetterRecord<'_> {
    fn future_record<'r>(
        &'r self,
        topic: &'r str,
        _scratch: &'r mut Vec<u8>,
    ) -> FutureRecord<'r, [u8], [u8]> {
        self.dead_letter
            .to_future_record(topic, self.source_topic, self.txn_id)
    }
}

/// `headers` followed by the trace headers, in the order they were written.
fn with_trace_headers(headers: OwnedHeaders, trace: &InjectedHeaders) -> OwnedHeaders {
    trace.iter().fold(headers, |headers, (key, value)| {
        with_header(headers, key, value)
    })
}

/// `headers` followed by the header `key` with `value`.
fn with_header(headers: OwnedHeaders, key: &str, value: &str) -> OwnedHeaders {
    headers.insert(Header {
        key,
        value: Some(value),
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;
    use crate::model::record::ConsumedRecord;
    use crate::processing::process_record;
    use crate::telemetry::carrier::TraceHeaders;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    const BAGGAGE: &str = "tenant=acme";
    const TRACED: [(&str, &str); 3] = [
        ("traceparent", TRACEPARENT),
        ("tracestate", TRACESTATE),
        ("baggage", BAGGAGE),
    ];

    fn batch() -> PartitionBatch {
        let valid = br#"{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b","campaign_id":"c-9","ad_id":"a","kind":"click","cost_micros":5,"occurred_at":"2026-11-26T10:15:30Z"}"#;
        let records = [
            (10, Some(valid.to_vec()), &TRACED[..]),
            (11, Some(b"not json".to_vec()), &TRACED[..]),
            (12, Some(valid.to_vec()), &[][..]),
        ]
        .into_iter()
        .map(|(offset, payload, headers)| {
            process_record(ConsumedRecord {
                partition: 4,
                offset,
                key: Some(format!("k{offset}").into_bytes()),
                payload,
                trace_headers: TraceHeaders::from_pairs(headers.iter().copied()),
                timestamp_ms: None,
            })
        })
        .collect();
        PartitionBatch {
            partition: 4,
            start_offset: 10,
            end_offset: 13,
            outputs_from: 10,
            records,
        }
    }

    fn headers_of(record: &FutureRecord<'_, [u8], [u8]>) -> Vec<(String, String)> {
        let headers = record.headers.as_ref().expect("headers");
        (0..headers.count())
            .map(|index| {
                let header = headers.get_as::<str>(index).expect("utf-8 header");
                (header.key.to_owned(), header.value.unwrap_or("").to_owned())
            })
            .collect()
    }

    #[test]
    fn only_owed_records_are_built_in_order_events_and_dead_letters_apart() {
        let batch = batch();
        let (outputs, dead_letters) =
            owed_records([(&batch, &[1_usize, 0][..])].into_iter(), "txn-0");
        assert_eq!(outputs.len(), 1, "record 2 is not owed");
        assert_eq!(outputs[0].event.campaign_id, "c-9");
        let trace_headers = outputs[0].trace.headers();
        assert_eq!(
            trace_headers
                .get("traceparent")
                .and_then(|value| value.get(..35)),
            TRACEPARENT.get(..35),
            "same trace id"
        );
        let mut scratch = Vec::new();
        let record = outputs[0].future_record("billed", &mut scratch);
        let value: serde_json::Value =
            serde_json::from_slice(record.payload.expect("a value")).expect("json");
        assert_eq!(value["billed_minute"], "2026-11-26T10:15:00Z");
        assert_eq!(dead_letters.len(), 1);
        assert_eq!((dead_letters[0].partition, dead_letters[0].offset), (4, 11));
        assert_eq!(dead_letters[0].kind, DeadLetterKind::InvalidJson);
        assert_eq!(dead_letters[0].payload.as_deref(), Some(&b"not json"[..]));
        assert_eq!(dead_letters[0].key.as_deref(), Some(&b"k11"[..]));
    }

    #[test]
    fn an_output_record_is_keyed_by_campaign_and_carries_txn_and_trace() {
        let batch = batch();
        let (outputs, _) = owed_records([(&batch, &[0_usize][..])].into_iter(), "txn-1");
        let traceparent = outputs[0]
            .trace
            .headers()
            .get("traceparent")
            .expect("traceparent")
            .to_owned();
        let mut scratch = b"left over from the record before".to_vec();
        let record = outputs[0].future_record("billed", &mut scratch);
        assert_eq!(record.topic, "billed");
        assert_eq!(record.key, Some(&b"c-9"[..]));
        assert_eq!(
            record.payload.map(<[u8]>::to_vec),
            Some(crate::processing::output_value(outputs[0].event)),
            "the value alone, whatever the buffer held"
        );
        assert_eq!(
            headers_of(&record),
            [
                ("onceflow-txn-id".to_owned(), "txn-1".to_owned()),
                ("traceparent".to_owned(), traceparent),
                ("tracestate".to_owned(), TRACESTATE.to_owned()),
                ("baggage".to_owned(), BAGGAGE.to_owned()),
            ]
        );
    }

    #[test]
    fn an_untraced_record_s_output_carries_only_an_unsampled_traceparent() {
        let batch = batch();
        let (outputs, _) = owed_records([(&batch, &[2_usize][..])].into_iter(), "txn-3");
        let mut scratch = Vec::new();
        let record = outputs[0].future_record("billed", &mut scratch);
        let headers = headers_of(&record);
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["onceflow-txn-id", "traceparent"]);
        let traceparent = &headers[1].1;
        assert!(!traceparent.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(traceparent.ends_with("-00"), "{traceparent}");
    }

    #[test]
    fn a_dead_letter_record_keeps_the_original_bytes_and_names_its_source() {
        let batch = batch();
        let (_, dead_letters) = owed_records([(&batch, &[1_usize][..])].into_iter(), "txn-9");
        let sending = DeadLetterRecord {
            dead_letter: &dead_letters[0],
            source_topic: "in",
            txn_id: "txn-2",
        };
        let mut scratch = Vec::new();
        let record = sending.future_record("dlq", &mut scratch);
        assert_eq!(record.topic, "dlq");
        assert_eq!(record.key, Some(&b"k11"[..]));
        assert_eq!(record.payload, Some(&b"not json"[..]));
        let headers = headers_of(&record);
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "onceflow-error-kind",
                "onceflow-error",
                "onceflow-source-topic",
                "onceflow-source-partition",
                "onceflow-source-offset",
                "onceflow-txn-id",
                "traceparent",
                "tracestate",
                "baggage",
            ]
        );
        assert!(headers[6].1.starts_with(&TRACEPARENT[..35]), "same trace");
        assert_eq!(headers[7].1, TRACESTATE);
        assert_eq!(headers[8].1, BAGGAGE);
        assert_eq!(headers[0].1, "invalid-json");
        assert_eq!(headers[2].1, "in");
        assert_eq!(headers[3].1, "4");
        assert_eq!(headers[4].1, "11");
        assert_eq!(headers[5].1, "txn-2");
    }

    #[test]
    fn end_offsets_are_plain_offsets_per_partition() {
        let offsets = end_offsets("in", [(0, 7), (3, 42)].into_iter()).expect("offsets");
        let found = offsets
            .find_partition("in", 3)
            .expect("partition 3")
            .offset();
        assert_eq!(found, Offset::Offset(42));
        assert_eq!(offsets.count(), 2);
    }
}
