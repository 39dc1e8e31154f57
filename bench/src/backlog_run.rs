//! onceflow against a cold backlog: the input is written first, then one
//! instance starts with the product's default settings and runs until both
//! its commits (the stored offsets and the group's offsets) reached the end
//! of every partition. Measured from outside: wall time from the process
//! start (start-up included) and from its first database commit, CPU time of
//! the process (all threads) and its peak resident memory; then the verdict
//! of the guarantee the run was made under, so a fast wrong run reports no
//! figure.

use std::path::Path;
use std::time::{Duration, Instant};

use onceflow_actors::settings::{Guarantee, Settings};
use onceflow_chaos::harness::{Scenario, Service, WorkloadSpec, input_truth};
use onceflow_chaos::outcome::numbers_of;

use crate::error::{BenchError, Result};
use crate::machine_cpu::MachineSnapshot;
use crate::process_usage::{MachineTicks, cpu_by_thread_kind, process_usage};

/// The figures of one backlog run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BacklogRun {
    /// `exactly-once` or `at-least-once`
    pub guarantee: &'static str,
    /// input records (invalid ones and repeats included)
    pub records: u64,
    /// seconds from the process start to both sides caught up
    pub seconds: f64,
    /// seconds from the first database commit seen to both sides caught up
    /// (the whole run when that first sight held most of the input)
    pub processing_seconds: f64,
    /// records per second, start-up included
    pub records_per_second: f64,
    /// records (input offsets) committed per second after the first commit
    /// seen (the rate with start-up when there is no such window)
    pub processing_records_per_second: f64,
    /// CPU time of the process per input record, µs (start-up included)
    pub cpu_us_per_record: f64,
    /// peak resident memory of the process, MiB
    pub peak_rss_mib: f64,
    /// onceflow's CPU µs per record by thread kind (live threads at the end)
    pub cpu_us_per_record_by_thread: std::collections::BTreeMap<String, f64>,
    /// cores of the machine busy during the run (everything on it)
    pub machine_cores_busy: f64,
    /// CPU µs per record of every component of the machine (onceflow, the
    /// Kafka brokers, PostgreSQL, the bench, the rest; see
    /// [`crate::machine_cpu`]) over the same window as
    /// `processing_records_per_second`: after the first commit seen
    pub machine_cpu_us_per_record: std::collections::BTreeMap<&'static str, f64>,
    /// cores of the machine busy over that window
    pub window_cores_busy: f64,
    /// the records per second the machine could carry at most at that CPU
    /// per record, every core busy
    pub cpu_bound_records_per_second: f64,
    /// records whose output is missing (must be 0)
    pub lost: u64,
    /// records produced more than once (0 under exactly-once)
    pub duplicated: u64,
}

/// The log filter of the measured instances: `info`, or the value of
/// `BENCH_INSTANCE_RUST_LOG` (not `ONCEFLOW_…`: the instance inherits the
/// environment and refuses unknown settings; for a profile:
/// `info,onceflow_actors::commit=debug` logs every cycle's phases).
fn instance_log_filter() -> String {
    std::env::var("BENCH_INSTANCE_RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}

/// The environment of an instance with the product's defaults (the test
/// harness starts its instances with small batches and debug logs).
pub fn product_env(guarantee: Guarantee) -> Vec<(&'static str, String)> {
    let defaults = Settings::default();
    vec![
        (
            "ONCEFLOW_MAX_BATCH_RECORDS",
            defaults.max_batch_records.to_string(),
        ),
        (
            "ONCEFLOW_BACKLOG_BATCH_RECORDS",
            defaults.backlog_batch_records().to_string(),
        ),
        (
            "ONCEFLOW_MAX_BUFFERED_RECORDS",
            defaults.max_buffered_records.to_string(),
        ),
        ("ONCEFLOW_GUARANTEE", guarantee.as_str().to_owned()),
        ("RUST_LOG", instance_log_filter()),
    ]
}

/// Fails with the instance's last log line when it exited before its run
/// ended (a setting it refused, a crash), instead of waiting for the run's
/// timeout.
pub fn check_still_running(service: &mut Service, step: &'static str) -> Result<()> {
    if service.is_running() {
        return Ok(());
    }
    Err(BenchError::InstanceExited {
        step,
        last_log_line: service.log().lines().last().unwrap_or_default().to_owned(),
    })
}

/// Borrowed view of an environment list, as `Scenario::start` takes it.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect()
}

/// Runs `binary` under `guarantee` against a cold backlog of `spec`.
pub async fn backlog_run(
    binary: &Path,
    spec: WorkloadSpec,
    guarantee: Guarantee,
    timeout: Duration,
) -> Result<BacklogRun> {
    let scenario = Scenario::new(binary, spec.partitions)
        .await?
        .without_live_reader();
    scenario.generate(spec).await?;
    let truth = input_truth(&scenario.bootstrap, &scenario.topics.input).await?;
    let input_end = scenario.input_end_offset().await?;

    let env = product_env(guarantee);
    let mut service = scenario.start(&env_refs(&env))?;
    let started = Instant::now();
    let machine_before = MachineTicks::now()?;
    let pid = service.pid().ok_or(BenchError::Process {
        pid: 0,
        reason: "exited at once".to_owned(),
    })?;
    // When the first database commit was seen, and how far it had got; the
    // machine's CPU then.
    let mut first_commit: Option<(Duration, i64)> = None;
    let mut window_start = (MachineSnapshot::now(Some(pid))?, machine_before);
    // The database side is read with SQL (cheap, every 50 ms); the Kafka
    // side, which needs a client of its own, only once the database caught up.
    loop {
        let stored = scenario.stored_offset_total().await.unwrap_or(0);
        if first_commit.is_none() && stored > 0 {
            first_commit = Some((started.elapsed(), stored));
            if has_a_window(input_end, stored) {
                window_start = (MachineSnapshot::now(Some(pid))?, MachineTicks::now()?);
            }
        }
        if stored >= input_end
            && scenario
                .partition_progress()
                .await?
                .iter()
                .all(|progress| progress.caught_up())
        {
            break;
        }
        if started.elapsed() > timeout {
            let stalled = scenario.stalled_partitions().await?.join("; ");
            return Err(BenchError::TimedOut {
                step: "backlog run",
                seconds: timeout.as_secs(),
                detail: stalled,
            });
        }
        check_still_running(&mut service, "backlog run")?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let usage = process_usage(pid)?;
    let by_thread = cpu_by_thread_kind(pid)?;
    let machine_now = MachineTicks::now()?;
    let machine_busy = machine_now.busy_share_since(&machine_before);
    let window_busy = machine_now.busy_share_since(&window_start.1);
    let by_component = MachineSnapshot::now(Some(pid))?.cpu_seconds_since(&window_start.0);
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    if !exit.success() {
        return Err(BenchError::Violated {
            step: "backlog run",
            count: 1,
            first: format!("the instance exited with {exit}"),
        });
    }
    let verdict = scenario.verdict().await?;
    let (lost, duplicated, _) = numbers_of(&verdict);
    let violations: Vec<&String> = verdict
        .violations
        .iter()
        .filter(|violation| {
            guarantee.is_transactional()
                || !(violation.starts_with("duplicate")
                    || violation.contains("dead-lettered twice (also at"))
        })
        .collect();
    if let Some(first) = violations.first() {
        return Err(BenchError::Violated {
            step: "backlog run",
            count: violations.len(),
            first: (*first).clone(),
        });
    }
    scenario.drop_database().await?;
    let records = truth.records;
    let per_record = |seconds: f64| seconds * 1e6 / records.max(1) as f64;
    let records_per_second = records as f64 / seconds;
    // The processing rate counts only the records committed after the first
    // commit was seen, over the time since; when that first sight already
    // held most of the input (a small one), there is no window to speak of
    // and the rate with start-up stands in.
    let (processing_seconds, processing_records_per_second) = match first_commit {
        Some((at, stored)) if has_a_window(input_end, stored) => {
            let window = seconds - at.as_secs_f64();
            (
                window,
                (input_end - stored) as f64 / window.max(f64::EPSILON),
            )
        }
        _ => (seconds, records_per_second),
    };
    // The window's records: those committed after the first commit seen, or
    // all of them when the window is the whole run.
    let window_records = match first_commit {
        Some((_, stored)) if has_a_window(input_end, stored) => (input_end - stored).max(1),
        _ => i64::try_from(records).unwrap_or(i64::MAX).max(1),
    } as f64;
    let machine_cpu_us_per_record: std::collections::BTreeMap<&'static str, f64> = by_component
        .iter()
        .map(|(component, seconds)| (component.as_str(), seconds * 1e6 / window_records))
        .collect();
    let machine_us_per_record: f64 = machine_cpu_us_per_record.values().sum();
    Ok(BacklogRun {
        guarantee: guarantee.as_str(),
        records,
        seconds,
        processing_seconds,
        records_per_second,
        processing_records_per_second,
        cpu_us_per_record: per_record(usage.cpu_seconds),
        peak_rss_mib: usage.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        cpu_us_per_record_by_thread: by_thread
            .into_iter()
            .map(|(kind, seconds)| (kind, per_record(seconds)))
            .collect(),
        machine_cores_busy: machine_busy * num_cores(),
        machine_cpu_us_per_record,
        window_cores_busy: window_busy * num_cores(),
        cpu_bound_records_per_second: num_cores() * 1e6 / machine_us_per_record.max(f64::EPSILON),
        lost,
        duplicated,
    })
}

/// Whether the records committed after the first commit seen (at `stored`
/// of `input_end`) are at least half the input: the processing window then
/// measures the rate, otherwise the whole run does.
fn has_a_window(input_end: i64, stored: i64) -> bool {
    (input_end - stored) * 2 >= input_end
}

/// Cores of this machine (1 if unknown).
fn num_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |cores| cores.get() as f64)
}
