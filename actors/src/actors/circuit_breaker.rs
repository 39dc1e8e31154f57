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
use crate::telemetry::status::{BreakerState, PipelineStatus};

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
