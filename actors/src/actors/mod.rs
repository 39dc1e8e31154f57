//! The actors, one file each: the root supervisor and its restart policy,
//! the circuit breaker, the database writers, the DLQ forwarder, the
//! transaction coordinator (a folder, split by phase of the commit cycle)
//! and the consumer side (a folder: the consumer supervisor, the partition
//! consumers and the record fetcher task).
//!
//! Guarantees: an actor talks to another only through the messages of
//! [`crate::messages`], and finds a restarted one by its typed name
//! ([`crate::messages::names::ActorNames`]).

pub mod circuit_breaker;
pub mod consumer;
pub mod coordinator;
pub mod db_writer;
pub mod dlq_forwarder;
pub mod restart_policy;
pub mod root_supervisor;
