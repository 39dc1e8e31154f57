//! The seeded random mode: a schedule of mixed faults (SIGKILLs, actor
//! panics, database outages and slowdowns, a second instance joining and
//! dying) over a run of a given length, while load keeps arriving.
//!
//! Guarantees: the schedule is a pure function of the seed and the length,
//! printed before it runs, so a failing run is reproduced by its command.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::Result;
use crate::harness::{DatabaseOutage, Scenario, Service, free_port, unique};
use crate::outcome::{ScenarioOutcome, numbers_of};
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
        let fault = match rng.random_range(0..5) {
            0 => ScheduledFault::KillProcess,
            1 if failpoints => {
                let points = onceflow_actors::failpoints::ALL_POINTS;
                ScheduledFault::PanicAt(points[rng.random_range(0..points.len())])
            }
            1 => ScheduledFault::KillProcess,
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
    progress.println(format!(
        "schedule of seed {}: {}",
        context.seed,
        serde_json::to_string(&plan)?
    ));
    let scenario = Scenario::new(&context.binary, 3).await?;
    let rate = (context.size.events * 1_000 / duration.as_millis().max(1) as u64).max(50);
    let mut load = scenario.produce_in_background(context.size.events, rate, context.seed)?;
    let env: Vec<(&str, &str)> = INSTANCE_ENV.to_vec();
    let mut main = scenario.start(&env)?;
    let mut second: Option<(String, u16, Service)> = None;
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
            ScheduledFault::DatabaseOutage(ms) => {
                let outage = DatabaseOutage::begin(&scenario).await?;
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                outage.end().await?;
            }
            ScheduledFault::DatabaseSlow(ms) => {
                block_table(&scenario.pool, "campaign_spend", Duration::from_millis(*ms)).await?;
            }
            ScheduledFault::SecondInstance => match second.take() {
                None => {
                    let id = unique("second");
                    let port = free_port()?;
                    let service = scenario.start_instance(&id, port, &env)?;
                    second = Some((id, port, service));
                }
                Some((id, port, service)) => {
                    service.sigkill().await?;
                    let service = scenario.start_instance(&id, port, &env)?;
                    second = Some((id, port, service));
                    process_restarts += 1;
                }
            },
        }
    }
    let faults_ended = Instant::now();
    progress.set_message(format!("{name}: load finishing, catching up"));
    load.wait().await?;
    let truth = scenario
        .wait_caught_up_with_input(context.size.catch_up)
        .await?;
    let recover_seconds = faults_ended.elapsed().as_secs_f64();
    let mut violations = Vec::new();
    if let Some((_, _, service)) = second {
        let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
        if !exit.success() {
            violations.push(format!(
                "the second instance did not exit 0 on SIGTERM: {exit:?}"
            ));
        }
    }
    let (exit, _) = main.terminate(Duration::from_secs(15)).await?;
    if !exit.success() {
        violations.push(format!(
            "the main instance did not exit 0 on SIGTERM: {exit:?}"
        ));
    }
    let verdict = scenario.verdict().await?;
    let (lost, duplicated, dlq_exact) = numbers_of(&verdict);
    violations.extend(verdict.violations.iter().cloned());
    Ok(ScenarioOutcome {
        scenario: name.to_owned(),
        faults_injected: plan.len() as u64,
        restarts_seen: process_restarts,
        events_in: truth.records,
        lost,
        duplicated,
        dlq_exact,
        recover_seconds,
        violations,
        error: None,
    })
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
