//! The messages of the consumer supervisor.
//!
//! Guarantees: a message to a supervisor that is restarting is dropped
//! (see [`super::names::ActorNames::cast_consumer_supervisor`]); the
//! supervisor reconciles with the consumer's assignment when it starts.

use super::partition::PositionOrder;

/// Messages of the consumer supervisor.
#[derive(Debug)]
pub enum ConsumerSupervisorMsg {
    /// the rebalance assigned these partitions (already paused)
    PartitionsAssigned(Vec<i32>),
    /// the rebalance revokes these partitions
    PartitionsRevoked(Vec<i32>),
    /// announce every running partition consumer to the coordinator
    ReportAssignment,
    /// position a partition (from the coordinator)
    Position(PositionOrder),
    /// restart the partition consumer of a partition (after its backoff)
    RestartPartition(i32),
    /// stop fetching these partitions until they are positioned again
    PausePartitions(Vec<i32>),
}
