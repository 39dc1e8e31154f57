//! onceflow's actors crate: the supervised actor pipeline that moves ad
//! events from Kafka into PostgreSQL (or an embedded SQLite file) and back
//! into Kafka exactly once.
//!
//! Start with [`pipeline::run_pipeline`]; the commit protocol and its
//! guarantees are written in `docs/guarantees.md` at the repository root.
//!
//! # Layout
//!
//! Each layer imports only from the layers above it in this list:
//!
//! - [`failpoints`]: the named kill points of the failure tests and chaos
//!   scenarios (nothing without the `failpoints` feature).
//! - [`telemetry`]: the metrics and health status, the spans, the trace
//!   context a record carries on and the OpenTelemetry propagator that
//!   reads and writes it in Kafka headers (`OTEL_PROPAGATORS`), and the
//!   commit cycle's typed outcome events (one `emit()` writes the log line,
//!   the metric and the span outcome).
//! - [`model`]: the data passed between stages: the ad event, a record as
//!   consumed and as processed, a partition batch, positioning tickets and
//!   fetch credit.
//! - [`processing`]: what a record becomes (pure).
//! - [`store`]: the database: one [`store::Store`] with its backends
//!   ([`store::postgres`], [`store::sqlite`]), the batch plan they share,
//!   and the error classification.
//! - [`settings`] and [`recovery`] (where a partition resumes; pure).
//! - [`kafka`]: the Kafka clients and the transactional I/O: client
//!   construction, the rebalance context (it speaks over a channel of its
//!   own event type), record building (pure), the transaction steps with
//!   their spans and retries. No actor type.
//! - [`messages`]: every message an actor receives, the table of who sends
//!   what to whom, and typed lookups of the named actors.
//! - [`actors`]: the actors, one file each (the coordinator is a folder
//!   split by phase of the commit cycle; the consumer side is a folder with
//!   its supervisor, partition consumer and record fetcher task).
//! - [`pipeline`]: the wiring: one group membership after another, each a
//!   fresh consumer and actor tree, and the metrics monitor task.

pub mod actors;
pub mod failpoints;
pub mod kafka;
pub mod messages;
pub mod model;
pub mod pipeline;
pub mod processing;
pub mod recovery;
pub mod settings;
pub mod store;
pub mod telemetry;

pub use messages::names::ActorNames;
pub use pipeline::{PipelineError, run_pipeline};
pub use settings::{Settings, SettingsError};
pub use store::{Store, StoreBackend, StoreError};
pub use telemetry::events::COMMIT_EVENTS_TARGET;
pub use telemetry::metrics::BreakerState;
pub use telemetry::status::PipelineStatus;
