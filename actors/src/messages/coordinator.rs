//! The messages of the transaction coordinator.
//!
//! Guarantees: the coordinator handles them one at a time, between commit
//! cycles: a drain or an assignment never interleaves with a cycle.

use ractor::{ActorRef, RpcReplyPort};

use super::partition::PartitionConsumerMsg;

/// Messages of the coordinator.
#[derive(Debug)]
pub enum CoordinatorMsg {
    /// time for a commit cycle
    Tick,
    /// partitions (re)assigned to this instance, with their consumers
    PartitionsAssigned(Vec<(i32, ActorRef<PartitionConsumerMsg>)>),
    /// partitions taken away
    PartitionsRevoked(Vec<i32>),
    /// retry positioning partitions whose recovery could not be read
    RetryRecovery,
    /// run one last cycle and reply (graceful shutdown)
    Flush(RpcReplyPort<()>),
    /// the circuit breaker opened: rewind and pause every partition
    BreakerOpened,
    /// the circuit breaker closed: position the partitions again
    BreakerClosed,
    /// these partitions are about to be revoked: finish with them (the
    /// cycle in flight has ended by the time this is handled) and reply
    DrainPartitions(Vec<i32>, RpcReplyPort<()>),
}
