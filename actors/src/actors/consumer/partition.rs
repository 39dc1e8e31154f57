//! The partition consumer actor: one per assigned partition. It processes
//! the records the fetcher routes to it, buffers their effects, and hands
//! contiguous batches to the transaction coordinator.
//!
//! Guarantees:
//! - it accepts records only of the positioning it was last told to await
//!   (its ticket, see [`crate::model::position_ticket`]), so nothing fetched before
//!   a rewind leaks into a batch after it, and a stale `Positioned` is
//!   ignored;
//! - it accepts a route's records only in sequence and at increasing
//!   offsets: a record missing between the fetcher and this actor, or one
//!   delivered twice, fails the actor (its supervisor restarts it and the
//!   coordinator repositions it from the stored offsets) instead of letting
//!   a batch skip it;
//! - batches are contiguous: each starts where the previous one ended, the
//!   first one at the recovery position;
//! - at most [`MAX_BATCHES_IN_FLIGHT`] batches are in flight (one in its
//!   Kafka phase, the next in its database phase while the coordinator
//!   pipelines), each until its `Committed`; handing one over is idempotent:
//!   the coordinator says which batch it wants ([`BatchWanted`]) and a
//!   batch already in flight is handed over again (an earlier request timed
//!   out and never wrote it), so a late reply can never leave the partition
//!   stuck, and a batch is never handed over out of its order;
//! - what it holds, mailbox included, is counted on the route's
//!   [`FetchCredit`]: the fetcher holds the partition back at
//!   `max_buffered_records` and this actor has it read again once a whole
//!   batch fits below the limit;
//! - it keeps nothing that recovery needs: a restarted partition consumer is
//!   repositioned from the stored offsets by the coordinator;
//! - a record with a valid upstream trace context is processed inside its
//!   own `process` span when spans are exported (see [`crate::telemetry::spans`]).

use std::collections::VecDeque;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::messages::partition::{BatchWanted, PartitionConsumerMsg};
use crate::messages::partition::{FetcherCommand, FetcherHandle};
use crate::model::batch::PartitionBatch;
use crate::model::batch_limits::BatchLimits;
use crate::model::fetch_credit::FetchCredit;
use crate::model::position_ticket::PositionTicket;
use crate::model::record::{ConsumedRecord, ProcessedRecord};
use crate::processing::process_traced;
use crate::telemetry::spans::RecordSource;
use crate::telemetry::status::PipelineStatus;

/// Most batches handed over and not yet committed: one in its Kafka phase
/// and the next in its database phase.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// Start arguments.
#[derive(Debug, Clone)]
pub struct PartitionConsumerArgs {
    /// input partition
    pub partition: i32,
    /// most records in one batch, while the partition keeps up and under a
    /// backlog
    pub batch_limits: BatchLimits,
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
    /// handed over and not committed yet, oldest first, contiguous
    in_flight: VecDeque<Arc<PartitionBatch>>,
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
            in_flight: VecDeque::new(),
        }
    }

    /// The route is abandoned (a rewind): everything held is dropped. The
    /// route's credit goes with it; the next route has its own.
    fn drop_route(&mut self, awaiting: Option<PositionTicket>) {
        self.buffered.clear();
        self.in_flight.clear();
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
            PartitionConsumerMsg::Records {
                ticket,
                first_sequence,
                records,
            } => {
                for (sequence, record) in (first_sequence..).zip(records) {
                    self.on_record(ticket, sequence, record)?;
                }
            }
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
            PartitionConsumerMsg::TakeBatch(wanted, reply) => {
                let batch = self.take_batch(wanted);
                // The coordinator may have timed out and gone: the batch stays
                // in flight and the next request hands it over again.
                let _ = reply.send(batch);
            }
            PartitionConsumerMsg::Committed { end_offset } => {
                let mut released = 0;
                while let Some(batch) = self.in_flight.front()
                    && batch.end_offset <= end_offset
                {
                    released += batch.records.len();
                    self.in_flight.pop_front();
                }
                if released > 0 {
                    self.release(released);
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

    fn take_batch(&mut self, wanted: BatchWanted) -> Option<Arc<PartitionBatch>> {
        if !matches!(self.phase, Phase::Active(_)) {
            return None;
        }
        let in_flight = match wanted {
            BatchWanted::Oldest => self.in_flight.front(),
            BatchWanted::After(held_end) => self
                .in_flight
                .iter()
                .find(|batch| batch.start_offset == held_end),
        };
        if let Some(in_flight) = in_flight {
            tracing::info!(
                partition = self.args.partition,
                start_offset = in_flight.start_offset,
                end_offset = in_flight.end_offset,
                "batch handed over again (an earlier hand-over was not received)"
            );
            return Some(Arc::clone(in_flight));
        }
        let follows_the_held_one = match wanted {
            BatchWanted::Oldest => true,
            BatchWanted::After(held_end) => self.next_batch_start == Some(held_end),
        };
        if !follows_the_held_one || self.in_flight.len() >= MAX_BATCHES_IN_FLIGHT {
            tracing::debug!(
                partition = self.args.partition,
                ?wanted,
                next_batch_start = ?self.next_batch_start,
                in_flight = self.in_flight.len(),
                "no batch follows the one the coordinator holds"
            );
            return None;
        }
        if self.buffered.is_empty() {
            return None;
        }
        let take = self.args.batch_limits.records_to_take(self.buffered.len());
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
        self.in_flight.push_back(Arc::clone(&batch));
        if let Phase::Active(route) = &self.phase {
            tracing::debug!(
                partition = self.args.partition,
                records = batch.records.len(),
                buffered_after = self.buffered.len(),
                in_flight_records = self
                    .in_flight
                    .iter()
                    .map(|batch| batch.records.len())
                    .sum::<usize>(),
                held = route.credit.held(),
                "batch cut"
            );
        }
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
        if let PartitionConsumerMsg::TakeBatch(..) = &message {
            crate::failpoints::partition_consumer_take_batch();
        }
        state.on_message(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::position_ticket::PositionTickets;
    use proptest::prelude::*;
    use tokio::sync::mpsc::UnboundedReceiver;

    fn consumer(max_batch_records: usize) -> PartitionConsumerState {
        consumer_with_limits(BatchLimits::new(max_batch_records, max_batch_records))
    }

    fn consumer_with_limits(batch_limits: BatchLimits) -> PartitionConsumerState {
        PartitionConsumerState::new(PartitionConsumerArgs {
            partition: 7,
            batch_limits,
            status: PipelineStatus::default(),
            source: RecordSource {
                topic: "in".to_owned(),
                group_id: "group".to_owned(),
            },
        })
    }

    fn record(offset: i64) -> ConsumedRecord {
        let payload = format!(
            r#"{{"event_id":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7{offset:04}","campaign_id":"c","ad_id":"a","kind":"click","cost_micros":1,"occurred_at":"2026-11-26T10:15:30Z"}}"#
        );
        ConsumedRecord {
            partition: 7,
            offset,
            key: None,
            payload: Some(payload.into_bytes()),
            trace_headers: crate::telemetry::carrier::TraceHeaders::none(),
            timestamp_ms: None,
        }
    }

    fn position(
        state: &mut PartitionConsumerState,
        ticket: PositionTicket,
        start_offset: i64,
        limit: usize,
    ) -> (Arc<FetchCredit>, UnboundedReceiver<FetcherCommand>) {
        let (fetcher, commands) = FetcherHandle::channel();
        let credit = Arc::new(FetchCredit::new(limit, limit / 2));
        state
            .on_message(PartitionConsumerMsg::Positioned {
                ticket,
                start_offset: Some(start_offset),
                outputs_from: start_offset,
                fetcher,
                credit: Arc::clone(&credit),
            })
            .expect("positioning never fails");
        (credit, commands)
    }

    fn deliver(
        state: &mut PartitionConsumerState,
        credit: &FetchCredit,
        ticket: PositionTicket,
        sequence: u64,
        offset: i64,
    ) -> Result<(), ActorProcessingErr> {
        credit.records_routed(1);
        state.on_message(PartitionConsumerMsg::Records {
            ticket,
            first_sequence: sequence,
            records: vec![record(offset)],
        })
    }

    #[test]
    fn records_of_an_older_positioning_never_reach_a_batch() {
        let tickets = PositionTickets::default();
        let old = tickets.issue();
        let mut state = consumer(100);
        let (credit, _commands) = position(&mut state, old, 0, 100);
        deliver(&mut state, &credit, old, 0, 0).expect("in sequence");
        let new = tickets.issue();
        state
            .on_message(PartitionConsumerMsg::BeginRewind { ticket: new })
            .expect("rewind");
        // Late records of the old route, and a stale positioning, arrive.
        deliver(&mut state, &credit, old, 1, 1).expect("ignored");
        let (_stale_credit, _stale) = position(&mut state, old, 1, 100);
        assert!(
            state.take_batch(BatchWanted::Oldest).is_none(),
            "nothing of the old route is kept"
        );
        let (credit, _commands) = position(&mut state, new, 0, 100);
        deliver(&mut state, &credit, new, 0, 0).expect("in sequence");
        let batch = state
            .take_batch(BatchWanted::Oldest)
            .expect("a batch of the new route");
        assert_eq!((batch.start_offset, batch.end_offset), (0, 1));
    }

    #[test]
    fn a_stale_or_repeated_positioning_keeps_what_the_current_route_holds() {
        let tickets = PositionTickets::default();
        let older = tickets.issue();
        let current = tickets.issue();
        let mut state = consumer(100);
        let (credit, _commands) = position(&mut state, current, 20, 100);
        deliver(&mut state, &credit, current, 0, 20).expect("in sequence");
        deliver(&mut state, &credit, current, 1, 21).expect("in sequence");
        // The same positioning again, an older one, and an older rewind.
        let (_again, _) = position(&mut state, current, 0, 100);
        let (_older, _) = position(&mut state, older, 0, 100);
        state
            .on_message(PartitionConsumerMsg::BeginRewind { ticket: older })
            .expect("ignored");
        // The route goes on where it was: nothing dropped, sequence intact.
        deliver(&mut state, &credit, current, 2, 22).expect("still in sequence");
        let batch = state
            .take_batch(BatchWanted::Oldest)
            .expect("the current route's batch");
        assert_eq!((batch.start_offset, batch.end_offset), (20, 23));
        assert_eq!(batch.records.len(), 3);
    }

    #[test]
    fn records_before_any_positioning_are_dropped() {
        let ticket = PositionTickets::default().issue();
        let mut state = consumer(100);
        let credit = FetchCredit::new(100, 50);
        deliver(&mut state, &credit, ticket, 0, 0).expect("ignored, not an error");
        assert!(
            state.take_batch(BatchWanted::Oldest).is_none(),
            "not positioned: no batch"
        );
        let (credit, _commands) = position(&mut state, ticket, 5, 100);
        deliver(&mut state, &credit, ticket, 0, 5).expect("in sequence");
        let batch = state.take_batch(BatchWanted::Oldest).expect("a batch");
        assert_eq!((batch.start_offset, batch.end_offset), (5, 6));
    }

    #[test]
    fn a_record_missing_from_the_route_fails_the_consumer() {
        let ticket = PositionTickets::default().issue();
        let mut state = consumer(100);
        let (credit, _commands) = position(&mut state, ticket, 10, 100);
        deliver(&mut state, &credit, ticket, 0, 10).expect("in sequence");
        let error = deliver(&mut state, &credit, ticket, 2, 12).expect_err("record 1 is missing");
        assert!(error.to_string().contains("records lost"), "{error}");
    }

    #[test]
    fn a_repeated_offset_fails_the_consumer() {
        let ticket = PositionTickets::default().issue();
        let mut state = consumer(100);
        let (credit, _commands) = position(&mut state, ticket, 10, 100);
        deliver(&mut state, &credit, ticket, 0, 10).expect("in sequence");
        let error = deliver(&mut state, &credit, ticket, 1, 10).expect_err("offset 10 twice");
        assert!(error.to_string().contains("repeated"), "{error}");
    }

    #[test]
    fn a_batch_not_received_is_handed_over_again_until_committed() {
        let ticket = PositionTickets::default().issue();
        let mut state = consumer(2);
        let (credit, mut commands) = position(&mut state, ticket, 0, 4);
        for offset in 0..4 {
            deliver(&mut state, &credit, ticket, offset as u64, offset).expect("in sequence");
        }
        let first = state.take_batch(BatchWanted::Oldest).expect("a batch");
        let again = state
            .take_batch(BatchWanted::Oldest)
            .expect("the same batch again");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(credit.held(), 4, "mailbox, buffer and batch all count");
        state
            .on_message(PartitionConsumerMsg::Committed {
                end_offset: first.end_offset,
            })
            .expect("commit");
        assert_eq!(credit.held(), 2);
        assert!(
            matches!(
                commands.try_recv(),
                Ok(FetcherCommand::Resume { partition: 7, .. })
            ),
            "held fell to half the limit: the partition is resumed"
        );
        let next = state
            .take_batch(BatchWanted::Oldest)
            .expect("the next batch");
        assert_eq!(next.start_offset, first.end_offset, "contiguous");
    }

    #[test]
    fn the_batch_after_a_held_one_is_cut_once_and_handed_again_until_committed() {
        let ticket = PositionTickets::default().issue();
        let mut state = consumer(2);
        let (credit, _commands) = position(&mut state, ticket, 0, 100);
        for offset in 0..6 {
            deliver(&mut state, &credit, ticket, offset as u64, offset).expect("in sequence");
        }
        let first = state.take_batch(BatchWanted::Oldest).expect("a batch");
        let second = state
            .take_batch(BatchWanted::After(first.end_offset))
            .expect("the batch after the held one");
        assert_eq!((second.start_offset, second.end_offset), (2, 4));
        let again = state
            .take_batch(BatchWanted::After(first.end_offset))
            .expect("handed again");
        assert!(Arc::ptr_eq(&second, &again));
        assert!(
            state
                .take_batch(BatchWanted::After(second.end_offset))
                .is_none(),
            "two batches in flight at most"
        );
        assert!(
            state.take_batch(BatchWanted::After(5)).is_none(),
            "nothing that does not follow a held batch"
        );
        state
            .on_message(PartitionConsumerMsg::Committed {
                end_offset: first.end_offset,
            })
            .expect("commit");
        assert_eq!(credit.held(), 4);
        let oldest = state
            .take_batch(BatchWanted::Oldest)
            .expect("the second again");
        assert!(Arc::ptr_eq(&second, &oldest));
    }

    #[test]
    fn a_backlog_is_handed_over_in_larger_batches_and_a_remainder_in_small_ones() {
        let ticket = PositionTickets::default().issue();
        let mut state = consumer_with_limits(BatchLimits::new(3, 5));
        let (credit, _commands) = position(&mut state, ticket, 0, 100);
        for offset in 0..14 {
            deliver(&mut state, &credit, ticket, offset as u64, offset).expect("in sequence");
        }
        let mut sizes = Vec::new();
        let mut committed_end = 0;
        while let Some(batch) = state.take_batch(BatchWanted::Oldest) {
            assert_eq!(batch.start_offset, committed_end, "contiguous");
            sizes.push(batch.records.len());
            committed_end = batch.end_offset;
            state
                .on_message(PartitionConsumerMsg::Committed {
                    end_offset: batch.end_offset,
                })
                .expect("commit");
        }
        assert_eq!(
            sizes,
            [5, 5, 3, 1],
            "14 buffered: 5 while 5 wait, then 3 and the last"
        );
        assert_eq!(credit.held(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// A coordinator that pipelines (holds up to two batches), loses
        /// replies, commits and rewinds at random: every batch handed over
        /// starts where the batch it follows ends (the last one held, or
        /// the last committed), holds only records of the latest route in
        /// increasing order, and what the route holds is exactly what was
        /// delivered and not committed (a leak would pause the partition
        /// for good); a coordinator that holds nothing always gets a batch
        /// while the route holds records.
        #[test]
        fn handed_batches_follow_each_other_and_release_what_commits(
            script in proptest::collection::vec((0u8..7, 1i64..4), 1..150),
            steady in 1usize..4,
            extra in 0usize..4,
        ) {
            let tickets = PositionTickets::default();
            let limits = BatchLimits::new(steady, steady + extra);
            let mut state = consumer_with_limits(limits);
            let mut ticket = tickets.issue();
            let (mut credit, _commands) = position(&mut state, ticket, 0, 1_000);
            let mut route_next: (u64, i64) = (0, 0);
            let mut committed_end = 0_i64;
            let mut held: std::collections::VecDeque<Arc<PartitionBatch>> =
                std::collections::VecDeque::new();
            let (mut delivered, mut released) = (0_usize, 0_usize);
            for (action, gap) in script {
                match action {
                    0..=2 => {
                        // The next record of the route (offsets may have gaps,
                        // as around transaction markers).
                        let offset = route_next.1 + gap - 1;
                        deliver(&mut state, &credit, ticket, route_next.0, offset)
                            .map_err(|error| TestCaseError::fail(error.to_string()))?;
                        route_next = (route_next.0 + 1, offset + 1);
                        delivered += 1;
                    }
                    3 | 4 if held.len() < MAX_BATCHES_IN_FLIGHT => {
                        // 4: the reply is lost on its way to the coordinator.
                        let wanted = held
                            .back()
                            .map_or(BatchWanted::Oldest, |batch| BatchWanted::After(batch.end_offset));
                        let expected_start = held.back().map_or(committed_end, |batch| batch.end_offset);
                        let taken = state.take_batch(wanted);
                        // Liveness: a coordinator holding nothing always gets
                        // what the route holds (a lost batch again, or a new one).
                        prop_assert!(taken.is_some() || !held.is_empty() || delivered == released);
                        if let Some(batch) = taken {
                            prop_assert_eq!(batch.start_offset, expected_start);
                            let size = batch.records.len();
                            prop_assert!(size >= 1 && size <= limits.backlog);
                            prop_assert!(size <= limits.steady || size == limits.backlog);
                            let mut previous = batch.start_offset - 1;
                            for record in &batch.records {
                                prop_assert!(record.offset > previous && record.offset < batch.end_offset);
                                previous = record.offset;
                            }
                            if action == 3 {
                                held.push_back(batch);
                            }
                        }
                    }
                    5 => {
                        if let Some(batch) = held.pop_front() {
                            state.on_message(PartitionConsumerMsg::Committed { end_offset: batch.end_offset })
                                .map_err(|error| TestCaseError::fail(error.to_string()))?;
                            committed_end = batch.end_offset;
                            released += batch.records.len();
                        }
                    }
                    6 => {
                        // A rewind to the last committed offset, with a stale
                        // record of the old route arriving after it.
                        let old = ticket;
                        ticket = tickets.issue();
                        state.on_message(PartitionConsumerMsg::BeginRewind { ticket })
                            .map_err(|error| TestCaseError::fail(error.to_string()))?;
                        deliver(&mut state, &credit, old, route_next.0, route_next.1)
                            .map_err(|error| TestCaseError::fail(error.to_string()))?;
                        (credit, _) = position(&mut state, ticket, committed_end, 1_000);
                        route_next = (0, committed_end);
                        held.clear();
                        (delivered, released) = (0, 0);
                    }
                    _ => {}
                }
                prop_assert_eq!(credit.held(), delivered - released);
            }
        }
    }
}
