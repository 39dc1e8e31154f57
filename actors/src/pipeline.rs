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

use ractor::Actor;
use ractor::rpc::CallResult;
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

use crate::actor_names::ActorNames;
use crate::fetcher_slot::FetcherSlot;
use crate::kafka_clients::create_input_consumer;
use crate::metrics::PipelineStatus;
use crate::pipeline_monitor::spawn_monitor;
use crate::position_ticket::PositionTickets;
use crate::root_supervisor::{RootArgs, RootSupervisor};
use crate::settings::{Settings, SettingsError};
use crate::store::Store;
use crate::store_error::StoreError;
use crate::transaction_coordinator::CoordinatorMsg;

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

/// Runs the pipeline until `shutdown` is cancelled (Ok) or a supervisor
/// escalates (Err).
pub async fn run_pipeline(
    settings: Settings,
    status: PipelineStatus,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    settings.validate()?;
    let settings = Arc::new(settings);
    let store = Store::connect_lazy(
        settings.required_database_url()?,
        settings.db_max_connections,
        Duration::from_millis(settings.db_statement_timeout_ms),
        Duration::from_millis(settings.db_idle_in_transaction_timeout_ms),
        Duration::from_millis(settings.db_acquire_timeout_ms),
    )?;
    migrate_with_retries(&store, &shutdown).await?;

    let instance_id = settings.instance_id();
    let names = ActorNames::new(&instance_id);
    let consumer = create_input_consumer(&settings, &names)?;
    tracing::info!(
        instance_id = %instance_id,
        group_id = %settings.group_id,
        input_topic = %settings.input_topic,
        output_topic = %settings.output_topic,
        dlq_topic = %settings.dlq_topic,
        kafka_overrides = ?settings.redacted_kafka_keys(),
        "pipeline starting"
    );
    let fetcher_slot = FetcherSlot::default();
    let root_args = RootArgs {
        settings: Arc::clone(&settings),
        store,
        consumer: Arc::clone(&consumer),
        names: names.clone(),
        status: status.clone(),
        shutdown: shutdown.clone(),
        fetcher_slot: fetcher_slot.clone(),
        tickets: PositionTickets::default(),
    };
    let (root, root_done) = Actor::spawn(Some(names.root()), RootSupervisor, root_args)
        .await
        .map_err(|error| PipelineError::Actors(error.to_string()))?;

    let monitor = spawn_monitor(
        Arc::clone(&settings),
        Arc::clone(&consumer),
        status.clone(),
        shutdown.clone(),
    );
    let fatal = status.fatal();
    let mut root_done = root_done;
    let escalated = tokio::select! {
        () = shutdown.cancelled() => None,
        () = fatal.cancelled() => Some(status.fatal_reason().unwrap_or_default()),
        _ = &mut root_done => Some("a supervisor spent its restart budget; see the log above".to_owned()),
    };
    if let Some(reason) = escalated {
        shutdown.cancel();
        monitor.abort();
        let _ = root
            .stop_and_wait(Some(reason.clone()), Some(Duration::from_secs(2)))
            .await;
        fetcher_slot.stop().await;
        close_consumer(consumer).await;
        return Err(PipelineError::Escalated(reason));
    }

    tracing::info!("shutting down: fetching stopped, committing what is buffered");
    if let Some(coordinator) = ActorNames::lookup::<CoordinatorMsg>(&names.coordinator()) {
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
    monitor.abort();
    fetcher_slot.stop().await;
    close_consumer(consumer).await;
    tracing::info!("pipeline stopped");
    Ok(())
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
async fn close_consumer(consumer: Arc<crate::kafka_clients::InputConsumer>) {
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
