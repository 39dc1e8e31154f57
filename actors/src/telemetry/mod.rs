//! What the pipeline tells the outside: metrics ([`metrics`]), health
//! ([`status`]), spans ([`spans`]) and W3C trace context
//! ([`trace_context`]), and the commit cycle's typed outcome events
//! ([`events`]).
//!
//! Guarantees: telemetry never blocks and never changes what is processed
//! or committed.

pub mod events;
pub mod metrics;
pub mod spans;
pub mod status;
pub mod trace_context;
