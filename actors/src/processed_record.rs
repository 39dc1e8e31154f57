//! What processing makes of one consumed record: a billable event with its
//! output value, or a dead letter with its reason.
//!
//! Guarantees: processing is a pure function of the record (bytes, headers,
//! position), so a replay after a rewind yields the same effects; it never
//! fails, since every failure becomes a dead letter.

use chrono::SecondsFormat;

use crate::ad_event::{AdEvent, DeadLetterKind, parse_ad_event};
use crate::spans::RecordSpan;
use crate::trace_context::TraceContext;

/// A record as read from the input topic.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    /// input partition
    pub partition: i32,
    /// offset in the partition
    pub offset: i64,
    /// record key, unchanged
    pub key: Option<Vec<u8>>,
    /// record value, unchanged
    pub payload: Option<Vec<u8>>,
    /// upstream `traceparent` header, if any
    pub traceparent: Option<Vec<u8>>,
}

/// The effect a record asks for.
#[derive(Debug, Clone)]
pub enum RecordEffect {
    /// a valid event: one row, one spend count, one output record
    Event {
        /// the parsed event
        event: AdEvent,
        /// JSON value of the output record
        output_value: Vec<u8>,
    },
    /// an invalid (or unstorable) record: one dead-letter row and one DLQ
    /// record carrying the record's original key and value
    DeadLetter {
        /// contract error kind
        kind: DeadLetterKind,
        /// one-line reason
        reason: String,
    },
}

/// A processed record at its source position.
#[derive(Debug, Clone)]
pub struct ProcessedRecord {
    /// input partition
    pub partition: i32,
    /// offset in the partition
    pub offset: i64,
    /// the record's original key, kept for a dead-letter record
    pub key: Option<Vec<u8>>,
    /// the record's original value, kept for a dead-letter record
    pub payload: Option<Vec<u8>>,
    /// trace context for whatever this record produces
    pub trace: TraceContext,
    /// the record's `process` span, when it has one (see
    /// [`crate::spans`]); it ends when the record is dropped
    pub span: RecordSpan,
    /// what it asks for
    pub effect: RecordEffect,
}

/// The output record's value: the event plus its billed minute.
pub fn output_value(event: &AdEvent) -> Vec<u8> {
    let value = serde_json::json!({
        "event_id": event.event_id,
        "campaign_id": event.campaign_id,
        "ad_id": event.ad_id,
        "kind": event.kind.as_str(),
        "cost_micros": event.cost_micros,
        "occurred_at": event.occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        "billed_minute": event.billed_minute().to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    value.to_string().into_bytes()
}

/// Processes one consumed record (without a span of its own; see
/// [`crate::spans::process_traced`]).
pub fn process_record(record: ConsumedRecord) -> ProcessedRecord {
    let trace = TraceContext::continue_from(record.traceparent.as_deref());
    let effect = match parse_ad_event(record.payload.as_deref()) {
        Ok(event) => {
            let output_value = output_value(&event);
            RecordEffect::Event {
                event,
                output_value,
            }
        }
        Err(invalid) => RecordEffect::DeadLetter {
            kind: invalid.kind,
            reason: invalid.reason,
        },
    };
    ProcessedRecord {
        partition: record.partition,
        offset: record.offset,
        key: record.key,
        payload: record.payload,
        trace,
        span: RecordSpan::none(),
        effect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_record_yields_output_with_billed_minute() {
        let processed = process_record(ConsumedRecord {
            partition: 2,
            offset: 7,
            key: Some(b"c-1".to_vec()),
            payload: Some(br#"{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b","campaign_id":"c-1","ad_id":"a","kind":"impression","cost_micros":5,"occurred_at":"2026-11-26T10:15:30.123+02:00"}"#.to_vec()),
            traceparent: None,
        });
        let RecordEffect::Event { output_value, .. } = processed.effect else {
            panic!("expected an event");
        };
        let json: serde_json::Value = serde_json::from_slice(&output_value).expect("json");
        assert_eq!(json["billed_minute"], "2026-11-26T08:15:00Z");
        assert_eq!(json["occurred_at"], "2026-11-26T08:15:30.123Z");
        assert_eq!(json["kind"], "impression");
    }

    #[test]
    fn the_output_keeps_the_input_instant_to_the_nanosecond() {
        let processed = process_record(ConsumedRecord {
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(br#"{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b","campaign_id":"c-1","ad_id":"a","kind":"click","cost_micros":5,"occurred_at":"2026-11-26T10:15:59.999999999Z"}"#.to_vec()),
            traceparent: None,
        });
        let RecordEffect::Event { output_value, .. } = processed.effect else {
            panic!("expected an event");
        };
        let json: serde_json::Value = serde_json::from_slice(&output_value).expect("json");
        assert_eq!(json["occurred_at"], "2026-11-26T10:15:59.999999999Z");
        assert_eq!(json["billed_minute"], "2026-11-26T10:15:00Z");
    }

    #[test]
    fn invalid_record_keeps_its_bytes() {
        let processed = process_record(ConsumedRecord {
            partition: 0,
            offset: 1,
            key: Some(vec![1, 2]),
            payload: Some(vec![0xff]),
            traceparent: None,
        });
        let RecordEffect::DeadLetter { kind, .. } = processed.effect else {
            panic!("expected a dead letter");
        };
        assert_eq!(kind, DeadLetterKind::InvalidUtf8);
        assert_eq!(processed.key, Some(vec![1, 2]));
        assert_eq!(processed.payload, Some(vec![0xff]));
    }
}
