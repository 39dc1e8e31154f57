//! The names of the headers onceflow writes on its output and dead-letter
//! records.
//!
//! Guarantees: these names are part of the contract (`docs/` and the
//! verdict read them); they are spelled once, here. The trace headers
//! besides `traceparent` (`tracestate`, `baggage`) are named by the
//! OpenTelemetry propagator that writes them
//! ([`crate::telemetry::propagation`]), not here.

pub use crate::telemetry::trace_context::TRACEPARENT_HEADER;

/// Header with the commit cycle's transaction id.
pub const TXN_ID_HEADER: &str = "onceflow-txn-id";

/// Header of a dead-letter record: the contract error kind.
pub const ERROR_KIND_HEADER: &str = "onceflow-error-kind";
/// Header of a dead-letter record: the one-line reason.
pub const ERROR_HEADER: &str = "onceflow-error";
/// Header of a dead-letter record: the input topic.
pub const SOURCE_TOPIC_HEADER: &str = "onceflow-source-topic";
/// Header of a dead-letter record: the input partition.
pub const SOURCE_PARTITION_HEADER: &str = "onceflow-source-partition";
/// Header of a dead-letter record: the input offset.
pub const SOURCE_OFFSET_HEADER: &str = "onceflow-source-offset";
