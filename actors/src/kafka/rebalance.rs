//! The input consumer's rebalance context: it tells the consumer side of
//! each rebalance over a channel of its own event type, [`RebalanceEvent`]
//! (quickwit's and vector's Kafka sources do the same), so it knows no
//! actor. The consumer supervisor subscribes ([`RebalanceEvents::subscribe`])
//! and owns the receiver.
//!
//! Guarantees:
//! - a newly assigned partition is paused before the rebalance callback
//!   returns, so nothing is fetched from it until the coordinator has
//!   positioned it at its recovery offset;
//! - a revocation blocks the callback until the receiver acknowledges it
//!   (a rendezvous: the coordinator has finished the cycle in flight and
//!   forgotten the partitions, so no later cycle commits them), at most
//!   [`REVOKE_ACK_TIMEOUT`]; the revocation then goes on: a late commit is
//!   refused by the group generation (Kafka) and the owner epoch
//!   (database), and its partitions replay elsewhere;
//! - the partitions a failed rebalance took away are revoked on the
//!   consumer side too, so no partition sits routed but never fetched;
//! - events reach only the latest subscriber, in the order of the
//!   callbacks; with no subscriber (no consumer supervisor has started yet)
//!   they are dropped and the callback does not wait.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

/// Longest wait for the coordinator to finish with revoked partitions.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait of the revoke callback for the receiver's acknowledgement:
/// the drain's own bound plus a margin for handing the event over.
pub const REVOKE_ACK_TIMEOUT: Duration = Duration::from_secs(12);

/// What a rebalance tells the consumer side.
#[derive(Debug)]
pub enum RebalanceEvent {
    /// these partitions were assigned (and are paused)
    Assigned(Vec<i32>),
    /// these partitions are about to be revoked: finish with them, then
    /// acknowledge on `drained` (the callback waits for it)
    Revoking {
        /// the partitions
        partitions: Vec<i32>,
        /// the acknowledgement the revoke callback waits for
        drained: oneshot::Sender<()>,
    },
    /// a failed rebalance unassigned these partitions
    Lost(Vec<i32>),
}

/// Where the rebalance callbacks send their events: the latest subscriber.
#[derive(Debug, Clone, Default)]
pub struct RebalanceEvents {
    subscriber: Arc<Mutex<Option<mpsc::UnboundedSender<RebalanceEvent>>>>,
}

impl RebalanceEvents {
    /// A new receiver of the events; from now on they go to it only (an
    /// earlier receiver gets what was sent before and then ends).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<RebalanceEvent> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self
            .subscriber
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sender);
        receiver
    }

    /// Sends `event` to the subscriber; false if there is none.
    fn send(&self, event: RebalanceEvent) -> bool {
        let subscriber = self
            .subscriber
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match subscriber.as_ref() {
            Some(sender) => sender.send(event).is_ok(),
            None => {
                tracing::debug!("consumer supervisor is not running; message dropped");
                false
            }
        }
    }
}

/// The consumer context: sends rebalances to the subscriber of its events.
#[derive(Debug, Clone)]
pub struct RebalanceContext {
    topic: String,
    events: RebalanceEvents,
    /// the assignment before a failed rebalance (librdkafka unassigns on a
    /// rebalance error): what it took away must be revoked in the actors too
    assigned_before_error: Arc<Mutex<Vec<i32>>>,
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

impl RebalanceContext {
    /// The context of the input consumer of `topic`.
    pub fn new(topic: String) -> RebalanceContext {
        RebalanceContext {
            topic,
            events: RebalanceEvents::default(),
            assigned_before_error: Arc::default(),
        }
    }

    /// Where this context sends its events.
    pub fn events(&self) -> &RebalanceEvents {
        &self.events
    }

    /// Blocks the rebalance until the subscriber acknowledges the
    /// revocation of `partitions` (the coordinator has finished the cycle in
    /// flight and forgotten them), at most [`REVOKE_ACK_TIMEOUT`].
    fn revoke_and_wait(&self, partitions: Vec<i32>) {
        let (drained, acknowledged) = oneshot::channel();
        if !self.events.send(RebalanceEvent::Revoking {
            partitions,
            drained,
        }) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let waited = tokio::task::block_in_place(|| {
            runtime.block_on(tokio::time::timeout(REVOKE_ACK_TIMEOUT, acknowledged))
        });
        if !matches!(waited, Ok(Ok(()))) {
            tracing::warn!(
                "revocation not acknowledged in time by the consumer side; fencing protects the partitions"
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
                self.revoke_and_wait(partitions);
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
                self.events.send(RebalanceEvent::Assigned(partitions));
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
                    self.events.send(RebalanceEvent::Lost(revoked));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_go_to_the_latest_subscriber_only_in_order() {
        let events = RebalanceEvents::default();
        assert!(
            !events.send(RebalanceEvent::Assigned(vec![0])),
            "no subscriber: dropped"
        );
        let mut first = events.subscribe();
        assert!(events.send(RebalanceEvent::Assigned(vec![1])));
        let mut second = events.subscribe();
        assert!(events.send(RebalanceEvent::Lost(vec![2])));
        assert!(events.send(RebalanceEvent::Assigned(vec![3])));
        assert!(matches!(first.try_recv(), Ok(RebalanceEvent::Assigned(p)) if p == [1]));
        assert!(
            matches!(
                first.try_recv(),
                Err(mpsc::error::TryRecvError::Disconnected)
            ),
            "the replaced subscriber ends once drained"
        );
        assert!(matches!(second.try_recv(), Ok(RebalanceEvent::Lost(p)) if p == [2]));
        assert!(matches!(second.try_recv(), Ok(RebalanceEvent::Assigned(p)) if p == [3]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_waits_for_the_acknowledgement() {
        let context = RebalanceContext::new("in".to_owned());
        let mut events = context.events().subscribe();
        let acknowledged = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = {
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                let Some(RebalanceEvent::Revoking {
                    partitions,
                    drained,
                }) = events.recv().await
                else {
                    panic!("a revocation was sent");
                };
                assert_eq!(partitions, [4, 5]);
                tokio::time::sleep(Duration::from_millis(200)).await;
                acknowledged.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = drained.send(());
            })
        };
        let callback = tokio::spawn(async move {
            context.revoke_and_wait(vec![4, 5]);
        });
        callback.await.expect("callback");
        assert!(
            acknowledged.load(std::sync::atomic::Ordering::SeqCst),
            "the callback returned only after the acknowledgement"
        );
        listener.await.expect("listener");
    }
}
