//! Faults only a real Kafka cluster has, injected while onceflow runs under
//! load: SIGKILL of the broker that leads input or output partitions, of the
//! transaction coordinator or of the group coordinator (then a restart);
//! SIGSTOP of a broker past its session timeout; a rolling restart; leader
//! moves on a schedule; two brokers down (the ISR below
//! `min.insync.replicas`); onceflow frozen past its transaction timeout; and
//! rebalance storms.
//!
//! Guarantee: every fault proves it met work and did what it claims (the
//! node held the role when it was hit, a leader actually moved, the
//! transaction actually timed out, a joiner actually owned partitions), or
//! the scenario fails as `not injected`.

use std::time::{Duration, Instant};

use crate::bail;
use crate::error::{Context, Result};
use crate::harness::{KafkaCluster, NODES, Scenario, Service, unique, wait_for_progress};
use crate::outcome::Injection;
use crate::scenarios::{
    FaultPhase, ScenarioContext, partitions_owned_by, seen_within, with_instance_env,
    work_seen_soon,
};

/// Which broker a kill hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRole {
    /// the leader of input partition 0
    InputLeader,
    /// the leader of output partition 0
    OutputLeader,
    /// the coordinator of onceflow's transactional id
    TransactionCoordinator,
    /// the coordinator of onceflow's consumer group
    GroupCoordinator,
}

/// A fault of the real cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFault {
    /// SIGKILL of the broker with this role, then a restart
    KillBroker(BrokerRole),
    /// SIGSTOP of the input leader past its session timeout, then SIGCONT
    PauseBroker,
    /// every broker stopped cleanly and started again, one after the other
    RollingRestart,
    /// the leaders of every input and output partition move, round after round
    LeaderMoves,
    /// two of the three brokers SIGKILLed together, then restarted
    TwoBrokersDown,
    /// onceflow SIGSTOPped past its transaction timeout, then woken
    FrozenPastTransactionTimeout,
    /// instances join and leave again and again
    RebalanceStorm,
}

impl ClusterFault {
    /// Whether the fault hurts brokers, so the scenario needs a cluster of
    /// its own rather than the run's shared one.
    pub fn needs_own_cluster(self) -> bool {
        !matches!(
            self,
            ClusterFault::LeaderMoves
                | ClusterFault::FrozenPastTransactionTimeout
                | ClusterFault::RebalanceStorm
        )
    }
}

/// How long a broker takes to be fenced after it stopped answering
/// (`broker.session.timeout.ms`, 9 s by default), plus a margin.
const BROKER_FENCED_WITHIN: Duration = Duration::from_secs(30);

/// The transaction timeout onceflow runs with in the freeze scenario.
const SHORT_TRANSACTION_TIMEOUT_MS: u64 = 10_000;

fn cluster_of(scenario: &Scenario) -> Result<&KafkaCluster> {
    scenario
        .cluster
        .as_ref()
        .context("this fault needs a real Kafka cluster")
}

/// Injects `fault` while the scenario's load arrives; what it left behind.
pub(crate) async fn inject_cluster_fault(
    fault: ClusterFault,
    context: &ScenarioContext,
    scenario: &Scenario,
) -> Result<FaultPhase> {
    let size = &context.size;
    let load = crate::scenarios::background_load(context, scenario, (size.events * 2).max(1_000));
    let mut injection = Injection::default();
    let extra: Vec<(&str, String)> = match fault {
        ClusterFault::FrozenPastTransactionTimeout => vec![
            (
                "ONCEFLOW_TRANSACTION_TIMEOUT_MS",
                SHORT_TRANSACTION_TIMEOUT_MS.to_string(),
            ),
            // A Kafka call must time out well within the transaction.
            (
                "ONCEFLOW_KAFKA_CALL_TIMEOUT_MS",
                (SHORT_TRANSACTION_TIMEOUT_MS / 2).to_string(),
            ),
            // A transaction held open for 4 s, once the pipeline ran a while,
            // so that the freeze meets it.
            (
                "FAILPOINTS",
                "coordinator-during-kafka-commit=30*off->1*sleep(4000)->off".to_owned(),
            ),
        ],
        _ => Vec::new(),
    };
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = scenario.start(&with_instance_env(&extra))?;
    wait_for_progress(scenario, Duration::from_secs(90)).await?;
    injection.require(
        work_seen_soon(scenario).await,
        "input was left to consume when the fault began",
    );
    let mut phase_others = Vec::new();
    let faults = match fault {
        ClusterFault::KillBroker(role) => {
            kill_broker(scenario, role, size.outage, &mut injection).await?;
            1
        }
        ClusterFault::PauseBroker => {
            pause_broker(scenario, &mut injection).await?;
            1
        }
        ClusterFault::RollingRestart => {
            rolling_restart(scenario, &mut injection).await?;
            3
        }
        ClusterFault::LeaderMoves => leader_moves(scenario, 3, &mut injection).await?,
        ClusterFault::TwoBrokersDown => {
            two_brokers_down(scenario, size.outage, &mut injection).await?;
            2
        }
        ClusterFault::FrozenPastTransactionTimeout => {
            freeze_past_transaction_timeout(&service, &mut injection).await?;
            1
        }
        ClusterFault::RebalanceStorm => {
            let (rounds, last) = rebalance_storm(scenario, 4, &mut injection).await?;
            phase_others.extend(last);
            rounds
        }
    };
    let mut phase = FaultPhase::new(service, faults, injection);
    phase.others = phase_others;
    phase.load = Some(load);
    Ok(phase)
}

/// The node that holds `role` now.
async fn node_with_role(scenario: &Scenario, role: BrokerRole) -> Result<u32> {
    let cluster = cluster_of(scenario)?;
    let leader_of = |topic: String| async move {
        let placements = cluster.placements(&topic).await?;
        let leader = placements
            .iter()
            .find(|placement| placement.partition == 0)
            .map(|placement| placement.leader)
            .with_context(|| format!("no partition 0 of {topic}"))?;
        u32::try_from(leader).with_context(|| format!("partition 0 of {topic} has no leader"))
    };
    match role {
        BrokerRole::InputLeader => leader_of(scenario.topics.input.clone()).await,
        BrokerRole::OutputLeader => leader_of(scenario.topics.output.clone()).await,
        BrokerRole::TransactionCoordinator => {
            cluster
                .transaction_coordinator(&format!("{}-{}", scenario.group_id, scenario.instance_id))
                .await
        }
        BrokerRole::GroupCoordinator => cluster.group_coordinator(&scenario.group_id).await,
    }
}

/// The internal topic whose partition leader is the coordinator of `role`.
fn coordinator_topic(role: BrokerRole) -> Option<&'static str> {
    match role {
        BrokerRole::TransactionCoordinator => Some("__transaction_state"),
        BrokerRole::GroupCoordinator => Some("__consumer_offsets"),
        BrokerRole::InputLeader | BrokerRole::OutputLeader => None,
    }
}

/// Whether `role` moved away from `node` within `timeout`. A coordinator is
/// the leader of one partition of its internal topic, so it moved once every
/// partition of that topic `node` led (`led_before`) has another leader.
async fn role_moved_off(
    scenario: &Scenario,
    role: BrokerRole,
    node: u32,
    led_before: &[i32],
    timeout: Duration,
) -> bool {
    seen_within(timeout, || async {
        match coordinator_topic(role) {
            None => node_with_role(scenario, role)
                .await
                .is_ok_and(|holder| holder != node),
            Some(topic) => match cluster_of(scenario) {
                Ok(cluster) => cluster.placements(topic).await.is_ok_and(|placements| {
                    placements
                        .iter()
                        .filter(|placement| led_before.contains(&placement.partition))
                        .all(|placement| {
                            placement.leader >= 0
                                && placement.leader != i32::try_from(node).unwrap_or(-1)
                        })
                }),
                Err(_) => false,
            },
        }
    })
    .await
}

/// The partitions of `role`'s internal topic that `node` leads now.
async fn partitions_led(scenario: &Scenario, role: BrokerRole, node: u32) -> Result<Vec<i32>> {
    let Some(topic) = coordinator_topic(role) else {
        return Ok(Vec::new());
    };
    let node = i32::try_from(node).unwrap_or(-1);
    Ok(cluster_of(scenario)?
        .placements(topic)
        .await?
        .into_iter()
        .filter(|placement| placement.leader == node)
        .map(|placement| placement.partition)
        .collect())
}

async fn kill_broker(
    scenario: &Scenario,
    role: BrokerRole,
    down_for: Duration,
    injection: &mut Injection,
) -> Result<()> {
    let cluster = cluster_of(scenario)?;
    let node = node_with_role(scenario, role).await?;
    let led_before = partitions_led(scenario, role, node).await?;
    cluster.kill_node(node).await?;
    let killed_at = Instant::now();
    injection.require(true, format!("node {node}, the {role:?}, SIGKILLed"));
    let moved = role_moved_off(scenario, role, node, &led_before, BROKER_FENCED_WITHIN).await;
    injection.require(
        moved,
        format!("the {role:?} role moved off the killed node {node}"),
    );
    let remaining = down_for.saturating_sub(killed_at.elapsed());
    tokio::time::sleep(remaining).await;
    cluster.restart_node(node).await?;
    injection.require(
        true,
        format!(
            "node {node} restarted after {:.1} s",
            killed_at.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

async fn pause_broker(scenario: &Scenario, injection: &mut Injection) -> Result<()> {
    let cluster = cluster_of(scenario)?;
    let node = node_with_role(scenario, BrokerRole::InputLeader).await?;
    cluster.signal_node(node, "STOP").await?;
    let stopped_at = Instant::now();
    let moved = role_moved_off(
        scenario,
        BrokerRole::InputLeader,
        node,
        &[],
        BROKER_FENCED_WITHIN,
    )
    .await;
    // Past the session timeout in any case, so the cluster fenced it.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(stopped_at.elapsed())).await;
    cluster.signal_node(node, "CONT").await?;
    injection.require(
        moved,
        format!(
            "node {node}, the input leader, SIGSTOPped for {:.1} s: leadership moved off it",
            stopped_at.elapsed().as_secs_f64()
        ),
    );
    wait_in_sync(scenario, node).await
}

/// Waits until `node` is back in the in-sync set of every input partition.
async fn wait_in_sync(scenario: &Scenario, node: u32) -> Result<()> {
    let cluster = cluster_of(scenario)?;
    let node = i32::try_from(node).unwrap_or(-1);
    crate::harness::wait_until(
        Duration::from_secs(90),
        &format!("node {node} is back in sync on {}", scenario.topics.input),
        || async {
            Ok(cluster
                .placements(&scenario.topics.input)
                .await?
                .iter()
                .all(|placement| placement.in_sync.contains(&node)))
        },
    )
    .await
}

async fn rolling_restart(scenario: &Scenario, injection: &mut Injection) -> Result<()> {
    let cluster = cluster_of(scenario)?;
    for node in NODES {
        let pid = cluster.node_pid(node)?;
        cluster.signal_node(node, "TERM").await?;
        crate::harness::wait_until(
            Duration::from_secs(60),
            &format!("node {node} stopped cleanly"),
            || async move { Ok(!crate::harness::process_alive(pid)) },
        )
        .await?;
        cluster.restart_node(node).await?;
        wait_in_sync(scenario, node).await?;
        injection.require(
            true,
            format!("node {node} stopped (SIGTERM), restarted and back in sync"),
        );
    }
    Ok(())
}

/// Moves the leader of every input and output partition to another in-sync
/// replica, `rounds` times; the number of moves seen to land.
async fn leader_moves(scenario: &Scenario, rounds: u32, injection: &mut Injection) -> Result<u64> {
    let cluster = cluster_of(scenario)?;
    let mut moves = 0;
    for round in 0..rounds {
        moves += cluster
            .move_every_leader(
                &[&scenario.topics.input, &scenario.topics.output],
                usize::try_from(round).unwrap_or(0),
            )
            .await?;
    }
    injection.require(
        moves > 0,
        format!("{moves} leader moves landed (each seen in the metadata)"),
    );
    Ok(moves)
}

async fn two_brokers_down(
    scenario: &Scenario,
    down_for: Duration,
    injection: &mut Injection,
) -> Result<()> {
    let cluster = cluster_of(scenario)?;
    let survivor = node_with_role(scenario, BrokerRole::InputLeader).await?;
    let victims: Vec<u32> = NODES.into_iter().filter(|node| *node != survivor).collect();
    for node in &victims {
        cluster.kill_node(*node).await?;
    }
    let killed_at = Instant::now();
    // With two of three replicas gone no write can reach
    // `min.insync.replicas=2`: a probe with acks=all must fail.
    let refused = produce_fails(&cluster.bootstrap, &scenario.topics.input).await;
    injection.require(
        refused,
        format!("nodes {victims:?} SIGKILLed: a produce with acks=all to the input topic failed"),
    );
    tokio::time::sleep(down_for.saturating_sub(killed_at.elapsed())).await;
    for node in &victims {
        cluster.restart_node(*node).await?;
    }
    for node in &victims {
        wait_in_sync(scenario, *node).await?;
    }
    Ok(())
}

/// Whether one record sent with acks=all to partition 0 of `topic` fails
/// within 10 s (a harness probe, not the pipeline's traffic: an empty value
/// the verdict counts as an invalid record like any other input).
async fn produce_fails(bootstrap: &str, topic: &str) -> bool {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: std::result::Result<FutureProducer, _> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "8000")
        .create();
    let Ok(producer) = producer else {
        return false;
    };
    let probe = unique("probe");
    let record = FutureRecord::to(topic).partition(0).key(&probe).payload("");
    producer
        .send(record, Duration::from_secs(10))
        .await
        .is_err()
}

async fn freeze_past_transaction_timeout(
    service: &Service,
    injection: &mut Injection,
) -> Result<()> {
    // Every failed transaction is counted here, whatever its reason (an
    // abort, or a producer recreated after a fenced or fatal error).
    let aborts = async || -> f64 {
        match service.metrics().await {
            Ok(metrics) => metrics.sum("onceflow_txn_aborts_total", &[]).unwrap_or(0.0),
            Err(_) => 0.0,
        }
    };
    // Freeze while a transaction is open: the kill point holds one open
    // (records produced, before `commit_transaction`) for a few seconds.
    let open = seen_within(Duration::from_secs(60), || async {
        service.metrics().await.is_ok_and(|metrics| {
            metrics
                .sum("onceflow_open_txn_age_seconds", &[])
                .unwrap_or(0.0)
                > 0.5
        })
    })
    .await;
    let before = aborts().await;
    service.signal("STOP").await?;
    let frozen_at = Instant::now();
    // The broker aborts a transaction once it is older than its timeout; it
    // looks every `transaction.abort.timed.out.transaction.cleanup.interval.ms`
    // (10 s by default).
    tokio::time::sleep(Duration::from_millis(SHORT_TRANSACTION_TIMEOUT_MS + 12_000)).await;
    service.signal("CONT").await?;
    injection.require(
        open,
        format!(
            "onceflow frozen for {:.1} s with a transaction open (timeout {} ms)",
            frozen_at.elapsed().as_secs_f64(),
            SHORT_TRANSACTION_TIMEOUT_MS
        ),
    );
    let noticed = seen_within(Duration::from_secs(60), || async {
        aborts().await > before
    })
    .await;
    injection.require(
        noticed,
        "woken, onceflow found its transaction aborted or its producer fenced \
         (onceflow_txn_aborts_total rose)",
    );
    Ok(())
}

/// Instances join and leave under load, `rounds` times: each joiner must own
/// partitions before it leaves (SIGTERM on even rounds, SIGKILL on odd ones).
/// Returns the number of rounds and the instance of the last round, which
/// stays to the verdict.
async fn rebalance_storm(
    scenario: &Scenario,
    rounds: u64,
    injection: &mut Injection,
) -> Result<(u64, Option<Service>)> {
    let mut last = None;
    for round in 0..rounds {
        let id = unique("storm");
        let joiner = scenario.start_instance(&id, &with_instance_env(&[]))?;
        let owned = seen_within(Duration::from_secs(60), || async {
            partitions_owned_by(scenario, &id).await > 0
        })
        .await;
        injection.require(owned, format!("joiner {round} owned partitions"));
        if round + 1 == rounds {
            last = Some(joiner);
        } else if round % 2 == 0 {
            let (exit, _) = joiner.terminate(Duration::from_secs(15)).await?;
            if !exit.success() {
                bail!("joiner {round} did not exit 0 on SIGTERM but {exit:?}");
            }
        } else {
            joiner.sigkill().await?;
        }
    }
    Ok((rounds, last))
}
