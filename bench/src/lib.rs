//! onceflow's benchmark, in one run on the real Kafka cluster and the
//! PostgreSQL of the tests (see `docs/performance.md`):
//!
//! 1. PostgreSQL's own ceiling for the same writes ([`postgres_ceiling`]),
//!    and onceflow's write path alone, without Kafka ([`store_path`]);
//! 2. onceflow exactly-once from a cold backlog ([`backlog_run`]);
//! 3. onceflow at-least-once from the same backlog, so the cost of
//!    exactly-once is a measured ratio;
//! 4. the per-message pattern, one database and one Kafka transaction per
//!    record ([`per_message`]);
//! 5. latency at half the exactly-once maximum ([`latency_run`]).
//!
//! Guarantees: every onceflow run is judged by the verdict of its
//! guarantee (a run that loses or, under exactly-once, duplicates anything
//! fails instead of reporting a figure); every figure comes from the same
//! run on the same machine, and the report gives each as a ratio to the
//! others.

pub mod backlog_run;
pub mod error;
pub mod latency_run;
pub mod machine_cpu;
pub mod per_message;
pub mod postgres_ceiling;
pub mod process_usage;
pub mod quantiles;
pub mod report;
pub mod store_path;

use std::path::PathBuf;
use std::time::Duration;

use onceflow_actors::settings::Guarantee;
use onceflow_chaos::harness::WorkloadSpec;

pub use error::{BenchError, Result};
pub use report::BenchReport;

/// What one benchmark run measures.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// the `onceflow` binary to measure
    pub binary: PathBuf,
    /// whether that binary was built with optimisations (said in the report)
    pub release_build: bool,
    /// records of the cold backlog (and of the ceiling)
    pub records: u64,
    /// input partitions
    pub partitions: i32,
    /// seed of the generated input
    pub seed: u64,
    /// records of the per-message run
    pub per_message_records: u64,
    /// seconds of the steady-rate run
    pub steady_seconds: u64,
    /// rows per transaction of the ceiling
    pub ceiling_batch_rows: u64,
    /// longest a backlog run may take
    pub timeout: Duration,
}

/// The benchmark's input: valid events with 1 % invalid records and 1 %
/// repeats (the shape of a production stream, not of a chaos run).
pub fn bench_workload(records: u64, partitions: i32, seed: u64) -> WorkloadSpec {
    WorkloadSpec {
        invalid_share: 0.01,
        repeat_share: 0.01,
        conflicting_repeats: false,
        awkward_share: 0.0,
        ..WorkloadSpec::mixed(records, partitions, seed)
    }
}

/// Runs every step, telling `progress` which one runs.
pub async fn run(options: &BenchOptions, progress: &dyn Fn(&str)) -> Result<BenchReport> {
    let workload = || bench_workload(options.records, options.partitions, options.seed);
    progress("PostgreSQL ceiling");
    let ceiling = postgres_ceiling::postgres_ceiling(
        options.records,
        options.partitions,
        options.ceiling_batch_rows,
    )
    .await?;
    progress("onceflow's write path alone");
    let store_path = store_path::store_path(
        workload(),
        onceflow_actors::settings::Settings::default().max_batch_records,
    )
    .await?;
    progress("onceflow exactly-once, cold backlog");
    let exactly_once = backlog_run::backlog_run(
        &options.binary,
        workload(),
        Guarantee::ExactlyOnce,
        options.timeout,
    )
    .await?;
    progress("onceflow at-least-once, cold backlog");
    let at_least_once = backlog_run::backlog_run(
        &options.binary,
        workload(),
        Guarantee::AtLeastOnce,
        options.timeout,
    )
    .await?;
    progress("per-message pattern");
    let per_message = per_message::per_message_run(
        &options.binary,
        bench_workload(
            options.per_message_records,
            options.partitions,
            options.seed,
        ),
    )
    .await?;
    // Half the measured maximum, but never more input in the steady phase
    // than twice the backlog (a small run stays small).
    let half_rate = ((exactly_once.processing_records_per_second / 2.0) as u64)
        .min(options.records.saturating_mul(2) / options.steady_seconds.max(1))
        .max(1);
    progress("latency at half the maximum rate");
    let latency = latency_run::latency_run(
        &options.binary,
        options.partitions,
        half_rate,
        options.steady_seconds,
        options.seed,
    )
    .await?;
    Ok(BenchReport::new(
        report::Machine::current(options.release_build),
        ceiling,
        store_path,
        exactly_once,
        at_least_once,
        per_message,
        latency,
    ))
}
