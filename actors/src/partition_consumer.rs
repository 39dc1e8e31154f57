//! The partition consumer actor: one per assigned partition. It processes
//! the records the fetcher routes to it, buffers their effects, and hands
//! contiguous batches to the transaction coordinator.
//!
//! Guarantees:
//! - it accepts records only of the positioning it was last told to await
//!   (its ticket, see [`crate::position_ticket`]), so nothing fetched before
//!   a rewind leaks into a batch after it, and a stale `Positioned` is
//!   ignored;
//! - it accepts a route's records only in sequence and at increasing
//!   offsets: a record missing between the fetcher and this actor, or one
//!   delivered twice, fails the actor (its supervisor restarts it and the
//!   coordinator repositions it from the stored offsets) instead of letting
//!   a batch skip it;
//! - batches are contiguous: each starts where the previous one ended, the
//!   first one at the recovery position;
//! - at most one batch is in flight, and handing it over is idempotent: a
//!   `TakeBatch` while a batch is in flight hands the same batch again (the
//!   coordinator's earlier request timed out and never wrote it), so a late
//!   reply can never leave the partition stuck;
//! - what it holds, mailbox included, is counted on the route's
//!   [`FetchCredit`]: the fetcher pauses the partition at
//!   `max_buffered_records` and this actor resumes it at half;
//! - it keeps nothing that recovery needs: a restarted partition consumer is
//!   repositioned from the stored offsets by the coordinator;
//! - a record with an upstream `traceparent` is processed inside its own
//!   `process` span when spans are exported (see [`crate::spans`]).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::fetch_credit::FetchCredit;
use crate::metrics::PipelineStatus;
use crate::partition_batch::PartitionBatch;
use crate::position_ticket::PositionTicket;
use crate::processed_record::{ConsumedRecord, ProcessedRecord};
use crate::record_fetcher::{FetcherCommand, FetcherHandle};
use crate::spans::{RecordSource, process_traced};

/// Messages of a partition consumer.
#[derive(Debug)]
pub enum PartitionConsumerMsg {
    /// a record of the route positioned with `ticket`
    Record {
        /// the positioning the record was fetched under
        ticket: PositionTicket,
        /// its place in the route: 0, 1, 2, … without gaps
        sequence: u64,
        /// the record
        record: ConsumedRecord,
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
    /// hand over the next batch (or the one in flight again), if any
    TakeBatch(RpcReplyPort<Option<Arc<PartitionBatch>>>),
    /// the batch ending at `end_offset` committed on both sides
    Committed {
        /// end of the committed batch
        end_offset: i64,
    },
}

/// Start arguments.
#[derive(Debug, Clone)]
pub struct PartitionConsumerArgs {
    /// input partition
    pub partition: i32,
    /// most records in one batch
    pub max_batch_records: usize,
    /// shared metrics
    pub status: PipelineStatus,
    /// input topic and group, for the records' spans
    pub source: RecordSource,
}

/// Where the partition stands.
#[derive(Debug)]
enum Phase {
    /// waiting to be positioned with this ticket (or a later one); `None`
    /// before the coordinator has said anything
    AwaitingPosition(Option<PositionTicket>),
    /// consuming the records of one route
    Active(ActiveRoute),
}

#[derive(Debug)]
struct ActiveRoute {
    ticket: PositionTicket,
    next_sequence: u64,
    fetcher: FetcherHandle,
    credit: Arc<FetchCredit>,
}

/// Why a record was refused: the route lost or repeated records.
#[derive(Debug, thiserror::Error)]
enum RouteBroken {
    #[error(
        "partition {partition}: record {sequence} of route {ticket} arrived where {expected} was due (records lost between fetcher and consumer)"
    )]
    OutOfSequence {
        partition: i32,
        ticket: PositionTicket,
        sequence: u64,
        expected: u64,
    },
    #[error(
        "partition {partition}: offset {offset} arrived after offset {previous} (records repeated or out of order)"
    )]
    OffsetNotIncreasing {
        partition: i32,
        offset: i64,
        previous: i64,
    },
}

/// State of a partition consumer.
#[derive(Debug)]
pub struct PartitionConsumerState {
    args: PartitionConsumerArgs,
    phase: Phase,
    next_batch_start: Option<i64>,
    last_offset: Option<i64>,
    outputs_from: i64,
    buffered: Vec<ProcessedRecord>,
    in_flight: Option<Arc<PartitionBatch>>,
}

impl PartitionConsumerState {
    /// A new consumer of `args.partition`, waiting to be positioned.
    pub fn new(args: PartitionConsumerArgs) -> PartitionConsumerState {
        PartitionConsumerState {
            args,
            phase: Phase::AwaitingPosition(None),
            next_batch_start: None,
            last_offset: None,
            outputs_from: i64::MIN,
            buffered: Vec::new(),
            in_flight: None,
        }
    }

    /// The route is abandoned (a rewind): everything held is dropped. The
    /// route's credit goes with it; the next route has its own.
    fn drop_route(&mut self, awaiting: Option<PositionTicket>) {
        self.buffered.clear();
        self.in_flight = None;
        self.last_offset = None;
        self.phase = Phase::AwaitingPosition(awaiting);
    }

    fn release(&self, count: usize) {
        if let Phase::Active(route) = &self.phase
            && route.credit.records_released(count)
        {
            route.fetcher.send(FetcherCommand::Resume {
                partition: self.args.partition,
                ticket: route.ticket,
            });
        }
    }

    /// Handles one message; an error means the route is broken.
    fn on_message(&mut self, message: PartitionConsumerMsg) -> Result<(), ActorProcessingErr> {
        match message {
            PartitionConsumerMsg::Record {
                ticket,
                sequence,
                record,
            } => self.on_record(ticket, sequence, record)?,
            PartitionConsumerMsg::Positioned {
                ticket,
                start_offset,
                outputs_from,
                fetcher,
                credit,
            } => {
                let awaited = match &self.phase {
                    Phase::AwaitingPosition(awaited) => *awaited,
                    Phase::Active(route) => Some(route.ticket),
                };
                if awaited.is_some_and(|awaited| ticket < awaited)
                    || matches!(&self.phase, Phase::Active(route) if route.ticket == ticket)
                {
                    tracing::debug!(partition = self.args.partition, %ticket, "stale positioning ignored");
                    return Ok(());
                }
                tracing::info!(
                    partition = self.args.partition,
                    ticket = ticket.get(),
                    ?start_offset,
                    outputs_from,
                    "partition positioned"
                );
                self.drop_route(None);
                self.phase = Phase::Active(ActiveRoute {
                    ticket,
                    next_sequence: 0,
                    fetcher,
                    credit,
                });
                self.next_batch_start = start_offset;
                self.outputs_from = outputs_from;
            }
            PartitionConsumerMsg::BeginRewind { ticket } => {
                let current = match &self.phase {
                    Phase::AwaitingPosition(awaited) => *awaited,
                    Phase::Active(route) => Some(route.ticket),
                };
                if current.is_none_or(|current| ticket > current) {
                    self.drop_route(Some(ticket));
                }
            }
            PartitionConsumerMsg::TakeBatch(reply) => {
                let batch = self.take_batch();
                // The coordinator may have timed out and gone: the batch stays
                // in flight and the next request hands it over again.
                let _ = reply.send(batch);
            }
            PartitionConsumerMsg::Committed { end_offset } => {
                if let Some(batch) = &self.in_flight
                    && batch.end_offset == end_offset
                {
                    let count = batch.records.len();
                    self.in_flight = None;
                    self.release(count);
                }
            }
        }
        Ok(())
    }

    fn on_record(
        &mut self,
        ticket: PositionTicket,
        sequence: u64,
        record: ConsumedRecord,
    ) -> Result<(), RouteBroken> {
        let partition = self.args.partition;
        let Phase::Active(route) = &mut self.phase else {
            return Ok(());
        };
        if route.ticket != ticket {
            return Ok(()); // fetched before the latest positioning
        }
        if sequence != route.next_sequence {
            return Err(RouteBroken::OutOfSequence {
                partition,
                ticket,
                sequence,
                expected: route.next_sequence,
            });
        }
        let floor = self
            .last_offset
            .map(|last| last + 1)
            .or(self.next_batch_start);
        if let Some(floor) = floor
            && record.offset < floor
        {
            return Err(RouteBroken::OffsetNotIncreasing {
                partition,
                offset: record.offset,
                previous: floor - 1,
            });
        }
        route.next_sequence += 1;
        self.last_offset = Some(record.offset);
        self.args.status.metrics().records_consumed.inc();
        crate::failpoints::partition_consumer_mid_batch();
        self.buffered
            .push(process_traced(record, &self.args.source));
        Ok(())
    }

    fn take_batch(&mut self) -> Option<Arc<PartitionBatch>> {
        if !matches!(self.phase, Phase::Active(_)) {
            return None;
        }
        if let Some(in_flight) = &self.in_flight {
            tracing::info!(
                partition = self.args.partition,
                start_offset = in_flight.start_offset,
                end_offset = in_flight.end_offset,
                "batch handed over again (an earlier hand-over was not received)"
            );
            return Some(Arc::clone(in_flight));
        }
        if self.buffered.is_empty() {
            return None;
        }
        let take = self.buffered.len().min(self.args.max_batch_records);
        let records: Vec<ProcessedRecord> = self.buffered.drain(..take).collect();
        let first_offset = records.first().map(|record| record.offset)?;
        let last_offset = records.last().map(|record| record.offset)?;
        let start_offset = self.next_batch_start.unwrap_or(first_offset);
        let end_offset = last_offset + 1;
        self.next_batch_start = Some(end_offset);
        let batch = Arc::new(PartitionBatch {
            partition: self.args.partition,
            start_offset,
            end_offset,
            outputs_from: self.outputs_from,
            records,
        });
        self.in_flight = Some(Arc::clone(&batch));
        Some(batch)
    }
}

/// The partition consumer actor.
#[derive(Debug)]
pub struct PartitionConsumer;

impl Actor for PartitionConsumer {
    type Msg = PartitionConsumerMsg;
    type State = PartitionConsumerState;
    type Arguments = PartitionConsumerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PartitionConsumerState::new(args))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let PartitionConsumerMsg::TakeBatch(_) = &message {
            crate::failpoints::partition_consumer_take_batch();
        }
        state.on_message(message)
    }
}
