//! Kafka admin steps of the harness that librdkafka offers: topics created
//! with the cluster's replication (3 on the test cluster, 1 on a single
//! broker) and waited for, partition counts and broker counts from a fresh
//! metadata request.

use crate::bail;
use crate::error::{Context, Result};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

use super::wait_until;

fn admin_client(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("cannot create a kafka admin client")
}

/// Number of brokers in the cluster metadata.
pub async fn fetch_broker_count(bootstrap: &str) -> Result<usize> {
    let admin = admin_client(bootstrap)?;
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(3))
            .context("metadata request failed")?;
        Ok(metadata.brokers().len())
    })
    .await
    .context("the metadata task failed")?
}

/// Partitions of `topic` per the metadata, or `None` while it does not exist.
pub(crate) async fn partition_count(bootstrap: &str, topic: &str) -> Result<Option<usize>> {
    let admin = admin_client(bootstrap)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .with_context(|| format!("cannot fetch the metadata of topic {topic}"))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len()))
    })
    .await
    .context("the metadata task failed")?
}

/// Creates `topic` with `partitions` partitions, replicated on up to three
/// brokers (an existing topic is fine), and waits until its metadata shows
/// them.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin = admin_client(bootstrap)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // Every partition on up to three brokers: the production rule
    // (`min.insync.replicas=2` needs at least two in sync).
    let replication = i32::try_from(fetch_broker_count(bootstrap).await?.min(3)).unwrap_or(1);
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .with_context(|| format!("cannot create topic {topic}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    let wanted = usize::try_from(partitions).unwrap_or(0);
    wait_until(
        Duration::from_secs(15),
        &format!("topic {topic} exists"),
        || async {
            Ok(partition_count(bootstrap, topic)
                .await?
                .is_some_and(|n| n >= wanted))
        },
    )
    .await
}
