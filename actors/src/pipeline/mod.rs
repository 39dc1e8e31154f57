//! The pipeline entry point: wires the store, the Kafka clients and the
//! actor tree, runs until `shutdown` is cancelled, then shuts down
//! gracefully.
//!
//! Guarantees: migrations are applied before any record is consumed;
//! shutdown stops fetching, lets the cycle in flight finish (one last cycle
//! commits what is buffered), stops the actors and closes the consumer, all
//! within a bounded time. Whatever is not committed then is replayed by the
//! next start: nothing is lost either way.

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

pub mod monitor;

use crate::actors::consumer::fetcher_slot::FetcherSlot;
use crate::actors::root_supervisor::{RootArgs, RootSupervisor};
use crate::kafka::clients::{create_input_consumer, create_lag_reader};
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::names::ActorNames;
use crate::messages::root::RootMsg;
use crate::model::ad_event::DeadLetterKind;
use crate::model::position_ticket::PositionTickets;
use crate::pipeline::monitor::spawn_monitor;
use crate::settings::{Settings, SettingsError};
use crate::store::error::StoreError;
use crate::store::{ConfirmedOffsets, Store};
use crate::telemetry::events::AbortReason;
use crate::telemetry::status::PipelineStatus;

/// Attempts to apply migrations while the database is unreachable (about
/// two minutes with the capped backoff below).
const MIGRATION_ATTEMPTS: u32 = 30;
/// Longest wait between two migration attempts.
const MIGRATION_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why the pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A setting is wrong. Retrying does not help.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The database could not be prepared. Retriable if the error is.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// A Kafka client could not be created. Usually a configuration error.
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The actor tree could not start.
    #[error("actor system: {0}")]
    Actors(String),
    /// A supervisor spent its restart budget. A process restart may help.
    #[error("escalated: {0}")]
    Escalated(String),
}

impl PipelineError {
    /// Whether restarting the process can help.
    pub fn is_retriable(&self) -> bool {
        match self {
            PipelineError::Settings(_) | PipelineError::Kafka(_) => false,
            PipelineError::Store(error) => error.is_retriable(),
            PipelineError::Actors(_) | PipelineError::Escalated(_) => true,
        }
    }
}

/// Rejoins after a lost membership allowed within [`REJOIN_WINDOW`]; one
/// more escalates (the process exits non-zero).
const REJOINS_PER_WINDOW: usize = 3;
/// The window of [`REJOINS_PER_WINDOW`].
const REJOIN_WINDOW: Duration = Duration::from_secs(300);
/// Pause before a rejoin.
const REJOIN_BACKOFF: Duration = Duration::from_secs(1);

/// How long the end of a membership waits for its confirmed Kafka offsets
/// to be recorded.
const CONFIRMED_OFFSETS_CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// How one membership of the consumer group ended.
enum MembershipEnd {
    /// `shutdown` was cancelled and the pipeline stopped gracefully
    Shutdown,
    /// the input consumer was fenced out of its group or failed fatally
    Lost(String),
}

/// Every `actor` label of `onceflow_actor_restarts_total`.
const RESTARTED_ACTORS: [&str; 6] = [
    "circuit_breaker",
    "db_writer",
    "dlq_forwarder",
    "transaction_coordinator",
    "consumer_supervisor",
    "partition_consumer",
];

/// Runs the pipeline until `shutdown` is cancelled (Ok) or a supervisor
/// escalates (Err).
///
/// The pipeline runs as a sequence of group memberships: each is a fresh
/// input consumer and a fresh actor tree that recover everything from the
/// database and Kafka, exactly as a process restart does. A membership ends
/// when the consumer is fenced out of its group (`FENCED_INSTANCE_ID`, which
/// a static member also meets when its own join response is lost while the
/// group coordinator moves) or fails fatally; the pipeline then rejoins, at
/// most [`REJOINS_PER_WINDOW`] times in [`REJOIN_WINDOW`]. A real duplicate
/// instance is not left to this: its transactional producer and its owner
/// epoch fence one of the two, and the zombie stops for good.
pub async fn run_pipeline(
    settings: Settings,
    status: PipelineStatus,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    settings.validate()?;
    status.metrics().start_series_at_zero(
        &DeadLetterKind::ALL.map(DeadLetterKind::as_str),
        &AbortReason::ALL.map(AbortReason::as_str),
        &RESTARTED_ACTORS,
    );
    let settings = Arc::new(settings);
    let store = Store::connect_lazy(
        settings.required_database_url()?,
        settings.db_max_connections,
        settings.db_statement_timeout,
        settings.db_idle_in_transaction_timeout,
        settings.db_acquire_timeout,
    )?;
    migrate_with_retries(&store, &shutdown).await?;

    let mut rejoins: std::collections::VecDeque<tokio::time::Instant> = Default::default();
    for membership in 0_u64.. {
        match run_membership(&settings, &store, &status, &shutdown, membership).await? {
            MembershipEnd::Shutdown => return Ok(()),
            MembershipEnd::Lost(reason) => {
                if let Some(partition) =
                    claimed_since_by_our_instance_id(&settings, &store, &status).await
                {
                    // Another process with our instance id claimed after us:
                    // it fenced us, and rejoining would fence it back.
                    let reason = format!(
                        "fenced: partition {partition} was claimed by a newer incarnation of instance {} ({reason})",
                        settings.instance_id()
                    );
                    tracing::error!(%reason, "stopping this incarnation");
                    status.fail_fatally(reason.clone());
                    return Err(PipelineError::Escalated(reason));
                }
                let now = tokio::time::Instant::now();
                rejoins.retain(|at| now.duration_since(*at) < REJOIN_WINDOW);
                if rejoins.len() >= REJOINS_PER_WINDOW {
                    return Err(PipelineError::Escalated(format!(
                        "{reason} ({} rejoins within {} s did not hold)",
                        rejoins.len(),
                        REJOIN_WINDOW.as_secs()
                    )));
                }
                rejoins.push_back(now);
                tracing::warn!(
                    %reason,
                    rejoin = rejoins.len(),
                    "group membership lost; rejoining with a fresh consumer and actor tree"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(REJOIN_BACKOFF) => {}
                }
            }
        }
    }
    Ok(())
}

/// A partition this process claimed that a process with the same instance
/// id has claimed since (a newer incarnation: we are the zombie).
async fn claimed_since_by_our_instance_id(
    settings: &Settings,
    store: &Store,
    status: &PipelineStatus,
) -> Option<i32> {
    let instance_id = settings.instance_id();
    for (partition, our_epoch) in status.claims() {
        let Ok(Some(owner)) = store
            .partition_owner(&settings.group_id, &settings.input_topic, partition)
            .await
        else {
            continue;
        };
        if owner.owner_epoch > our_epoch && owner.owner_instance.as_deref() == Some(&instance_id) {
            return Some(partition);
        }
    }
    None
}

/// One membership of the consumer group: a fresh consumer and actor tree,
/// until shutdown, escalation (Err) or a lost membership.
async fn run_membership(
    settings: &Arc<Settings>,
    store: &Store,
    status: &PipelineStatus,
    shutdown: &CancellationToken,
    membership: u64,
) -> Result<MembershipEnd, PipelineError> {
    let instance_id = settings.instance_id();
    let names = membership_names(&instance_id, membership);
    let lost = status.begin_membership();
    // Cancelled by shutdown, or by this membership's end.
    let session = shutdown.child_token();
    let consumer = create_input_consumer(settings)?;
    let lag_reader = Arc::new(create_lag_reader(settings)?);
    tracing::info!(
        instance_id = %instance_id,
        group_id = %settings.group_id,
        input_topic = %settings.input_topic,
        output_topic = %settings.output_topic,
        dlq_topic = %settings.dlq_topic,
        kafka_overrides = ?settings.redacted_kafka_keys(),
        membership,
        "pipeline starting"
    );
    let fetcher_slot = FetcherSlot::default();
    let confirmed_offsets =
        ConfirmedOffsets::start(store.clone(), &settings.group_id, &settings.input_topic);
    let root_args = RootArgs {
        settings: Arc::clone(settings),
        store: store.clone(),
        consumer: Arc::clone(&consumer),
        names: names.clone(),
        status: status.clone(),
        shutdown: session.clone(),
        fetcher_slot: fetcher_slot.clone(),
        tickets: PositionTickets::default(),
        confirmed_offsets: confirmed_offsets.clone(),
    };
    let (root, root_done) = Actor::spawn(Some(names.root()), RootSupervisor, root_args)
        .await
        .map_err(|error| PipelineError::Actors(error.to_string()))?;

    let monitor = spawn_monitor(
        Arc::clone(settings),
        Arc::clone(&consumer),
        lag_reader,
        status.clone(),
        session.clone(),
    );
    let fatal = status.fatal();
    let mut root_done = root_done;
    let ended = tokio::select! {
        () = shutdown.cancelled() => None,
        () = fatal.cancelled() => Some(Err(status.fatal_reason().unwrap_or_default())),
        () = lost.cancelled() => Some(Ok(status.membership_lost_reason().unwrap_or_default())),
        _ = &mut root_done => Some(Err("a supervisor spent its restart budget; see the log above".to_owned())),
    };
    if let Some(ended) = ended {
        // Lost (Ok) or escalated (Err): the tree stops at once.
        session.cancel();
        monitor.abort();
        let reason = match &ended {
            Ok(reason) | Err(reason) => reason.clone(),
        };
        let _ = root
            .stop_and_wait(Some(reason), Some(Duration::from_secs(2)))
            .await;
        fetcher_slot.stop().await;
        close_confirmed_offsets(&confirmed_offsets).await;
        close_consumer(consumer).await;
        return ended.map(MembershipEnd::Lost).map_err(|reason| {
            shutdown.cancel();
            PipelineError::Escalated(reason)
        });
    }

    if crate::failpoints::hit(crate::failpoints::PIPELINE_GRACEFUL_STOP).is_err() {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    stop_gracefully(&names, &root).await;
    monitor.abort();
    fetcher_slot.stop().await;
    close_confirmed_offsets(&confirmed_offsets).await;
    close_consumer(consumer).await;
    tracing::info!("pipeline stopped");
    Ok(MembershipEnd::Shutdown)
}

/// Records what the membership's last cycles confirmed (bounded: a store
/// that does not answer leaves the group's offsets as the bound, as after
/// a crash), then stops the recorder.
async fn close_confirmed_offsets(confirmed_offsets: &ConfirmedOffsets) {
    if !confirmed_offsets
        .close(CONFIRMED_OFFSETS_CLOSE_DEADLINE)
        .await
    {
        tracing::warn!(
            partitions = ?confirmed_offsets.waiting_partitions(),
            "confirmed kafka offsets not recorded before the stop"
        );
    }
}

/// The actor names of one membership. A rejoin's actors get names of their
/// own: the previous tree's may still be unregistering.
fn membership_names(instance_id: &str, membership: u64) -> ActorNames {
    if membership == 0 {
        ActorNames::new(instance_id)
    } else {
        ActorNames::new(&format!("{instance_id}/rejoin-{membership}"))
    }
}

/// The graceful stop of an actor tree whose fetching has stopped: one last
/// cycle commits what is buffered (bounded), then the actors stop.
async fn stop_gracefully(names: &ActorNames, root: &ActorRef<RootMsg>) {
    tracing::info!("shutting down: fetching stopped, committing what is buffered");
    if let Some(coordinator) = names.find_coordinator() {
        match coordinator
            .call(CoordinatorMsg::Flush, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success(())) => tracing::info!("last cycle committed"),
            _ => tracing::warn!(
                "last cycle did not finish in time; it is replayed on the next start"
            ),
        }
    }
    root.stop_children_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(2)))
        .await;
    let _ = root
        .stop_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(1)))
        .await;
}

async fn migrate_with_retries(
    store: &Store,
    shutdown: &CancellationToken,
) -> Result<(), PipelineError> {
    let mut attempt = 1;
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retriable() && attempt < MIGRATION_ATTEMPTS => {
                tracing::warn!(attempt, %error, "database not ready for migrations; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Err(error.into()),
                    () = tokio::time::sleep(
                        Duration::from_millis(500 * u64::from(attempt)).min(MIGRATION_MAX_BACKOFF),
                    ) => {}
                }
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Leaves the group (a dynamic member; a static member keeps its
/// partitions for its restart) and closes the consumer, bounded in time.
async fn close_consumer(consumer: Arc<crate::kafka::clients::InputConsumer>) {
    let closing = tokio::task::spawn_blocking(move || {
        consumer.unsubscribe();
        drop(consumer);
    });
    if tokio::time::timeout(Duration::from_secs(2), closing)
        .await
        .is_err()
    {
        tracing::warn!("consumer close timed out");
    }
}
