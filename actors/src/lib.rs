//! onceflow's actors crate: the supervised actor pipeline that moves ad
//! events from Kafka into PostgreSQL (or an embedded SQLite file) and back
//! into Kafka exactly once.
//!
//! Start with [`pipeline::run_pipeline`]; the commit protocol and its
//! guarantees are written in `docs/guarantees.md` at the repository root.

pub mod actor_names;
pub mod ad_event;
mod batch_classification;
pub mod circuit_breaker;
pub mod commit_events;
pub mod consumer_supervisor;
pub mod db_writer;
pub mod dlq_forwarder;
pub mod failpoints;
pub mod fetch_credit;
pub mod fetcher_slot;
pub mod kafka_clients;
pub mod kafka_error;
pub mod metrics;
pub mod partition_batch;
pub mod partition_consumer;
pub mod pipeline;
pub mod pipeline_monitor;
pub mod position_ticket;
pub mod postgres_store;
pub mod processed_record;
pub mod record_fetcher;
pub mod recovery;
pub mod restart_policy;
pub mod root_supervisor;
pub mod settings;
pub mod spans;
pub mod sqlite_store;
pub mod store;
pub mod store_error;
pub mod trace_context;
pub mod transaction_coordinator;
pub mod transactional_send;

pub use metrics::PipelineStatus;
pub use pipeline::{PipelineError, run_pipeline};
pub use settings::Settings;
