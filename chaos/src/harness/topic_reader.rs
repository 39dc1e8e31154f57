//! Reading a whole topic as a `read_committed` consumer sees it, up to each
//! partition's end (the last stable offset), and creating topics.

use super::*;
use crate::bail;
use crate::error::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::Duration;

/// One record of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Headers in order; a header without a value has an empty one.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp in ms since the epoch (create or log-append
    /// time, as the topic keeps it), if it has one.
    pub timestamp_ms: Option<i64>,
}

impl TopicRecord {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }

    /// The first header named `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// How many headers are named `name`.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(key, _)| key == name).count()
    }
}

/// Every record of `topic` that a `read_committed` consumer sees, from the
/// earliest offset to the end of each partition (for `read_committed` the
/// end is the last stable offset: aborted records, control records and open
/// transactions are not returned). Sorted by partition, then offset.
///
/// Uses a fresh consumer that assigns all partitions itself (no group join,
/// no commits) and stops once librdkafka reports the end of every partition;
/// fails after 60 s.
pub async fn read_committed(bootstrap: &str, topic: &str) -> Result<Vec<TopicRecord>> {
    let partitions = match partition_count(bootstrap, topic).await? {
        Some(count) => count,
        None => bail!("topic {topic} does not exist"),
    };
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_committed_blocking(&bootstrap, &topic, partitions))
        .await
        .context("the topic reader task failed")?
}

fn read_committed_blocking(
    bootstrap: &str,
    topic: &str,
    partitions: usize,
) -> Result<Vec<TopicRecord>> {
    let consumer: BaseConsumer<EndOfPartitionIsNoError> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("onceflow-harness-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        // An empty fetch (the end of a partition) answers after at most this.
        .set("fetch.wait.max.ms", "100")
        .create_with_context(EndOfPartitionIsNoError)
        .context("cannot create the topic reader")?;
    let mut assignment = TopicPartitionList::new();
    let partition_ids: Vec<i32> = (0..partitions)
        .map(|p| i32::try_from(p).context("too many partitions"))
        .collect::<Result<_>>()?;
    for &partition in &partition_ids {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .with_context(|| format!("cannot assign {topic}/{partition}"))?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot assign the partitions of {topic}"))?;

    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut records = Vec::new();
    let mut last_error = None;
    while at_end.len() < partition_ids.len() {
        if std::time::Instant::now() >= deadline {
            let missing: Vec<i32> = partition_ids
                .iter()
                .copied()
                .filter(|p| !at_end.contains(p))
                .collect();
            bail!(
                "reading {topic}: partitions {missing:?} did not reach their end within {} s \
                 ({} records read; last error: {})",
                READ_TIMEOUT.as_secs(),
                records.len(),
                last_error.map_or("none".to_owned(), |e: KafkaError| e.to_string())
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => last_error = Some(error),
            Some(Ok(message)) => {
                // A record after an EOF means the partition grew: read on.
                at_end.remove(&message.partition());
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(TopicRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp_ms: message.timestamp().to_millis(),
                });
            }
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// The high watermark (end) of every partition of `topic`, open
/// transactions included (asked as a `read_uncommitted` client: librdkafka's
/// default, `read_committed`, would answer with the last stable offset).
pub async fn high_watermarks(
    bootstrap: &str,
    topic: &str,
) -> Result<std::collections::BTreeMap<i32, i64>> {
    let partitions = match partition_count(bootstrap, topic).await? {
        Some(count) => count,
        None => bail!("topic {topic} does not exist"),
    };
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", unique("onceflow-harness-watermarks"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create()
            .context("cannot create the watermark reader")?;
        let mut out = std::collections::BTreeMap::new();
        for partition in 0..partitions {
            let partition = i32::try_from(partition).context("too many partitions")?;
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .with_context(|| format!("cannot read the watermarks of {topic}/{partition}"))?;
            out.insert(partition, high);
        }
        Ok(out)
    })
    .await
    .context("the watermark task failed")?
}

/// The reader asks for end-of-partition events; librdkafka also reports
/// them as "global errors", which are not errors here.
#[derive(Debug, Clone, Copy)]
pub struct EndOfPartitionIsNoError;

impl rdkafka::ClientContext for EndOfPartitionIsNoError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::error::RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndOfPartitionIsNoError {}
