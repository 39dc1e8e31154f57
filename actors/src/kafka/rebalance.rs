//! The input consumer's rebalance context.
//!
//! Guarantees: a newly assigned partition is paused before the rebalance
//! callback returns, so nothing is fetched from it until the coordinator
//! has positioned it at its recovery offset; a revocation waits (bounded)
//! until the coordinator has finished with the partitions.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::messages::consumer_supervisor::ConsumerSupervisorMsg;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::names::ActorNames;

/// The consumer context: forwards rebalances to the consumer supervisor.
#[derive(Debug, Clone)]
pub struct RebalanceContext {
    names: ActorNames,
    topic: String,
    /// the assignment before a failed rebalance (librdkafka unassigns on a
    /// rebalance error): what it took away must be revoked in the actors too
    assigned_before_error: Arc<std::sync::Mutex<Vec<i32>>>,
}

impl ClientContext for RebalanceContext {}

fn partitions_of(topic: &str, list: &TopicPartitionList) -> Vec<i32> {
    let mut partitions: Vec<i32> = list
        .elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| element.partition())
        .collect();
    partitions.sort_unstable();
    partitions
}

/// Longest wait for the coordinator to finish with revoked partitions.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl RebalanceContext {
    /// The context of the input consumer of `topic`.
    pub(crate) fn new(names: ActorNames, topic: String) -> RebalanceContext {
        RebalanceContext {
            names,
            topic,
            assigned_before_error: Arc::default(),
        }
    }

    /// Blocks the rebalance until the coordinator has finished the cycle in
    /// flight and forgotten `partitions`, so no later cycle commits them.
    /// If it does not answer in time the revocation goes on: a late commit is
    /// then refused by the group generation (Kafka) and the owner epoch
    /// (database), and its partitions replay elsewhere.
    fn drain_before_revocation(&self, partitions: &[i32]) {
        let Some(coordinator) = self.names.find_coordinator() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let partitions = partitions.to_vec();
        let drained = tokio::task::block_in_place(|| {
            runtime.block_on(coordinator.call(
                |reply| CoordinatorMsg::DrainPartitions(partitions, reply),
                Some(DRAIN_TIMEOUT),
            ))
        });
        if !matches!(drained, Ok(ractor::rpc::CallResult::Success(()))) {
            tracing::warn!(
                "coordinator did not drain revoked partitions in time; fencing protects them"
            );
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions = partitions_of(&self.topic, list);
                tracing::info!(?partitions, "partitions revoked");
                self.drain_before_revocation(&partitions);
                self.names
                    .cast_consumer_supervisor(ConsumerSupervisorMsg::PartitionsRevoked(partitions));
            }
            Rebalance::Error(_) => {
                let assigned = consumer
                    .assignment()
                    .map(|list| partitions_of(&self.topic, &list))
                    .unwrap_or_default();
                if let Ok(mut before) = self.assigned_before_error.lock() {
                    *before = assigned;
                }
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                if let Err(error) = consumer.pause(list) {
                    tracing::error!(%error, "cannot pause newly assigned partitions");
                }
                let partitions = partitions_of(&self.topic, list);
                tracing::info!(?partitions, "partitions assigned");
                self.names
                    .cast_consumer_supervisor(ConsumerSupervisorMsg::PartitionsAssigned(
                        partitions,
                    ));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                // librdkafka has unassigned (all, or the failed part): the
                // actors must stop serving what is no longer assigned, or a
                // partition would sit routed but never fetched.
                let still_assigned = consumer
                    .assignment()
                    .map(|list| partitions_of(&self.topic, &list))
                    .unwrap_or_default();
                let before = self
                    .assigned_before_error
                    .lock()
                    .map(|mut before| std::mem::take(&mut *before))
                    .unwrap_or_default();
                let revoked: Vec<i32> = before
                    .into_iter()
                    .filter(|partition| !still_assigned.contains(partition))
                    .collect();
                tracing::error!(%error, ?revoked, "rebalance failed; the partitions it unassigned are revoked until the group assigns them again");
                if !revoked.is_empty() {
                    self.names
                        .cast_consumer_supervisor(ConsumerSupervisorMsg::PartitionsRevoked(
                            revoked,
                        ));
                }
            }
        }
    }
}
