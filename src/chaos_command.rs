//! `onceflow chaos …`: the command line of the chaos suite (the scenarios
//! themselves live in the `onceflow-chaos` crate). Exits non-zero on any
//! violation, printing the seed and the command that reproduces it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use onceflow_chaos::runner::{ChaosReport, all_scenarios, run_random_mode, run_scenarios, select};
use onceflow_chaos::scenarios::{RunSize, ScenarioContext, catalog, this_binary};

/// `onceflow chaos`.
#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// List the scenarios.
    List,
    /// Run the named scenarios (a name ending in `/` selects a family).
    Run {
        /// scenario names, from `onceflow chaos list`
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        options: ChaosOptions,
    },
    /// Run every scenario (with `--quick`, all but the long ones such as
    /// `large-backlog`).
    All {
        #[command(flatten)]
        options: ChaosOptions,
    },
    /// A seeded random schedule of mixed faults over a run of a given length.
    Random {
        /// how long faults are injected, e.g. `90s` or `5m`
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        duration: Duration,
        #[command(flatten)]
        options: ChaosOptions,
    },
}

/// Options of every chaos run.
#[derive(Debug, Args)]
pub struct ChaosOptions {
    /// small workloads and short faults (CI)
    #[arg(long)]
    quick: bool,
    /// seed of the workload (and of the random schedule)
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// records per scenario (default: 1500 with --quick, else 6000)
    #[arg(long)]
    events: Option<u64>,
    /// where the JSON report is written
    #[arg(long, default_value = "target/chaos-report.json")]
    report: PathBuf,
}

impl ChaosOptions {
    fn context(&self) -> anyhow::Result<ScenarioContext> {
        let mut size = if self.quick {
            RunSize::quick()
        } else {
            RunSize::full()
        };
        if let Some(events) = self.events {
            if events == 0 {
                bail!("--events must be at least 1");
            }
            size.events = events;
        }
        Ok(ScenarioContext {
            binary: this_binary()?,
            seed: self.seed,
            size,
        })
    }
}

/// Runs a chaos command.
pub async fn run_chaos(command: ChaosCommand) -> anyhow::Result<()> {
    let (report, options) = match command {
        ChaosCommand::List => {
            for spec in catalog() {
                let note = if spec.full_only {
                    " (not with --quick)"
                } else {
                    ""
                };
                println!("{:<44} {}{note}", spec.name, spec.description);
            }
            return Ok(());
        }
        ChaosCommand::Run { names, options } => {
            let specs = select(&names)?;
            (
                run_scenarios(&specs, &options.context()?, options.quick).await?,
                options,
            )
        }
        ChaosCommand::All { options } => (
            run_scenarios(
                &all_scenarios(options.quick),
                &options.context()?,
                options.quick,
            )
            .await?,
            options,
        ),
        ChaosCommand::Random { duration, options } => {
            let mut context = options.context()?;
            if options.events.is_none() {
                // Enough load to keep arriving through the whole schedule.
                context.size.events = (duration.as_secs() * 150).max(1_500);
            }
            (
                run_random_mode(&context, duration, options.quick).await?,
                options,
            )
        }
    };
    finish(&report, &options)
}

fn finish(report: &ChaosReport, options: &ChaosOptions) -> anyhow::Result<()> {
    println!("{}", report.table());
    report.write_json(&options.report)?;
    println!("report: {}", options.report.display());
    let passed = report
        .outcomes
        .iter()
        .filter(|outcome| outcome.passed())
        .count();
    let failed = report.outcomes.len() - passed;
    if !report.passed() {
        eprint!("{}", report.failures());
    }
    println!("chaos: {passed} passed, {failed} failed");
    if report.passed() {
        Ok(())
    } else {
        bail!(
            "exactly-once violated or a scenario could not run (seed {})",
            report.seed
        )
    }
}
