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
use crate::store::Store;
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
    let settings = &args.settings;
    let cell = match child {
        RootChild::CircuitBreaker => {
            let breaker_args = CircuitBreakerArgs {
                store: args.store.clone(),
                status: args.status.clone(),
                names: names.clone(),
                failure_threshold: settings.breaker_failure_threshold,
                cooldown: settings.breaker_cooldown,
                max_cooldown: settings.breaker_max_cooldown,
            };
            Actor::spawn_linked(
                Some(names.circuit_breaker()),
                CircuitBreaker,
                breaker_args,
                supervisor,
            )
            .await?
            .0
            .get_cell()
        }
        RootChild::DbWriter(index) => {
            let writer_args = DbWriterArgs {
                store: args.store.clone(),
                names: names.clone(),
                retry_attempts: settings.db_retry_attempts,
                retry_backoff: settings.db_retry_backoff,
                group_id: settings.group_id.clone(),
                topic: settings.input_topic.clone(),
            };
            Actor::spawn_linked(
                Some(names.db_writer(index)),
                DbWriter,
                writer_args,
                supervisor,
            )
            .await?
            .0
            .get_cell()
        }
        RootChild::DlqForwarder => Actor::spawn_linked(
            Some(names.dlq_forwarder()),
            DlqForwarder,
            settings.dlq_topic.clone(),
            supervisor,
        )
        .await?
        .0
        .get_cell(),
        RootChild::Coordinator => {
            let coordinator_args = CoordinatorArgs {
                settings: Arc::clone(settings),
                store: args.store.clone(),
                consumer: Arc::clone(&args.consumer),
                names: names.clone(),
                status: args.status.clone(),
                tickets: args.tickets.clone(),
            };
            Actor::spawn_linked(
                Some(names.coordinator()),
                TransactionCoordinator,
                coordinator_args,
                supervisor,
            )
            .await?
            .0
            .get_cell()
        }
        RootChild::ConsumerSupervisor => {
            let supervisor_args = ConsumerSupervisorArgs {
                settings: Arc::clone(settings),
                consumer: Arc::clone(&args.consumer),
                names: names.clone(),
                status: args.status.clone(),
                shutdown: args.shutdown.clone(),
                fetcher_slot: args.fetcher_slot.clone(),
                tickets: args.tickets.clone(),
            };
            Actor::spawn_linked(
                Some(names.consumer_supervisor()),
                ConsumerSupervisor,
                supervisor_args,
                supervisor,
            )
            .await?
            .0
            .get_cell()
        }
    };
    state.children.insert(cell.get_id(), child);
    Ok(())
}

impl std::fmt::Debug for RootArgs {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RootArgs").finish_non_exhaustive()
    }
}
