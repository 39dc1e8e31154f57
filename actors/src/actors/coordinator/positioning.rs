//! Positioning: the coordinator claims the partitions it is assigned,
//! reads their recovery positions and has the fetcher seek there; it
//! rewinds them whenever a cycle fails, the breaker opens or a consumer is
//! replaced, and forgets them when they are revoked.
//!
//! Guarantees:
//! - recovery positions are computed between cycles, after the producer has
//!   been initialised (fencing the previous incarnation), so they never see a
//!   half-finished cycle of this instance;
//! - every rewind carries a new positioning ticket (see
//!   [`crate::model::position_ticket`]): the latest decision wins everywhere;
//! - while the breaker is open, no recovery read hammers the database; the
//!   breaker's close message positions the partitions;
//! - the breaker sees every database outcome, recovery reads included.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::state::{CoordinatorState, OwnedPartition};
use crate::kafka::blocking_call::{CALL_LIMIT_MARGIN, bounded_blocking};
use crate::kafka::error::KafkaTxnError;
use crate::messages::circuit_breaker::CircuitBreakerMsg;
use crate::messages::consumer_supervisor::ConsumerSupervisorMsg;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::partition::{PartitionConsumerMsg, PositionOrder};
use crate::recovery::recovery_position;
use crate::store::StoredPartition;
use crate::store::error::StoreError;
use crate::telemetry::metrics::BreakerState;

/// How long to wait before reading recovery positions again after a read
/// failed.
const RECOVERY_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Why the recovery positions could not be read.
#[derive(Debug, thiserror::Error)]
enum RecoveryReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading committed offsets: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading committed offsets: {0}")]
    TaskLost(#[from] KafkaTxnError),
}

/// What recovery reads for one partition: the stored state and the group's
/// committed offset.
struct RecoveryInputs {
    partition: i32,
    stored: StoredPartition,
    group_committed: Option<i64>,
}

impl CoordinatorState {
    /// Partitions (re)assigned with their consumers: each new consumer is
    /// told to wait for a positioning, and the partitions are positioned.
    pub(super) async fn on_assigned(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
        assigned: Vec<(i32, ActorRef<PartitionConsumerMsg>)>,
    ) {
        for (partition, consumer) in assigned {
            // The same consumer announced twice (by the rebalance and by
            // the report asked for at start) is already positioned.
            if self
                .partitions
                .get(&partition)
                .is_some_and(|owned| owned.consumer.get_id() == consumer.get_id())
            {
                continue;
            }
            let ticket = self.args.tickets.issue();
            // A consumer that died meanwhile is restarted and
            // announced again; nothing to do for this one.
            let _ = consumer.cast(PartitionConsumerMsg::BeginRewind { ticket });
            self.partitions.insert(
                partition,
                OwnedPartition {
                    owner_epoch: None,
                    ticket,
                    consumer,
                    kafka_committed_here: None,
                },
            );
            self.awaiting_position.insert(partition);
        }
        self.position_partitions(me).await;
    }

    /// Forgets `partitions`, so that no later cycle takes their batches.
    pub(super) fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
            self.awaiting_position.remove(partition);
        }
    }

    /// The breaker opened: every partition is rewound and paused until the
    /// breaker closes.
    pub(super) fn on_breaker_opened(&mut self) {
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        tracing::warn!(
            ?partitions,
            "database unavailable: rewinding and pausing every partition"
        );
        for partition in &partitions {
            self.begin_rewind(*partition);
        }
        self.args
            .names
            .cast_consumer_supervisor(ConsumerSupervisorMsg::PausePartitions(partitions));
    }

    /// Decides a new positioning of `partition`: a new ticket, its consumer
    /// told to drop what it holds and wait for it, the partition awaiting its
    /// recovery position.
    fn begin_rewind(&mut self, partition: i32) {
        let Some(owned) = self.partitions.get_mut(&partition) else {
            return;
        };
        owned.ticket = self.args.tickets.issue();
        let _ = owned.consumer.cast(PartitionConsumerMsg::BeginRewind {
            ticket: owned.ticket,
        });
        self.awaiting_position.insert(partition);
    }

    /// Rewinds `partitions`: drops what their consumers hold and positions
    /// them at their recovery positions.
    pub(super) async fn rewind(&mut self, me: &ActorRef<CoordinatorMsg>, partitions: &[i32]) {
        for partition in partitions {
            self.begin_rewind(*partition);
        }
        self.position_partitions(me).await;
    }

    /// Reads the recovery positions of the partitions awaiting one and has
    /// the fetcher seek there; on failure, retries later.
    pub(super) async fn position_partitions(&mut self, me: &ActorRef<CoordinatorMsg>) {
        if self.awaiting_position.is_empty() {
            return;
        }
        if self.args.status.breaker_state() == BreakerState::Open {
            // The breaker says the database is down: do not hammer it; the
            // breaker's close message positions the partitions.
            return;
        }
        // What earlier cycles confirmed lands first: the claim below bumps
        // the owner epoch, and the store refuses a confirmation made under
        // an older one.
        self.flush_confirmed_offsets("positioning").await;
        let inputs = self.read_recovery_inputs().await;
        // The breaker sees every database outcome, recovery reads included:
        // while the database is down no batch is written, so without these
        // it would never learn of the outage.
        match &inputs {
            Ok(_) => self
                .args
                .names
                .tell_circuit_breaker(CircuitBreakerMsg::DatabaseSucceeded),
            Err(RecoveryReadError::Store(StoreError::Fenced { .. })) => {}
            Err(RecoveryReadError::Store(_)) => self
                .args
                .names
                .tell_circuit_breaker(CircuitBreakerMsg::DatabaseFailed),
            Err(_) => {}
        }
        match inputs {
            Ok(inputs) => {
                for input in inputs {
                    self.position(input);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read recovery positions yet; retrying");
                if !self.retry_scheduled {
                    self.retry_scheduled = true;
                    me.send_after(RECOVERY_RETRY_DELAY, || CoordinatorMsg::RetryRecovery);
                }
            }
        }
    }

    /// Has the fetcher seek one partition to its recovery position.
    fn position(&mut self, input: RecoveryInputs) {
        let RecoveryInputs {
            partition,
            stored,
            group_committed,
        } = input;
        let committed_here = self
            .partitions
            .get(&partition)
            .and_then(|owned| owned.kafka_committed_here);
        let kafka_committed = group_committed.max(committed_here);
        let position = recovery_position(Some(stored), kafka_committed);
        tracing::info!(
            partition,
            db_next_offset = ?stored.next_offset,
            group_start_offset = ?stored.start_offset,
            db_kafka_committed = ?stored.kafka_committed_offset,
            ?group_committed,
            ?committed_here,
            start = ?position.start,
            outputs_from = position.outputs_from,
            "recovery position"
        );
        let Some(owned) = self.partitions.get(&partition) else {
            return;
        };
        self.args
            .names
            .cast_consumer_supervisor(ConsumerSupervisorMsg::Position(PositionOrder {
                partition,
                ticket: owned.ticket,
                start: position.start,
                outputs_from: position.outputs_from,
                target: owned.consumer.clone(),
            }));
        self.awaiting_position.remove(&partition);
    }

    /// Claims the partitions awaiting a position that are not claimed yet
    /// (fencing older owners), reads the others' stored state, and reads the
    /// group's committed offsets of all of them.
    async fn read_recovery_inputs(&mut self) -> Result<Vec<RecoveryInputs>, RecoveryReadError> {
        let settings = Arc::clone(&self.args.settings);
        let instance_id = settings.instance_id();
        let mut stored_by_partition = Vec::new();
        for partition in self.awaiting_position.clone() {
            let Some(owned) = self.partitions.get_mut(&partition) else {
                continue;
            };
            let stored = match owned.owner_epoch {
                // First positioning since assignment: claim, fencing older owners.
                None => {
                    let claimed = self
                        .args
                        .store
                        .claim_partition(
                            &settings.group_id,
                            &settings.input_topic,
                            partition,
                            &instance_id,
                        )
                        .await?;
                    owned.owner_epoch = Some(claimed.owner_epoch);
                    self.args
                        .status
                        .record_claim(partition, claimed.owner_epoch);
                    claimed
                }
                Some(epoch) => self
                    .args
                    .store
                    .read_partition(&settings.group_id, &settings.input_topic, partition)
                    .await?
                    .unwrap_or(StoredPartition {
                        next_offset: None,
                        start_offset: None,
                        kafka_committed_offset: None,
                        owner_epoch: epoch,
                    }),
            };
            stored_by_partition.push((partition, stored));
        }
        let mut list = TopicPartitionList::new();
        for (partition, _) in &stored_by_partition {
            list.add_partition(&settings.input_topic, *partition);
        }
        let consumer = Arc::clone(&self.args.consumer);
        let timeout = settings.kafka_call_timeout;
        let committed = bounded_blocking(
            "committed_offsets",
            timeout + CALL_LIMIT_MARGIN,
            move || consumer.committed_offsets(list, timeout),
        )
        .await??;
        Ok(stored_by_partition
            .into_iter()
            .map(|(partition, stored)| RecoveryInputs {
                partition,
                stored,
                group_committed: committed
                    .find_partition(&settings.input_topic, partition)
                    .and_then(|element| match element.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    }),
            })
            .collect())
    }
}
