//! The `at-least-once` guarantee of the real binary against the real
//! PostgreSQL and a real three-node Kafka cluster: outputs are produced
//! without Kafka transactions, the database side stays exactly once, and a
//! failure between the outputs and the offset commit replays the outputs
//! (duplicates downstream), never loses one. The exactly-once contrast:
//! the same pipeline under the default guarantee writes transaction markers.
//! Kill points need the `failpoints` feature (scripts/test.sh enables it).

mod common;
mod service;

use std::time::Duration;

#[cfg(feature = "failpoints")]
use onceflow_chaos::outcome::numbers_of;
use service::Scenario;

const CATCH_UP: Duration = Duration::from_secs(120);

/// Records a `read_committed` reader sees in `topic`, and the sum of the
/// topic's high watermarks (records plus transaction markers).
async fn records_and_end(scenario: &Scenario, topic: &str) -> anyhow::Result<(u64, i64)> {
    let records = common::read_committed(&scenario.bootstrap, topic).await?;
    let ends = common::high_watermarks(&scenario.bootstrap, topic).await?;
    Ok((records.len() as u64, ends.values().sum()))
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_replays_outputs_rather_than_losing_them() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(3_000, 41).await?;

    // The first three cycles and a fifth of the later ones fail after their
    // outputs and dead letters were acknowledged, before the offset commit.
    let service = scenario.start(&[
        ("ONCEFLOW_GUARANTEE", "at-least-once"),
        (
            "FAILPOINTS",
            "coordinator-during-kafka-commit=3*return->20%return",
        ),
    ])?;
    let truth = scenario.wait_caught_up_with_input(CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());

    let verdict = scenario.verdict().await?;
    let (lost, duplicated, _) = numbers_of(&verdict);
    assert_eq!(lost, 0, "at least once: {}", verdict.summary());
    assert!(
        duplicated > 0,
        "every failed offset commit produces its outputs again: {}",
        verdict.summary()
    );
    // The database side is exactly once whatever the guarantee: the only
    // violations are records produced more than once (seen after the run or
    // by the live reader during it).
    let others: Vec<&String> = verdict
        .violations
        .iter()
        .filter(|violation| {
            !(violation.starts_with("duplicate")
                || violation.contains("dead-lettered twice (also at"))
        })
        .collect();
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(verdict.ad_events_rows, truth.distinct_events);
    assert_eq!(verdict.dead_letter_rows, truth.invalid);

    // No transactions: every offset of the output topic holds a record.
    let (records, end) = records_and_end(&scenario, &scenario.topics.output).await?;
    assert_eq!(
        i64::try_from(records)?,
        end,
        "no transaction markers in the output topic"
    );
    scenario.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_commits_outputs_in_transactions() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(300, 43).await?;
    let service = scenario.start(&[])?;
    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    let verdict = scenario.verdict().await?;
    verdict.assert_holds();
    // Each committed transaction left a marker after its records.
    let (records, end) = records_and_end(&scenario, &scenario.topics.output).await?;
    assert!(
        end > i64::try_from(records)?,
        "transaction markers follow the outputs ({records} records, end {end})"
    );
    scenario.drop_database().await?;
    Ok(())
}
