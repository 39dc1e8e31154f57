//! A record as consumed from the input topic, and as processed: a billable
//! event, or a dead letter with its reason (what
//! [`crate::processing`] makes of it).
//!
//! Guarantees: a processed record keeps its source position, its original
//! key and value (for a dead-letter record) and the trace context whatever
//! it produces carries on.

use crate::model::ad_event::{AdEvent, DeadLetterKind};
use crate::telemetry::carrier::TraceHeaders;
use crate::telemetry::spans::RecordSpan;
use crate::telemetry::trace_context::TraceContext;

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
    /// the record's headers that the propagator may read (`traceparent`,
    /// `tracestate`, `baggage`, …: those its `fields()` name), unchanged
    pub trace_headers: TraceHeaders,
    /// the record's timestamp (ms since the epoch: its producer's create
    /// time, or the broker's append time), if it has one
    pub timestamp_ms: Option<i64>,
}

/// The effect a record asks for.
#[derive(Debug, Clone)]
pub enum RecordEffect {
    /// a valid event: one row, one spend count, one output record (whose
    /// value, [`crate::processing::output_value`], is written when it is
    /// produced, so a buffered record does not hold it)
    Event {
        /// the parsed event
        event: AdEvent,
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
    /// [`crate::telemetry::spans`]); it ends when the record is dropped
    pub span: RecordSpan,
    /// the input record's timestamp (ms since the epoch), for the
    /// end-to-end latency
    pub timestamp_ms: Option<i64>,
    /// what it asks for
    pub effect: RecordEffect,
}
