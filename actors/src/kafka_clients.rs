//! Construction of onceflow's two Kafka clients: the input consumer (static
//! group member, `read_committed`, no auto-commit) with its rebalance
//! context, and the transactional producer.
//!
//! Guarantees: offsets are never committed by the consumer itself (only by
//! the producer's transaction); a newly assigned partition is paused before
//! the rebalance callback returns, so nothing is fetched from it until the
//! coordinator has positioned it at its recovery offset.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::actor_names::ActorNames;
use crate::consumer_supervisor::ConsumerSupervisorMsg;
use crate::kafka_error::KafkaTxnError;
use crate::settings::Settings;
use crate::transaction_coordinator::CoordinatorMsg;

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
    /// Blocks the rebalance until the coordinator has finished the cycle in
    /// flight and forgotten `partitions`, so no later cycle commits them.
    /// If it does not answer in time the revocation goes on: a late commit is
    /// then refused by the group generation (Kafka) and the owner epoch
    /// (database), and its partitions replay elsewhere.
    fn drain_before_revocation(&self, partitions: &[i32]) {
        let Some(coordinator) = ActorNames::lookup::<CoordinatorMsg>(&self.names.coordinator())
        else {
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

/// The input consumer.
pub type InputConsumer = StreamConsumer<RebalanceContext>;

fn base_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &settings.kafka {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &settings.kafka_brokers)
        // `[kafka] debug = "…"` asks librdkafka for debug logs: let them through.
        .set_log_level(if settings.kafka.contains_key("debug") {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        });
    config
}

/// Creates the input consumer and subscribes it to the input topic.
pub fn create_input_consumer(
    settings: &Settings,
    names: &ActorNames,
) -> Result<Arc<InputConsumer>, KafkaError> {
    let context = RebalanceContext {
        names: names.clone(),
        topic: settings.input_topic.clone(),
        assigned_before_error: Arc::default(),
    };
    let mut config = base_config(settings);
    config
        .set("group.id", &settings.group_id)
        .set("group.instance.id", settings.instance_id())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    if !settings.kafka.contains_key("session.timeout.ms") {
        config.set("session.timeout.ms", "10000");
    }
    // `cooperative-sticky` by default: a rebalance moves only the partitions
    // that change owner, the others keep flowing. onceflow drains a revoked
    // partition before giving it up (`drain_before_revocation`) and handles
    // assignments incrementally (assigned partitions are added, revoked ones
    // removed), so both protocols are exactly-once; eager `roundrobin` can
    // still be chosen under `[kafka]`. It was eager before only because the
    // stand-in broker of the first tests often never gave a joining
    // cooperative member its assignment; on Apache Kafka the joining,
    // leaving, storming and stalled-cycle scenarios pass with it.
    if !settings.kafka.contains_key("partition.assignment.strategy") {
        config.set("partition.assignment.strategy", "cooperative-sticky");
    }
    let consumer: InputConsumer = config.create_with_context(context)?;
    consumer.subscribe(&[settings.input_topic.as_str()])?;
    Ok(Arc::new(consumer))
}

/// Creates the transactional producer and runs `init_transactions`, which
/// fences any earlier producer with the same `transactional.id` and aborts
/// (or completes) its open transaction. Blocking: call from a blocking task.
pub fn create_transactional_producer(settings: &Settings) -> Result<FutureProducer, KafkaTxnError> {
    let mut config = base_config(settings);
    config
        .set("transactional.id", settings.transactional_id())
        .set("enable.idempotence", "true")
        .set(
            "transaction.timeout.ms",
            settings.transaction_timeout_ms.to_string(),
        )
        .set("linger.ms", "5");
    let producer: FutureProducer = config.create().map_err(|source| KafkaTxnError::Client {
        operation: "create producer",
        source,
    })?;
    producer
        .init_transactions(Duration::from_millis(
            settings.kafka_call_timeout_ms.max(30_000),
        ))
        .map_err(|source| KafkaTxnError::Client {
            operation: "init_transactions",
            source,
        })?;
    Ok(producer)
}
