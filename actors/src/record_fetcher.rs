//! The record fetcher: the one task that polls the input consumer, serves
//! its rebalance callbacks, and routes each record to its partition
//! consumer. It also carries out seeks, pauses and resumes.
//!
//! Guarantees: a partition is fetched only after it has been positioned;
//! every positioning starts a new fetch generation, and because the seek
//! happens on the polling task itself, no record fetched before the seek is
//! delivered with the new generation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kafka_clients::InputConsumer;
use crate::metrics::PipelineStatus;
use crate::partition_consumer::PartitionConsumerMsg;
use crate::processed_record::ConsumedRecord;
use crate::trace_context::TRACEPARENT_HEADER;

/// Where fetching of a partition resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// the earliest offset (a partition never processed)
    Earliest,
    /// this offset
    Offset(i64),
}

/// Commands to the fetcher.
#[derive(Debug)]
pub enum FetcherCommand {
    /// seek `partition` to `start`, resume it and route it to `target`
    Position {
        /// input partition
        partition: i32,
        /// where to resume
        start: StartPosition,
        /// outputs owed from this offset on
        outputs_from: i64,
        /// the partition consumer
        target: ActorRef<PartitionConsumerMsg>,
    },
    /// stop fetching `partition` (backpressure)
    Pause {
        /// input partition
        partition: i32,
    },
    /// fetch `partition` again
    Resume {
        /// input partition
        partition: i32,
    },
    /// stop routing `partition` (revoked)
    Forget {
        /// input partition
        partition: i32,
    },
}

/// A cheap, cloneable handle to the fetcher.
#[derive(Debug, Clone)]
pub struct FetcherHandle {
    commands: mpsc::UnboundedSender<FetcherCommand>,
}

impl FetcherHandle {
    /// Sends a command; a stopped fetcher ignores it (its successor
    /// repositions every partition).
    pub fn send(&self, command: FetcherCommand) {
        if self.commands.send(command).is_err() {
            tracing::debug!("fetcher stopped; command dropped");
        }
    }
}

#[derive(Debug)]
struct Route {
    generation: u64,
    target: ActorRef<PartitionConsumerMsg>,
}

struct Fetcher {
    consumer: Arc<InputConsumer>,
    topic: String,
    handle: FetcherHandle,
    routes: HashMap<i32, Route>,
    next_generation: u64,
}

/// Starts the fetcher task; it runs until `shutdown` is cancelled.
pub fn spawn_fetcher(
    consumer: Arc<InputConsumer>,
    topic: String,
    status: PipelineStatus,
    shutdown: CancellationToken,
) -> (FetcherHandle, JoinHandle<()>) {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let handle = FetcherHandle { commands: sender };
    let mut fetcher = Fetcher {
        consumer,
        topic,
        handle: handle.clone(),
        routes: HashMap::new(),
        next_generation: 1,
    };
    let consumer = Arc::clone(&fetcher.consumer);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                command = receiver.recv() => match command {
                    Some(command) => fetcher.execute(command),
                    None => break,
                },
                received = consumer.recv() => match received {
                    Ok(message) => fetcher.route(&message),
                    Err(error) => {
                        if is_fatal_consumer_error(&error) {
                            tracing::error!(%error, "input consumer fenced or failed fatally");
                            status.fail_fatally(format!("input consumer: {error}"));
                            break;
                        }
                        tracing::warn!(%error, "input consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracing::debug!("fetcher stopped");
    });
    (handle, task)
}

/// A consumer error no retry mends: this member was fenced out of its group
/// (another process took its `group.instance.id`) or the client is dead.
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
        list.add_partition(&self.topic, partition);
        list
    }

    fn execute(&mut self, command: FetcherCommand) {
        match command {
            FetcherCommand::Position {
                partition,
                start,
                outputs_from,
                target,
            } => self.position(partition, start, outputs_from, target),
            FetcherCommand::Pause { partition } => {
                if let Err(error) = self.consumer.pause(&self.partition_list(partition)) {
                    tracing::warn!(partition, %error, "pause failed");
                }
            }
            FetcherCommand::Resume { partition } => {
                if self.routes.contains_key(&partition)
                    && let Err(error) = self.consumer.resume(&self.partition_list(partition))
                {
                    tracing::warn!(partition, %error, "resume failed");
                }
            }
            FetcherCommand::Forget { partition } => {
                self.routes.remove(&partition);
            }
        }
    }

    fn position(
        &mut self,
        partition: i32,
        start: StartPosition,
        outputs_from: i64,
        target: ActorRef<PartitionConsumerMsg>,
    ) {
        let offset = match start {
            StartPosition::Earliest => Offset::Beginning,
            StartPosition::Offset(offset) => Offset::Offset(offset),
        };
        // Drop the old route first: nothing more is delivered until the new
        // generation is announced.
        self.routes.remove(&partition);
        let list = self.partition_list(partition);
        if let Err(error) = self.consumer.pause(&list) {
            tracing::warn!(partition, %error, "pause before seek failed");
        }
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let seek = tokio::task::block_in_place(|| {
            consumer.seek(&topic, partition, offset, Duration::from_secs(5))
        });
        if let Err(error) = seek {
            tracing::warn!(partition, %error, "seek failed; retrying");
            let handle = self.handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                handle.send(FetcherCommand::Position {
                    partition,
                    start,
                    outputs_from,
                    target,
                });
            });
            return;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let start_offset = match start {
            StartPosition::Earliest => None,
            StartPosition::Offset(offset) => Some(offset),
        };
        let announced = target.cast(PartitionConsumerMsg::Positioned {
            generation,
            start_offset,
            outputs_from,
            fetcher: self.handle.clone(),
        });
        if announced.is_err() {
            tracing::debug!(partition, "partition consumer gone before positioning");
            return;
        }
        self.routes.insert(partition, Route { generation, target });
        if let Err(error) = self.consumer.resume(&list) {
            tracing::warn!(partition, %error, "resume after seek failed");
        }
    }

    fn route(&mut self, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let Some(route) = self.routes.get(&partition) else {
            return;
        };
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == TRACEPARENT_HEADER)
                .and_then(|header| header.value.map(<[u8]>::to_vec))
        });
        let record = ConsumedRecord {
            partition,
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            traceparent,
        };
        let delivered = route.target.cast(PartitionConsumerMsg::Record {
            generation: route.generation,
            record,
        });
        if delivered.is_err() {
            self.routes.remove(&partition);
        }
    }
}
