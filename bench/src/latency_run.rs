//! Latency at a steady rate: one instance with the product's defaults, the
//! input written at a fixed rate (half the measured maximum, by default)
//! for a while, and a `read_committed` reader of the output beside it.
//!
//! - end-to-end latency of a record: the moment the reader first sees its
//!   output minus the input record's timestamp (its producer's create time),
//!   per distinct event, all on this machine's clock;
//! - commit latency: onceflow's own `onceflow_commit_duration_seconds`
//!   histogram over the run (database and Kafka commit of a cycle),
//!   quantiles interpolated within buckets as Prometheus'
//!   `histogram_quantile` does.
//!
//! Both measure the steady rate, not the instance's start: before the
//! measured run, [`WARM_UP_SECONDS`] of input at the same rate are written
//! and committed (other event ids), and the histogram, the CPU and the
//! end-to-end latencies count only what came after. A fresh instance's
//! first transactions (new transactional id, first writes to the output
//! partitions) took 700 ms here, and the backlog they left took seconds to
//! drain: those cycles were the run's p99. The start is what the backlog
//! runs' "with start-up" figures measure.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onceflow_actors::settings::Guarantee;
use onceflow_actors::telemetry::metrics::CommitPhase;
use onceflow_chaos::harness::{Metrics, Scenario, WorkloadSpec, read_committed, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::backlog_run::{check_still_running, env_refs, product_env};
use crate::error::{BenchError, Result};
use crate::process_usage::process_usage;
use crate::quantiles::{Quantiles, histogram_quantile, quantiles_of};

/// The figures of one steady-rate run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyRun {
    /// input records per second written
    pub rate: u64,
    /// seconds the input was written for
    pub seconds: u64,
    /// seconds of input at the same rate written and committed before
    /// (not measured)
    pub warm_up_seconds: u64,
    /// end-to-end latency, ms (input timestamp → visible downstream)
    pub end_to_end_ms: Quantiles,
    /// commit latency of a cycle, ms (onceflow's histogram)
    pub commit_p50_ms: f64,
    /// commit latency of a cycle, ms (onceflow's histogram)
    pub commit_p99_ms: f64,
    /// cycles committed during the run
    pub cycles: f64,
    /// of a cycle, its database phase (every partition's write), ms
    pub database_phase_ms: PhaseLatency,
    /// of a cycle, its Kafka phase (produce, acknowledgements, offsets,
    /// commit), ms
    pub kafka_phase_ms: PhaseLatency,
    /// records per second committed, from the first input record written
    /// to both commits of the last
    pub achieved_records_per_second: f64,
    /// onceflow's CPU µs per record over the steady run (all threads)
    pub cpu_us_per_record: f64,
    /// onceflow's peak resident memory, MiB (`VmHWM`)
    pub peak_rss_mib: f64,
}

/// p50 and p99 of a histogram over the run, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PhaseLatency {
    /// median, ms
    pub p50: f64,
    /// 99th percentile, ms
    pub p99: f64,
}

impl PhaseLatency {
    fn of(buckets: &[(f64, f64)]) -> PhaseLatency {
        PhaseLatency {
            p50: histogram_quantile(0.5, buckets) * 1e3,
            p99: histogram_quantile(0.99, buckets) * 1e3,
        }
    }
}

const COMMIT_BUCKETS: &str = "onceflow_commit_duration_seconds_bucket";
const PHASE_BUCKETS: &str = "onceflow_commit_phase_duration_seconds_bucket";

/// Seconds of input at the run's rate written and committed before the
/// measured run.
pub const WARM_UP_SECONDS: u64 = 5;

/// Added to the seed of the warm-up's input, so its event ids are not the
/// measured run's.
const WARM_UP_SEED_OFFSET: u64 = 0x5741_524d;

/// Input at a steady rate: valid, distinct events only.
fn steady_input(records: u64, partitions: i32, seed: u64) -> WorkloadSpec {
    WorkloadSpec {
        invalid_share: 0.0,
        repeat_share: 0.0,
        conflicting_repeats: false,
        awkward_share: 0.0,
        ..WorkloadSpec::mixed(records, partitions, seed)
    }
}

/// Waits until every partition's stored and group offsets reached its end,
/// failing at once if the instance exits and after 120 s.
async fn wait_for_catch_up(
    scenario: &Scenario,
    service: &mut onceflow_chaos::harness::Service,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let progress = scenario.partition_progress().await?;
        if progress.iter().all(|partition| partition.caught_up()) {
            return Ok(());
        }
        check_still_running(service, "latency run")?;
        if started.elapsed() > Duration::from_secs(120) {
            return Err(BenchError::TimedOut {
                step: "latency run",
                seconds: 120,
                detail: scenario.stalled_partitions().await?.join("; "),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `binary` at `rate` input records per second for `seconds`.
pub async fn latency_run(
    binary: &std::path::Path,
    partitions: i32,
    rate: u64,
    seconds: u64,
    seed: u64,
) -> Result<LatencyRun> {
    let scenario = Scenario::new(binary, partitions)
        .await?
        .without_live_reader();
    let env = product_env(Guarantee::ExactlyOnce);
    let mut service = scenario.start(&env_refs(&env))?;
    scenario
        .wait_for("the instance ready", Duration::from_secs(60), async |s| {
            matches!(s.http_get("/readyz").await, Ok((200, _)))
        })
        .await?;
    let warm_up_records = rate.saturating_mul(WARM_UP_SECONDS);
    scenario
        .generate_in_background(
            steady_input(
                warm_up_records,
                partitions,
                seed.wrapping_add(WARM_UP_SEED_OFFSET),
            ),
            rate,
        )
        .await??;
    wait_for_catch_up(&scenario, &mut service).await?;
    let before = scenario.metrics().await?;
    let pid = service.pid().ok_or(BenchError::Process {
        pid: 0,
        reason: "exited at once".to_owned(),
    })?;
    let usage_before = process_usage(pid)?;

    let stop = Arc::new(AtomicBool::new(false));
    let seen_count = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let stop = Arc::clone(&stop);
        let seen_count = Arc::clone(&seen_count);
        let bootstrap = scenario.bootstrap.clone();
        let topic = scenario.topics.output.clone();
        tokio::task::spawn_blocking(move || {
            watch_outputs(&bootstrap, &topic, partitions, &stop, &seen_count)
        })
    };
    let expected = rate.saturating_mul(seconds);
    // The input is written at `rate` (this waits until all of it is): the
    // committed rate counts from its first record to the catch-up.
    let writing_started = Instant::now();
    let measured_from_ms = now_ms();
    scenario
        .generate_in_background(steady_input(expected, partitions, seed), rate)
        .await??;
    if let Err(failed) = wait_for_catch_up(&scenario, &mut service).await {
        stop.store(true, Ordering::SeqCst);
        return Err(failed);
    }
    let steady_seconds = writing_started.elapsed().as_secs_f64();
    let usage_after = process_usage(pid)?;
    let after = scenario.metrics().await?;
    // Every event is committed now: the reader stops once it has seen them
    // all, the warm-up's too (or after 30 s, and the count says what it
    // missed).
    let reading = Instant::now();
    while (seen_count.load(Ordering::SeqCst) as u64) < expected + warm_up_records
        && reading.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.await??;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    let verdict = scenario.verdict().await?;
    if let Some(first) = verdict.violations.first() {
        return Err(BenchError::Violated {
            step: "latency run",
            count: verdict.violations.len(),
            first: first.clone(),
        });
    }
    if !exit.success() {
        return Err(BenchError::Violated {
            step: "latency run",
            count: 1,
            first: format!("the instance exited with {exit}"),
        });
    }

    let input = read_committed(&scenario.bootstrap, &scenario.topics.input).await?;
    let mut written: HashMap<Uuid, i64> = HashMap::new();
    for record in &input {
        if let (Some(event_id), Some(at)) =
            (event_id_of(record.value.as_deref()), record.timestamp_ms)
        {
            written
                .entry(event_id)
                .and_modify(|t| *t = (*t).min(at))
                .or_insert(at);
        }
    }
    // The measured run's events only: written after the warm-up committed.
    let latencies: Vec<f64> = seen
        .iter()
        .filter_map(|(event_id, seen_at)| {
            written
                .get(event_id)
                .filter(|written_at| **written_at >= measured_from_ms)
                .map(|written_at| (*seen_at - *written_at) as f64)
        })
        .collect();
    let commit = bucket_delta(&before, &after, COMMIT_BUCKETS, None)?;
    let phase = |phase: CommitPhase| {
        bucket_delta(
            &before,
            &after,
            PHASE_BUCKETS,
            Some(("phase", phase.as_str())),
        )
    };
    let database_phase = phase(CommitPhase::Database)?;
    let kafka_phase = phase(CommitPhase::Kafka)?;
    scenario.drop_database().await?;
    Ok(LatencyRun {
        rate,
        seconds,
        warm_up_seconds: WARM_UP_SECONDS,
        end_to_end_ms: quantiles_of(latencies),
        commit_p50_ms: histogram_quantile(0.5, &commit) * 1e3,
        commit_p99_ms: histogram_quantile(0.99, &commit) * 1e3,
        cycles: commit.last().map_or(0.0, |(_, count)| *count),
        database_phase_ms: PhaseLatency::of(&database_phase),
        kafka_phase_ms: PhaseLatency::of(&kafka_phase),
        achieved_records_per_second: expected as f64 / steady_seconds.max(f64::EPSILON),
        cpu_us_per_record: (usage_after.cpu_seconds - usage_before.cpu_seconds) * 1e6
            / expected.max(1) as f64,
        peak_rss_mib: usage_after.peak_rss_bytes as f64 / (1024.0 * 1024.0),
    })
}

/// This machine's clock, ms since the epoch (the clock of the input's
/// timestamps: the bench's own producer writes them).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The event id in an output or input value.
fn event_id_of(value: Option<&[u8]>) -> Option<Uuid> {
    let json: serde_json::Value = serde_json::from_slice(value?).ok()?;
    json.get("event_id")?.as_str()?.parse().ok()
}

/// Reads `topic` with `read_committed` until `stop`, recording when each
/// event id was first visible (ms since the epoch) and how many it saw.
fn watch_outputs(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    stop: &AtomicBool,
    seen_count: &AtomicUsize,
) -> Result<HashMap<Uuid, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("bench-latency"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut seen = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        // A transient poll error (a broker hiccup) is no reason to stop
        // watching: the count at the end says whether anything was missed.
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let seen_at = now_ms();
        if let Some(event_id) = event_id_of(message.payload()) {
            seen.entry(event_id).or_insert(seen_at);
            seen_count.store(seen.len(), Ordering::SeqCst);
        }
    }
    Ok(seen)
}

/// The buckets of the histogram `name` (its series with the label
/// `series`, if given) over the run: (upper bound in seconds, cumulative
/// count), ascending, `+Inf` last.
fn bucket_delta(
    before: &Metrics,
    after: &Metrics,
    name: &str,
    series: Option<(&str, &str)>,
) -> Result<Vec<(f64, f64)>> {
    let filter: Vec<(&str, &str)> = series.into_iter().collect();
    let before = buckets_of(before, name, &filter)?;
    let after = buckets_of(after, name, &filter)?;
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (le, count) in &after {
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse::<f64>().unwrap_or(f64::INFINITY)
        };
        let delta = count - before.get(le).copied().unwrap_or(0.0);
        buckets.insert(bound.to_bits(), (bound, delta));
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(sorted)
}

/// The cumulative count of each bucket (`le`) of `name`'s samples whose
/// labels include `filter`.
fn buckets_of(
    metrics: &Metrics,
    name: &str,
    filter: &[(&str, &str)],
) -> Result<BTreeMap<String, f64>> {
    let mut buckets = BTreeMap::new();
    for le in metrics.by_label(name, "le")?.into_keys() {
        let mut labels = filter.to_vec();
        labels.push(("le", le.as_str()));
        let count = metrics.sum(name, &labels)?;
        buckets.insert(le, count);
    }
    Ok(buckets)
}
