//! The consumer supervisor's end of the rebalance channel: a task that
//! turns each [`RebalanceEvent`] into the actors' messages.
//!
//! Guarantees:
//! - a revocation is acknowledged only after the coordinator has drained
//!   the partitions (finished the cycle in flight and forgotten them) or
//!   did not answer within [`DRAIN_TIMEOUT`], and after the consumer
//!   supervisor was told (so it stops their partition consumers): the
//!   revoke callback blocks until then;
//! - events are handled one at a time, in the order of the callbacks;
//! - the task does not depend on the supervisor that started it being
//!   alive: it finds the actors by name, as the callbacks did, so a
//!   revocation during a supervisor restart still drains the coordinator.
//!   It ends when its receiver is replaced (the next supervisor subscribes)
//!   and drained, or the consumer is dropped.

use ractor::rpc::CallResult;
use tokio::sync::mpsc;

use crate::kafka::rebalance::{DRAIN_TIMEOUT, RebalanceEvent};
use crate::messages::consumer_supervisor::ConsumerSupervisorMsg;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::names::ActorNames;

/// Starts the task that handles the rebalance events of `events`.
pub fn spawn_rebalance_listener(
    mut events: mpsc::UnboundedReceiver<RebalanceEvent>,
    names: ActorNames,
) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                RebalanceEvent::Assigned(partitions) => names.cast_consumer_supervisor(
                    ConsumerSupervisorMsg::PartitionsAssigned(partitions),
                ),
                RebalanceEvent::Revoking {
                    partitions,
                    drained,
                } => {
                    drain_before_revocation(&names, &partitions).await;
                    names.cast_consumer_supervisor(ConsumerSupervisorMsg::PartitionsRevoked(
                        partitions,
                    ));
                    let _ = drained.send(());
                }
                RebalanceEvent::Lost(partitions) => names
                    .cast_consumer_supervisor(ConsumerSupervisorMsg::PartitionsRevoked(partitions)),
            }
        }
    });
}

/// Waits until the coordinator has finished the cycle in flight and
/// forgotten `partitions`, so no later cycle commits them. If it does not
/// answer in time the revocation goes on: a late commit is then refused by
/// the group generation (Kafka) and the owner epoch (database), and its
/// partitions replay elsewhere.
async fn drain_before_revocation(names: &ActorNames, partitions: &[i32]) {
    let Some(coordinator) = names.find_coordinator() else {
        return;
    };
    let partitions = partitions.to_vec();
    let drained = coordinator
        .call(
            |reply| CoordinatorMsg::DrainPartitions(partitions, reply),
            Some(DRAIN_TIMEOUT),
        )
        .await;
    if !matches!(drained, Ok(CallResult::Success(()))) {
        tracing::warn!(
            "coordinator did not drain revoked partitions in time; fencing protects them"
        );
    }
}
