//! The demo's faults, taken from the chaos suite's repertoire and injected
//! into the running, unchanged actor tree from outside it:
//! - the transaction coordinator killed (`ActorCell::kill`) while a commit is
//!   in flight: its database part committed, its Kafka transaction open;
//! - a leader change of every input and output partition on the mock cluster;
//! - the store refusing writes for a few seconds (another connection holds
//!   the write lock longer than the pipeline's statement timeout).
//!
//! Guarantees: each function reports only what it observed (a restart, a
//! breaker transition, commits resuming), and never waits without bound.

use std::time::{Duration, Instant};

use anyhow::bail;
use onceflow_actors::BreakerState;
use onceflow_actors::PipelineStatus;

use super::demo_progress::Backlog;
use super::demo_store::DemoStore;
use super::demo_verdict::FaultReport;
use super::mock_brokers::MockBrokers;

/// Longest wait for a commit cycle to be in flight, and for the pipeline to
/// recover from a fault.
const FAULT_WAIT: Duration = Duration::from_secs(30);

/// How often the status is sampled while waiting for a moment to strike.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// Leader changes, and the pause between two.
const LEADER_ROUNDS: u32 = 4;
const LEADER_PAUSE: Duration = Duration::from_millis(500);

/// How long the store refuses writes.
pub const STORE_OUTAGE: Duration = Duration::from_secs(5);

/// Kills the coordinator while a Kafka transaction is open, then waits until
/// its supervisor has restarted it and it commits again.
pub async fn kill_coordinator_mid_commit(
    status: &PipelineStatus,
    coordinator_name: &str,
    backlog: &Backlog,
) -> anyhow::Result<FaultReport> {
    let restarts_before = status.actor_restarts();
    let deadline = Instant::now() + FAULT_WAIT;
    let (killed_at, commits_at_kill) = loop {
        if status.open_txn_age().is_some()
            && let Some(coordinator) = ractor::registry::where_is(coordinator_name)
        {
            let commits = status.committed_cycles();
            coordinator.kill();
            break (Instant::now(), commits);
        }
        if Instant::now() > deadline {
            bail!("no commit was in flight within {FAULT_WAIT:?}; nothing was killed");
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    let deadline = Instant::now() + FAULT_WAIT;
    let mut restarted_at = None;
    let mut commits_at_restart = commits_at_kill;
    loop {
        if restarted_at.is_none() && status.actor_restarts() > restarts_before {
            restarted_at = Some(killed_at.elapsed());
            commits_at_restart = status.committed_cycles();
        }
        if let Some(restarted) = restarted_at
            && (status.committed_cycles() > commits_at_restart || backlog.is_drained())
        {
            let in_flight = if commits_at_restart == commits_at_kill {
                "the cycle in flight never reported its commit; the new coordinator replays its batches"
            } else {
                "the cycle in flight had committed just before the kill landed"
            };
            return Ok(FaultReport {
                fault: "coordinator killed mid-commit",
                detail: format!(
                    "killed with its Kafka transaction open (database part committed); \
                     restarted by its supervisor after {} ms, committing again after {} ms; {in_flight}",
                    restarted.as_millis(),
                    killed_at.elapsed().as_millis()
                ),
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the coordinator was killed but {} within {FAULT_WAIT:?}",
                if restarted_at.is_some() {
                    "did not commit again"
                } else {
                    "was not restarted"
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Moves every input and output partition's leader to another broker,
/// [`LEADER_ROUNDS`] times, then waits until a transaction commits.
pub async fn change_leaders(
    brokers: &mut MockBrokers,
    status: &PipelineStatus,
    backlog: &Backlog,
) -> anyhow::Result<FaultReport> {
    let started = Instant::now();
    let mut moves = 0;
    for _ in 0..LEADER_ROUNDS {
        moves += brokers.move_leaders()?;
        tokio::time::sleep(LEADER_PAUSE).await;
    }
    let commits = status.committed_cycles();
    wait_for_commit(status, commits, backlog).await?;
    Ok(FaultReport {
        fault: "broker leader change",
        detail: format!(
            "{moves} partition leader moves across 3 brokers in {LEADER_ROUNDS} rounds; \
             committing after {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    })
}

/// Makes the store refuse writes for [`STORE_OUTAGE`], watching the
/// circuit breaker meanwhile, then waits until it is closed and commits.
pub async fn refuse_store_writes(
    store: &DemoStore,
    status: &PipelineStatus,
    backlog: &Backlog,
) -> anyhow::Result<FaultReport> {
    let transitions_before = breaker_opened_count(status);
    store.refuse_writes_for(STORE_OUTAGE).await?;
    let ended = Instant::now();
    let deadline = ended + FAULT_WAIT;
    while status.breaker_state() != BreakerState::Closed {
        if Instant::now() > deadline {
            bail!("the circuit breaker did not close within {FAULT_WAIT:?} of the outage's end");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let commits = status.committed_cycles();
    wait_for_commit(status, commits, backlog).await?;
    let opened = breaker_opened_count(status) > transitions_before;
    let breaker = if opened {
        "retries failed, the circuit breaker opened and paused the partitions, probed, then closed"
    } else {
        "retries outlasted it (the circuit breaker stayed closed)"
    };
    Ok(FaultReport {
        fault: "store unavailable",
        detail: format!(
            "{} refused writes for {:.1} s; {breaker}; committing {:.1} s after the outage",
            store.kind(),
            STORE_OUTAGE.as_secs_f64(),
            ended.elapsed().as_secs_f64()
        ),
    })
}

/// Transitions of the breaker to `open` so far.
fn breaker_opened_count(status: &PipelineStatus) -> u64 {
    status
        .metrics()
        .circuit_breaker_transitions
        .get_or_create(&vec![("to".to_owned(), "open".to_owned())])
        .get()
}

/// Waits until a transaction commits after `after` commits, or nothing is
/// left to commit.
async fn wait_for_commit(
    status: &PipelineStatus,
    after: i64,
    backlog: &Backlog,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + FAULT_WAIT;
    while status.committed_cycles() <= after && !backlog.is_drained() {
        if Instant::now() > deadline {
            bail!("no transaction committed within {FAULT_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
