//! The messages of one partition's route: the record fetcher's commands
//! and the partition consumer's messages, in one file because each names
//! the other (a positioning targets a partition consumer; a partition
//! consumer is handed the fetcher to resume it).
//!
//! Guarantees: every record and positioning carries the ticket of the
//! positioning it belongs to (see [`crate::model::position_ticket`]), so a
//! stale one is recognised wherever it arrives.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::model::batch::PartitionBatch;
use crate::model::fetch_credit::FetchCredit;
use crate::model::position_ticket::PositionTicket;
use crate::model::record::ConsumedRecord;
use crate::recovery::StartPosition;

/// Messages of a partition consumer.
#[derive(Debug)]
pub enum PartitionConsumerMsg {
    /// records of the route positioned with `ticket`, in the order fetched
    /// (one message for what one poll of the consumer had ready)
    Records {
        /// the positioning the records were fetched under
        ticket: PositionTicket,
        /// the first one's place in the route (0, 1, 2, … without gaps);
        /// the others follow it
        first_sequence: u64,
        /// the records
        records: Vec<ConsumedRecord>,
    },
    /// the fetcher has positioned the partition: records of `ticket` start
    /// at `start_offset` (`None`: at the earliest offset)
    Positioned {
        /// the positioning carried out
        ticket: PositionTicket,
        /// first offset of the next batch
        start_offset: Option<i64>,
        /// outputs are owed only from this offset on
        outputs_from: i64,
        /// the fetcher, for resumes
        fetcher: FetcherHandle,
        /// the route's count of held records
        credit: Arc<FetchCredit>,
    },
    /// a rewind is coming: drop everything held and wait to be positioned
    /// with `ticket` (or a later one)
    BeginRewind {
        /// the coordinator's positioning decision
        ticket: PositionTicket,
    },
    /// hand over the batch the coordinator wants (see [`BatchWanted`]), if
    /// there is one
    TakeBatch(BatchWanted, RpcReplyPort<Option<Arc<PartitionBatch>>>),
    /// the batch ending at `end_offset` committed on both sides
    Committed {
        /// end of the committed batch
        end_offset: i64,
    },
}

/// Which batch the coordinator asks a partition consumer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchWanted {
    /// The coordinator holds no batch of the partition: the oldest batch in
    /// flight (an earlier hand-over was not received, or the coordinator
    /// restarted), else a new one.
    Oldest,
    /// The coordinator holds the batch ending at this offset, committed to
    /// the database, its Kafka phase running: the batch that starts here
    /// (handed again if it is already in flight), else a new one if the
    /// partition's batches reached this offset. Nothing else: a batch that
    /// does not follow the held one is never handed over.
    After(i64),
}

/// A positioning, as decided by the coordinator.
#[derive(Debug, Clone)]
pub struct PositionOrder {
    /// input partition
    pub partition: i32,
    /// the coordinator's decision this carries out
    pub ticket: PositionTicket,
    /// where to resume
    pub start: StartPosition,
    /// outputs owed from this offset on
    pub outputs_from: i64,
    /// the partition consumer
    pub target: ActorRef<PartitionConsumerMsg>,
}

/// Commands to the fetcher.
#[derive(Debug)]
pub enum FetcherCommand {
    /// seek the partition, resume it and route it to the target (unless a
    /// later positioning superseded this one)
    Position(PositionOrder),
    /// try a positioning whose seek failed again
    RetryPosition {
        /// the positioning
        order: PositionOrder,
        /// the delay before this retry
        delay: Duration,
    },
    /// stop fetching and routing `partition` until it is positioned again
    /// (the circuit breaker opened)
    Park {
        /// input partition
        partition: i32,
    },
    /// the partition consumer released records: fetch `partition` again if it
    /// is still routed with `ticket`
    Resume {
        /// input partition
        partition: i32,
        /// the route the release was counted on
        ticket: PositionTicket,
    },
    /// stop routing `partition` (revoked, or its consumer is gone); every
    /// positioning up to `barrier` is stale for it from now on
    Forget {
        /// input partition
        partition: i32,
        /// the latest ticket issued when the sender decided to forget (taken
        /// by the sender: a ticket issued after that is a newer decision)
        barrier: PositionTicket,
    },
}

/// A cheap, cloneable handle to the fetcher.
#[derive(Debug, Clone)]
pub struct FetcherHandle {
    commands: mpsc::UnboundedSender<FetcherCommand>,
}

impl FetcherHandle {
    /// A handle and the receiver its commands land in: the fetcher task's
    /// end, or a test's (of an actor that talks to the fetcher).
    pub fn channel() -> (FetcherHandle, mpsc::UnboundedReceiver<FetcherCommand>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        (FetcherHandle { commands }, receiver)
    }

    /// Sends a command; a stopped fetcher ignores it (its successor
    /// repositions every partition).
    pub fn send(&self, command: FetcherCommand) {
        if self.commands.send(command).is_err() {
            tracing::debug!("fetcher stopped; command dropped");
        }
    }
}
