//! The Kafka records a commit cycle produces: the output records of new
//! events and the dead-letter records of invalid ones, built apart from
//! sending them.
//!
//! Guarantees: building is pure (no producer, no I/O), so what a cycle
//! sends is decided here and unit-tested; a dead-letter record carries the
//! original key and value unchanged and its context in headers.

use crate::model::ad_event::DeadLetterKind;
use crate::telemetry::trace_context::TraceContext;

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
    /// trace context of the record
    pub trace: TraceContext,
}
