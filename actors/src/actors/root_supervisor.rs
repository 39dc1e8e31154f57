//! The root supervisor: starts the circuit breaker, the database writer
//! pool, the DLQ forwarder, the transaction coordinator and the consumer
//! supervisor, and restarts whichever fails.
//!
//! Guarantees: a failed child is restarted after an exponential backoff
//! with jitter, under a restart budget per window; when a child's budget is
//! spent the root supervisor stops with an error and the pipeline (and the
//! process) exits non-zero, for its orchestrator to restart. No child keeps
//! state that recovery needs, so a restart loses and repeats nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio_util::sync::CancellationToken;

use crate::actors::circuit_breaker::{CircuitBreaker, CircuitBreakerArgs};
use crate::actors::consumer::fetcher_slot::FetcherSlot;
use crate::actors::consumer::supervisor::{ConsumerSupervisor, ConsumerSupervisorArgs};
use crate::actors::coordinator::{CoordinatorArgs, TransactionCoordinator};
use crate::actors::db_writer::{DbWriter, DbWriterArgs};
use crate::actors::dlq_forwarder::DlqForwarder;
use crate::actors::restart_policy::{RestartDecision, RestartLimits, RestartPolicy};
use crate::kafka::clients::InputConsumer;
use crate::messages::names::ActorNames;
use crate::messages::root::{RootChild, RootMsg};
use crate::model::position_ticket::PositionTickets;
use crate::settings::Settings;
use crate::store::{ConfirmedOffsets, Store};
use crate::telemetry::status::PipelineStatus;

/// Everything the children need.
#[derive(Clone)]
pub struct RootArgs {
    /// settings
    pub settings: Arc<Settings>,
    /// the store
    pub store: Store,
    /// the input consumer
    pub consumer: Arc<InputConsumer>,
    /// actor names
    pub names: ActorNames,
    /// metrics and health
    pub status: PipelineStatus,
    /// cancelled at shutdown
    pub shutdown: CancellationToken,
    /// where the one record fetcher lives (outlives the consumer supervisor)
    pub fetcher_slot: FetcherSlot,
    /// the positioning tickets (outlive every actor)
    pub tickets: PositionTickets,
    /// the recorder of confirmed Kafka offsets (outlives every actor)
    pub confirmed_offsets: ConfirmedOffsets,
}

/// State of the root supervisor.
#[derive(Debug)]
pub struct RootState {
    args: RootArgs,
    children: HashMap<ActorId, RootChild>,
    policies: HashMap<RootChild, RestartPolicy>,
}

/// The root supervisor actor.
#[derive(Debug)]
pub struct RootSupervisor;

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = RootState {
            args,
            children: HashMap::new(),
            policies: HashMap::new(),
        };
        let mut order = vec![RootChild::CircuitBreaker];
        order.extend((0..state.args.settings.db_writers).map(RootChild::DbWriter));
        order.extend([
            RootChild::DlqForwarder,
            RootChild::Coordinator,
            RootChild::ConsumerSupervisor,
        ]);
        for child in order {
            start_child(&myself, &mut state, child).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let RootMsg::Restart(child) = message;
        if state.args.shutdown.is_cancelled() {
            return Ok(());
        }
        state.args.status.count_restart(child.label());
        if let Err(error) = start_child(&myself, state, child).await {
            // Starting failed (a name still held, a bad argument): treat it as
            // another failure of the child.
            on_child_down(&myself, state, child, error.to_string())?;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, format!("failed: {error}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!(
                    "terminated: {}",
                    reason.unwrap_or_else(|| "no reason".to_owned())
                ),
            ),
            _ => return Ok(()),
        };
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.args.shutdown.is_cancelled() {
            return Ok(());
        }
        on_child_down(&myself, state, child, reason)
    }
}

fn on_child_down(
    myself: &ActorRef<RootMsg>,
    state: &mut RootState,
    child: RootChild,
    reason: String,
) -> Result<(), ActorProcessingErr> {
    let limits = RestartLimits::from_settings(&state.args.settings);
    let decision = state
        .policies
        .entry(child)
        .or_insert_with(|| RestartPolicy::new(limits))
        .on_failure(Instant::now());
    match decision {
        RestartDecision::RestartAfter(delay) => {
            tracing::warn!(actor = child.label(), %reason, delay_ms = delay.as_millis() as u64, "actor down; restarting after backoff");
            myself.send_after(delay, move || RootMsg::Restart(child));
            Ok(())
        }
        RestartDecision::Escalate => {
            state.args.status.mark_escalated();
            tracing::error!(actor = child.label(), %reason, "restart budget spent; escalating");
            Err(format!("{} failed past its restart budget: {reason}", child.label()).into())
        }
    }
}

async fn start_child(
    myself: &ActorRef<RootMsg>,
    state: &mut RootState,
    child: RootChild,
) -> Result<(), ActorProcessingErr> {
    let args = &state.args;
    let supervisor: ActorCell = myself.get_cell();
    let names = &args.names;
    let cell = match child {
        RootChild::CircuitBreaker => {
            spawn_child(
                names.circuit_breaker(),
                CircuitBreaker,
                args.breaker_args(),
                supervisor,
            )
            .await?
        }
        RootChild::DbWriter(index) => {
            spawn_child(
                names.db_writer(index),
                DbWriter,
                args.writer_args(),
                supervisor,
            )
            .await?
        }
        RootChild::DlqForwarder => {
            let dlq_topic = args.settings.dlq_topic.clone();
            spawn_child(names.dlq_forwarder(), DlqForwarder, dlq_topic, supervisor).await?
        }
        RootChild::Coordinator => {
            let coordinator_args = args.coordinator_args();
            spawn_child(
                names.coordinator(),
                TransactionCoordinator,
                coordinator_args,
                supervisor,
            )
            .await?
        }
        RootChild::ConsumerSupervisor => {
            let supervisor_args = args.consumer_supervisor_args();
            spawn_child(
                names.consumer_supervisor(),
                ConsumerSupervisor,
                supervisor_args,
                supervisor,
            )
            .await?
        }
    };
    state.children.insert(cell.get_id(), child);
    Ok(())
}

/// Spawns `actor` under `name`, linked to `supervisor`.
async fn spawn_child<A: Actor>(
    name: String,
    actor: A,
    arguments: A::Arguments,
    supervisor: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    Ok(
        Actor::spawn_linked(Some(name), actor, arguments, supervisor)
            .await?
            .0
            .get_cell(),
    )
}

/// Each child's start arguments, from the root's.
impl RootArgs {
    fn breaker_args(&self) -> CircuitBreakerArgs {
        CircuitBreakerArgs {
            store: self.store.clone(),
            status: self.status.clone(),
            names: self.names.clone(),
            failure_threshold: self.settings.breaker_failure_threshold,
            cooldown: self.settings.breaker_cooldown,
            max_cooldown: self.settings.breaker_max_cooldown,
        }
    }

    fn writer_args(&self) -> DbWriterArgs {
        DbWriterArgs {
            store: self.store.clone(),
            names: self.names.clone(),
            retry_attempts: self.settings.db_retry_attempts,
            retry_backoff: self.settings.db_retry_backoff,
        }
    }

    fn coordinator_args(&self) -> CoordinatorArgs {
        CoordinatorArgs {
            settings: Arc::clone(&self.settings),
            store: self.store.clone(),
            consumer: Arc::clone(&self.consumer),
            names: self.names.clone(),
            status: self.status.clone(),
            tickets: self.tickets.clone(),
            confirmed_offsets: self.confirmed_offsets.clone(),
        }
    }

    fn consumer_supervisor_args(&self) -> ConsumerSupervisorArgs {
        ConsumerSupervisorArgs {
            settings: Arc::clone(&self.settings),
            consumer: Arc::clone(&self.consumer),
            names: self.names.clone(),
            status: self.status.clone(),
            shutdown: self.shutdown.clone(),
            fetcher_slot: self.fetcher_slot.clone(),
            tickets: self.tickets.clone(),
        }
    }
}

impl std::fmt::Debug for RootArgs {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RootArgs").finish_non_exhaustive()
    }
}
