//! The record fetcher: the one task that polls the input consumer, serves
//! its rebalance callbacks, and routes each record to its partition
//! consumer. It also carries out seeks, pauses and resumes.
//!
//! Guarantees:
//! - a partition's records are delivered only after it has been positioned
//!   (it is resumed just before its seek, and what that moment fetches is
//!   outdated by the seek), and only the latest positioning applies (see
//!   [`crate::model::position_ticket`]): a stale `Position` or a seek retry
//!   never undoes a newer one, and retries stop when the partition is
//!   revoked or no longer assigned;
//! - every positioning starts a new route stamped with its ticket, and
//!   because the seek happens on the polling task itself, no record fetched
//!   before the seek is delivered with the new ticket;
//! - records of a route carry consecutive sequence numbers from 0, so the
//!   partition consumer detects any record that did not reach it;
//! - what one poll has ready (up to [`MAX_RECORDS_PER_POLL`]) goes to each
//!   partition consumer as one message, in fetch order, before any command
//!   is carried out: a seek never lands between two records of a message;
//! - a route whose partition consumer is gone is removed and its partition
//!   paused: nothing is fetched for nobody until it is positioned again;
//! - what a partition holds in memory, mailbox included, is bounded by
//!   `max_buffered_records` (see [`crate::model::fetch_credit`]), plus what
//!   librdkafka holds in the partition's queue: it fetches while the queue
//!   is below `queued.min.messages` records and `queued.max.messages.kbytes`
//!   of values (set small in [`crate::kafka::clients`]), so up to those plus
//!   one fetch (`max.partition.fetch.bytes`); a record held keeps its whole
//!   fetch response in memory (at most `fetch.max.bytes`);
//! - a revoked or parked partition is paused: librdkafka frees what its
//!   queue held.
//!
//! Flow control. Each positioned partition is read from a queue of its own
//! (librdkafka's partition queue, split from the consumer's at positioning).
//! A partition whose consumer holds its limit is held back by no longer
//! reading that queue: librdkafka stops fetching it once the queue is full
//! and looks again every `fetch.queue.backoff.ms`, so when the partition
//! consumer releases records the next ones are already in memory. Pausing
//! would discard everything librdkafka prefetched, and a resumed partition
//! is fetched again only when the broker's thread next wakes, up to a second
//! later when it has no other partition to fetch (librdkafka's fetch log
//! showed the first fetch 130–550 ms after every resume, and the cycles
//! ran dry). A split is for good (librdkafka does not forward the queue again when it
//! assigns the partition again), so a record of a routed partition can reach
//! the consumer's own queue only from before its split, outdated by the seek
//! and dropped by librdkafka. Should one arrive all the same, it is routed
//! with the same ticket and sequence numbers and held back by pausing.
//!
//! At most one fetcher runs at a time ([`crate::actors::consumer::fetcher_slot`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ractor::ActorRef;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actors::consumer::partition_queues::{
    PartitionQueues, Received, consumed_record, partition_records,
};
use crate::kafka::clients::InputConsumer;
use crate::messages::partition::PartitionConsumerMsg;
use crate::messages::partition::{FetcherCommand, FetcherHandle, PositionOrder};
use crate::model::fetch_credit::FetchCredit;
use crate::model::position_ticket::{PositionBook, PositionTicket};
use crate::model::record::ConsumedRecord;
use crate::recovery::StartPosition;
use crate::telemetry::status::PipelineStatus;

/// How long to wait before a failed seek is tried again (doubling up to
/// [`SEEK_RETRY_MAX`]).
const SEEK_RETRY_FIRST: Duration = Duration::from_millis(100);
const SEEK_RETRY_MAX: Duration = Duration::from_secs(2);

/// Most records taken from the consumer's queue before they are handed to
/// their partition consumers: one message per partition per poll instead
/// of one per record.
pub const MAX_RECORDS_PER_POLL: usize = 1_000;

/// What the fetch loop does after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterPoll {
    /// poll again
    Continue,
    /// a transient consumer error: wait a little first
    Backoff,
    /// the consumer was fenced or failed fatally: stop
    Stop,
}

#[derive(Debug)]
struct Route {
    ticket: PositionTicket,
    target: ActorRef<PartitionConsumerMsg>,
    next_sequence: u64,
    credit: Arc<FetchCredit>,
    /// held back by pausing it (its records came through the consumer's
    /// own queue), not only by leaving its queue unread
    paused: bool,
}

/// What the fetcher needs besides the consumer.
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    /// the input topic
    pub topic: String,
    /// most records of one partition held in memory
    pub max_buffered_records: usize,
    /// most records in one batch (room for one is what resumes fetching)
    pub max_batch_records: usize,
}

struct Fetcher {
    consumer: Arc<InputConsumer>,
    config: FetcherConfig,
    handle: FetcherHandle,
    routes: HashMap<i32, Route>,
    book: PositionBook,
    queues: PartitionQueues,
    /// records taken in this poll, by partition, not yet delivered
    taken: HashMap<i32, Vec<ConsumedRecord>>,
    /// partitions of this poll's records that came through the consumer's
    /// own queue (held back by pausing)
    taken_from_the_consumer_queue: Vec<i32>,
}

/// Starts the fetcher task; it runs until `stop` is cancelled. It first
/// pauses every assigned partition: nothing is fetched until positioned.
pub fn spawn_fetcher(
    consumer: Arc<InputConsumer>,
    config: FetcherConfig,
    status: PipelineStatus,
    stop: CancellationToken,
) -> (FetcherHandle, JoinHandle<()>) {
    let (handle, mut receiver) = FetcherHandle::channel();
    let mut fetcher = Fetcher {
        consumer,
        config,
        handle: handle.clone(),
        routes: HashMap::new(),
        book: PositionBook::default(),
        queues: PartitionQueues::default(),
        taken: HashMap::new(),
        taken_from_the_consumer_queue: Vec::new(),
    };
    let consumer = Arc::clone(&fetcher.consumer);
    let task = tokio::spawn(async move {
        fetcher.pause_whole_assignment();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                command = receiver.recv() => match command {
                    Some(command) => fetcher.execute(command),
                    None => break,
                },
                // The consumer's own queue before the partitions': it serves the
                // group's events, which a steady flow of records must not starve.
                received = consumer.recv() => {
                    let mut after = fetcher.take_from_the_consumer_queue(received, &status);
                    let mut taken = 1;
                    while after == AfterPoll::Continue && taken < MAX_RECORDS_PER_POLL {
                        let Some(received) = consumer.recv().now_or_never() else {
                            break;
                        };
                        after = fetcher.take_from_the_consumer_queue(received, &status);
                        taken += 1;
                    }
                    fetcher.deliver_taken();
                    if stops_after(after).await {
                        break;
                    }
                }
                Some((_, received)) = fetcher.queues.read.next(), if !fetcher.queues.read.is_empty() => {
                    let mut after = fetcher.take(received, &status);
                    let mut taken = 1;
                    while after == AfterPoll::Continue && taken < MAX_RECORDS_PER_POLL {
                        let Some(Some((_, received))) = fetcher.queues.read.next().now_or_never() else {
                            break;
                        };
                        after = fetcher.take(received, &status);
                        taken += 1;
                    }
                    fetcher.deliver_taken();
                    if stops_after(after).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!("fetcher stopped");
    });
    (handle, task)
}

/// What the loop does after a poll: `true` to stop.
async fn stops_after(after: AfterPoll) -> bool {
    match after {
        AfterPoll::Continue => false,
        AfterPoll::Backoff => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            false
        }
        AfterPoll::Stop => true,
    }
}

/// A consumer error no retry of this consumer mends: this member was fenced
/// out of its group (by another process with its `group.instance.id`, or by
/// its own lost join) or the client is dead. The pipeline rejoins with a
/// fresh consumer (see `pipeline.rs`).
fn is_fatal_consumer_error(error: &KafkaError) -> bool {
    matches!(error, KafkaError::MessageConsumptionFatal(_))
        || matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::FencedInstanceId | RDKafkaErrorCode::Fatal)
        )
}

impl Fetcher {
    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.config.topic, partition);
        list
    }

    fn pause(&self, partition: i32) {
        if let Err(error) = self.consumer.pause(&self.partition_list(partition)) {
            tracing::debug!(partition, %error, "pause failed");
        }
    }

    fn pause_whole_assignment(&self) {
        if let Ok(assignment) = self.consumer.assignment()
            && assignment.count() > 0
            && let Err(error) = self.consumer.pause(&assignment)
        {
            tracing::warn!(%error, "cannot pause the assignment at fetcher start");
        }
    }

    fn is_assigned(&self, partition: i32) -> bool {
        self.consumer
            .assignment()
            .is_ok_and(|list| list.find_partition(&self.config.topic, partition).is_some())
    }

    fn execute(&mut self, command: FetcherCommand) {
        match command {
            FetcherCommand::Position(order) => {
                if self.book.accept_position(order.partition, order.ticket) {
                    self.position(order, SEEK_RETRY_FIRST);
                } else {
                    tracing::debug!(
                        partition = order.partition,
                        ticket = %order.ticket,
                        "stale position dropped"
                    );
                }
            }
            FetcherCommand::RetryPosition { order, delay } => {
                if self.book.accept_retry(order.partition, order.ticket) {
                    self.position(order, delay);
                }
            }
            FetcherCommand::Park { partition } => {
                self.routes.remove(&partition);
                self.queues.drop_queue(partition);
                self.pause(partition);
            }
            FetcherCommand::Resume { partition, ticket } => {
                let Some(route) = self.routes.get_mut(&partition) else {
                    return;
                };
                if route.ticket != ticket {
                    return;
                }
                tracing::debug!(
                    partition,
                    held = route.credit.held(),
                    "partition read again: its buffer has room for a batch"
                );
                let was_paused = std::mem::replace(&mut route.paused, false);
                self.queues.read_again(partition);
                if was_paused {
                    self.resume(partition);
                }
            }
            FetcherCommand::Forget { partition, barrier } => {
                self.routes.remove(&partition);
                self.queues.drop_queue(partition);
                // Pausing frees what librdkafka holds in the partition's
                // queue: a revoked partition's queue is read by no one, and
                // librdkafka frees its outdated records only when read,
                // paused or removed. Positioning resumes it.
                self.pause(partition);
                self.book.forget(partition, barrier);
            }
        }
    }

    fn position(&mut self, order: PositionOrder, retry_delay: Duration) {
        let partition = order.partition;
        let offset = match order.start {
            StartPosition::Earliest => Offset::Beginning,
            StartPosition::Offset(offset) => Offset::Offset(offset),
        };
        // Drop the old route and its queue first: nothing more is delivered
        // until the new ticket is announced.
        self.routes.remove(&partition);
        self.queues.drop_queue(partition);
        self.pause(partition);
        // The partition's own queue, split off while it is paused: what was
        // fetched before arrived on the consumer's queue, what is fetched
        // from now on arrives here.
        let split = self
            .consumer
            .split_partition_queue(&self.config.topic, partition)
            .ok_or(KafkaError::Seek(format!(
                "no queue of its own for partition {partition}"
            )));
        let queue = match split {
            Ok(queue) => queue,
            Err(error) => {
                self.retry_position(order, retry_delay, &error);
                return;
            }
        };
        // Resumed before the seek, not after it: librdkafka wakes the
        // broker's thread when a seek moves the partition's fetch state to
        // active (after an offset lookup for a logical offset, or through
        // validation for an absolute one above 0), but not on a resume, so a
        // partition resumed after its seek waited up to a second for its
        // first fetch. (A seek to offset 0, or to the beginning once its
        // offset is known, keeps the state active and still waits, as before.)
        // What is fetched between the resume and the seek is outdated by the
        // seek, and dropped by librdkafka when its queue is read.
        self.resume(partition);
        let consumer = Arc::clone(&self.consumer);
        let topic = self.config.topic.clone();
        let seek = tokio::task::block_in_place(|| {
            consumer.seek(&topic, partition, offset, Duration::from_secs(5))
        });
        if let Err(error) = seek {
            self.pause(partition);
            drop(queue);
            self.retry_position(order, retry_delay, &error);
            return;
        }
        let start_offset = match order.start {
            StartPosition::Earliest => None,
            StartPosition::Offset(offset) => Some(offset),
        };
        let credit = Arc::new(FetchCredit::new(
            self.config.max_buffered_records,
            self.config.max_batch_records,
        ));
        let announced = order.target.cast(PartitionConsumerMsg::Positioned {
            ticket: order.ticket,
            start_offset,
            outputs_from: order.outputs_from,
            fetcher: self.handle.clone(),
            credit: Arc::clone(&credit),
        });
        if announced.is_err() {
            tracing::debug!(partition, "partition consumer gone before positioning");
            self.pause(partition);
            return;
        }
        self.book.routed(partition, order.ticket);
        self.routes.insert(
            partition,
            Route {
                ticket: order.ticket,
                target: order.target,
                next_sequence: 0,
                credit,
                paused: false,
            },
        );
        self.queues.add(partition, partition_records(queue));
    }

    fn resume(&self, partition: i32) {
        if let Err(error) = self.consumer.resume(&self.partition_list(partition)) {
            tracing::warn!(partition, %error, "resume failed");
        }
    }

    /// A positioning whose seek (or queue split) failed: dropped if the
    /// partition is no longer assigned, else tried again after `retry_delay`
    /// unless a later one supersedes it meanwhile.
    fn retry_position(&mut self, order: PositionOrder, retry_delay: Duration, error: &KafkaError) {
        let partition = order.partition;
        if !self.is_assigned(partition) {
            tracing::info!(partition, ticket = %order.ticket, %error, "seek failed for a partition no longer assigned; dropped");
            self.book.forget(partition, order.ticket);
            return;
        }
        // Right after an assignment librdkafka refuses seeks ("Erroneous
        // state") until the partition's fetcher has started.
        tracing::warn!(partition, ticket = %order.ticket, %error, retry_ms = retry_delay.as_millis() as u64, "seek failed; retrying");
        let handle = self.handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(retry_delay).await;
            handle.send(FetcherCommand::RetryPosition {
                order,
                delay: (retry_delay * 2).min(SEEK_RETRY_MAX),
            });
        });
    }

    /// Takes one result of a partition's own queue: a record is put with its
    /// partition's others of this poll; an error says what the loop does.
    fn take(&mut self, received: Received, status: &PipelineStatus) -> AfterPoll {
        match received {
            Ok(record) => {
                if let Some(after) = Self::fenced_by_a_kill_point(status) {
                    return after;
                }
                self.take_record(record);
                AfterPoll::Continue
            }
            Err(error) => Self::after_error(&error, status),
        }
    }

    /// Takes one result of the consumer's own queue: events are served by
    /// polling it; a record there is of a partition not read from a queue of
    /// its own (yet, or again).
    fn take_from_the_consumer_queue(
        &mut self,
        received: Result<BorrowedMessage<'_>, KafkaError>,
        status: &PipelineStatus,
    ) -> AfterPoll {
        match received {
            Ok(message) => {
                if let Some(after) = Self::fenced_by_a_kill_point(status) {
                    return after;
                }
                let partition = message.partition();
                if self.routes.contains_key(&partition) {
                    if !self.taken_from_the_consumer_queue.contains(&partition) {
                        self.taken_from_the_consumer_queue.push(partition);
                    }
                    self.take_record(consumed_record(&message));
                }
                AfterPoll::Continue
            }
            Err(error) => Self::after_error(&error, status),
        }
    }

    fn fenced_by_a_kill_point(status: &PipelineStatus) -> Option<AfterPoll> {
        let fault = crate::failpoints::hit(crate::failpoints::RECORD_FETCHER_FENCED).err()?;
        tracing::error!(%fault, "input consumer fenced or failed fatally");
        status.lose_membership(format!("input consumer: {fault}"));
        Some(AfterPoll::Stop)
    }

    fn after_error(error: &KafkaError, status: &PipelineStatus) -> AfterPoll {
        if is_fatal_consumer_error(error) {
            tracing::error!(%error, "input consumer fenced or failed fatally");
            status.lose_membership(format!("input consumer: {error}"));
            return AfterPoll::Stop;
        }
        tracing::warn!(%error, "input consumer error");
        AfterPoll::Backoff
    }

    /// Puts a record of a routed partition with this poll's take (a record
    /// of a partition without a route is dropped: it is fetched again once
    /// positioned).
    fn take_record(&mut self, record: ConsumedRecord) {
        if !self.routes.contains_key(&record.partition) {
            return;
        }
        self.taken.entry(record.partition).or_default().push(record);
    }

    /// Hands each partition's records of this poll to its consumer in one
    /// message, numbered on from the route's last, and holds back a
    /// partition whose consumer now holds its limit (or pauses it, if gone).
    fn deliver_taken(&mut self) {
        let taken: Vec<(i32, Vec<ConsumedRecord>)> = self.taken.drain().collect();
        let from_the_consumer_queue = std::mem::take(&mut self.taken_from_the_consumer_queue);
        for (partition, records) in taken {
            let Some(route) = self.routes.get_mut(&partition) else {
                continue;
            };
            let first_sequence = route.next_sequence;
            route.next_sequence += records.len() as u64;
            let hold_back = route.credit.records_routed(records.len());
            let delivered = route.target.cast(PartitionConsumerMsg::Records {
                ticket: route.ticket,
                first_sequence,
                records,
            });
            if delivered.is_err() {
                // Its consumer is gone: fetch nothing for nobody. Its successor
                // is positioned with a new ticket, which seeks.
                self.routes.remove(&partition);
                self.queues.drop_queue(partition);
                self.pause(partition);
            } else if hold_back {
                tracing::debug!(
                    partition,
                    held = route.credit.held(),
                    "partition held back: its buffer is full"
                );
                self.queues.hold_back(partition);
                if from_the_consumer_queue.contains(&partition) {
                    route.paused = true;
                    self.pause(partition);
                }
            }
        }
    }
}
