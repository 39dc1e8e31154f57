//! The input partitions' own queues, as the record fetcher reads them: each
//! positioned partition's librdkafka partition queue as a stream of records
//! copied out of librdkafka, in a set of queues read and a set held back
//! (see the fetcher's flow control in [`crate::actors::consumer::fetcher`]).
//!
//! Guarantees: a partition has at most one queue, read or held back; a
//! held-back queue yields nothing until it is read again, and then goes on
//! with the record after the last one taken; dropping a queue drops its
//! handle (which must happen before the partition's queue is split again).

use std::collections::HashMap;
use std::pin::Pin;

use futures::Stream;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio_stream::StreamMap;

use crate::kafka::rebalance::RebalanceContext;
use crate::model::record::ConsumedRecord;
use crate::telemetry::carrier::TraceHeaders;
use crate::telemetry::propagation;

/// What one read of a queue gave: a record copied out of librdkafka, or an
/// error.
pub type Received = Result<ConsumedRecord, KafkaError>;

/// The records of one partition's own queue, read one at a time.
pub type PartitionRecords = Pin<Box<dyn Stream<Item = Received> + Send>>;

/// Reads `queue` for as long as the stream lives; dropping the stream drops
/// the queue's handle.
pub fn partition_records(queue: StreamPartitionQueue<RebalanceContext>) -> PartitionRecords {
    Box::pin(futures::stream::unfold(queue, |queue| async move {
        let received = queue.recv().await.map(|message| consumed_record(&message));
        Some((received, queue))
    }))
}

/// Copies a record out of librdkafka's buffer: key, payload, the trace
/// headers the propagator may read (its `fields()`, nothing else).
pub fn consumed_record(message: &BorrowedMessage<'_>) -> ConsumedRecord {
    let trace_headers = message
        .headers()
        .map(|headers| {
            TraceHeaders::collect(
                headers.iter().map(|header| (header.key, header.value)),
                propagation::propagator(),
            )
        })
        .unwrap_or_default();
    ConsumedRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        trace_headers,
        timestamp_ms: message.timestamp().to_millis(),
    }
}

/// The queues of the positioned partitions: the ones read, and the ones
/// held back because their consumers hold their limit. A partition has at
/// most one queue, in one of the two.
#[derive(Default)]
pub struct PartitionQueues {
    /// the queues read (the fetcher polls this map; it adds to it only
    /// through [`PartitionQueues::add`])
    pub read: StreamMap<i32, PartitionRecords>,
    /// the queues held back
    held_back: HashMap<i32, PartitionRecords>,
}

impl std::fmt::Debug for PartitionQueues {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PartitionQueues")
            .field("read", &self.read.keys().collect::<Vec<_>>())
            .field("held_back", &self.held_back.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PartitionQueues {
    /// Reads `records` as the partition's queue. The partition must have
    /// none: its old queue's handle is dropped (with
    /// [`PartitionQueues::drop_queue`]) before the new one is split, since
    /// dropping a handle after the split would turn off the new one's
    /// wake-ups.
    pub fn add(&mut self, partition: i32, records: PartitionRecords) {
        debug_assert!(
            !self.read.contains_key(&partition) && !self.held_back.contains_key(&partition),
            "partition {partition} still has a queue"
        );
        self.read.insert(partition, records);
    }

    /// Drops the partition's queue, read or held back. Its handle must be
    /// gone before the partition's queue is split again: dropping a handle
    /// turns off the wake-ups of every handle of that queue.
    pub fn drop_queue(&mut self, partition: i32) {
        self.read.remove(&partition);
        self.held_back.remove(&partition);
    }

    /// Stops reading the partition's queue (if it is read).
    pub fn hold_back(&mut self, partition: i32) {
        if let Some(records) = self.read.remove(&partition) {
            self.held_back.insert(partition, records);
        }
    }

    /// Reads the partition's queue again (if it is held back).
    pub fn read_again(&mut self, partition: i32) {
        if let Some(records) = self.held_back.remove(&partition) {
            self.read.insert(partition, records);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;

    fn records_of(partition: i32, offsets: std::ops::Range<i64>) -> PartitionRecords {
        Box::pin(futures::stream::iter(offsets.map(move |offset| {
            Ok(ConsumedRecord {
                partition,
                offset,
                key: None,
                payload: None,
                trace_headers: TraceHeaders::default(),
                timestamp_ms: None,
            })
        })))
    }

    /// What the read queues have ready now, as (partition, offset).
    fn ready(queues: &mut PartitionQueues) -> Vec<(i32, i64)> {
        let mut ready = Vec::new();
        while let Some(Some((partition, received))) = queues.read.next().now_or_never() {
            let record = received.expect("a record");
            assert_eq!(record.partition, partition);
            ready.push((partition, record.offset));
        }
        ready.sort_unstable();
        ready
    }

    #[test]
    fn a_held_back_partition_gives_nothing_until_read_again_and_then_goes_on_where_it_stopped() {
        let mut queues = PartitionQueues::default();
        queues.read.insert(0, records_of(0, 0..3));
        queues.read.insert(1, records_of(1, 10..12));
        let first = queues.read.next().now_or_never().flatten().expect("ready");
        let (held_partition, _) = first;
        queues.hold_back(held_partition);
        let other = 1 - held_partition;
        let rest = ready(&mut queues);
        assert!(
            rest.iter().all(|(partition, _)| *partition == other),
            "{rest:?}"
        );
        assert!(ready(&mut queues).is_empty(), "held back: nothing more");

        queues.read_again(held_partition);
        let resumed = ready(&mut queues);
        let expected_offsets: Vec<i64> = if held_partition == 0 {
            (1..3).collect()
        } else {
            vec![11]
        };
        assert_eq!(
            resumed,
            expected_offsets
                .iter()
                .map(|offset| (held_partition, *offset))
                .collect::<Vec<_>>(),
            "read again from the record after the last one taken"
        );
    }

    #[test]
    fn a_dropped_queue_is_gone_whether_it_was_read_or_held_back() {
        let mut queues = PartitionQueues::default();
        queues.read.insert(0, records_of(0, 0..2));
        queues.read.insert(1, records_of(1, 0..2));
        queues.hold_back(1);
        queues.drop_queue(0);
        queues.drop_queue(1);
        queues.read_again(1);
        assert!(queues.read.is_empty());
        assert!(queues.held_back.is_empty());
        // Holding back or reading again a partition without a queue is a no-op.
        queues.hold_back(2);
        queues.read_again(2);
        assert!(queues.read.is_empty() && queues.held_back.is_empty());
    }
}
