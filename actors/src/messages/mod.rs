//! Every message an actor receives, one file per receiver, and the typed
//! lookups of the named actors ([`names`]). Actors import this module, never
//! each other, so changing one actor does not touch the others.
//!
//! Guarantees: a lookup returns a reference of the receiver's own message
//! type, so a message sent to the wrong actor does not compile.
//!
//! Who sends what to whom (sender → receiver: message):
//!
//! | sender | receiver | message |
//! |---|---|---|
//! | coordinator (itself) | coordinator | [`CoordinatorMsg::Tick`], [`CoordinatorMsg::RetryRecovery`] |
//! | consumer supervisor | coordinator | [`CoordinatorMsg::PartitionsAssigned`], [`CoordinatorMsg::PartitionsRevoked`] |
//! | consumer supervisor (rebalance listener, for the revoke callback) | coordinator | [`CoordinatorMsg::DrainPartitions`] |
//! | circuit breaker | coordinator | [`CoordinatorMsg::BreakerOpened`], [`CoordinatorMsg::BreakerClosed`] |
//! | pipeline (graceful shutdown) | coordinator | [`CoordinatorMsg::Flush`] |
//! | consumer supervisor (rebalance listener) | consumer supervisor | [`ConsumerSupervisorMsg::PartitionsAssigned`], [`ConsumerSupervisorMsg::PartitionsRevoked`] |
//! | coordinator | consumer supervisor | [`ConsumerSupervisorMsg::ReportAssignment`], [`ConsumerSupervisorMsg::Position`], [`ConsumerSupervisorMsg::PausePartitions`] |
//! | consumer supervisor (itself) | consumer supervisor | [`ConsumerSupervisorMsg::RestartPartition`] |
//! | record fetcher | partition consumer | [`PartitionConsumerMsg::Records`], [`PartitionConsumerMsg::Positioned`] |
//! | coordinator | partition consumer | [`PartitionConsumerMsg::BeginRewind`], [`PartitionConsumerMsg::TakeBatch`], [`PartitionConsumerMsg::Committed`] |
//! | consumer supervisor | record fetcher | [`FetcherCommand::Position`], [`FetcherCommand::Park`], [`FetcherCommand::Forget`] |
//! | partition consumer | record fetcher | [`FetcherCommand::Resume`] |
//! | record fetcher (itself) | record fetcher | [`FetcherCommand::RetryPosition`] |
//! | coordinator | database writer | [`DbWriterMsg::Write`] |
//! | coordinator | DLQ forwarder | [`DlqForwarderMsg::Forward`] |
//! | database writers, coordinator (recovery reads) | circuit breaker | [`CircuitBreakerMsg::DatabaseSucceeded`], [`CircuitBreakerMsg::DatabaseFailed`] |
//! | circuit breaker (itself) | circuit breaker | [`CircuitBreakerMsg::Probe`] |
//! | root supervisor (itself, after a backoff) | root supervisor | [`RootMsg::Restart`] |
//!
//! The record fetcher is a task, not an actor: its commands go over a
//! channel ([`FetcherHandle`]).

pub mod circuit_breaker;
pub mod consumer_supervisor;
pub mod coordinator;
pub mod db_writer;
pub mod dlq_forwarder;
pub mod names;
pub mod partition;
pub mod root;

#[cfg(doc)]
use self::{
    circuit_breaker::CircuitBreakerMsg,
    consumer_supervisor::ConsumerSupervisorMsg,
    coordinator::CoordinatorMsg,
    db_writer::DbWriterMsg,
    dlq_forwarder::DlqForwarderMsg,
    partition::{FetcherCommand, FetcherHandle, PartitionConsumerMsg},
    root::RootMsg,
};
