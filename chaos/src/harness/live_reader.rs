//! A `read_committed` reader that runs *during* a scenario, as Kafka's own
//! exactly-once system test runs one beside the final read: it follows the
//! output and DLQ topics from the start while the faults happen, and samples
//! the stored offsets (`consumer_offsets.next_offset`) and the group's
//! committed Kafka offsets twice a second.
//!
//! What it can see that the final read cannot, named as Jepsen's Kafka
//! checker names them:
//! - `duplicate (live)`: one event id visible at two output positions at any
//!   moment of the run;
//! - `aborted read`: a record visible to a `read_committed` reader during the
//!   run that the final read does not return (its transaction aborted, or the
//!   log was truncated under it);
//! - `offsets backwards`: a stored or committed offset that moved back.
//!
//! Guarantee: the reader never commits and never joins a group, so it
//! changes nothing it observes; stopping it is bounded (a poll is 100 ms).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgPool;
use sqlx::sqlite::SqlitePool;
use uuid::Uuid;

use super::{PipelineTopics, Tables, TopicRecord, partition_count, unique};
use crate::error::{Context, Result};

/// How often the offsets are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The store the sampler reads, owned (pools are cheap handles).
#[derive(Debug, Clone)]
pub enum OwnedTables {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl OwnedTables {
    fn tables(&self) -> Tables<'_> {
        match self {
            OwnedTables::Postgres(pool) => Tables::Postgres(pool),
            OwnedTables::Sqlite(pool) => Tables::Sqlite(pool),
        }
    }
}

/// One record the live reader saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// the output's `event_id` (none for dead letters or unreadable values)
    pub event_id: Option<Uuid>,
    pub txn_id: Option<String>,
}

/// What the live reader saw over the run.
#[derive(Debug, Clone, Default)]
pub struct LiveObservations {
    pub records: Vec<SeenRecord>,
    /// every backwards move of a stored or committed offset, in words
    pub offset_regressions: Vec<String>,
    /// offset samples taken
    pub samples: u64,
}

/// The running reader and sampler; [`LiveReader::finish`] stops them.
#[derive(Debug)]
pub struct LiveReader {
    stop: Arc<AtomicBool>,
    reader: Option<tokio::task::JoinHandle<Result<Vec<SeenRecord>>>>,
    sampler: Option<tokio::task::JoinHandle<(Vec<String>, u64)>>,
}

impl Drop for LiveReader {
    /// A reader dropped unfinished stops too: its blocking poll loop would
    /// otherwise keep the test's runtime from shutting down.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where the live reader looks.
#[derive(Debug, Clone)]
pub struct LiveTarget {
    pub bootstrap: String,
    pub topics: PipelineTopics,
    pub group_id: String,
    pub input_partitions: i32,
    pub tables: OwnedTables,
}

impl LiveReader {
    /// Starts following `target`'s output and DLQ topics and sampling its
    /// offsets.
    pub fn start(target: LiveTarget) -> LiveReader {
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let output = partition_count(&target.bootstrap, &target.topics.output)
                    .await?
                    .unwrap_or(0);
                let dlq = partition_count(&target.bootstrap, &target.topics.dlq)
                    .await?
                    .unwrap_or(0);
                tokio::task::spawn_blocking(move || follow(&target, output, dlq, &stop))
                    .await
                    .context("the live reader task failed")?
            })
        };
        let sampler = {
            let stop = stop.clone();
            tokio::spawn(async move { sample_offsets(&target, &stop).await })
        };
        LiveReader {
            stop,
            reader: Some(reader),
            sampler: Some(sampler),
        }
    }

    /// Stops the reader and the sampler; what they saw.
    pub async fn finish(mut self) -> Result<LiveObservations> {
        self.stop.store(true, Ordering::Relaxed);
        let records = match self.reader.take() {
            Some(reader) => reader.await.context("the live reader panicked")??,
            None => Vec::new(),
        };
        let (offset_regressions, samples) = match self.sampler.take() {
            Some(sampler) => sampler.await.context("the offset sampler panicked")?,
            None => (Vec::new(), 0),
        };
        Ok(LiveObservations {
            records,
            offset_regressions,
            samples,
        })
    }
}

fn follow(
    target: &LiveTarget,
    output_partitions: usize,
    dlq_partitions: usize,
    stop: &AtomicBool,
) -> Result<Vec<SeenRecord>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &target.bootstrap)
        .set("group.id", unique("onceflow-harness-live-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("cannot create the live reader")?;
    let mut assignment = TopicPartitionList::new();
    for (topic, count) in [
        (&target.topics.output, output_partitions),
        (&target.topics.dlq, dlq_partitions),
    ] {
        for partition in 0..i32::try_from(count).unwrap_or(0) {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .context("cannot build the live reader's assignment")?;
        }
    }
    consumer
        .assign(&assignment)
        .context("cannot assign the live reader")?;
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        // Errors while brokers die are expected: the reader keeps going.
        let Ok(message) = polled else { continue };
        let txn_id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == "onceflow-txn-id")
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        });
        let event_id = (message.topic() == target.topics.output)
            .then(|| message.payload().and_then(event_id_of))
            .flatten();
        seen.push(SeenRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            event_id,
            txn_id,
        });
    }
    Ok(seen)
}

fn event_id_of(value: &[u8]) -> Option<Uuid> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    Uuid::parse_str(json.get("event_id")?.as_str()?).ok()
}

/// Samples the stored and committed offsets until `stop`; every backwards
/// move in words, and the number of samples.
async fn sample_offsets(target: &LiveTarget, stop: &AtomicBool) -> (Vec<String>, u64) {
    let mut stored_high: BTreeMap<i32, i64> = BTreeMap::new();
    let mut committed_high: BTreeMap<i32, i64> = BTreeMap::new();
    let mut regressions = Vec::new();
    let mut samples = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(SAMPLE_EVERY).await;
        // Before the first migration there is no table: nothing to sample.
        if let Ok(stored) = target
            .tables
            .tables()
            .consumer_offsets(&target.group_id, &target.topics.input)
            .await
        {
            for (partition, offset) in stored {
                if let Some(offset) = offset {
                    note_forward(
                        &mut stored_high,
                        "stored next_offset",
                        partition,
                        offset,
                        &mut regressions,
                    );
                }
            }
        }
        let committed = {
            let target = target.clone();
            tokio::task::spawn_blocking(move || committed_offsets(&target)).await
        };
        if let Ok(Ok(committed)) = committed {
            for (partition, offset) in committed {
                note_forward(
                    &mut committed_high,
                    "group committed offset",
                    partition,
                    offset,
                    &mut regressions,
                );
            }
        }
        samples += 1;
    }
    (regressions, samples)
}

fn note_forward(
    highest: &mut BTreeMap<i32, i64>,
    what: &str,
    partition: i32,
    offset: i64,
    regressions: &mut Vec<String>,
) {
    let previous = highest.entry(partition).or_insert(offset);
    if offset < *previous {
        regressions.push(format!(
            "offsets backwards: {what} of input partition {partition} moved from {previous} to {offset}"
        ));
    } else {
        *previous = offset;
    }
}

fn committed_offsets(target: &LiveTarget) -> Result<Vec<(i32, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &target.bootstrap)
        .set("group.id", &target.group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for partition in 0..target.input_partitions {
        list.add_partition(&target.topics.input, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(5))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((element.partition(), offset)),
            _ => None,
        })
        .collect())
}

/// The anomalies of a run: what the live reader saw against the final
/// `read_committed` read of the output and DLQ topics.
pub fn live_anomalies(
    live: &LiveObservations,
    topics: &PipelineTopics,
    final_output: &[TopicRecord],
    final_dlq: &[TopicRecord],
) -> Vec<String> {
    let mut anomalies = live.offset_regressions.clone();
    let in_final: HashSet<(&str, i32, i64)> = final_output
        .iter()
        .map(|record| (topics.output.as_str(), record.partition, record.offset))
        .chain(
            final_dlq
                .iter()
                .map(|record| (topics.dlq.as_str(), record.partition, record.offset)),
        )
        .collect();
    let mut positions_of: HashMap<Uuid, HashSet<(i32, i64)>> = HashMap::new();
    for record in &live.records {
        if !in_final.contains(&(record.topic.as_str(), record.partition, record.offset)) {
            anomalies.push(format!(
                "aborted read: {}/{}@{} (event {}, txn {}) was visible to a read_committed \
                 reader during the run but is not in the final read",
                record.topic,
                record.partition,
                record.offset,
                record.event_id.map_or("-".to_owned(), |id| id.to_string()),
                record.txn_id.as_deref().unwrap_or("-")
            ));
        }
        if let Some(event_id) = record.event_id {
            positions_of
                .entry(event_id)
                .or_default()
                .insert((record.partition, record.offset));
        }
    }
    let mut duplicated: Vec<(&Uuid, &HashSet<(i32, i64)>)> = positions_of
        .iter()
        .filter(|(_, positions)| positions.len() > 1)
        .collect();
    duplicated.sort_by_key(|(event_id, _)| **event_id);
    for (event_id, positions) in duplicated {
        let mut positions: Vec<String> = positions
            .iter()
            .map(|(partition, offset)| format!("{partition}@{offset}"))
            .collect();
        positions.sort();
        anomalies.push(format!(
            "duplicate (live): event {event_id} was visible at {} output positions during the run: {}",
            positions.len(),
            positions.join(", ")
        ));
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> PipelineTopics {
        PipelineTopics {
            input: "in".to_owned(),
            output: "out".to_owned(),
            dlq: "dlq".to_owned(),
        }
    }

    fn final_record(partition: i32, offset: i64) -> TopicRecord {
        TopicRecord {
            partition,
            offset,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    fn seen(topic: &str, partition: i32, offset: i64, event: Option<Uuid>) -> SeenRecord {
        SeenRecord {
            topic: topic.to_owned(),
            partition,
            offset,
            event_id: event,
            txn_id: Some("t".to_owned()),
        }
    }

    #[test]
    fn a_clean_run_has_no_anomaly() {
        let a = Uuid::new_v4();
        let live = LiveObservations {
            records: vec![seen("out", 0, 1, Some(a)), seen("dlq", 0, 0, None)],
            ..LiveObservations::default()
        };
        let anomalies = live_anomalies(
            &live,
            &topics(),
            &[final_record(0, 1)],
            &[final_record(0, 0)],
        );
        assert!(anomalies.is_empty(), "{anomalies:?}");
    }

    #[test]
    fn each_anomaly_is_named() {
        let a = Uuid::new_v4();
        let live = LiveObservations {
            records: vec![
                seen("out", 0, 1, Some(a)),
                seen("out", 1, 7, Some(a)),
                seen("dlq", 0, 3, None),
            ],
            offset_regressions: vec!["offsets backwards: x".to_owned()],
            samples: 3,
        };
        let anomalies = live_anomalies(
            &live,
            &topics(),
            &[final_record(0, 1), final_record(1, 7)],
            &[],
        );
        assert_eq!(anomalies.len(), 3, "{anomalies:?}");
        assert!(anomalies[0].starts_with("offsets backwards"));
        assert!(
            anomalies[1].starts_with("aborted read: dlq/0@3"),
            "{anomalies:?}"
        );
        assert!(anomalies[2].starts_with(&format!("duplicate (live): event {a}")));
    }

    #[test]
    fn an_offset_that_moves_back_is_a_regression() {
        let mut highest = BTreeMap::new();
        let mut regressions = Vec::new();
        for offset in [5, 9, 9, 12] {
            note_forward(
                &mut highest,
                "stored next_offset",
                0,
                offset,
                &mut regressions,
            );
        }
        assert!(regressions.is_empty());
        note_forward(&mut highest, "stored next_offset", 0, 11, &mut regressions);
        assert_eq!(
            regressions,
            vec!["offsets backwards: stored next_offset of input partition 0 moved from 12 to 11"]
        );
    }
}
