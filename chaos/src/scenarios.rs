//! The chaos scenarios: each one runs the real `onceflow` binary against a
//! fresh broker and a fresh database, injects its faults, lets the pipeline
//! catch up, and judges the result independently of the code under test
//! (topics read with `read_committed` on noida-db; on librdkafka's mock
//! cluster, the database and the committed transaction ids).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sqlx::PgPool;

use crate::bail;
use crate::error::{Context, Result};
use crate::harness::{
    DatabaseOutage, MockJudgement, Scenario, Service, free_port, mock_judgement, unique,
    wait_for_progress,
};
use crate::outcome::{ScenarioOutcome, numbers_of};

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// a noida-db broker: real transactions, verdict by `read_committed`
    Noida,
    /// librdkafka's mock cluster: broker faults, verdict by committed txn ids
    Mock,
}

/// The faults of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// an actor panics at a kill point; its supervisor restarts it
    ActorPanic(&'static str),
    /// the whole process is SIGKILLed at a kill point, then restarted
    ProcessKill(&'static str),
    /// the database refuses connections and its sessions are terminated
    DatabaseOutage,
    /// statements are blocked past their timeout
    DatabaseSlow,
    /// half of the records are malformed
    PoisonStorm,
    /// a second instance joins, is SIGKILLed and rejoins
    InstanceJoin,
    /// an old incarnation is frozen, replaced, and woken up
    FencedProducer,
    /// leaders of the input and output partitions move every 400 ms
    LeaderChange,
    /// a broker goes down and comes back
    BrokerDownUp,
    /// errors injected on EndTxn, Produce, AddPartitionsToTxn, TxnOffsetCommit
    KafkaErrors,
}

/// One scenario of the catalog.
#[derive(Debug, Clone)]
pub struct ScenarioSpec {
    /// unique name, as given to `chaos run`
    pub name: String,
    /// what it does
    pub description: String,
    /// where it runs
    pub backend: Backend,
    /// its fault
    pub fault: Fault,
}

impl ScenarioSpec {
    /// Whether it needs the kill points compiled in.
    pub fn needs_failpoints(&self) -> bool {
        matches!(self.fault, Fault::ActorPanic(_) | Fault::ProcessKill(_))
    }
}

/// Every scenario, in the order `chaos all` runs them.
pub fn catalog() -> Vec<ScenarioSpec> {
    let mut specs = Vec::new();
    for point in onceflow_actors::failpoints::ALL_POINTS {
        specs.push(ScenarioSpec {
            name: format!("actor-panic/{point}"),
            description: format!("the actor at `{point}` dies (panic); its supervisor restarts it"),
            backend: Backend::Noida,
            fault: Fault::ActorPanic(point),
        });
    }
    for point in onceflow_actors::failpoints::ALL_POINTS {
        specs.push(ScenarioSpec {
            name: format!("process-kill/{point}"),
            description: format!("the process is SIGKILLed at `{point}`, then restarted"),
            backend: Backend::Noida,
            fault: Fault::ProcessKill(point),
        });
    }
    let others = [
        (
            "database-outage",
            "the database refuses connections and its sessions are terminated, twice",
            Backend::Noida,
            Fault::DatabaseOutage,
        ),
        (
            "database-slow",
            "statements are blocked past their timeout, twice",
            Backend::Noida,
            Fault::DatabaseSlow,
        ),
        (
            "poison-storm",
            "half of the input is malformed records",
            Backend::Noida,
            Fault::PoisonStorm,
        ),
        (
            "instance-join",
            "a second instance joins, is SIGKILLed and rejoins",
            Backend::Noida,
            Fault::InstanceJoin,
        ),
        (
            "fenced-producer",
            "a frozen incarnation is replaced and woken: it must be fenced",
            Backend::Noida,
            Fault::FencedProducer,
        ),
        (
            "mock/leader-change",
            "partition leaders move every 400 ms mid-transaction",
            Backend::Mock,
            Fault::LeaderChange,
        ),
        (
            "mock/broker-down",
            "a broker goes down for 3 s and comes back",
            Backend::Mock,
            Fault::BrokerDownUp,
        ),
        (
            "mock/kafka-errors",
            "errors on EndTxn, Produce, AddPartitionsToTxn and TxnOffsetCommit",
            Backend::Mock,
            Fault::KafkaErrors,
        ),
    ];
    for (name, description, backend, fault) in others {
        specs.push(ScenarioSpec {
            name: name.to_owned(),
            description: description.to_owned(),
            backend,
            fault,
        });
    }
    specs
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct RunSize {
    /// records written
    pub events: u64,
    /// length of each outage or slowdown
    pub outage: Duration,
    /// longest wait for the pipeline to catch up
    pub catch_up: Duration,
}

impl RunSize {
    /// `--quick`: small workloads and short faults (CI).
    pub fn quick() -> RunSize {
        RunSize {
            events: 1_500,
            outage: Duration::from_secs(3),
            catch_up: Duration::from_secs(120),
        }
    }

    /// The default size.
    pub fn full() -> RunSize {
        RunSize {
            events: 6_000,
            outage: Duration::from_secs(8),
            catch_up: Duration::from_secs(240),
        }
    }
}

/// What a scenario is run with.
#[derive(Debug, Clone)]
pub struct ScenarioContext {
    /// the `onceflow` binary under test
    pub binary: PathBuf,
    /// the workload's seed
    pub seed: u64,
    /// sizes
    pub size: RunSize,
}

/// Settings every instance of a scenario gets: small batches, so a small
/// workload passes through many commit cycles and reaches every kill point.
pub const INSTANCE_ENV: [(&str, &str); 4] = [
    ("ONCEFLOW_MAX_BATCH_RECORDS", "200"),
    ("ONCEFLOW_MAX_BUFFERED_RECORDS", "800"),
    ("ONCEFLOW_BREAKER_COOLDOWN_MS", "300"),
    ("ONCEFLOW_BREAKER_MAX_COOLDOWN_MS", "1500"),
];

fn with_instance_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<(&str, &str)> = INSTANCE_ENV.to_vec();
    env.extend_from_slice(extra);
    env
}

/// What the fault phase left behind.
struct FaultPhase {
    service: Service,
    faults: u64,
    process_restarts: u64,
    faults_ended: Instant,
}

/// Runs one scenario and judges it.
pub async fn run_scenario(
    spec: &ScenarioSpec,
    context: &ScenarioContext,
    progress: &ProgressBar,
) -> ScenarioOutcome {
    let result = match spec.backend {
        Backend::Noida => run_on_noida(spec, context, progress).await,
        Backend::Mock => run_on_mock(spec, context, progress).await,
    };
    result.unwrap_or_else(|error| ScenarioOutcome::failed_to_run(&spec.name, error.to_string()))
}

async fn run_on_noida(
    spec: &ScenarioSpec,
    context: &ScenarioContext,
    progress: &ProgressBar,
) -> Result<ScenarioOutcome> {
    progress.set_message(format!("{}: starting a broker and a database", spec.name));
    let scenario = Scenario::new(&context.binary, 3).await?;
    let invalid_share = if spec.fault == Fault::PoisonStorm {
        0.5
    } else {
        0.03
    };
    progress.set_message(format!(
        "{}: writing {} events",
        spec.name, context.size.events
    ));
    scenario
        .produce_with_invalid_share(context.size.events, context.seed, invalid_share)
        .await?;

    progress.set_message(format!("{}: injecting {:?}", spec.name, spec.fault));
    let phase = inject_on_noida(spec, context, &scenario).await?;

    progress.set_message(format!("{}: catching up", spec.name));
    let truth = scenario
        .wait_caught_up_with_input(context.size.catch_up)
        .await?;
    let recover_seconds = phase.faults_ended.elapsed().as_secs_f64();
    let actor_restarts = actor_restarts(&scenario).await;
    let mut service = phase.service;
    if !service.is_running() {
        bail!(
            "the instance exited before the end; log: {}",
            service.log_path.display()
        );
    }
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    progress.set_message(format!("{}: judging", spec.name));
    let verdict = scenario.verdict().await?;
    let (lost, duplicated, dlq_exact) = numbers_of(&verdict);
    let mut violations = verdict.violations.clone();
    if !exit.success() {
        violations.push(format!("SIGTERM did not end in exit 0 but {exit:?}"));
    }
    Ok(ScenarioOutcome {
        scenario: spec.name.clone(),
        faults_injected: phase.faults,
        restarts_seen: actor_restarts + phase.process_restarts,
        events_in: truth.records,
        lost,
        duplicated,
        dlq_exact,
        recover_seconds,
        violations,
        error: None,
    })
}

/// Sum of `onceflow_actor_restarts_total` of the running instance.
async fn actor_restarts(scenario: &Scenario) -> u64 {
    let Ok((_, body)) = scenario.http_get("/metrics").await else {
        return 0;
    };
    body.lines()
        .filter(|line| line.starts_with("onceflow_actor_restarts_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn inject_on_noida(
    spec: &ScenarioSpec,
    context: &ScenarioContext,
    scenario: &Scenario,
) -> Result<FaultPhase> {
    let size = &context.size;
    match &spec.fault {
        Fault::ActorPanic(point) => {
            let failpoints = format!("{point}=1*off->1*panic->off");
            let service =
                scenario.start(&with_instance_env(&[("FAILPOINTS", failpoints.as_str())]))?;
            scenario
                .wait_for("the actor restart", Duration::from_secs(60), async |s| {
                    actor_restarts(s).await >= 1
                })
                .await
                .with_context(|| {
                    format!(
                        "the panic at {point} was not seen; log: {}",
                        service.log_path.display()
                    )
                })?;
            Ok(FaultPhase {
                service,
                faults: 1,
                process_restarts: 0,
                faults_ended: Instant::now(),
            })
        }
        Fault::ProcessKill(point) => {
            let failpoints = format!("{point}=1*off->return(sigkill)");
            let doomed =
                scenario.start(&with_instance_env(&[("FAILPOINTS", failpoints.as_str())]))?;
            let log = doomed.log_path.clone();
            let exit = doomed.wait_exit(Duration::from_secs(60)).await?;
            if exit.success() {
                bail!(
                    "the process was not killed at {point}; log: {}",
                    log.display()
                );
            }
            let service = scenario.start(&with_instance_env(&[]))?;
            Ok(FaultPhase {
                service,
                faults: 1,
                process_restarts: 1,
                faults_ended: Instant::now(),
            })
        }
        Fault::DatabaseOutage => {
            let service = scenario.start(&with_instance_env(&[]))?;
            wait_for_progress(scenario, Duration::from_secs(60)).await?;
            for _ in 0..2 {
                let outage = DatabaseOutage::begin(scenario).await?;
                tokio::time::sleep(size.outage).await;
                outage.end().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(FaultPhase {
                service,
                faults: 2,
                process_restarts: 0,
                faults_ended: Instant::now(),
            })
        }
        Fault::DatabaseSlow => {
            let service = scenario.start(&with_instance_env(&[(
                "ONCEFLOW_DB_STATEMENT_TIMEOUT_MS",
                "500",
            )]))?;
            wait_for_progress(scenario, Duration::from_secs(60)).await?;
            for _ in 0..2 {
                block_table(&scenario.pool, "campaign_spend", size.outage).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(FaultPhase {
                service,
                faults: 2,
                process_restarts: 0,
                faults_ended: Instant::now(),
            })
        }
        Fault::PoisonStorm => {
            let service = scenario.start(&with_instance_env(&[]))?;
            Ok(FaultPhase {
                service,
                faults: 1,
                process_restarts: 0,
                faults_ended: Instant::now(),
            })
        }
        Fault::InstanceJoin => {
            let service = scenario.start(&with_instance_env(&[]))?;
            wait_for_progress(scenario, Duration::from_secs(60)).await?;
            let second_id = unique("second");
            let second_port = free_port()?;
            let second =
                scenario.start_instance(&second_id, second_port, &with_instance_env(&[]))?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            second.sigkill().await?;
            let mut second =
                scenario.start_instance(&second_id, second_port, &with_instance_env(&[]))?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !second.is_running() {
                bail!(
                    "the second instance stopped; log: {}",
                    second.log_path.display()
                );
            }
            // A static member that leaves keeps its partitions on noida-db
            // (members are never evicted), so the second instance stays
            // until everything is caught up, and only then stops.
            let faults_ended = Instant::now();
            scenario.wait_caught_up_with_input(size.catch_up).await?;
            let (exit, _) = second.terminate(Duration::from_secs(15)).await?;
            if !exit.success() {
                bail!("the second instance did not exit 0 on SIGTERM: {exit:?}");
            }
            Ok(FaultPhase {
                service,
                faults: 2,
                process_restarts: 1,
                faults_ended,
            })
        }
        Fault::FencedProducer => {
            let zombie = scenario.start(&with_instance_env(&[]))?;
            wait_for_progress(scenario, Duration::from_secs(60)).await?;
            zombie.signal("STOP").await?;
            let successor = scenario.start_instance(
                &scenario.instance_id,
                free_port()?,
                &with_instance_env(&[]),
            )?;
            scenario
                .wait_for(
                    "the successor's claim",
                    Duration::from_secs(60),
                    async |s| {
                        sqlx::query_scalar::<_, i64>(
                            "SELECT min(owner_epoch) FROM consumer_offsets",
                        )
                        .fetch_one(&s.pool)
                        .await
                        .is_ok_and(|epoch| epoch >= 2)
                    },
                )
                .await?;
            zombie.signal("CONT").await?;
            let exit = zombie.wait_exit(Duration::from_secs(30)).await?;
            if exit.success() {
                bail!("the fenced incarnation exited 0: it should have stopped as fenced");
            }
            Ok(FaultPhase {
                service: successor,
                faults: 1,
                process_restarts: 1,
                faults_ended: Instant::now(),
            })
        }
        other => bail!("{other:?} does not run on noida-db"),
    }
}

/// Holds an exclusive lock on `table` for `duration`, so statements that
/// need it wait past their timeout.
pub(crate) async fn block_table(pool: &PgPool, table: &str, duration: Duration) -> Result<()> {
    let mut transaction = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut *transaction)
    .await?;
    tokio::time::sleep(duration).await;
    transaction.rollback().await?;
    Ok(())
}

async fn run_on_mock(
    spec: &ScenarioSpec,
    context: &ScenarioContext,
    progress: &ProgressBar,
) -> Result<ScenarioOutcome> {
    progress.set_message(format!(
        "{}: starting a mock cluster and a database",
        spec.name
    ));
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(3)?;
    let topics = Scenario::unique_topics();
    cluster.create_topic(&topics.input, 3, 3)?;
    cluster.create_topic(&topics.output, 3, 3)?;
    cluster.create_topic(&topics.dlq, 1, 3)?;
    let scenario = Scenario::with_broker(
        &context.binary,
        cluster.bootstrap_servers(),
        None,
        topics,
        3,
    )
    .await?;
    // Coordinators on broker 1: a group coordinator going down makes
    // send_offsets_to_transaction hang (librdkafka #5511).
    cluster.coordinator(MockCoordinator::Group(scenario.group_id.clone()), 1)?;
    cluster.coordinator(
        MockCoordinator::Transaction(format!("{}-{}", scenario.group_id, scenario.instance_id)),
        1,
    )?;
    if spec.fault == Fault::LeaderChange {
        // Leader changes crash the mock above Produce v9.
        cluster.apiversion(RDKafkaApiKey::Produce, None, Some(9))?;
    }
    progress.set_message(format!(
        "{}: writing {} events",
        spec.name, context.size.events
    ));
    scenario.produce(context.size.events, context.seed).await?;
    let mut service = scenario.start(&with_instance_env(&[(
        "ONCEFLOW_KAFKA_CALL_TIMEOUT_MS",
        "5000",
    )]))?;
    wait_for_progress(&scenario, Duration::from_secs(60)).await?;

    progress.set_message(format!("{}: injecting {:?}", spec.name, spec.fault));
    let faults = inject_on_mock(&spec.fault, &cluster, &scenario).await?;
    let faults_ended = Instant::now();

    progress.set_message(format!("{}: catching up", spec.name));
    let deadline = Instant::now() + context.size.catch_up;
    let judgement = loop {
        let judgement = mock_judgement(&scenario, &service.log()).await?;
        if judgement.holds() || Instant::now() > deadline {
            break judgement;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let recover_seconds = faults_ended.elapsed().as_secs_f64();
    let restarts = actor_restarts(&scenario).await;
    let truth = crate::harness::input_truth(&scenario.bootstrap, &scenario.topics.input).await?;
    if !service.is_running() {
        bail!(
            "the instance exited before the end; log: {}",
            service.log_path.display()
        );
    }
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    let MockJudgement {
        lost,
        duplicated,
        dlq_exact,
        mut violations,
        ..
    } = judgement;
    if !exit.success() {
        violations.push(format!("SIGTERM did not end in exit 0 but {exit:?}"));
    }
    drop(cluster);
    Ok(ScenarioOutcome {
        scenario: spec.name.clone(),
        faults_injected: faults,
        restarts_seen: restarts,
        events_in: truth.records,
        lost,
        duplicated,
        dlq_exact,
        recover_seconds,
        violations,
        error: None,
    })
}

async fn inject_on_mock(
    fault: &Fault,
    cluster: &MockCluster<'static, DefaultProducerContext>,
    scenario: &Scenario,
) -> Result<u64> {
    use RDKafkaRespErr::*;
    match fault {
        Fault::LeaderChange => {
            let mut moves = 0;
            for round in 0..10_i32 {
                for partition in 0..3 {
                    let leader = 1 + (round + partition).rem_euclid(3);
                    cluster.partition_leader(&scenario.topics.input, partition, Some(leader))?;
                    cluster.partition_leader(&scenario.topics.output, partition, Some(leader))?;
                    moves += 2;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Ok(moves)
        }
        Fault::BrokerDownUp => {
            cluster.broker_down(3)?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.broker_up(3)?;
            Ok(1)
        }
        Fault::KafkaErrors => {
            let injections: [(RDKafkaApiKey, &[RDKafkaRespErr]); 4] = [
                (
                    RDKafkaApiKey::EndTxn,
                    &[
                        RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                        RD_KAFKA_RESP_ERR_PRODUCER_FENCED,
                    ],
                ),
                (
                    RDKafkaApiKey::Produce,
                    &[
                        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                        RD_KAFKA_RESP_ERR_INVALID_RECORD,
                    ],
                ),
                (
                    RDKafkaApiKey::AddPartitionsToTxn,
                    &[RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
                ),
                (
                    RDKafkaApiKey::TxnOffsetCommit,
                    &[RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
                ),
            ];
            let mut injected = 0;
            for (api, errors) in injections {
                cluster.request_errors(api, errors);
                injected += errors.len() as u64;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(injected)
        }
        other => bail!("{other:?} does not run on the mock cluster"),
    }
}

/// The path of the binary running now (the `onceflow` under test).
pub fn this_binary() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the onceflow binary")
}
