//! Whether every record written to a topic is decided: committed or
//! aborted, so that a `read_committed` reader sees all it will ever see.
//!
//! A `read_committed` reader stops at a partition's last stable offset: the
//! first record of a transaction still open. A transaction left open by a
//! process that died and never came back (a joiner SIGKILLed in a rebalance
//! storm) stays open until the broker aborts it, `transaction.timeout.ms`
//! after it began plus up to one pass of the broker's abort check (10 s by
//! default), and until then it hides every later record of its partitions,
//! whoever committed them. A verdict read before that would call those
//! records lost; a verdict that never waits for it would miss a transaction
//! that stays open for good. So the verdict waits, bounded, and names a
//! partition still undecided at the bound as a liveness violation.
//!
//! The last stable offset is librdkafka's `ListOffsets` answer for a client
//! with `isolation.level = read_committed`, the high watermark the answer
//! for one with `read_uncommitted`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{high_watermarks, unique};
use crate::error::{Context, Result};

/// How long a verdict waits for a topic's records to be decided: the
/// product's default `transaction_timeout_ms` (60 s), the broker's abort
/// check interval (10 s) and a margin.
pub const DECIDED_WITHIN: Duration = Duration::from_secs(90);

/// A partition with records still undecided when the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecidedRange {
    /// the partition
    pub partition: i32,
    /// its last stable offset: the first record a `read_committed` reader
    /// cannot see yet
    pub stable: i64,
    /// the high watermark it had when the wait began
    pub end: i64,
}

/// Waits until every record written to `topic` before the call is decided
/// (each partition's last stable offset reached the high watermark it had
/// when the wait began), at most `within`. Returns the partitions still
/// undecided then, none when all were decided. Records written during the
/// wait are not waited for, so a pipeline still producing cannot hold it.
pub async fn wait_until_decided(
    bootstrap: &str,
    topic: &str,
    within: Duration,
) -> Result<Vec<UndecidedRange>> {
    let ends = high_watermarks(bootstrap, topic).await?;
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || wait_blocking(&bootstrap, &topic, ends, within))
        .await
        .context("the undecided-records task failed")?
}

/// Waits until each partition's last stable offset reaches its end in
/// `ends`, at most `within`.
fn wait_blocking(
    bootstrap: &str,
    topic: &str,
    mut ends: BTreeMap<i32, i64>,
    within: Duration,
) -> Result<Vec<UndecidedRange>> {
    let committed: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("onceflow-harness-stable"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("cannot create the last-stable-offset reader")?;
    let deadline = Instant::now() + within;
    loop {
        let mut undecided = Vec::new();
        for (&partition, &end) in &ends {
            let (_, stable) = committed
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .with_context(|| {
                    format!("cannot read the last stable offset of {topic}/{partition}")
                })?;
            if stable < end {
                undecided.push(UndecidedRange {
                    partition,
                    stable,
                    end,
                });
            }
        }
        if undecided.is_empty() || Instant::now() >= deadline {
            return Ok(undecided);
        }
        ends.retain(|partition, _| undecided.iter().any(|range| range.partition == *partition));
        std::thread::sleep(Duration::from_millis(250));
    }
}
