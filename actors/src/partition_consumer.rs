//! The partition consumer actor: one per assigned partition. It processes
//! the records the fetcher routes to it, buffers their effects, and hands
//! contiguous batches to the transaction coordinator.
//!
//! Guarantees:
//! - it accepts records only of the fetch generation it was last positioned
//!   at, so nothing fetched before a rewind leaks into a batch after it;
//! - batches are contiguous: each starts where the previous one ended, the
//!   first one at the recovery position;
//! - at most one batch is in flight, and at most `max_buffered_records`
//!   records are held: past that the partition is paused (not revoked);
//! - it keeps nothing that recovery needs: a restarted partition consumer is
//!   repositioned from the stored offsets by the coordinator;
//! - a record with an upstream `traceparent` is processed inside its own
//!   `process` span when spans are exported (see [`crate::spans`]).

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::metrics::PipelineStatus;
use crate::partition_batch::PartitionBatch;
use crate::processed_record::{ConsumedRecord, ProcessedRecord};
use crate::record_fetcher::{FetcherCommand, FetcherHandle};
use crate::spans::{RecordSource, process_traced};

/// Messages of a partition consumer.
#[derive(Debug)]
pub enum PartitionConsumerMsg {
    /// a record fetched at `generation`
    Record {
        /// fetch generation the record was read in
        generation: u64,
        /// the record
        record: ConsumedRecord,
    },
    /// the fetcher has positioned the partition: records of `generation`
    /// start at `start_offset` (`None`: at the earliest offset)
    Positioned {
        /// new fetch generation
        generation: u64,
        /// first offset of the next batch
        start_offset: Option<i64>,
        /// outputs are owed only from this offset on
        outputs_from: i64,
        /// the fetcher, for pause and resume
        fetcher: FetcherHandle,
    },
    /// a rewind is coming: drop everything held and wait to be positioned
    BeginRewind,
    /// hand over the next batch, if any
    TakeBatch(RpcReplyPort<Option<PartitionBatch>>),
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
    /// most records held before pausing
    pub max_buffered_records: usize,
    /// shared metrics
    pub status: PipelineStatus,
    /// input topic and group, for the records' spans
    pub source: RecordSource,
}

/// Where the partition stands.
#[derive(Debug)]
enum Phase {
    /// waiting for the coordinator to position it
    AwaitingPosition,
    /// consuming records of one fetch generation
    Active {
        generation: u64,
        fetcher: FetcherHandle,
    },
}

/// State of a partition consumer.
#[derive(Debug)]
pub struct PartitionConsumerState {
    args: PartitionConsumerArgs,
    phase: Phase,
    next_batch_start: Option<i64>,
    outputs_from: i64,
    buffered: Vec<ProcessedRecord>,
    in_flight: Option<(i64, usize)>,
    paused: bool,
}

impl PartitionConsumerState {
    fn held(&self) -> usize {
        self.buffered.len() + self.in_flight.map_or(0, |(_, count)| count)
    }

    fn reset(&mut self) {
        self.buffered.clear();
        self.in_flight = None;
        self.paused = false;
    }

    fn apply_backpressure(&mut self) {
        let Phase::Active { fetcher, .. } = &self.phase else {
            return;
        };
        let partition = self.args.partition;
        if !self.paused && self.held() >= self.args.max_buffered_records {
            self.paused = true;
            fetcher.send(FetcherCommand::Pause { partition });
        } else if self.paused && self.held() < self.args.max_buffered_records / 2 {
            self.paused = false;
            fetcher.send(FetcherCommand::Resume { partition });
        }
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
        Ok(PartitionConsumerState {
            args,
            phase: Phase::AwaitingPosition,
            next_batch_start: None,
            outputs_from: i64::MIN,
            buffered: Vec::new(),
            in_flight: None,
            paused: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PartitionConsumerMsg::Record { generation, record } => {
                let Phase::Active {
                    generation: current,
                    ..
                } = &state.phase
                else {
                    return Ok(());
                };
                if generation != *current {
                    return Ok(());
                }
                state.args.status.metrics().records_consumed.inc();
                crate::failpoints::partition_consumer_mid_batch();
                state
                    .buffered
                    .push(process_traced(record, &state.args.source));
                state.apply_backpressure();
            }
            PartitionConsumerMsg::Positioned {
                generation,
                start_offset,
                outputs_from,
                fetcher,
            } => {
                tracing::info!(
                    partition = state.args.partition,
                    generation,
                    ?start_offset,
                    outputs_from,
                    "partition positioned"
                );
                state.reset();
                state.phase = Phase::Active {
                    generation,
                    fetcher,
                };
                state.next_batch_start = start_offset;
                state.outputs_from = outputs_from;
            }
            PartitionConsumerMsg::BeginRewind => {
                state.reset();
                state.phase = Phase::AwaitingPosition;
            }
            PartitionConsumerMsg::TakeBatch(reply) => {
                let batch = take_batch(state);
                state.apply_backpressure();
                // The coordinator may have timed out and gone: nothing to do then,
                // the batch is rewound with the cycle.
                let _ = reply.send(batch);
            }
            PartitionConsumerMsg::Committed { end_offset } => {
                if state.in_flight.map(|(end, _)| end) == Some(end_offset) {
                    state.in_flight = None;
                    state.apply_backpressure();
                }
            }
        }
        Ok(())
    }
}

fn take_batch(state: &mut PartitionConsumerState) -> Option<PartitionBatch> {
    if !matches!(state.phase, Phase::Active { .. })
        || state.in_flight.is_some()
        || state.buffered.is_empty()
    {
        return None;
    }
    let take = state.buffered.len().min(state.args.max_batch_records);
    let records: Vec<ProcessedRecord> = state.buffered.drain(..take).collect();
    let first_offset = records.first().map(|record| record.offset)?;
    let last_offset = records.last().map(|record| record.offset)?;
    let start_offset = state.next_batch_start.unwrap_or(first_offset);
    let end_offset = last_offset + 1;
    state.next_batch_start = Some(end_offset);
    state.in_flight = Some((end_offset, records.len()));
    Some(PartitionBatch {
        partition: state.args.partition,
        start_offset,
        end_offset,
        outputs_from: state.outputs_from,
        records,
    })
}
