//! The circuit breaker actor: watches every database outcome and stops the
//! pipeline from hammering a database that is down.
//!
//! States: closed (normal) → open after `breaker_failure_threshold`
//! consecutive failed writes → half-open when the cool-down ends, where the
//! breaker itself probes the database → closed if the probe succeeds, open
//! again with a doubled cool-down (up to `breaker_max_cooldown_ms`) if not.
//!
//! Guarantees: while the breaker is open the coordinator starts no cycle, so
//! partitions stop at their buffer limit and are paused (not revoked); the
//! pipeline resumes by itself once a probe succeeds. Its state is published
//! through [`PipelineStatus`] (`/readyz`, metrics). Every transition is a
//! span (`circuit_breaker.open`, `circuit_breaker.probe`) whose log lines
//! are its events, so traces show when and why writes stopped.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::messages::circuit_breaker::CircuitBreakerMsg;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::names::ActorNames;
use crate::store::Store;
use crate::telemetry::metrics::BreakerState;
use crate::telemetry::status::PipelineStatus;

/// Start arguments.
#[derive(Debug, Clone)]
pub struct CircuitBreakerArgs {
    /// the store to probe
    pub store: Store,
    /// where the state is published
    pub status: PipelineStatus,
    /// to tell the coordinator about openings and closings
    pub names: ActorNames,
    /// consecutive failures that open the breaker
    pub failure_threshold: u32,
    /// first cool-down
    pub cooldown: Duration,
    /// longest cool-down
    pub max_cooldown: Duration,
}

/// State of the breaker.
#[derive(Debug)]
pub struct CircuitBreakerState {
    args: CircuitBreakerArgs,
    consecutive_failures: u32,
    cooldown: Duration,
}

/// The circuit breaker actor.
#[derive(Debug)]
pub struct CircuitBreaker;

impl Actor for CircuitBreaker {
    type Msg = CircuitBreakerMsg;
    type State = CircuitBreakerState;
    type Arguments = CircuitBreakerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A restarted breaker starts closed: the next failures reopen it. If
        // its predecessor died open, the partitions it paused are waiting for
        // a close: say it.
        let was_open = args.status.breaker_state() != BreakerState::Closed;
        args.status.set_breaker_state(BreakerState::Closed);
        let state = CircuitBreakerState {
            cooldown: args.cooldown,
            args,
            consecutive_failures: 0,
        };
        if was_open {
            tell_coordinator(&state, CoordinatorMsg::BreakerClosed);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let status = state.args.status.clone();
        match (message, status.breaker_state()) {
            (
                CircuitBreakerMsg::DatabaseSucceeded,
                BreakerState::Closed | BreakerState::HalfOpen,
            ) => {
                state.consecutive_failures = 0;
            }
            (CircuitBreakerMsg::DatabaseFailed, BreakerState::Closed) => {
                state.consecutive_failures += 1;
                if state.consecutive_failures >= state.args.failure_threshold {
                    open(&myself, state);
                }
            }
            (CircuitBreakerMsg::Probe, BreakerState::Open) => {
                let span = tracing::info_span!(
                    "circuit_breaker.probe",
                    db.system.name = state.args.store.system_name(),
                    onceflow.breaker.to = tracing::field::Empty,
                );
                probe(&myself, state).instrument(span).await;
            }
            // Outcomes while open are stale: the breaker decides by probing.
            _ => {}
        }
        Ok(())
    }
}

/// Half-open: probes the database, then closes or reopens the breaker.
async fn probe(myself: &ActorRef<CircuitBreakerMsg>, state: &mut CircuitBreakerState) {
    let status = state.args.status.clone();
    status.set_breaker_state(BreakerState::HalfOpen);
    tracing::info!("circuit breaker half-open: probing the database");
    let probe = tokio::time::timeout(Duration::from_secs(5), state.args.store.ping()).await;
    match probe {
        Ok(Ok(_)) => {
            state.consecutive_failures = 0;
            state.cooldown = state.args.cooldown;
            status.set_breaker_state(BreakerState::Closed);
            tracing::Span::current().record("onceflow.breaker.to", "closed");
            tracing::info!("circuit breaker closed: the database answers again");
            tell_coordinator(state, CoordinatorMsg::BreakerClosed);
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "database probe failed");
            state.cooldown = (state.cooldown * 2).min(state.args.max_cooldown);
            open(myself, state);
        }
        Err(_) => {
            tracing::warn!("database probe timed out");
            state.cooldown = (state.cooldown * 2).min(state.args.max_cooldown);
            open(myself, state);
        }
    }
}

fn tell_coordinator(state: &CircuitBreakerState, message: CoordinatorMsg) {
    if let Some(coordinator) = state.args.names.find_coordinator() {
        let _ = coordinator.cast(message);
    }
}

fn open(myself: &ActorRef<CircuitBreakerMsg>, state: &mut CircuitBreakerState) {
    // Inside a probe this records the probe's result; otherwise it is the
    // transition's own span (the warning below becomes its event).
    tracing::Span::current().record("onceflow.breaker.to", "open");
    let span = tracing::info_span!(
        "circuit_breaker.open",
        db.system.name = state.args.store.system_name(),
        consecutive_failures = state.consecutive_failures,
    );
    let _entered = span.enter();
    let was_open_or_probing = state.args.status.breaker_state() != BreakerState::Closed;
    state.args.status.set_breaker_state(BreakerState::Open);
    if !was_open_or_probing {
        tell_coordinator(state, CoordinatorMsg::BreakerOpened);
    }
    tracing::warn!(
        cooldown_ms = state.cooldown.as_millis() as u64,
        "circuit breaker open: database writes stop until a probe succeeds"
    );
    myself.send_after(state.cooldown, || CircuitBreakerMsg::Probe);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::sync::mpsc;

    use super::*;
    use crate::messages::coordinator::CoordinatorMsg;

    /// Stands in for the coordinator: reports what the breaker tells it.
    struct FakeCoordinator;

    impl Actor for FakeCoordinator {
        type Msg = CoordinatorMsg;
        type State = mpsc::UnboundedSender<&'static str>;
        type Arguments = mpsc::UnboundedSender<&'static str>;

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            told: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(told)
        }

        async fn handle(
            &self,
            _myself: ActorRef<Self::Msg>,
            message: Self::Msg,
            told: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = told.send(match message {
                CoordinatorMsg::BreakerOpened => "opened",
                CoordinatorMsg::BreakerClosed => "closed",
                _ => "other",
            });
            Ok(())
        }
    }

    /// A SQLite store in the temporary directory, or (`alive` false) one
    /// whose directory does not exist: every operation on it fails.
    fn store(alive: bool) -> Store {
        let dir = std::env::temp_dir();
        let name = uuid::Uuid::new_v4();
        let url = if alive {
            format!("sqlite://{}/onceflow-breaker-{name}.db", dir.display())
        } else {
            format!("sqlite://{}/missing-{name}/breaker.db", dir.display())
        };
        let second = Duration::from_secs(1);
        Store::connect_lazy(&url, 1, second, second, second).expect("a sqlite url")
    }

    struct Running {
        breaker: ActorRef<CircuitBreakerMsg>,
        status: PipelineStatus,
        told: mpsc::UnboundedReceiver<&'static str>,
        coordinator: ActorRef<CoordinatorMsg>,
    }

    async fn start(alive: bool, cooldown: Duration) -> Running {
        let names = ActorNames::new(&format!("breaker-test-{}", uuid::Uuid::new_v4()));
        let (tell, told) = mpsc::unbounded_channel();
        let (coordinator, _) = Actor::spawn(Some(names.coordinator()), FakeCoordinator, tell)
            .await
            .expect("fake coordinator");
        let status = PipelineStatus::default();
        let args = CircuitBreakerArgs {
            store: store(alive),
            status: status.clone(),
            names,
            failure_threshold: 3,
            cooldown,
            max_cooldown: cooldown * 4,
        };
        let (breaker, _) = Actor::spawn(None, CircuitBreaker, args)
            .await
            .expect("breaker");
        Running {
            breaker,
            status,
            told,
            coordinator,
        }
    }

    /// Sends `messages`, then gives the breaker time to handle them.
    async fn send(running: &Running, messages: &[fn() -> CircuitBreakerMsg]) {
        for message in messages {
            running.breaker.cast(message()).expect("breaker alive");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    const FAILED: fn() -> CircuitBreakerMsg = || CircuitBreakerMsg::DatabaseFailed;
    const SUCCEEDED: fn() -> CircuitBreakerMsg = || CircuitBreakerMsg::DatabaseSucceeded;

    #[tokio::test]
    async fn opens_after_consecutive_failures_only_and_tells_the_coordinator_once() {
        let mut running = start(true, Duration::from_secs(60)).await;
        // A success in between resets the count.
        send(&running, &[FAILED, FAILED, SUCCEEDED, FAILED, FAILED]).await;
        assert_eq!(running.status.breaker_state(), BreakerState::Closed);
        send(&running, &[FAILED]).await;
        assert_eq!(running.status.breaker_state(), BreakerState::Open);
        // Outcomes while open are stale: no second opening, no closing.
        send(&running, &[FAILED, FAILED, FAILED, SUCCEEDED]).await;
        assert_eq!(running.status.breaker_state(), BreakerState::Open);
        assert_eq!(running.told.try_recv(), Ok("opened"));
        assert!(running.told.try_recv().is_err(), "told once");
        running.breaker.stop(None);
        running.coordinator.stop(None);
    }

    #[tokio::test]
    async fn a_successful_probe_closes_it_and_tells_the_coordinator() {
        let mut running = start(true, Duration::from_millis(100)).await;
        send(&running, &[FAILED, FAILED, FAILED]).await;
        assert_eq!(running.told.recv().await, Some("opened"));
        let closed = tokio::time::timeout(Duration::from_secs(5), running.told.recv()).await;
        assert_eq!(
            closed,
            Ok(Some("closed")),
            "the probe after the cool-down closes it"
        );
        assert_eq!(running.status.breaker_state(), BreakerState::Closed);
        // Closed again: it counts failures from zero.
        send(&running, &[FAILED, FAILED]).await;
        assert_eq!(running.status.breaker_state(), BreakerState::Closed);
        running.breaker.stop(None);
        running.coordinator.stop(None);
    }

    #[tokio::test]
    async fn a_failed_probe_keeps_it_open_and_probes_again() {
        let mut running = start(false, Duration::from_millis(50)).await;
        send(&running, &[FAILED, FAILED, FAILED]).await;
        assert_eq!(running.told.recv().await, Some("opened"));
        // Cool-downs 50, 100, 200 ms: three probes fail within a second.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let encoded = running.status.metrics().encode();
        let probes = encoded
            .lines()
            .find(|line| line.contains(r#"to="half_open""#) && !line.starts_with('#'))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(probes >= 2, "probes: {probes}\n{encoded}");
        assert_ne!(running.status.breaker_state(), BreakerState::Closed);
        assert!(running.told.try_recv().is_err(), "never closed");
        running.breaker.stop(None);
        running.coordinator.stop(None);
    }
}
