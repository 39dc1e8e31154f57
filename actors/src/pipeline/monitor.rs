//! A background task that keeps the time-based metrics current: the age of
//! the open Kafka transaction (with a warning past `open_txn_warn_ms`) and
//! the consumer lag of every assigned partition, from the group's committed
//! offset (what is durably done) to the high watermark, so that a hanging
//! transaction shows as growing lag; the lag also feeds `/healthz`'s wedge
//! check. The committed offsets are read with a client of their own
//! ([`LagReader`]): the input consumer's reads of committed offsets wait
//! for any open transaction that sent offsets, so a hung transaction would
//! hide its own lag and never show as wedged. The watermarks are the input
//! consumer's (`read_committed`: the last stable offset), so records of an
//! upstream transaction still open, which nothing can read yet, are not
//! counted as waiting.
//!
//! Guarantees: it only reads; a measurement that fails for any partition
//! (assignment, committed offsets or watermarks unreadable) leaves the
//! previous figures and is retried on the next tick.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kafka::clients::{InputConsumer, LagReader};
use crate::settings::Settings;
use crate::telemetry::status::PipelineStatus;

/// How often the open transaction's age is checked.
const TXN_AGE_PERIOD: Duration = Duration::from_secs(1);
/// Lag is measured every this many age checks.
const LAG_EVERY_TICKS: u32 = 5;

/// Starts the monitor; it stops when `shutdown` is cancelled.
pub fn spawn_monitor(
    settings: Arc<Settings>,
    consumer: Arc<InputConsumer>,
    lag_reader: Arc<LagReader>,
    status: PipelineStatus,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    status.set_wedge_limit(settings.wedged_after());
    tokio::spawn(async move {
        let warn_after = settings.open_txn_warn;
        let mut ticker = tokio::time::interval(TXN_AGE_PERIOD);
        // A slow lag measurement delays the next checks; it does not repeat them.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick: u32 = 0;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if let Some(age) = status.open_txn_age()
                && age > warn_after
            {
                tracing::warn!(
                    open_ms = age.as_millis() as u64,
                    limit_ms = warn_after.as_millis() as u64,
                    "a Kafka transaction has been open too long"
                );
            }
            tick = tick.wrapping_add(1);
            if tick.is_multiple_of(LAG_EVERY_TICKS) {
                let consumer = Arc::clone(&consumer);
                let lag_reader = Arc::clone(&lag_reader);
                let topic = settings.input_topic.clone();
                let lags = tokio::task::spawn_blocking(move || {
                    measure_lag(&consumer, &lag_reader, &topic)
                })
                .await;
                if let Ok(Some(lags)) = lags {
                    status.set_assigned_lags(&lags);
                }
            }
        }
    })
}

/// `high watermark - committed offset` of every assigned partition (the
/// group's offset, committed with each Kafka transaction; before the first
/// commit, the low watermark), or `None` when the assignment, the committed
/// offsets or any partition's watermarks cannot be read now.
fn measure_lag(
    consumer: &InputConsumer,
    lag_reader: &LagReader,
    topic: &str,
) -> Option<Vec<(i32, i64)>> {
    let assignment = consumer
        .assignment()
        .inspect_err(|error| tracing::debug!(%error, "lag: assignment unreadable"))
        .ok()?;
    let committed = lag_reader
        .committed_offsets(assignment, Duration::from_secs(2))
        .inspect_err(|error| tracing::debug!(%error, "lag: committed offsets unreadable"))
        .ok()?;
    committed
        .elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| {
            let partition = element.partition();
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(2))
                .inspect_err(|error| {
                    tracing::debug!(%error, partition, "lag: watermarks unreadable");
                })
                .ok()?;
            let committed = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            Some((partition, (high - committed).max(0)))
        })
        .collect()
}
