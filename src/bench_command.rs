//! `onceflow bench`: the command line of the benchmark (the runs live in
//! the `onceflow-bench` crate). Prints the table, writes the JSON report,
//! and exits non-zero if a run could not be measured or broke its
//! guarantee. Targets not met are reported, not failures: they are figures.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use onceflow_bench::BenchOptions;
use onceflow_chaos::scenarios::this_binary;

/// `onceflow bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// records of the cold backlog (and of PostgreSQL's ceiling)
    #[arg(long, default_value_t = 300_000)]
    records: u64,
    /// input partitions
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// records of the per-message run (slow: two commits per record)
    #[arg(long, default_value_t = 2_000)]
    per_message_records: u64,
    /// seconds of input at half the maximum rate, for the latencies
    #[arg(long, default_value_t = 20)]
    steady_seconds: u64,
    /// rows per transaction of PostgreSQL's ceiling
    #[arg(long, default_value_t = 5_000)]
    ceiling_batch_rows: u64,
    /// seed of the generated input
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// where the JSON report is written
    #[arg(long, default_value = "target/bench-report.json")]
    report: PathBuf,
}

/// Runs the benchmark.
pub async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.records == 0 || args.per_message_records == 0 || args.steady_seconds == 0 {
        bail!("--records, --per-message-records and --steady-seconds must be at least 1");
    }
    if args.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    let options = BenchOptions {
        binary: this_binary()?,
        release_build: !cfg!(debug_assertions),
        records: args.records,
        partitions: args.partitions,
        seed: args.seed,
        per_message_records: args.per_message_records,
        steady_seconds: args.steady_seconds,
        ceiling_batch_rows: args.ceiling_batch_rows.max(1),
        timeout: Duration::from_secs(900),
    };
    let report = onceflow_bench::run(&options, &|step| eprintln!("bench: {step}…")).await?;
    println!("{}", report.table());
    if let Some(parent) = args.report.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", args.report.display()))?;
    println!("report: {}", args.report.display());
    Ok(())
}
