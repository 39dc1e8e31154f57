//! The coordinator's producer: created (under `exactly-once` transactional,
//! fencing the previous incarnation's), and after a failed cycle either
//! kept (its transaction aborted; under `at-least-once` there is none) or
//! recreated.
//!
//! Guarantees: a producer whose state is unknown is never reused (it is
//! recreated, which fences and aborts its open transaction); only a newer
//! incarnation of this very instance makes this one stop as a zombie
//! instead of fencing its successor back.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorProcessingErr;
use uuid::Uuid;

use super::state::CoordinatorState;
use crate::kafka::blocking_call::{CALL_LIMIT_MARGIN, bounded_blocking};
use crate::kafka::clients::create_output_producer;
use crate::kafka::delivery::OutputProducer;
use crate::kafka::error::{KafkaFailureClass, KafkaTxnError};
use crate::kafka::transaction::{self, init_transactions_span};
use crate::settings::Settings;
use crate::telemetry::spans::in_span;

/// Creates the transactional producer on a blocking thread and runs
/// `init_transactions` (its timeout is the Kafka call timeout, at least
/// 30 s), waited for at most that plus a margin (see
/// [`crate::kafka::blocking_call`]).
pub(super) async fn new_producer(
    settings: &Arc<Settings>,
) -> Result<OutputProducer, KafkaTxnError> {
    let limit = settings.kafka_call_timeout.max(Duration::from_secs(30)) + CALL_LIMIT_MARGIN;
    let settings = Arc::clone(settings);
    bounded_blocking("init_transactions", limit, move || {
        create_output_producer(&settings)
    })
    .await?
}

impl CoordinatorState {
    /// After a failed transaction: abort it, or recreate the producer when
    /// it is unusable. Fails the actor (for its supervisor to restart) if
    /// even a new producer cannot be made.
    pub(super) async fn recover_producer(
        &mut self,
        txn_id: Uuid,
        class: KafkaFailureClass,
    ) -> Result<(), ActorProcessingErr> {
        if class != KafkaFailureClass::RecreateProducer
            && !self.args.settings.guarantee.is_transactional()
        {
            // No transaction to abort: what was produced stays produced and
            // is produced again by the replay (at least once).
            return Ok(());
        }
        if class != KafkaFailureClass::RecreateProducer
            && let Some(producer) = &self.producer
        {
            let timeout = self.args.settings.kafka_call_timeout;
            match transaction::abort(producer, txn_id, timeout).await {
                Ok(()) => return Ok(()),
                Err(error) => tracing::warn!(%error, "abort failed; recreating the producer"),
            }
        }
        self.producer = None;
        self.args.status.set_coordinator_ready(false);
        if let Some(partition) = self.partition_claimed_by_a_newer_incarnation().await {
            // A newer incarnation with our transactional.id fenced us and
            // claimed our partitions: we are the zombie. Re-initialising would
            // fence it in turn; stop instead.
            let reason = format!(
                "fenced: partition {partition} was claimed by a newer incarnation of instance {}",
                self.args.settings.instance_id()
            );
            tracing::error!(%reason, "stopping this incarnation");
            self.args.status.fail_fatally(reason.clone());
            return Err(reason.into());
        }
        let producer = in_span(
            init_transactions_span(txn_id),
            new_producer(&self.args.settings),
        )
        .await?;
        self.producer = Some(producer);
        self.args.status.set_coordinator_ready(true);
        tracing::info!("producer recreated");
        Ok(())
    }

    /// The first owned partition claimed since by a newer incarnation of
    /// this very instance (same instance id, hence same `transactional.id`):
    /// proof that this incarnation is a zombie. A claim by another instance
    /// proves nothing of the kind (a rebalance moved the partition), and
    /// neither does a database that cannot be read: `None`.
    async fn partition_claimed_by_a_newer_incarnation(&self) -> Option<i32> {
        let settings = &self.args.settings;
        let instance_id = settings.instance_id();
        for (partition, owned) in &self.partitions {
            let Some(epoch) = owned.owner_epoch else {
                continue;
            };
            let Ok(Some(owner)) = self
                .args
                .store
                .partition_owner(&settings.group_id, &settings.input_topic, *partition)
                .await
            else {
                continue;
            };
            if owner.owner_epoch > epoch && owner.owner_instance.as_deref() == Some(&instance_id) {
                return Some(*partition);
            }
        }
        None
    }
}
