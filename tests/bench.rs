//! `onceflow bench` end to end on a small input, against the real
//! PostgreSQL and the real Kafka cluster of the tests: every run is measured
//! and passes the verdict of its guarantee, and the report's figures,
//! ratios and targets agree with each other and survive JSON. Speed itself
//! is never asserted here (a slow machine is no bug): the benchmark prints
//! figures, `docs/performance.md` holds them.

mod service;

use std::time::Duration;

use onceflow_bench::{BenchOptions, bench_workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_run_measures_every_step_and_reports_consistent_figures() -> anyhow::Result<()>
{
    let options = BenchOptions {
        binary: service::bin().to_path_buf(),
        release_build: false,
        records: 3_000,
        partitions: 3,
        seed: 11,
        per_message_records: 60,
        steady_seconds: 3,
        ceiling_batch_rows: 1_000,
        timeout: Duration::from_secs(180),
    };
    let steps = std::sync::Mutex::new(Vec::new());
    let report = onceflow_bench::run(&options, &|step| {
        steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(step.to_owned());
    })
    .await?;
    assert_eq!(
        steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len(),
        6,
        "six steps"
    );

    assert_eq!(
        report.postgres_ceiling.rows, 3_000,
        "every staged row written"
    );
    assert!(report.postgres_ceiling.rows_per_second > 0.0);
    let store_path = &report.store_path;
    assert_eq!(
        store_path.records,
        bench_workload(3_000, 3, 11).records,
        "the write path alone writes the whole input"
    );
    assert_eq!(
        store_path.batch_records, 5_000,
        "the product's default batch"
    );
    assert_eq!(
        store_path.cycles, 1,
        "1,000 records per partition: one cycle"
    );
    for timing in [&store_path.parallel, &store_path.sequential] {
        assert!(timing.records_per_second > 0.0, "{timing:?}");
        assert!(
            timing.slowest_cycle_ms <= timing.seconds * 1_000.0,
            "{timing:?}"
        );
    }
    for run in [&report.exactly_once, &report.at_least_once] {
        let workload_records = bench_workload(3_000, 3, 11).records;
        assert_eq!(run.records, workload_records, "{}", run.guarantee);
        assert_eq!(run.lost, 0, "{}", run.guarantee);
        assert!(run.records_per_second > 0.0 && run.cpu_us_per_record > 0.0);
        assert!(run.peak_rss_mib > 1.0, "{run:?}");
        assert!(run.processing_seconds <= run.seconds, "{run:?}");
        // The machine's split: only the known components, the brokers
        // worked in the window (a short window may hold no 10 ms tick of a
        // smaller share: PostgreSQL's was 0 in one run), and the bound is
        // the cores over their sum.
        let split = &run.machine_cpu_us_per_record;
        let known = ["onceflow", "kafka-brokers", "postgresql", "bench", "other"];
        assert!(
            split.keys().all(|component| known.contains(component)),
            "{run:?}"
        );
        assert!(
            split.get("kafka-brokers").copied().unwrap_or(0.0) > 0.0,
            "{run:?}"
        );
        assert!(run.window_cores_busy > 0.0, "{run:?}");
        let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let total: f64 = split.values().sum();
        assert!(
            (run.cpu_bound_records_per_second - cores * 1e6 / total).abs()
                <= 1e-6 * run.cpu_bound_records_per_second,
            "{run:?}"
        );
    }
    assert_eq!(report.exactly_once.guarantee, "exactly-once");
    assert_eq!(report.exactly_once.duplicated, 0, "exactly once");
    assert_eq!(report.at_least_once.guarantee, "at-least-once");
    assert_eq!(report.per_message.records, 60);
    assert!(
        report.per_message.broker_cpu_ms_per_transaction.is_finite()
            && report.per_message.broker_cpu_ms_per_transaction >= 0.0
            && report.per_message.broker_idle_cores > 0.0,
        "idle brokers still replicate and keep their quorum: {:?}",
        report.per_message
    );
    // One database and one Kafka transaction timed per record.
    let per_message = report.per_message;
    for transaction in [
        per_message.database_transaction_ms,
        per_message.kafka_transaction_ms,
    ] {
        assert!(
            transaction.count as u64 == per_message.records
                && transaction.p50 > 0.0
                && transaction.p50 <= transaction.p99,
            "{per_message:?}"
        );
    }
    let latency = &report.latency;
    assert!(latency.rate >= 1);
    assert_eq!(
        latency.end_to_end_ms.count as u64,
        latency.rate * latency.seconds,
        "every event written at the steady rate was seen downstream once"
    );
    assert!(latency.end_to_end_ms.p50 <= latency.end_to_end_ms.p99);
    assert!(latency.commit_p50_ms <= latency.commit_p99_ms && latency.cycles >= 1.0);
    // Each phase is part of its cycle: observed for every cycle, never
    // longer than the cycle, so neither quantile is above the cycle's.
    for phase in [latency.database_phase_ms, latency.kafka_phase_ms] {
        assert!(
            phase.p50 > 0.0
                && phase.p50 <= phase.p99
                && phase.p50 <= latency.commit_p50_ms
                && phase.p99 <= latency.commit_p99_ms,
            "{latency:?}"
        );
    }
    assert!(
        latency.cpu_us_per_record > 0.0 && latency.peak_rss_mib > 1.0,
        "{latency:?}"
    );
    // Committed no faster than the input was written (the writer paces it).
    assert!(
        latency.achieved_records_per_second > 0.0
            && latency.achieved_records_per_second <= latency.rate as f64 * 1.1,
        "{latency:?}"
    );

    let ratios = report.ratios;
    assert!(
        (ratios.exactly_once_over_ceiling
            - report.exactly_once.processing_records_per_second
                / report.postgres_ceiling.rows_per_second)
            .abs()
            < 1e-9
    );
    assert!(
        (ratios.store_path_over_ceiling * report.postgres_ceiling.rows_per_second
            - store_path.parallel.records_per_second)
            .abs()
            < 1e-6 * store_path.parallel.records_per_second
    );
    assert!(
        (ratios.exactly_once_over_store_path * store_path.parallel.records_per_second
            - report.exactly_once.processing_records_per_second)
            .abs()
            < 1e-6 * report.exactly_once.processing_records_per_second
    );
    assert_eq!(report.targets.len(), 6);
    for target in &report.targets {
        assert!(target.measured.is_finite(), "{target:?}");
        let bound: f64 = target.target[3..].parse()?;
        let expected = if target.target.starts_with(">=") {
            target.measured >= bound
        } else {
            target.measured <= bound
        };
        assert_eq!(target.met, expected, "{target:?}");
    }
    assert!(
        report.table().contains("DEBUG BUILD"),
        "a debug run says so"
    );

    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&report)?)?;
    for key in [
        "machine",
        "postgres_ceiling",
        "store_path",
        "exactly_once",
        "at_least_once",
        "per_message",
        "latency",
        "ratios",
        "targets",
    ] {
        assert!(json.get(key).is_some(), "no `{key}` in the JSON report");
    }
    Ok(())
}
