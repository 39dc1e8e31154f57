//! Failure handling of the real binary against real PostgreSQL and a real
//! three-node Kafka cluster: database outages (circuit breaker), two
//! instances in one group (rebalances, SIGKILLed member), a zombie
//! incarnation fenced on both sides, and a consumer fenced out of its group
//! that rejoins (and escalates when fenced again and again). Verdicts are computed independently of onceflow (see `common`).

mod common;
mod service;

use std::time::Duration;

use service::{DatabaseOutage, Scenario};

const CATCH_UP: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outages_open_the_breaker_pause_and_recover_by_themselves() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    let mut producer = scenario.produce_in_background(9_000, 600, 101)?;
    let breaker = [
        ("ONCEFLOW_BREAKER_COOLDOWN_MS", "300"),
        ("ONCEFLOW_BREAKER_MAX_COOLDOWN_MS", "1500"),
    ];
    let mut service = scenario.start(&breaker)?;
    service::wait_for_progress(&scenario, Duration::from_secs(60)).await?;

    for round in 0..2 {
        let outage = DatabaseOutage::begin(&scenario).await?;
        scenario
            .wait_for(
                "breaker open and /readyz 503",
                Duration::from_secs(30),
                async |s| {
                    matches!(s.http_get("/readyz").await, Ok((503, _)))
                        && s.metric("onceflow_circuit_breaker_state", &[]).await.ok() == Some(1.0)
                },
            )
            .await?;
        let (health, _) = scenario.http_get("/healthz").await?;
        assert_eq!(
            health, 200,
            "round {round}: healthz must stay 200 during an outage"
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            service.is_running(),
            "round {round}: the process must stay up; log: {}",
            service.log()
        );
        outage.end().await?;
        // `/readyz` is 200 while the breaker is half-open too: wait for
        // closed itself, or the next round's outage can meet a probe and
        // reopen the breaker without it ever closing in between.
        scenario
            .wait_for(
                "breaker closed and /readyz 200",
                Duration::from_secs(30),
                async |s| {
                    matches!(s.http_get("/readyz").await, Ok((200, _)))
                        && s.metric("onceflow_circuit_breaker_state", &[]).await.ok() == Some(0.0)
                },
            )
            .await?;
    }
    assert!(producer.wait().await?.success());

    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    assert!(
        scenario
            .metric(
                "onceflow_circuit_breaker_transitions_total",
                &[("to", "open")]
            )
            .await?
            >= 2.0
    );
    assert!(
        scenario
            .metric(
                "onceflow_circuit_breaker_transitions_total",
                &[("to", "closed")]
            )
            .await?
            >= 2.0
    );
    assert!(service.is_running());
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joins_and_is_repeatedly_sigkilled() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 4).await?;
    let mut producer = scenario.produce_in_background(10_000, 1_000, 202)?;
    let first = scenario.start(&[])?;
    service::wait_for_progress(&scenario, Duration::from_secs(60)).await?;

    let second_id = common::unique("second");
    let mut second = scenario.start_instance(&second_id, &[])?;
    // The join rebalances the group: the second instance must get partitions.
    let owners_seen = scenario
        .wait_for(
            "partitions claimed by the second instance",
            Duration::from_secs(60),
            async |s| {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM consumer_offsets WHERE owner_instance = $1",
                )
                .bind(&second_id)
                .fetch_one(&s.pool)
                .await
                .is_ok_and(|owned| owned > 0)
            },
        )
        .await;
    owners_seen?;
    // Each SIGKILL once the incarnation serves its endpoint (it has
    // started its pipeline) and has committed something more.
    for _ in 0..3 {
        let (before, _) = scenario.table_counts().await?;
        second.http_addr().await?;
        scenario
            .wait_for("a new row committed", Duration::from_secs(60), async |s| {
                s.table_counts().await.is_ok_and(|(now, _)| now > before)
            })
            .await?;
        second.sigkill().await?;
        second = scenario.start_instance(&second_id, &[])?;
    }
    assert!(producer.wait().await?.success());
    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    assert!(second.is_running(), "log: {}", second.log());
    let (exit, _) = second.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    let (exit, _) = first.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_incarnation_can_move_neither_offsets_nor_output() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    let mut producer = scenario.produce_in_background(6_000, 1_000, 303)?;
    let zombie = scenario.start(&[])?;
    service::wait_for_progress(&scenario, Duration::from_secs(60)).await?;

    // Freeze the first incarnation (a long GC pause, a network partition),
    // and start its successor with the same instance id.
    zombie.signal("STOP").await?;
    let successor = scenario.start(&[])?;
    scenario
        .wait_for(
            "successor claimed the partitions",
            Duration::from_secs(60),
            async |s| {
                sqlx::query_scalar::<_, i64>("SELECT min(owner_epoch) FROM consumer_offsets")
                    .fetch_one(&s.pool)
                    .await
                    .is_ok_and(|epoch| epoch >= 2)
            },
        )
        .await?;
    // Wake the zombie: its producer is fenced, its owner epoch is stale, and
    // its consumer's static membership was taken over; it must stop.
    zombie.signal("CONT").await?;
    let zombie_log_path = zombie.log_path.clone();
    let exit = zombie.wait_exit(Duration::from_secs(30)).await?;
    assert_eq!(
        exit.code(),
        Some(1),
        "a fenced instance exits 1 (a failure)"
    );
    let zombie_log = std::fs::read_to_string(&zombie_log_path)?;
    assert!(
        zombie_log.contains("claimed by a newer incarnation")
            || zombie_log.contains("input consumer fenced"),
        "the zombie must stop because it was fenced; log: {zombie_log}"
    );

    assert!(producer.wait().await?.success());
    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    assert!(
        !successor.log().contains("transactional producer recreated"),
        "the zombie must not fence its successor back; log: {}",
        successor.log()
    );
    let (exit, _) = successor.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

/// A static member can be fenced by its own `group.instance.id` (a join
/// response lost while the group coordinator moves: seen here when the
/// broker coordinating the group was SIGKILLed). Before, the process
/// exited; now the pipeline rejoins with a fresh consumer and actor tree
/// and loses or doubles nothing. The fence is injected at the fetcher
/// (`record-fetcher-fenced`), twice.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_fenced_out_of_its_group_rejoins_and_loses_nothing() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    let mut producer = scenario.produce_in_background(4_000, 800, 505)?;
    let mut service = scenario.start(&[(
        "FAILPOINTS",
        "record-fetcher-fenced=300*off->1*return->700*off->1*return->off",
    )])?;
    assert!(producer.wait().await?.success());
    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    assert!(service.is_running(), "log: {}", service.log());
    let log = service.log();
    assert_eq!(
        log.matches("group membership lost; rejoining").count(),
        2,
        "two fences, two rejoins; log: {log}"
    );
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

/// A consumer fenced again at once after every rejoin is not mended by
/// rejoining: past the rejoin budget the process exits non-zero, saying so.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_fenced_again_and_again_escalates() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(500, 506).await?;
    let service = scenario.start(&[("FAILPOINTS", "record-fetcher-fenced=return")])?;
    let log_path = service.log_path.clone();
    let exit = service.wait_exit(Duration::from_secs(60)).await?;
    assert!(!exit.success(), "exit {exit:?}");
    let log = std::fs::read_to_string(&log_path)?;
    assert_eq!(
        log.matches("group membership lost; rejoining").count(),
        3,
        "log: {log}"
    );
    assert!(
        log.contains("rejoins within 300 s did not hold"),
        "log: {log}"
    );
    scenario.drop_database().await?;
    Ok(())
}

/// The contract: a NUL (U+0000) in `campaign_id` or `ad_id` makes the event
/// invalid (`invalid-event`) on every store (PostgreSQL text cannot hold
/// it). Such records, one per partition and one sent twice in a row (a
/// producer retry), must be dead-lettered as `invalid-event` and must not
/// stall their partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_an_id_is_an_invalid_event_and_stalls_nothing() -> anyhow::Result<()> {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(1_500, 404).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &scenario.bootstrap)
        .create()?;
    let mut poison = Vec::new();
    for partition in 0..3 {
        let value = format!(
            r#"{{"event_id":"{}","campaign_id":"c-\u0000{partition}","ad_id":"ad-1","kind":"click","cost_micros":5,"occurred_at":"2026-11-26T10:15:30.123Z"}}"#,
            uuid::Uuid::new_v4()
        );
        poison.push((partition, value));
    }
    // The same NUL event twice in a row on partition 0.
    poison.push((0, poison[0].1.clone()));
    for (partition, value) in &poison {
        producer
            .send(
                FutureRecord::<[u8], str>::to(&scenario.topics.input)
                    .partition(*partition)
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)?;
    }
    scenario.produce(1_500, 405).await?;

    let service = scenario.start(&[])?;
    let truth = scenario.wait_caught_up_with_input(CATCH_UP).await?;
    let nul_records = truth
        .invalid_records
        .values()
        .filter(|invalid| invalid.reason.contains("NUL"))
        .count();
    assert_eq!(nul_records, 4, "the harness classifies NUL ids as invalid");
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_start_up_is_waited_for() -> anyhow::Result<()> {
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(1_500, 33).await?;
    let outage = DatabaseOutage::begin(&scenario).await?;
    let mut service = scenario.start(&[("ONCEFLOW_DB_ACQUIRE_TIMEOUT_MS", "500")])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !service
        .log()
        .contains("database not ready for migrations; retrying")
    {
        assert!(
            service.is_running(),
            "the process must wait for the database, not exit; log: {}",
            service.log()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no migration retry within 30 s; log: {}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It keeps waiting: a second retry, and still running.
    scenario
        .wait_for(
            "a second migration retry",
            Duration::from_secs(30),
            async |_| {
                service
                    .log()
                    .matches("database not ready for migrations; retrying")
                    .count()
                    >= 2
            },
        )
        .await?;
    assert!(service.is_running(), "log: {}", service.log());
    outage.end().await?;
    scenario.wait_caught_up_with_input(CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    scenario.verdict().await?.assert_holds();
    scenario.drop_database().await?;
    Ok(())
}
