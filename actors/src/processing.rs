//! What processing makes of one consumed record: a billable event with its
//! output value, or a dead letter with its reason; the trace context it
//! carries on, continued from the upstream context the process's
//! OpenTelemetry propagator reads from its headers; and, when spans are
//! exported, the record's `process` span, a child of that upstream context.
//!
//! Guarantees: processing is a pure function of the record (bytes, headers,
//! position), so a replay after a rewind yields the same effects; it never
//! fails, since every failure becomes a dead letter; tracing never changes
//! what is processed.

use chrono::SecondsFormat;

use crate::model::ad_event::{AdEvent, parse_ad_event};
use crate::model::record::{ConsumedRecord, ProcessedRecord, RecordEffect};
use crate::telemetry::spans::{RecordSource, RecordSpan, span_export_enabled};
use crate::telemetry::trace_context::{TraceContext, has_upstream_span, upstream_context};

/// The output record's value, serialised straight from borrowed fields (no
/// intermediate JSON tree). Keys in alphabetical order, the order the
/// values always had.
#[derive(serde::Serialize)]
struct OutputValue<'a> {
    ad_id: &'a str,
    billed_minute: String,
    campaign_id: &'a str,
    cost_micros: i64,
    event_id: &'a uuid::Uuid,
    kind: &'static str,
    occurred_at: String,
}

/// The output record's value: the event plus its billed minute.
pub fn output_value(event: &AdEvent) -> Vec<u8> {
    let mut value = Vec::with_capacity(256);
    write_output_value(event, &mut value);
    value
}

/// Writes the output record's value ([`output_value`]) into `value`,
/// replacing what it held: the producer builds each output into one reused
/// buffer when it sends it, so a buffered record holds no output value.
pub fn write_output_value(event: &AdEvent, value: &mut Vec<u8>) {
    value.clear();
    let fields = OutputValue {
        ad_id: &event.ad_id,
        billed_minute: event
            .billed_minute()
            .to_rfc3339_opts(SecondsFormat::Secs, true),
        campaign_id: &event.campaign_id,
        cost_micros: event.cost_micros,
        event_id: &event.event_id,
        kind: event.kind.as_str(),
        occurred_at: event
            .occurred_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
    };
    // Serialising strings, numbers and a uuid into memory cannot fail; were
    // it to, the value would be left empty rather than half written.
    if serde_json::to_writer(&mut *value, &fields).is_err() {
        value.clear();
    }
}

/// Processes one consumed record (without a span of its own; see
/// [`crate::processing::process_traced`]): its trace context continues the
/// upstream one its headers carry, or is a new unsampled root.
pub fn process_record(record: ConsumedRecord) -> ProcessedRecord {
    let upstream = upstream_context(&record.trace_headers);
    let trace = TraceContext::continue_from(&upstream);
    let effect = effect_of(&record);
    processed(record, trace, RecordSpan::none(), effect)
}

/// Processes one record and, when span export is on and the record carries
/// a valid upstream context (read by the process's propagator), opens its
/// `process` span as a child of that context; the record's trace context is
/// then the span's own (with the upstream `tracestate` and baggage), so its
/// output continues the trace through it.
pub fn process_traced(record: ConsumedRecord, source: &RecordSource) -> ProcessedRecord {
    if !span_export_enabled() {
        return process_record(record);
    }
    let upstream = upstream_context(&record.trace_headers);
    let effect = effect_of(&record);
    if has_upstream_span(&upstream) {
        let effect_name = match &effect {
            RecordEffect::Event { .. } => "event",
            RecordEffect::DeadLetter { kind, .. } => kind.as_str(),
        };
        let opened = RecordSpan::open_process(
            source,
            record.partition,
            record.offset,
            effect_name,
            &upstream,
        );
        if let Some((span, context)) =
            opened.and_then(|span| span.span_context().map(|context| (span, context)))
        {
            let trace = TraceContext::through_span(&upstream, context);
            return processed(record, trace, span, effect);
        }
    }
    let trace = TraceContext::continue_from(&upstream);
    processed(record, trace, RecordSpan::none(), effect)
}

/// What the record asks for: an event, or a dead letter with its reason.
fn effect_of(record: &ConsumedRecord) -> RecordEffect {
    match parse_ad_event(record.payload.as_deref()) {
        Ok(event) => RecordEffect::Event { event },
        Err(invalid) => RecordEffect::DeadLetter {
            kind: invalid.kind,
            reason: invalid.reason,
        },
    }
}

fn processed(
    record: ConsumedRecord,
    trace: TraceContext,
    span: RecordSpan,
    effect: RecordEffect,
) -> ProcessedRecord {
    ProcessedRecord {
        partition: record.partition,
        offset: record.offset,
        key: record.key,
        payload: record.payload,
        trace,
        span,
        timestamp_ms: record.timestamp_ms,
        effect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ad_event::DeadLetterKind;
    use crate::telemetry::carrier::TraceHeaders;

    #[test]
    fn valid_record_yields_output_with_billed_minute() {
        let processed = process_record(ConsumedRecord {
            partition: 2,
            offset: 7,
            key: Some(b"c-1".to_vec()),
            payload: Some(br#"{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b","campaign_id":"c-1","ad_id":"a","kind":"impression","cost_micros":5,"occurred_at":"2026-11-26T10:15:30.123+02:00"}"#.to_vec()),
            trace_headers: TraceHeaders::none(),
            timestamp_ms: None,
        });
        let RecordEffect::Event { event } = processed.effect else {
            panic!("expected an event");
        };
        let json: serde_json::Value = serde_json::from_slice(&output_value(&event)).expect("json");
        assert_eq!(json["billed_minute"], "2026-11-26T08:15:00Z");
        assert_eq!(json["occurred_at"], "2026-11-26T08:15:30.123Z");
        assert_eq!(json["kind"], "impression");
    }

    #[test]
    fn the_output_value_is_the_json_object_it_always_was_byte_for_byte() {
        // Escapes, multibyte text, a negative offset and nanoseconds.
        let payload = r#"{"event_id":"1B4E28BA-2FA1-4D3B-A3F5-EF19B5A7633B","campaign_id":"c\"1\u00e9","ad_id":"ad/ü","kind":"click","cost_micros":123456789,"occurred_at":"1999-12-31T23:59:59.123456789-08:00"}"#;
        let event = crate::model::ad_event::parse_ad_event(Some(payload.as_bytes()))
            .expect("a valid event");
        let tree = serde_json::json!({
            "event_id": event.event_id,
            "campaign_id": event.campaign_id.as_str(),
            "ad_id": event.ad_id.as_str(),
            "kind": event.kind.as_str(),
            "cost_micros": event.cost_micros,
            "occurred_at": event.occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "billed_minute": event.billed_minute().to_rfc3339_opts(SecondsFormat::Secs, true),
        });
        assert_eq!(
            String::from_utf8(output_value(&event)).expect("utf-8"),
            tree.to_string()
        );
    }

    #[test]
    fn a_reused_buffer_holds_only_the_last_value_written() {
        let long = crate::model::ad_event::parse_ad_event(Some(br#"{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b","campaign_id":"a-much-longer-campaign-id","ad_id":"a-much-longer-ad-id","kind":"click","cost_micros":5,"occurred_at":"2026-11-26T10:15:59.999999999Z"}"#))
            .expect("a valid event");
        let short = crate::model::ad_event::parse_ad_event(Some(br#"{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633c","campaign_id":"c","ad_id":"a","kind":"impression","cost_micros":1,"occurred_at":"2026-11-26T10:15:00Z"}"#))
            .expect("a valid event");
        let mut buffer = Vec::new();
        write_output_value(&long, &mut buffer);
        write_output_value(&short, &mut buffer);
        assert_eq!(buffer, output_value(&short));
        let json: serde_json::Value = serde_json::from_slice(&buffer).expect("json");
        assert_eq!(json["campaign_id"], "c");
    }

    #[test]
    fn the_output_keeps_the_input_instant_to_the_nanosecond() {
        let processed = process_record(ConsumedRecord {
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(br#"{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b","campaign_id":"c-1","ad_id":"a","kind":"click","cost_micros":5,"occurred_at":"2026-11-26T10:15:59.999999999Z"}"#.to_vec()),
            trace_headers: TraceHeaders::none(),
            timestamp_ms: None,
        });
        let RecordEffect::Event { event } = processed.effect else {
            panic!("expected an event");
        };
        let json: serde_json::Value = serde_json::from_slice(&output_value(&event)).expect("json");
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
            trace_headers: TraceHeaders::none(),
            timestamp_ms: None,
        });
        let RecordEffect::DeadLetter { kind, .. } = processed.effect else {
            panic!("expected a dead letter");
        };
        assert_eq!(kind, DeadLetterKind::InvalidUtf8);
        assert_eq!(processed.key, Some(vec![1, 2]));
        assert_eq!(processed.payload, Some(vec![0xff]));
    }
}
