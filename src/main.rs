//! The `onceflow` binary: command line, logging, signals and the HTTP
//! endpoints around the actors crate. All pipeline logic lives in
//! `onceflow-actors`; this file only wires it to the outside world.
//!
//! Guarantees: a bad setting (an `ONCEFLOW_*` setting, `ONCEFLOW_LOG_FORMAT`,
//! `OTEL_PROPAGATORS`) stops start-up with one line naming it and exit code
//! 78; SIGTERM/SIGINT shut down gracefully with exit 0 (a second
//! signal forces the exit with 128 + its number, the 10 s deadline with 75);
//! an escalated failure exits 1 (see `exit_status`).

mod bench_command;
mod chaos_command;
#[cfg(feature = "cpu-profile")]
mod cpu_profile;
mod demo;
mod exit_status;
mod http_server;
mod json_log_format;
mod produce;
mod span_export_queue;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use onceflow_actors::telemetry::propagation::{self, Propagators};
use onceflow_actors::{PipelineStatus, Settings, run_pipeline};
use tokio_util::sync::CancellationToken;

/// Moves ad events from Kafka into PostgreSQL and back into Kafka, exactly once.
#[derive(Debug, Parser)]
#[command(name = "onceflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service until SIGTERM or SIGINT.
    Run {
        /// TOML configuration file (environment variables win over it).
        #[arg(long, env = "ONCEFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write ad events (with invalid records and repeats) to the input topic.
    Produce(produce::ProduceArgs),
    /// The whole pipeline in one process on embedded defaults (a mock Kafka
    /// cluster, a SQLite store), with faults injected, ending in a verdict.
    /// Set ONCEFLOW_DATABASE_URL to use PostgreSQL instead of SQLite;
    /// RUST_LOG (default: off) shows the pipeline's logs.
    Demo(demo::DemoArgs),
    /// Chaos scenarios: kill actors and processes mid-commit, inject faults,
    /// and check exactly-once from the outside.
    #[command(subcommand)]
    Chaos(chaos_command::ChaosCommand),
    /// The benchmark: PostgreSQL's ceiling, onceflow exactly-once and
    /// at-least-once, the per-message pattern and latency at half load, in
    /// one run on a real cluster (`scripts/bench.sh` sets it up).
    Bench(bench_command::BenchArgs),
}

/// Longest graceful shutdown before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(9);

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "cpu-profile")]
    cpu_profile::start_if_asked();
    let log_format = match json_log_format::LogFormat::from_env() {
        Ok(format) => format,
        Err(problem) => {
            eprintln!("onceflow: {problem}");
            return ExitCode::from(exit_status::CONFIGURATION_ERROR);
        }
    };
    // Before any record is read: the propagator that carries trace context
    // across Kafka (`OTEL_PROPAGATORS`).
    let propagators = match Propagators::from_env() {
        Ok(propagators) => propagators,
        Err(problem) => {
            eprintln!("onceflow: {problem}");
            return ExitCode::from(exit_status::CONFIGURATION_ERROR);
        }
    };
    if let Err(in_force) = propagation::install(propagators) {
        eprintln!(
            "onceflow: OTEL_PROPAGATORS: {} was already in force; keeping it",
            in_force.names()
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("onceflow: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The chaos suite prints a table; its own logs only matter when something is wrong.
    // The demo draws progress bars; its logs are there for RUST_LOG to show.
    let default_log_filter = match cli.command {
        Command::Chaos(_) | Command::Bench(_) => "warn",
        Command::Demo(_) => "off",
        _ => "info",
    };
    let committed_transactions = demo::CommittedTransactions::default();
    let extra_layer =
        matches!(cli.command, Command::Demo(_)).then(|| committed_transactions.layer());
    let telemetry = telemetry::init(
        &runtime,
        config_file(&cli),
        default_log_filter,
        log_format,
        extra_layer,
    );
    // Ok(false): `run` was forced to exit by its shutdown deadline.
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Produce(args) => produce::run_produce(&args).await.map(|_| true),
            Command::Chaos(command) => chaos_command::run_chaos(command).await.map(|()| true),
            Command::Bench(args) => bench_command::run_bench(args).await.map(|()| true),
            Command::Demo(args) => demo::run_demo(args, committed_transactions)
                .await
                .map(|()| true),
        }
    });
    // Flush traces while the runtime (the gRPC channel's home) still runs.
    telemetry.shutdown();
    // Do not wait for blocking Kafka calls still running at exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    if let Err(error) = &result {
        eprintln!("onceflow: {}", one_line(error));
    }
    exit_status::exit_code(&result)
}

/// The error and its causes on one line, each cause once: the library
/// errors already name their source in their own message, so a cause whose
/// text is already there is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The `run` command's configuration file (it names the instance that
/// traces are exported for).
fn config_file(cli: &Cli) -> Option<&std::path::Path> {
    match &cli.command {
        Command::Run { config } => config.as_deref(),
        _ => None,
    }
}

/// `Ok(true)`: shut down gracefully; `Ok(false)`: forced by the deadline.
async fn run(config: Option<PathBuf>) -> anyhow::Result<bool> {
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();

    let settings = Settings::load(config.as_deref())?;
    settings.required_database_url()?;
    let status = PipelineStatus::default();
    let shutdown = CancellationToken::new();

    let (http, http_addr) =
        http_server::serve(settings.http_addr, status.clone(), shutdown.clone())
            .await
            .map_err(|error| {
                exit_status::ConfigurationError(format!(
                    "setting `http_addr`: cannot listen on {}: {error}",
                    settings.http_addr
                ))
            })?;
    tracing::info!(addr = %http_addr, "http endpoint listening");

    let signals = tokio::spawn(wait_for_signals(shutdown.clone()));
    let pipeline = run_pipeline(settings, status, shutdown.clone());
    tokio::pin!(pipeline);
    let result = tokio::select! {
        result = &mut pipeline => result.map(|()| true),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_DEADLINE).await;
        } => {
            tracing::warn!("graceful shutdown took too long; exiting (uncommitted work is replayed on the next start)");
            Ok(false)
        }
    };
    shutdown.cancel();
    signals.abort();
    http.abort();
    result.map_err(anyhow::Error::from)
}

async fn wait_for_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    let second = tokio::select! {
        _ = terminate.recv() => SignalKind::terminate(),
        _ = interrupt.recv() => SignalKind::interrupt(),
    };
    tracing::warn!("second signal: exiting now (uncommitted work is replayed on the next start)");
    std::process::exit(exit_status::forced_by_signal(second.as_raw_value()));
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn each_cause_is_said_once() {
        let root = std::io::Error::other("connection refused");
        let error = anyhow::Error::new(root).context("database error: connection refused");
        let error = error.context("cannot start");
        assert_eq!(
            one_line(&error),
            "cannot start: database error: connection refused"
        );
    }
}
