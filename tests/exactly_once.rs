//! End-to-end exactly-once tests of the real `onceflow` binary against the
//! real PostgreSQL and a real three-node Kafka cluster: the happy path, a Kafka abort after
//! the database commit, SIGKILLs mid-run, a coordinator killed mid-cycle, and
//! SIGTERM; a history of database commits whose Kafka transactions all
//! aborted (the liveness check must see the owed outputs, a restart must
//! produce them); and once on the embedded SQLite store, through a SIGKILL between
//! the database and the Kafka commit. Each verdict is computed from the input topic, the output and DLQ
//! topics (`read_committed`) and the tables, independently of onceflow.
//! Kill points need the `failpoints` feature (scripts/test.sh enables it).

mod common;
mod service;

use std::time::Duration;

use service::Scenario;

const CATCH_UP: Duration = Duration::from_secs(120);

async fn expected_counts(scenario: &Scenario) -> anyhow::Result<(i64, i64, common::InputTruth)> {
    let truth = common::input_truth(&scenario.bootstrap, &scenario.topics.input).await?;
    Ok((truth.distinct_events as i64, truth.invalid as i64, truth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_is_exactly_once_with_invalid_records_and_repeats() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(3_000, 7).await?;
    let (events, invalid, truth) = expected_counts(&scenario).await?;
    assert!(
        truth.repeats > 0 && truth.invalid > 0,
        "workload must hold repeats and invalid records"
    );

    let service = scenario.start(&[])?;
    scenario.wait_caught_up(events, invalid, CATCH_UP).await?;

    let (ready, _) = scenario.http_get("/readyz").await?;
    assert_eq!(ready, 200);
    // The counters move with the bookkeeping right after the Kafka commit
    // the harness saw: wait for the last cycle's.
    scenario
        .wait_for(
            "every record's commit counted",
            Duration::from_secs(10),
            async |s| {
                s.metric("onceflow_end_to_end_latency_seconds_count", &[])
                    .await
                    .is_ok_and(|count| count >= truth.records as f64)
            },
        )
        .await?;
    let metrics = scenario.metrics().await?;
    // Summed over every `reason` label: no abort of any kind (the counts
    // below hold only without one).
    assert_eq!(
        metrics.sum("onceflow_txn_aborts_total", &[])?,
        0.0,
        "no abort expected: {:?}",
        metrics.by_label("onceflow_txn_aborts_total", "reason")
    );
    assert_eq!(
        metrics.sum("onceflow_events_committed_total", &[])?,
        events as f64
    );
    assert_eq!(
        metrics.sum("onceflow_duplicates_total", &[])?,
        truth.repeats as f64
    );
    // A replayed record is consumed again: at least every record once.
    assert!(metrics.sum("onceflow_records_consumed_total", &[])? >= truth.records as f64);
    // Without an abort, every record's end-to-end latency is observed once,
    // at the commit of its cycle.
    assert_eq!(
        metrics.sum("onceflow_end_to_end_latency_seconds_count", &[])?,
        truth.records as f64
    );

    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");
    let verdict = scenario.verdict().await?;
    verdict.assert_holds();
    assert_eq!(verdict.output_records, truth.distinct_events);
    assert_eq!(verdict.dlq_records, truth.invalid);
    scenario.drop_database().await?;
    Ok(())
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_abort_after_database_commit_replays_each_output_once() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(3_000, 11).await?;
    let (events, invalid, _) = expected_counts(&scenario).await?;

    // The first three cycles (the very first batches of every partition, while
    // the group has no committed offset) and a fifth of the later ones abort
    // their Kafka transaction after the database committed and after the
    // outputs and dead letters were produced into it.
    let service = scenario.start(&[(
        "FAILPOINTS",
        "coordinator-during-kafka-commit=3*return->20%return",
    )])?;
    scenario.wait_caught_up(events, invalid, CATCH_UP).await?;
    let aborts = scenario
        .metric("onceflow_txn_aborts_total", &[("reason", "abortable")])
        .await?;
    assert!(aborts >= 3.0, "expected at least 3 aborts, saw {aborts}");
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());

    let verdict = scenario.verdict().await?;
    verdict.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

/// A cold backlog makes every batch full, so cycles are pipelined: each
/// Kafka phase runs beside the next cycle's database phase. Kafka phases
/// fail (the 5th, the 12th, then one in ten), bookkeeping is skipped after
/// a commit (the 9th, then one in twenty: its partitions are rewound while
/// the next cycle holds their batches), and database phases fail at
/// random: the successor of every such cycle is abandoned, and the verdict
/// holds with every partition caught up.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_cycles_hold_the_guarantee_when_kafka_phases_fail_beside_database_phases()
-> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(12_000, 47).await?;
    let (events, invalid, _) = expected_counts(&scenario).await?;
    let service = scenario.start(&[(
        "FAILPOINTS",
        "coordinator-during-kafka-commit=4*off->1*return->6*off->1*return->10%return;\
         coordinator-after-kafka-commit=8*off->1*return->5%return;\
         coordinator-before-db-commit=10*off->5%return",
    )])?;
    scenario.wait_caught_up(events, invalid, CATCH_UP).await?;
    let abandoned = scenario
        .metric("onceflow_txn_aborts_total", &[("reason", "predecessor")])
        .await?;
    assert!(
        abandoned >= 1.0,
        "a failed Kafka phase must have had a pipelined successor, saw {abandoned} abandoned"
    );
    let log = service.log();
    assert!(
        log.contains("bookkeeping skipped after the kafka commit"),
        "a skipped bookkeeping must have rewound partitions whose next batches were held"
    );
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    let verdict = scenario.verdict().await?;
    verdict.assert_holds();
    assert!(
        scenario
            .liveness_violations(Duration::from_secs(30))
            .await
            .is_empty(),
        "every partition caught up on both sides"
    );
    scenario.drop_database().await?;
    Ok(())
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_owed_after_database_commits_are_not_caught_up_until_produced() -> anyhow::Result<()>
{
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(600, 31).await?;
    let (events, _, _) = expected_counts(&scenario).await?;
    let input_end = scenario.input_end_offset().await?;

    // Every cycle commits to the database and aborts before its Kafka
    // transaction, and every abort rewinds to the group's start: the store
    // reaches the end of the input once one cycle takes a whole partition
    // (batches as large as the input, a cycle a second to fetch it all),
    // Kafka never moves.
    let service = scenario.start(&[
        ("FAILPOINTS", "coordinator-after-db-commit=return"),
        ("ONCEFLOW_COMMIT_INTERVAL_MS", "1000"),
        ("ONCEFLOW_MAX_BATCH_RECORDS", "1000"),
        ("ONCEFLOW_BACKLOG_BATCH_RECORDS", "1000"),
        ("ONCEFLOW_MAX_BUFFERED_RECORDS", "2000"),
    ])?;
    let at_end = scenario
        .wait_for(
            "the stored offsets at the end of the input",
            CATCH_UP,
            async |s| s.stored_offset_total().await.ok() == Some(input_end),
        )
        .await;
    if let Err(error) = at_end {
        anyhow::bail!("{error}: {:?}", scenario.partition_progress().await?);
    }
    let (stored_events, _) = scenario.table_counts().await?;
    assert_eq!(stored_events, events, "every event is in the database");
    // The liveness check sees the outputs owed on every partition.
    let stalled = scenario.liveness_violations(Duration::from_secs(2)).await;
    assert_eq!(
        stalled.len(),
        3,
        "each partition with its outputs owed is not caught up: {stalled:?}"
    );
    for violation in &stalled {
        assert!(
            violation.contains("stored next_offset") && violation.contains("no group offset"),
            "the violation says where each side is: {violation}"
        );
    }
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());

    // A clean start replays from the group's start and produces them all,
    // counting nothing twice in the database.
    let service = scenario.start(&[])?;
    let stalled = scenario.liveness_violations(CATCH_UP).await;
    assert!(stalled.is_empty(), "caught up on both sides: {stalled:?}");
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    let verdict = scenario.verdict().await?;
    verdict.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_commit_and_restart_keeps_exactly_once() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(6_000, 23).await?;
    let (events, invalid, _) = expected_counts(&scenario).await?;

    // 1. SIGKILL between the database commit and the Kafka transaction.
    let service = scenario.start(&[(
        "FAILPOINTS",
        "coordinator-after-db-commit=2*off->return(sigkill)",
    )])?;
    let exit = service.wait_exit(Duration::from_secs(60)).await?;
    assert!(!exit.success(), "the kill point must kill the process");
    let (after_first, _) = scenario.table_counts().await?;
    assert!(
        after_first > 0,
        "the database commit before the kill must have landed"
    );

    // 2. SIGKILL with outputs produced and offsets sent, before commit_transaction.
    let service = scenario.start(&[(
        "FAILPOINTS",
        "coordinator-during-kafka-commit=1*off->return(sigkill)",
    )])?;
    let exit = service.wait_exit(Duration::from_secs(60)).await?;
    assert!(!exit.success());

    // 3. SIGKILLs at moments the test does not control, each once the
    //    incarnation has committed something more.
    for _ in 0..3 {
        let (before, _) = scenario.table_counts().await?;
        let service = scenario.start(&[])?;
        scenario
            .wait_for("a new row committed", Duration::from_secs(60), async |s| {
                s.table_counts()
                    .await
                    .is_ok_and(|(now, _)| now > before || now == events)
            })
            .await?;
        service.sigkill().await?;
    }

    // 4. A last incarnation catches up and stops cleanly.
    let service = scenario.start(&[])?;
    scenario.wait_caught_up(events, invalid, CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());

    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_cycle_is_restarted_by_its_supervisor() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(4_000, 31).await?;
    let (events, invalid, _) = expected_counts(&scenario).await?;

    // The coordinator actor panics twice in flight: once after the database
    // commit, once inside the open Kafka transaction.
    let service = scenario.start(&[(
        "FAILPOINTS",
        "coordinator-after-db-commit=2*off->1*panic->off;coordinator-during-kafka-commit=6*off->1*panic->off",
    )])?;
    scenario.wait_caught_up(events, invalid, CATCH_UP).await?;
    let restarts = scenario
        .metric(
            "onceflow_actor_restarts_total",
            &[("actor", "transaction_coordinator")],
        )
        .await?;
    assert_eq!(restarts, 2.0, "log: {}", service.log());
    let (health, _) = scenario.http_get("/healthz").await?;
    assert_eq!(health, 200);
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());

    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_zero_and_loses_nothing() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(8_000, 43).await?;
    let (events, invalid, _) = expected_counts(&scenario).await?;

    let service = scenario.start(&[])?;
    service::wait_for_progress(&scenario, Duration::from_secs(60)).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");
    let (stored_after_stop, _) = scenario.table_counts().await?;

    // Whatever was not committed is replayed by the next start.
    let service = scenario.start(&[])?;
    scenario.wait_caught_up(events, invalid, CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    assert!(stored_after_stop > 0);

    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

/// The embedded SQLite store end to end: the service is killed (SIGKILL)
/// between a database commit and its Kafka transaction (at the kill point
/// in a `failpoints` build, after the first committed batches otherwise),
/// restarted, catches up, and the file holds every event and dead letter
/// once, as the topics do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_is_exactly_once_through_a_sigkill() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let database = directory.path().join("onceflow.db");
    let scenario = Scenario::new(service::bin(), 3)
        .await?
        .with_sqlite(&database);
    scenario.produce(2_000, 61).await?;
    let (events, invalid, truth) = expected_counts(&scenario).await?;

    if onceflow_actors::failpoints::ENABLED {
        let service = scenario.start(&[(
            "FAILPOINTS",
            "coordinator-after-db-commit=2*off->return(sigkill)",
        )])?;
        let exit = service.wait_exit(Duration::from_secs(60)).await?;
        assert!(!exit.success(), "the kill point must kill the process");
    } else {
        let service = scenario.start(&[])?;
        service::wait_for_progress(&scenario, Duration::from_secs(60)).await?;
        service.sigkill().await?;
    }
    let (after_kill, _) = scenario.table_counts().await?;
    assert!(
        after_kill > 0,
        "the database commit before the kill must have landed"
    );
    assert!(database.exists());

    let service = scenario.start(&[])?;
    scenario.wait_caught_up(events, invalid, CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");

    let verdict = scenario.verdict().await?;
    verdict.assert_holds();
    assert_eq!(verdict.output_records, truth.distinct_events);
    assert_eq!(verdict.ad_events_rows, truth.distinct_events);
    assert_eq!(verdict.dead_letter_rows, truth.invalid);
    scenario.drop_database().await?;
    Ok(())
}
