//! Faults of the network between onceflow and what it talks to, injected
//! through the harness's TCP proxies while load runs: the path to every
//! broker, or the path to PostgreSQL, black-holed (nothing arrives, nothing
//! is refused), refused (connections reset), or delayed.
//!
//! Guarantee: every fault proves it bit, or the scenario fails as `not
//! injected`. A cut path met traffic (stalls at the black hole, or resets)
//! and nothing was committed through it while it was cut (on the broker
//! path: the output topic's end offsets stood still; on the database path:
//! the stored offsets did). A delayed path carried traffic, and the
//! pipeline kept committing through it.

use std::time::{Duration, Instant};

use crate::error::{Context, Result};
use crate::harness::{
    ClientNetwork, NetworkCondition, ProxyCounters, Scenario, TcpProxy, wait_for_progress,
};
use crate::outcome::Injection;
use crate::scenarios::{FaultPhase, ScenarioContext, with_instance_env, work_seen_soon};

/// Which path a network fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum NetworkPath {
    /// onceflow ↔ every broker (its clients' listener; the brokers'
    /// replication and the harness's own clients are untouched)
    Brokers,
    /// onceflow ↔ PostgreSQL
    Database,
}

/// A condition of one path for the length of the fault, then open again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkFault {
    pub path: NetworkPath,
    pub condition: NetworkCondition,
}

/// A cut lasts at least this long: past the Kafka call timeout (10 s) and
/// the database pool's acquire timeout (2 s), so onceflow's own timeouts
/// fire while the path is cut.
const CUT_AT_LEAST: Duration = Duration::from_secs(15);

/// A delay lasts at least this long, so several cycles run through it.
const DELAY_AT_LEAST: Duration = Duration::from_secs(10);

/// Commits already in flight when a cut begins may still land this long
/// after it (the stillness is measured from then on).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);

/// The proxies of one path of the scenario.
enum Link<'a> {
    Brokers(&'a ClientNetwork),
    Database(&'a TcpProxy),
}

impl<'a> Link<'a> {
    fn of(scenario: &'a Scenario, path: NetworkPath) -> Result<Link<'a>> {
        Ok(match path {
            NetworkPath::Brokers => Link::Brokers(
                scenario
                    .cluster
                    .as_ref()
                    .and_then(|cluster| cluster.client_network())
                    .context("the scenario's brokers are not behind proxies")?,
            ),
            NetworkPath::Database => Link::Database(
                scenario
                    .database_proxy()
                    .context("the scenario's database is not behind a proxy")?,
            ),
        })
    }
}

/// The condition `path` has now, for every connection of the service.
pub(crate) fn set_condition(
    scenario: &Scenario,
    path: NetworkPath,
    condition: NetworkCondition,
) -> Result<()> {
    match Link::of(scenario, path)? {
        Link::Brokers(network) => network.set(condition),
        Link::Database(proxy) => proxy.set(condition),
    }
    Ok(())
}

/// What the proxies of `path` met so far.
pub(crate) fn counters(scenario: &Scenario, path: NetworkPath) -> Result<ProxyCounters> {
    Ok(match Link::of(scenario, path)? {
        Link::Brokers(network) => network.counters(),
        Link::Database(proxy) => proxy.counters(),
    })
}

/// What moves when something commits through `path`.
async fn committed_mark(scenario: &Scenario, path: NetworkPath) -> Result<i64> {
    match path {
        NetworkPath::Brokers => scenario.output_end_offset().await,
        NetworkPath::Database => scenario.stored_offset_total().await,
    }
}

/// Injects `fault` while the scenario's load arrives; what it left behind.
pub(crate) async fn inject_network_fault(
    fault: NetworkFault,
    context: &ScenarioContext,
    scenario: &Scenario,
) -> Result<FaultPhase> {
    let size = &context.size;
    let load = crate::scenarios::background_load(context, scenario, (size.events * 2).max(1_000));
    let mut injection = Injection::default();
    let service = scenario.start(&with_instance_env(&[]))?;
    wait_for_progress(scenario, Duration::from_secs(90)).await?;
    injection.require(
        work_seen_soon(scenario).await,
        "input was left to consume when the fault began",
    );
    let NetworkFault { path, condition } = fault;
    // The path must have carried commits before it is hurt: otherwise
    // "nothing committed while cut" would prove nothing.
    crate::harness::wait_until(
        Duration::from_secs(90),
        &format!("a commit through the {path:?} path"),
        || async { Ok(committed_mark(scenario, path).await? > 0) },
    )
    .await?;
    let first_mark = committed_mark(scenario, path).await?;
    injection.require(
        first_mark > 0,
        format!("commits went through the {path:?} path before the fault (mark {first_mark})"),
    );
    let length = match condition {
        NetworkCondition::Delayed(_) => size.outage.max(DELAY_AT_LEAST),
        _ => size.outage.max(CUT_AT_LEAST),
    };
    let before = counters(scenario, path)?;
    set_condition(scenario, path, condition)?;
    let began = Instant::now();
    tokio::time::sleep(IN_FLIGHT_GRACE).await;
    let mark_from = committed_mark(scenario, path).await?;
    tokio::time::sleep(length.saturating_sub(began.elapsed())).await;
    let mark_to = committed_mark(scenario, path).await?;
    let during = counters(scenario, path)?;
    set_condition(scenario, path, NetworkCondition::Open)?;
    let seconds = began.elapsed().as_secs_f64();
    match condition {
        NetworkCondition::BlackHoled => injection.require(
            during.held > before.held,
            format!(
                "{path:?} path black-holed for {seconds:.1} s: {} stalls at the hole",
                during.held - before.held
            ),
        ),
        NetworkCondition::Refused => injection.require(
            during.reset > before.reset,
            format!(
                "{path:?} path refused for {seconds:.1} s: {} connections reset",
                during.reset - before.reset
            ),
        ),
        NetworkCondition::Delayed(delay) => injection.require(
            during.forwarded_bytes > before.forwarded_bytes,
            format!(
                "{path:?} path delayed {} ms each way for {seconds:.1} s: {} bytes carried late",
                delay.as_millis(),
                during.forwarded_bytes - before.forwarded_bytes
            ),
        ),
        NetworkCondition::Open => {}
    }
    match condition {
        NetworkCondition::Delayed(_) => injection.require(
            mark_to > mark_from,
            format!("commits went on through the delay ({mark_from} → {mark_to})"),
        ),
        _ => injection.require(
            mark_to == mark_from,
            format!("nothing committed through the cut path ({mark_from} → {mark_to})"),
        ),
    }
    let mut phase = FaultPhase::new(service, 1, injection);
    phase.load = Some(load);
    Ok(phase)
}
