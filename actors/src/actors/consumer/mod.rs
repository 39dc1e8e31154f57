//! The consumer side: the consumer supervisor ([`supervisor`]), one
//! partition consumer per assigned partition ([`partition`]), the record
//! fetcher task that polls the input consumer ([`fetcher`]) and the
//! partitions' own queues it reads ([`partition_queues`]), the slot
//! that keeps at most one of it ([`fetcher_slot`]), and the task that turns
//! the consumer's rebalance events into messages ([`rebalance`]).
//!
//! Guarantees: see each file; together, a partition's records reach its
//! partition consumer only after the coordinator positioned it, and only
//! those of the latest positioning.

pub mod fetcher;
pub mod fetcher_slot;
pub mod partition;
pub mod partition_queues;
pub mod rebalance;
pub mod supervisor;
