//! The pipeline's Prometheus metrics, served on `/metrics`: one registry
//! per pipeline, every labelled series created at zero for its known labels,
//! the build and the process described.
//!
//! Guarantees: updating a metric never blocks or fails; counters only go
//! up (a replay may count a record again: metrics describe work done, the
//! tables and topics are the ledger).

use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Circuit breaker states as exported (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    /// the database is used normally
    Closed = 0,
    /// the database is not used; partitions are paused
    Open = 1,
    /// one probe is testing the database
    HalfOpen = 2,
}

impl BreakerState {
    pub(crate) fn from_u8(value: u8) -> BreakerState {
        match value {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Label value of a transition to this state.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A phase of a commit cycle, as the `phase` label of
/// `onceflow_commit_phase_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPhase {
    /// every partition's database write, in parallel
    Database,
    /// outputs produced and acknowledged, offsets sent, Kafka commit
    Kafka,
}

impl CommitPhase {
    /// Label value of the phase.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitPhase::Database => "database",
            CommitPhase::Kafka => "kafka",
        }
    }
}

/// The buckets of a cycle's duration and of its phases: bounds at the
/// figures people set objectives on (100 ms, 1 s), and close enough between
/// them for a p99 to mean something (with only 250/500/1,000 ms, two slow
/// cycles of 120, 504 and 537 ms, put the interpolated p99 at 700 ms).
fn commit_duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75,
        1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// All metrics of one pipeline.
#[derive(Debug)]
pub struct PipelineMetrics {
    registry: Registry,
    /// records read from the input topic
    pub records_consumed: Counter,
    /// events stored for the first time and committed
    pub events_committed: Counter,
    /// upstream repeats dropped
    pub duplicates: Counter,
    /// dead-letter records committed, by kind
    pub dlq_records: Family<Labels, Counter>,
    /// committed Kafka transactions
    pub txn_commits: Counter,
    /// aborted cycles, by reason
    pub txn_aborts: Family<Labels, Counter>,
    /// duration of a whole commit cycle
    pub commit_duration: Histogram,
    /// duration of each phase of a committed cycle, by `phase` (see
    /// [`CommitPhase`])
    pub commit_phase_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// input record timestamp to the Kafka commit of its cycle
    pub end_to_end_latency: Histogram,
    /// high watermark minus position, per partition
    pub consumer_lag: Family<Labels, Gauge>,
    /// age of the open transaction in seconds (0 when none is open)
    pub open_txn_age_seconds: Gauge<f64, AtomicU64>,
    /// breaker state
    pub circuit_breaker_state: Gauge,
    /// breaker transitions, by target state
    pub circuit_breaker_transitions: Family<Labels, Counter>,
    /// actor restarts, by actor
    pub actor_restarts: Family<Labels, Counter>,
    /// 1, labelled with the version
    pub build_info: Family<Labels, Gauge>,
    /// the process's resident memory
    pub process_resident_memory_bytes: Gauge,
    /// CPU time of the process (user and system)
    pub process_cpu_seconds: Counter<f64, AtomicU64>,
    /// open file descriptors of the process
    pub process_open_fds: Gauge,
    /// start of the process, unix seconds
    pub process_start_time_seconds: Gauge<f64, AtomicU64>,
}

impl PipelineMetrics {
    pub(crate) fn new() -> PipelineMetrics {
        let mut registry = Registry::default();
        let metrics = PipelineMetrics {
            records_consumed: Counter::default(),
            events_committed: Counter::default(),
            duplicates: Counter::default(),
            dlq_records: Family::default(),
            txn_commits: Counter::default(),
            txn_aborts: Family::default(),
            commit_duration: commit_duration_histogram(),
            commit_phase_duration: Family::new_with_constructor(commit_duration_histogram),
            // 5 ms to about 2.7 minutes (a backlog's records wait long).
            end_to_end_latency: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            consumer_lag: Family::default(),
            open_txn_age_seconds: Gauge::default(),
            circuit_breaker_state: Gauge::default(),
            circuit_breaker_transitions: Family::default(),
            actor_restarts: Family::default(),
            build_info: Family::default(),
            process_resident_memory_bytes: Gauge::default(),
            process_cpu_seconds: Counter::default(),
            process_open_fds: Gauge::default(),
            process_start_time_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        metrics.set_initial_values();
        registry.register(
            "onceflow_records_consumed",
            "Records read from the input topic",
            metrics.records_consumed.clone(),
        );
        registry.register(
            "onceflow_events_committed",
            "Events stored for the first time, committed",
            metrics.events_committed.clone(),
        );
        registry.register(
            "onceflow_duplicates",
            "Upstream repeats of an event already stored",
            metrics.duplicates.clone(),
        );
        registry.register(
            "onceflow_dlq_records",
            "Dead-letter records committed, by kind",
            metrics.dlq_records.clone(),
        );
        registry.register(
            "onceflow_txn_commits",
            "Committed commit cycles",
            metrics.txn_commits.clone(),
        );
        registry.register(
            "onceflow_txn_aborts",
            "Aborted commit cycles, by reason",
            metrics.txn_aborts.clone(),
        );
        registry.register(
            "onceflow_commit_duration_seconds",
            "Duration of a commit cycle (database and Kafka)",
            metrics.commit_duration.clone(),
        );
        registry.register(
            "onceflow_commit_phase_duration_seconds",
            "Duration of each phase of a committed cycle: database (every partition's write, in parallel), kafka (outputs produced and acknowledged, offsets sent, transaction committed)",
            metrics.commit_phase_duration.clone(),
        );
        registry.register(
            "onceflow_end_to_end_latency_seconds",
            "From an input record's timestamp to the Kafka commit of its outputs (records with a timestamp)",
            metrics.end_to_end_latency.clone(),
        );
        registry.register(
            "onceflow_consumer_lag",
            "Records between the group's committed offset and the high watermark, per assigned partition",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "onceflow_open_txn_age_seconds",
            "Age of the open Kafka transaction",
            metrics.open_txn_age_seconds.clone(),
        );
        registry.register(
            "onceflow_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            metrics.circuit_breaker_state.clone(),
        );
        registry.register(
            "onceflow_circuit_breaker_transitions",
            "Circuit breaker transitions, by target state",
            metrics.circuit_breaker_transitions.clone(),
        );
        registry.register(
            "onceflow_actor_restarts",
            "Actor restarts by supervisors, by actor",
            metrics.actor_restarts.clone(),
        );
        metrics.register_process(&mut registry);
        PipelineMetrics {
            registry,
            ..metrics
        }
    }

    /// The values a registry starts with: the build, the start time, and a
    /// series per breaker transition.
    fn set_initial_values(&self) {
        self.build_info
            .get_or_create(&label("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        self.process_start_time_seconds
            .set(unix_millis() as f64 / 1_000.0);
        for phase in [CommitPhase::Database, CommitPhase::Kafka] {
            let _ = self
                .commit_phase_duration
                .get_or_create(&label("phase", phase.as_str()));
        }
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            let _ = self
                .circuit_breaker_transitions
                .get_or_create(&label("to", state.as_str()));
        }
    }

    /// Registers what describes the process rather than the pipeline: the
    /// trace export's drops, the build, and the process figures.
    fn register_process(&self, registry: &mut Registry) {
        let metrics = self;
        registry.register(
            "onceflow_trace_spans_dropped",
            "Spans the trace exporter's queue had no room for (never exported)",
            crate::telemetry::spans::dropped_spans(),
        );
        registry.register(
            "onceflow_build_info",
            "The running build: 1, labelled with its version",
            metrics.build_info.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the process",
            prometheus_client::registry::Unit::Bytes,
            metrics.process_resident_memory_bytes.clone(),
        );
        registry.register_with_unit(
            "process_cpu",
            "CPU time of the process, user and system",
            prometheus_client::registry::Unit::Seconds,
            metrics.process_cpu_seconds.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of the process",
            metrics.process_open_fds.clone(),
        );
        registry.register_with_unit(
            "process_start_time",
            "Start of the process, unix time",
            prometheus_client::registry::Unit::Seconds,
            metrics.process_start_time_seconds.clone(),
        );
    }

    /// Creates every labelled series at zero, so the first dead letter,
    /// abort or restart after a start is an increase `rate()` sees.
    pub fn start_series_at_zero(
        &self,
        dlq_kinds: &[&str],
        abort_reasons: &[&str],
        actors: &[&str],
    ) {
        for kind in dlq_kinds {
            let _ = self.dlq_records.get_or_create(&label("kind", *kind));
        }
        for reason in abort_reasons {
            let _ = self.txn_aborts.get_or_create(&label("reason", *reason));
        }
        for actor in actors {
            let _ = self.actor_restarts.get_or_create(&label("actor", *actor));
        }
    }

    /// Reads the process figures from `/proc/self` (Linux; elsewhere they
    /// stay at zero): resident memory, CPU time of every thread (user and
    /// system, from `stat`), open descriptors.
    fn update_process_metrics(&self) {
        let Ok(process) = procfs::process::Process::myself() else {
            return;
        };
        if let Ok(stat) = process.stat() {
            let page_size = procfs::page_size();
            self.process_resident_memory_bytes
                .set(i64::try_from(stat.rss.saturating_mul(page_size)).unwrap_or(i64::MAX));
            let ticks = stat.utime.saturating_add(stat.stime);
            let seconds = ticks as f64 / procfs::ticks_per_second() as f64;
            let counted = self.process_cpu_seconds.get();
            if seconds > counted {
                self.process_cpu_seconds.inc_by(seconds - counted);
            }
        }
        if let Ok(descriptors) = process.fd_count() {
            self.process_open_fds
                .set(i64::try_from(descriptors).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.update_process_metrics();
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

pub(crate) fn label(name: &str, value: impl Into<String>) -> Labels {
    vec![(name.to_owned(), value.into())]
}

#[cfg(test)]
mod tests {
    use crate::telemetry::status::PipelineStatus;

    /// Spins until the calling thread has run on a CPU for `cpu` (its own
    /// time, `/proc/thread-self/schedstat`): a wall-clock spin gets less
    /// CPU than its length when the tests beside it keep the cores busy.
    fn spin_on_cpu_for(cpu: std::time::Duration) {
        let on_cpu = || -> u128 {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|text| text.split_whitespace().next()?.parse().ok())
                .expect("/proc/thread-self/schedstat")
        };
        let start = on_cpu();
        let mut sum = 0u64;
        while on_cpu() - start < cpu.as_nanos() {
            for _ in 0..10_000 {
                sum = std::hint::black_box(sum.wrapping_mul(31).wrapping_add(7));
            }
        }
        std::hint::black_box(sum);
    }

    #[test]
    fn labelled_series_start_at_zero_and_the_build_and_process_are_described() {
        let status = PipelineStatus::default();
        status
            .metrics()
            .start_series_at_zero(&["invalid-json"], &["database"], &["db_writer"]);
        // CPU spent on another thread counts: the process's time, not the
        // main thread's.
        std::thread::spawn(|| spin_on_cpu_for(std::time::Duration::from_millis(300)))
            .join()
            .expect("the spinning thread ends");
        let text = status.metrics().encode();
        for line in [
            "onceflow_dlq_records_total{kind=\"invalid-json\"} 0",
            "onceflow_txn_aborts_total{reason=\"database\"} 0",
            "onceflow_actor_restarts_total{actor=\"db_writer\"} 0",
            "onceflow_circuit_breaker_transitions_total{to=\"open\"} 0",
            "onceflow_commit_phase_duration_seconds_count{phase=\"database\"} 0",
            "onceflow_commit_phase_duration_seconds_count{phase=\"kafka\"} 0",
            &format!(
                "onceflow_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|exposed| exposed == line),
                "no `{line}` in\n{text}"
            );
        }
        let figure = |name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert!(figure("process_resident_memory_bytes") > 1_000_000.0);
        assert!(figure("process_cpu_seconds_total") >= 0.2);
        assert!(figure("process_open_fds") >= 3.0);
        assert!(figure("process_start_time_seconds") > 1.7e9);
    }
}
