//! The coordinator's arguments and state: the partitions it owns, each
//! with its claim, its latest positioning and what Kafka committed for it
//! in this ownership.
//!
//! Guarantees: the coordinator keeps nothing recovery needs (a restarted
//! coordinator re-claims and rewinds); `kafka_committed_here` only grows
//! within one ownership.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ractor::ActorRef;
use rdkafka::consumer::Consumer;

use crate::kafka::clients::InputConsumer;
use crate::kafka::delivery::OutputProducer;
use crate::messages::names::ActorNames;
use crate::messages::partition::PartitionConsumerMsg;
use crate::model::position_ticket::{PositionTicket, PositionTickets};
use crate::settings::Settings;
use crate::store::{ConfirmedOffsets, Store};
use crate::telemetry::status::PipelineStatus;

/// Start arguments.
#[derive(Clone)]
pub struct CoordinatorArgs {
    /// settings
    pub settings: Arc<Settings>,
    /// the store
    pub store: Store,
    /// the input consumer (group metadata, committed offsets)
    pub consumer: Arc<InputConsumer>,
    /// to find the other actors, restarted or not
    pub names: ActorNames,
    /// metrics and health
    pub status: PipelineStatus,
    /// the positioning tickets (shared with every incarnation)
    pub tickets: PositionTickets,
    /// records the Kafka offsets confirmed committed (shared with every
    /// incarnation, so a restarted coordinator flushes what its predecessor
    /// handed over before it reads recovery positions)
    pub confirmed_offsets: ConfirmedOffsets,
}

#[derive(Debug)]
pub(super) struct OwnedPartition {
    pub(super) owner_epoch: Option<i64>,
    /// the latest positioning decided for the partition
    pub(super) ticket: PositionTicket,
    pub(super) consumer: ActorRef<PartitionConsumerMsg>,
    /// End offset of the last Kafka transaction this coordinator committed
    /// for the partition while owning it: a lower bound of the group's
    /// committed offset that holds even when recording it in the store
    /// failed (a store outage right after the commit), so a rewind in the
    /// same ownership never replays outputs Kafka already has.
    pub(super) kafka_committed_here: Option<i64>,
}

/// State of the coordinator.
pub struct CoordinatorState {
    pub(super) args: CoordinatorArgs,
    pub(super) producer: Option<OutputProducer>,
    pub(super) partitions: BTreeMap<i32, OwnedPartition>,
    pub(super) awaiting_position: BTreeSet<i32>,
    pub(super) retry_scheduled: bool,
}

impl CoordinatorState {
    /// A coordinator that owns nothing yet and has no producer.
    pub(super) fn new(args: CoordinatorArgs) -> CoordinatorState {
        CoordinatorState {
            args,
            producer: None,
            partitions: BTreeMap::new(),
            awaiting_position: BTreeSet::new(),
            retry_scheduled: false,
        }
    }

    /// Whether the input consumer's assignment holds `partition` now.
    pub(super) fn is_assigned(&self, partition: i32) -> bool {
        self.args.consumer.assignment().is_ok_and(|list| {
            list.find_partition(&self.args.settings.input_topic, partition)
                .is_some()
        })
    }

    /// The first of `partitions` Kafka no longer assigns here.
    pub(super) fn first_unassigned(&self, partitions: impl Iterator<Item = i32>) -> Option<i32> {
        partitions
            .into_iter()
            .find(|partition| !self.is_assigned(*partition))
    }
}

impl std::fmt::Debug for CoordinatorArgs {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CoordinatorArgs")
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CoordinatorState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CoordinatorState")
            .finish_non_exhaustive()
    }
}
