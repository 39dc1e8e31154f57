//! The consumer supervisor actor: runs the record fetcher, starts a
//! partition consumer for every assigned partition and stops it on
//! revocation, and restarts a failed one with backoff.
//!
//! It owns the receiver of the input consumer's rebalance events
//! ([`crate::kafka::rebalance`]): each incarnation subscribes before its
//! fetcher starts polling, and hands the events to
//! [`super::rebalance`]'s listener task.
//!
//! Guarantees: at most one record fetcher runs, whatever ended this actor's
//! previous incarnation (see [`crate::actors::consumer::fetcher_slot`]); every partition
//! consumer it starts (at assignment, after a
//! restart of its own or of the partition consumer) is announced to the
//! coordinator, which claims the partition and positions it at its recovery
//! position before any of its records is accepted; a partition consumer
//! failing past its restart budget escalates (this actor fails, and the root
//! supervisor decides).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

use crate::actors::consumer::fetcher::{FetcherConfig, spawn_fetcher};
use crate::actors::consumer::fetcher_slot::{FetcherGuard, FetcherSlot};
use crate::actors::consumer::partition::{PartitionConsumer, PartitionConsumerArgs};
use crate::actors::consumer::rebalance::spawn_rebalance_listener;
use crate::actors::restart_policy::{RestartDecision, RestartLimits, RestartPolicy};
use crate::kafka::clients::InputConsumer;
use crate::messages::consumer_supervisor::ConsumerSupervisorMsg;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::names::ActorNames;
use crate::messages::partition::PartitionConsumerMsg;
use crate::messages::partition::{FetcherCommand, FetcherHandle};
use crate::model::batch_limits::BatchLimits;
use crate::model::position_ticket::PositionTickets;
use crate::settings::Settings;
use crate::telemetry::spans::RecordSource;
use crate::telemetry::status::PipelineStatus;

/// Start arguments.
#[derive(Clone)]
pub struct ConsumerSupervisorArgs {
    /// settings
    pub settings: Arc<Settings>,
    /// the input consumer
    pub consumer: Arc<InputConsumer>,
    /// actor names
    pub names: ActorNames,
    /// metrics
    pub status: PipelineStatus,
    /// cancelled at shutdown: the fetcher stops
    pub shutdown: CancellationToken,
    /// where the one record fetcher lives
    pub fetcher_slot: FetcherSlot,
    /// the positioning tickets (for the barrier of a forgotten partition)
    pub tickets: PositionTickets,
}

/// State of the consumer supervisor.
#[derive(Debug)]
pub struct ConsumerSupervisorState {
    args: ConsumerSupervisorArgs,
    fetcher: FetcherHandle,
    /// stops the fetcher when this state is dropped, on every path
    _fetcher_guard: FetcherGuard,
    partitions: HashMap<i32, ActorRef<PartitionConsumerMsg>>,
    partition_of_actor: HashMap<ActorId, i32>,
    restart_policies: HashMap<i32, RestartPolicy>,
}

/// The consumer supervisor actor.
#[derive(Debug)]
pub struct ConsumerSupervisor;

impl Actor for ConsumerSupervisor {
    type Msg = ConsumerSupervisorMsg;
    type State = ConsumerSupervisorState;
    type Arguments = ConsumerSupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config = FetcherConfig {
            topic: args.settings.input_topic.clone(),
            max_buffered_records: args.settings.max_buffered_records,
            max_batch_records: args.settings.max_batch_records,
        };
        // This supervisor owns the rebalance events from now on; subscribed
        // before the fetcher (whose polls run the callbacks) starts.
        spawn_rebalance_listener(
            args.consumer.context().events().subscribe(),
            args.names.clone(),
        );
        let consumer = Arc::clone(&args.consumer);
        let status = args.status.clone();
        // The previous incarnation's fetcher, if it failed or was killed,
        // is stopped (and waited for) before this one starts.
        let (fetcher, fetcher_guard) = args
            .fetcher_slot
            .replace(&args.shutdown, move |stop| {
                spawn_fetcher(consumer, config, status, stop)
            })
            .await;
        Ok(ConsumerSupervisorState {
            args,
            fetcher,
            _fetcher_guard: fetcher_guard,
            partitions: HashMap::new(),
            partition_of_actor: HashMap::new(),
            restart_policies: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Reconcile with an assignment made while this actor was down.
        let assigned: Vec<i32> = state
            .args
            .consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .filter(|element| element.topic() == state.args.settings.input_topic)
                    .map(|element| element.partition())
                    .collect()
            })
            .unwrap_or_default();
        if !assigned.is_empty() {
            start_partitions(&myself, state, &assigned).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConsumerSupervisorMsg::PartitionsAssigned(partitions) => {
                start_partitions(&myself, state, &partitions).await?;
            }
            ConsumerSupervisorMsg::PartitionsRevoked(partitions) => {
                for partition in &partitions {
                    forget(state, *partition);
                    if let Some(consumer) = state.partitions.remove(partition) {
                        state.partition_of_actor.remove(&consumer.get_id());
                        consumer.stop(Some("partition revoked".to_owned()));
                    }
                }
                cast_coordinator(state, CoordinatorMsg::PartitionsRevoked(partitions));
            }
            ConsumerSupervisorMsg::ReportAssignment => {
                let running: Vec<(i32, ActorRef<PartitionConsumerMsg>)> = state
                    .partitions
                    .iter()
                    .map(|(partition, consumer)| (*partition, consumer.clone()))
                    .collect();
                if !running.is_empty() {
                    cast_coordinator(state, CoordinatorMsg::PartitionsAssigned(running));
                }
            }
            ConsumerSupervisorMsg::Position(order) => {
                // A position computed for a consumer that has since been
                // replaced is stale: the replacement gets its own.
                if state
                    .partitions
                    .get(&order.partition)
                    .map(|consumer| consumer.get_id())
                    == Some(order.target.get_id())
                {
                    state.fetcher.send(FetcherCommand::Position(order));
                }
            }
            ConsumerSupervisorMsg::PausePartitions(partitions) => {
                for partition in partitions {
                    state.fetcher.send(FetcherCommand::Park { partition });
                }
            }
            ConsumerSupervisorMsg::RestartPartition(partition) => {
                if !state.partitions.contains_key(&partition) && is_assigned(state, partition) {
                    state.args.status.count_restart("partition_consumer");
                    start_partitions(&myself, state, &[partition]).await?;
                }
            }
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
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        let Some(partition) = state.partition_of_actor.remove(&cell.get_id()) else {
            return Ok(()); // stopped on purpose (revoked)
        };
        state.partitions.remove(&partition);
        forget(state, partition);
        let limits = RestartLimits::from_settings(&state.args.settings);
        let decision = state
            .restart_policies
            .entry(partition)
            .or_insert_with(|| RestartPolicy::new(limits))
            .on_failure(Instant::now());
        match decision {
            RestartDecision::RestartAfter(delay) => {
                tracing::warn!(partition, %reason, delay_ms = delay.as_millis() as u64, "partition consumer failed; restarting");
                myself.send_after(delay, move || {
                    ConsumerSupervisorMsg::RestartPartition(partition)
                });
                Ok(())
            }
            RestartDecision::Escalate => Err(format!(
                "partition consumer {partition} failed past its restart budget: {reason}"
            )
            .into()),
        }
    }
}

/// Has the fetcher stop routing `partition`; every positioning decided
/// before now is stale for it.
fn forget(state: &ConsumerSupervisorState, partition: i32) {
    state.fetcher.send(FetcherCommand::Forget {
        partition,
        barrier: state.args.tickets.latest_issued(),
    });
}

fn is_assigned(state: &ConsumerSupervisorState, partition: i32) -> bool {
    state.args.consumer.assignment().is_ok_and(|list| {
        list.find_partition(&state.args.settings.input_topic, partition)
            .is_some()
    })
}

fn cast_coordinator(state: &ConsumerSupervisorState, message: CoordinatorMsg) {
    match state.args.names.find_coordinator() {
        Some(coordinator) => {
            let _ = coordinator.cast(message);
        }
        // A restarting coordinator asks for the assignment when it starts.
        None => tracing::debug!("coordinator not running; it asks for the assignment on start"),
    }
}

async fn start_partitions(
    myself: &ActorRef<ConsumerSupervisorMsg>,
    state: &mut ConsumerSupervisorState,
    partitions: &[i32],
) -> Result<(), ActorProcessingErr> {
    let mut started = Vec::new();
    for partition in partitions {
        if let Some(previous) = state.partitions.remove(partition) {
            state.partition_of_actor.remove(&previous.get_id());
            previous.stop(Some("replaced".to_owned()));
        }
        let args = PartitionConsumerArgs {
            partition: *partition,
            batch_limits: BatchLimits::new(
                state.args.settings.max_batch_records,
                state.args.settings.backlog_batch_records(),
            ),
            status: state.args.status.clone(),
            source: RecordSource {
                topic: state.args.settings.input_topic.clone(),
                group_id: state.args.settings.group_id.clone(),
            },
        };
        let cell: ActorCell = myself.get_cell();
        let (consumer, _) = Actor::spawn_linked(None, PartitionConsumer, args, cell).await?;
        state
            .partition_of_actor
            .insert(consumer.get_id(), *partition);
        state.partitions.insert(*partition, consumer.clone());
        started.push((*partition, consumer));
    }
    cast_coordinator(state, CoordinatorMsg::PartitionsAssigned(started));
    Ok(())
}

impl std::fmt::Debug for ConsumerSupervisorArgs {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ConsumerSupervisorArgs")
            .finish_non_exhaustive()
    }
}
