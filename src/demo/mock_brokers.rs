//! The demo's Kafka: librdkafka's mock cluster with three brokers, in this
//! process, reachable on loopback ports like a real cluster.
//!
//! Guarantees: the topics exist before any client connects; the Produce
//! API is capped at v9 before any client connects (above it a leader change
//! crashes the mock) and the group and transaction coordinators stay on
//! broker 1 (a coordinator that moves makes `send_offsets_to_transaction`
//! hang, librdkafka #5511). The mock has no transaction semantics: see
//! [`super`] for how the verdict copes.
//!
//! The cluster is `!Send`: it lives in the demo's main future and is
//! dropped last, after every client is gone.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaApiKey;

/// Longest wait for the mock cluster's metadata and watermarks.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Brokers of the mock cluster (ids 1 to 3).
pub const BROKERS: i32 = 3;

/// Partitions of the input and output topics.
pub const PARTITIONS: i32 = 3;

/// The three topics of the demo pipeline.
#[derive(Debug, Clone)]
pub struct DemoTopics {
    /// ad events in
    pub input: String,
    /// billed events out
    pub output: String,
    /// dead letters out
    pub dlq: String,
}

/// A running mock cluster with the demo's topics.
pub struct MockBrokers {
    cluster: MockCluster<'static, DefaultProducerContext>,
    topics: DemoTopics,
    leader_moves: i32,
}

impl std::fmt::Debug for MockBrokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockBrokers")
            .field("bootstrap", &self.cluster.bootstrap_servers())
            .field("topics", &self.topics)
            .finish()
    }
}

impl MockBrokers {
    /// Starts the cluster and creates the topics; `group_id` and
    /// `transactional_id` get their coordinators on broker 1.
    pub fn start(
        topics: DemoTopics,
        group_id: &str,
        transactional_id: &str,
    ) -> anyhow::Result<MockBrokers> {
        let cluster = MockCluster::new(BROKERS).context("cannot start the mock Kafka cluster")?;
        cluster.create_topic(&topics.input, PARTITIONS, BROKERS)?;
        cluster.create_topic(&topics.output, PARTITIONS, BROKERS)?;
        cluster.create_topic(&topics.dlq, 1, BROKERS)?;
        cluster.apiversion(RDKafkaApiKey::Produce, None, Some(9))?;
        cluster.coordinator(MockCoordinator::Group(group_id.to_owned()), 1)?;
        cluster.coordinator(MockCoordinator::Transaction(transactional_id.to_owned()), 1)?;
        Ok(MockBrokers {
            cluster,
            topics,
            leader_moves: 0,
        })
    }

    /// The bootstrap servers.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Moves the leader of every input and output partition to the next
    /// broker; returns how many partitions changed leader.
    pub fn move_leaders(&mut self) -> anyhow::Result<u64> {
        self.leader_moves += 1;
        let mut moved = 0;
        for partition in 0..PARTITIONS {
            let leader = 1 + (self.leader_moves + partition).rem_euclid(BROKERS);
            for topic in [&self.topics.input, &self.topics.output] {
                self.cluster
                    .partition_leader(topic, partition, Some(leader))
                    .with_context(|| format!("cannot move the leader of {topic}/{partition}"))?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}

/// Records the mock cluster deleted from the start of `topic` (the sum of
/// its partitions' low watermarks; nothing is ever deleted by onceflow).
pub async fn records_deleted_by_mock(bootstrap: &str, topic: &str) -> anyhow::Result<i64> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .context("cannot create a client to read watermarks")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), WATERMARK_TIMEOUT)
            .with_context(|| format!("cannot read the metadata of {topic}"))?;
        let mut deleted = 0;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, _high) = consumer
                .fetch_watermarks(&topic, partition.id(), WATERMARK_TIMEOUT)
                .with_context(|| format!("cannot read the watermarks of {topic}"))?;
            deleted += low.max(0);
        }
        Ok(deleted)
    })
    .await
    .context("the watermark reader stopped")?
}
