//! The record fetcher: the one task that polls the input consumer, serves
//! its rebalance callbacks, and routes each record to its partition
//! consumer. It also carries out seeks, pauses and resumes.
//!
//! Guarantees:
//! - a partition is fetched only after it has been positioned, and only the
//!   latest positioning applies (see [`crate::model::position_ticket`]): a stale
//!   `Position` or a seek retry never undoes a newer one, and retries stop
//!   when the partition is revoked or no longer assigned;
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
//!   `max_buffered_records` (see [`crate::model::fetch_credit`]).
//!
//! At most one fetcher runs at a time ([`crate::actors::consumer::fetcher_slot`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::ActorRef;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kafka::clients::InputConsumer;
use crate::messages::partition::PartitionConsumerMsg;
use crate::messages::partition::{FetcherCommand, FetcherHandle, PositionOrder};
use crate::model::fetch_credit::FetchCredit;
use crate::model::position_ticket::{PositionBook, PositionTicket};
use crate::model::record::ConsumedRecord;
use crate::recovery::StartPosition;
use crate::telemetry::carrier::TraceHeaders;
use crate::telemetry::propagation;
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
    /// records taken in this poll, by partition, not yet delivered
    taken: HashMap<i32, Vec<ConsumedRecord>>,
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
        taken: HashMap::new(),
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
                received = consumer.recv() => {
                    let mut after = fetcher.take(received, &status);
                    let mut taken = 1;
                    while after == AfterPoll::Continue && taken < MAX_RECORDS_PER_POLL {
                        let Some(received) = consumer.recv().now_or_never() else {
                            break;
                        };
                        after = fetcher.take(received, &status);
                        taken += 1;
                    }
                    fetcher.deliver_taken();
                    match after {
                        AfterPoll::Continue => {}
                        AfterPoll::Backoff => tokio::time::sleep(Duration::from_millis(100)).await,
                        AfterPoll::Stop => break,
                    }
                }
            }
        }
        tracing::debug!("fetcher stopped");
    });
    (handle, task)
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
                self.pause(partition);
            }
            FetcherCommand::Resume { partition, ticket } => {
                if self.routes.get(&partition).map(|route| route.ticket) == Some(ticket)
                    && let Err(error) = self.consumer.resume(&self.partition_list(partition))
                {
                    tracing::warn!(partition, %error, "resume failed");
                }
            }
            FetcherCommand::Forget { partition, barrier } => {
                self.routes.remove(&partition);
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
        // Drop the old route first: nothing more is delivered until the new
        // ticket is announced.
        self.routes.remove(&partition);
        self.pause(partition);
        let consumer = Arc::clone(&self.consumer);
        let topic = self.config.topic.clone();
        let seek = tokio::task::block_in_place(|| {
            consumer.seek(&topic, partition, offset, Duration::from_secs(5))
        });
        if let Err(error) = seek {
            if !self.is_assigned(partition) {
                tracing::info!(partition, ticket = %order.ticket, %error, "seek failed for a partition no longer assigned; dropped");
                self.book.forget(partition, order.ticket);
                return;
            }
            // Right after an assignment librdkafka refuses seeks ("Erroneous
            // state") until the partition's fetcher has started: retry this
            // positioning, unless a later one supersedes it meanwhile.
            tracing::warn!(partition, ticket = %order.ticket, %error, retry_ms = retry_delay.as_millis() as u64, "seek failed; retrying");
            let handle = self.handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep(retry_delay).await;
                handle.send(FetcherCommand::RetryPosition {
                    order,
                    delay: (retry_delay * 2).min(SEEK_RETRY_MAX),
                });
            });
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
            },
        );
        if let Err(error) = self.consumer.resume(&self.partition_list(partition)) {
            tracing::warn!(partition, %error, "resume after seek failed");
        }
    }

    /// Takes one result of the consumer: a record is put with its
    /// partition's others of this poll; an error says what the loop does.
    fn take(
        &mut self,
        received: Result<BorrowedMessage<'_>, KafkaError>,
        status: &PipelineStatus,
    ) -> AfterPoll {
        match received {
            Ok(message) => {
                if let Err(fault) = crate::failpoints::hit(crate::failpoints::RECORD_FETCHER_FENCED)
                {
                    tracing::error!(%fault, "input consumer fenced or failed fatally");
                    status.lose_membership(format!("input consumer: {fault}"));
                    return AfterPoll::Stop;
                }
                self.take_record(&message);
                AfterPoll::Continue
            }
            Err(error) => {
                if is_fatal_consumer_error(&error) {
                    tracing::error!(%error, "input consumer fenced or failed fatally");
                    status.lose_membership(format!("input consumer: {error}"));
                    return AfterPoll::Stop;
                }
                tracing::warn!(%error, "input consumer error");
                AfterPoll::Backoff
            }
        }
    }

    /// Copies a record of a routed partition into this poll's take (a
    /// record of a partition without a route is dropped: it is fetched
    /// again once positioned).
    fn take_record(&mut self, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        if !self.routes.contains_key(&partition) {
            return;
        }
        // The headers the propagator may read (its `fields()`), nothing else.
        let trace_headers = message
            .headers()
            .map(|headers| {
                TraceHeaders::collect(
                    headers.iter().map(|header| (header.key, header.value)),
                    propagation::propagator(),
                )
            })
            .unwrap_or_default();
        self.taken
            .entry(partition)
            .or_default()
            .push(ConsumedRecord {
                partition,
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                trace_headers,
                timestamp_ms: message.timestamp().to_millis(),
            });
    }

    /// Hands each partition's records of this poll to its consumer in one
    /// message, numbered on from the route's last, and pauses a partition
    /// whose consumer now holds its limit (or is gone).
    fn deliver_taken(&mut self) {
        let taken: Vec<(i32, Vec<ConsumedRecord>)> = self.taken.drain().collect();
        for (partition, records) in taken {
            let Some(route) = self.routes.get_mut(&partition) else {
                continue;
            };
            let first_sequence = route.next_sequence;
            route.next_sequence += records.len() as u64;
            let mut pause_now = false;
            for _ in &records {
                pause_now |= route.credit.record_routed();
            }
            let delivered = route.target.cast(PartitionConsumerMsg::Records {
                ticket: route.ticket,
                first_sequence,
                records,
            });
            if delivered.is_err() {
                // Its consumer is gone: fetch nothing for nobody. Its successor
                // is positioned with a new ticket, which seeks.
                self.routes.remove(&partition);
                self.pause(partition);
            } else if pause_now {
                self.pause(partition);
            }
        }
    }
}
