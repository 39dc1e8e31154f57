//! The seeded random mode: a schedule of mixed faults (SIGKILLs, actor
//! panics, supervisor restarts past the budget, repeated panics, slow cycles,
//! database outages and slowdowns, a second instance joining and dying,
//! brokers of its own three-node Kafka cluster SIGKILLed or SIGSTOPped and
//! brought back, leaders moved, the network to the brokers or to PostgreSQL
//! black-holed, refused or delayed) over a run of a given length, while the
//! harness's own generated load (awkward records included) keeps arriving.
//!
//! Guarantees: the schedule is a pure function of the seed and the length,
//! printed before it runs, so a failing run is reproduced by its command;
//! the verdict (exactly-once, and liveness of every partition) is taken
//! after every instance stopped.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Context, Result};
use crate::harness::{
    DatabaseOutage, KafkaCluster, NetworkCondition, Scenario, Service, WorkloadSpec, unique,
};
use crate::instance_stop::stop_instances;
use crate::network_faults::{NetworkPath, set_condition};
use crate::outcome::{JUDGED_BY_TRANSACTIONS, ScenarioOutcome, numbers_of};
use crate::scenarios::{INSTANCE_ENV, ScenarioContext, block_table};

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ScheduledFault {
    /// SIGKILL the main instance and start it again
    KillProcess,
    /// restart the main instance with an actor dying at this kill point
    PanicAt(&'static str),
    /// the database refuses connections for this many milliseconds
    DatabaseOutage(u64),
    /// a table is locked past the statement timeout for this many milliseconds
    DatabaseSlow(u64),
    /// a second instance joins (or, if it runs, is SIGKILLed and rejoins)
    SecondInstance,
    /// restart the main instance with restart budget 1 and a partition
    /// consumer that panics twice: the consumer supervisor is restarted
    SupervisorRestart,
    /// restart the main instance with actors panicking at random
    RepeatedPanics,
    /// restart the main instance sleeping 15 s after a database commit
    SlowCycle,
    /// SIGKILL this broker node, restart it after this many milliseconds
    KillBroker(u32, u64),
    /// SIGSTOP this broker node for this many milliseconds, then SIGCONT
    PauseBroker(u32, u64),
    /// move the leader of every input and output partition to another replica
    MoveLeaders,
    /// the network path to the brokers or to PostgreSQL has this condition
    /// for this many milliseconds, then heals
    Network(NetworkPath, NetworkCondition, u64),
}

/// A fault at a time from the start of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledEvent {
    /// milliseconds from the start
    pub at_ms: u64,
    /// the fault
    pub fault: ScheduledFault,
}

/// The schedule of `seed` over `duration`.
pub fn schedule(seed: u64, duration: Duration, failpoints: bool) -> Vec<ScheduledEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let mut at_ms = rng.random_range(1_000..3_000_u64);
    let end_ms = duration.as_millis() as u64;
    while at_ms < end_ms {
        let fault = match rng.random_range(0..13) {
            0 => ScheduledFault::KillProcess,
            1 if failpoints => {
                let points = onceflow_actors::failpoints::ALL_POINTS;
                ScheduledFault::PanicAt(points[rng.random_range(0..points.len())])
            }
            5 if failpoints => ScheduledFault::SupervisorRestart,
            6 if failpoints => ScheduledFault::RepeatedPanics,
            7 if failpoints => ScheduledFault::SlowCycle,
            1 | 5 | 6 | 7 => ScheduledFault::KillProcess,
            8 => {
                ScheduledFault::KillBroker(rng.random_range(1..=3), rng.random_range(1_000..8_000))
            }
            9 => ScheduledFault::PauseBroker(
                rng.random_range(1..=3),
                rng.random_range(1_000..14_000),
            ),
            10 => ScheduledFault::MoveLeaders,
            11 | 12 => {
                let path = if rng.random_bool(0.5) {
                    NetworkPath::Brokers
                } else {
                    NetworkPath::Database
                };
                let condition = match rng.random_range(0..3) {
                    0 => NetworkCondition::BlackHoled,
                    1 => NetworkCondition::Refused,
                    _ => {
                        NetworkCondition::Delayed(Duration::from_millis(rng.random_range(20..400)))
                    }
                };
                ScheduledFault::Network(path, condition, rng.random_range(1_000..15_000))
            }
            2 => ScheduledFault::DatabaseOutage(rng.random_range(1_000..5_000)),
            3 => ScheduledFault::DatabaseSlow(rng.random_range(1_000..3_000)),
            _ => ScheduledFault::SecondInstance,
        };
        events.push(ScheduledEvent { at_ms, fault });
        at_ms += rng.random_range(1_500..6_000);
    }
    events
}

/// Runs the random mode and judges it.
pub async fn run_random(
    context: &ScenarioContext,
    duration: Duration,
    progress: &ProgressBar,
) -> ScenarioOutcome {
    let name = format!("random/seed-{}", context.seed);
    run(context, duration, progress, &name)
        .await
        .unwrap_or_else(|error| ScenarioOutcome::failed_to_run(&name, error.to_string()))
}

async fn run(
    context: &ScenarioContext,
    duration: Duration,
    progress: &ProgressBar,
    name: &str,
) -> Result<ScenarioOutcome> {
    let plan = schedule(context.seed, duration, onceflow_actors::failpoints::ENABLED);
    // On stderr whether or not the progress bar is drawn (a hidden bar drops
    // its `println`): a failing run is reproduced from this line.
    let line = format!(
        "schedule of seed {}: {}",
        context.seed,
        serde_json::to_string(&plan)?
    );
    progress.suspend(|| eprintln!("{line}"));
    // Brokers are hurt: a cluster of the run's own, reached by onceflow
    // through proxies, as its database is.
    let cluster = KafkaCluster::start_own_behind_proxies().await?;
    let scenario = Scenario::on_cluster(&context.binary, cluster, 3)
        .await?
        .with_database_behind_proxy()
        .await?;
    let rate = (context.size.events * 1_000 / duration.as_millis().max(1) as u64).max(50);
    let load = scenario.generate_in_background(
        WorkloadSpec {
            awkward_share: 0.3,
            ..WorkloadSpec::mixed(context.size.events, 3, context.seed)
        },
        rate,
    );
    let env: Vec<(&str, &str)> = INSTANCE_ENV.to_vec();
    let mut main = scenario.start(&env)?;
    let mut second: Option<(String, Service)> = None;
    let started = Instant::now();
    let mut process_restarts = 0;
    for event in &plan {
        let due = Duration::from_millis(event.at_ms);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        progress.set_message(format!("{name}: {:?} at {} ms", event.fault, event.at_ms));
        match &event.fault {
            ScheduledFault::KillProcess => {
                main.sigkill().await?;
                main = scenario.start(&env)?;
                process_restarts += 1;
            }
            ScheduledFault::PanicAt(point) => {
                main.sigkill().await?;
                let failpoints = format!("{point}=1*off->1*panic->off");
                let mut with_point = env.clone();
                with_point.push(("FAILPOINTS", failpoints.as_str()));
                main = scenario.start(&with_point)?;
                process_restarts += 1;
            }
            ScheduledFault::SupervisorRestart => {
                main.sigkill().await?;
                let mut with_points = env.clone();
                with_points.push(("ONCEFLOW_RESTART_BUDGET", "1"));
                with_points.push((
                    "FAILPOINTS",
                    "partition-consumer-mid-batch=5*off->2*panic->off",
                ));
                main = scenario.start(&with_points)?;
                process_restarts += 1;
            }
            ScheduledFault::RepeatedPanics => {
                main.sigkill().await?;
                let mut with_points = env.clone();
                with_points.push(("ONCEFLOW_RESTART_BUDGET", "1000"));
                with_points.push((
                    "FAILPOINTS",
                    "coordinator-after-db-commit=10%panic;db-writer-mid-statement=10%panic",
                ));
                main = scenario.start(&with_points)?;
                process_restarts += 1;
            }
            ScheduledFault::SlowCycle => {
                main.sigkill().await?;
                let mut with_points = env.clone();
                with_points.push((
                    "FAILPOINTS",
                    "coordinator-after-db-commit=2*off->1*sleep(15000)->off",
                ));
                main = scenario.start(&with_points)?;
                process_restarts += 1;
            }
            ScheduledFault::DatabaseOutage(ms) => {
                let outage = DatabaseOutage::begin(&scenario).await?;
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                outage.end().await?;
            }
            ScheduledFault::DatabaseSlow(ms) => {
                block_table(&scenario.pool, "campaign_spend", Duration::from_millis(*ms)).await?;
            }
            ScheduledFault::KillBroker(node, ms) => {
                let cluster = cluster_of(&scenario)?;
                cluster.kill_node(*node).await?;
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                cluster.restart_node(*node).await?;
            }
            ScheduledFault::PauseBroker(node, ms) => {
                let cluster = cluster_of(&scenario)?;
                cluster.signal_node(*node, "STOP").await?;
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                cluster.signal_node(*node, "CONT").await?;
            }
            ScheduledFault::MoveLeaders => {
                cluster_of(&scenario)?
                    .move_every_leader(&[&scenario.topics.input, &scenario.topics.output], 0)
                    .await?;
            }
            ScheduledFault::Network(path, condition, ms) => {
                set_condition(&scenario, *path, *condition)?;
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                set_condition(&scenario, *path, NetworkCondition::Open)?;
            }
            ScheduledFault::SecondInstance => match second.take() {
                None => {
                    let id = unique("second");
                    let service = scenario.start_instance(&id, &env)?;
                    second = Some((id, service));
                }
                Some((id, service)) => {
                    service.sigkill().await?;
                    let service = scenario.start_instance(&id, &env)?;
                    second = Some((id, service));
                    process_restarts += 1;
                }
            },
        }
    }
    let faults_ended = Instant::now();
    progress.set_message(format!("{name}: load finishing, catching up"));
    let generated = load.await.context("the load task failed")??;
    let mut violations = scenario.liveness_violations(context.size.catch_up).await;
    let recover_seconds = faults_ended.elapsed().as_secs_f64();
    let others = second.map(|(_, service)| service).into_iter().collect();
    violations.extend(stop_instances(main, others).await);
    let verdict = scenario.verdict().await?;
    let (lost, duplicated, dlq_exact) = numbers_of(&verdict);
    violations.extend(verdict.violations.iter().cloned());
    let outcome = ScenarioOutcome {
        scenario: name.to_owned(),
        faults_injected: plan.len() as u64,
        restarts_seen: process_restarts,
        events_in: verdict.truth.records,
        lost,
        duplicated,
        dlq_exact,
        recover_seconds,
        evidence: vec![format!(
            "{} scheduled faults injected while load arrived; generated {} records",
            plan.len(),
            generated.records
        )],
        judged_by: JUDGED_BY_TRANSACTIONS.to_owned(),
        violations,
        error: None,
    };
    if outcome.passed() {
        scenario.drop_database().await?;
    }
    Ok(outcome)
}

fn cluster_of(scenario: &Scenario) -> Result<&KafkaCluster> {
    scenario
        .cluster
        .as_ref()
        .context("the random mode runs on a Kafka cluster of its own")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let a = schedule(7, Duration::from_secs(60), true);
        let b = schedule(7, Duration::from_secs(60), true);
        let c = schedule(8, Duration::from_secs(60), true);
        assert_eq!(
            serde_json::to_string(&a).ok(),
            serde_json::to_string(&b).ok()
        );
        assert_ne!(
            serde_json::to_string(&a).ok(),
            serde_json::to_string(&c).ok()
        );
        assert!(a.iter().all(|event| event.at_ms < 60_000));
        assert!(a.len() >= 8, "a minute holds many faults: {}", a.len());
        // Over a long run every kind of fault comes up.
        let long = schedule(11, Duration::from_secs(1_800), true);
        for kind in [
            "KillProcess",
            "PanicAt",
            "DatabaseOutage",
            "DatabaseSlow",
            "SecondInstance",
            "SupervisorRestart",
            "RepeatedPanics",
            "SlowCycle",
            "KillBroker",
            "PauseBroker",
            "MoveLeaders",
            "Network(Brokers, BlackHoled",
            "Network(Brokers, Refused",
            "Network(Brokers, Delayed",
            "Network(Database, BlackHoled",
            "Network(Database, Refused",
            "Network(Database, Delayed",
        ] {
            assert!(
                long.iter()
                    .any(|event| format!("{:?}", event.fault).starts_with(kind)),
                "{kind} never scheduled"
            );
        }
    }

    #[test]
    fn without_kill_points_no_panic_is_scheduled() {
        let plan = schedule(3, Duration::from_secs(120), false);
        assert!(
            plan.iter()
                .all(|event| !matches!(event.fault, ScheduledFault::PanicAt(_)))
        );
    }
}
