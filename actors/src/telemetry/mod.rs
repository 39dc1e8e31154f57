//! What the pipeline tells the outside: metrics ([`metrics`]), health
//! ([`status`]), spans ([`spans`]), the trace context a record carries on
//! ([`trace_context`]) with the OpenTelemetry propagator that reads and
//! writes it ([`propagation`], `OTEL_PROPAGATORS`) over Kafka headers
//! ([`carrier`]), and the commit cycle's typed outcome events ([`events`]).
//!
//! Guarantees: telemetry never blocks and never changes what is processed
//! or committed.

pub mod carrier;
pub mod events;
pub mod metrics;
pub mod propagation;
pub mod spans;
pub mod status;
pub mod trace_context;
