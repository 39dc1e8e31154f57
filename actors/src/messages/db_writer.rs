//! The messages of a database writer.
//!
//! Guarantees: a write is idempotent (see [`crate::store`]), so a request
//! whose reply nobody reads (the coordinator gave up waiting) is harmless.

use std::sync::Arc;

use ractor::RpcReplyPort;
use uuid::Uuid;

use crate::model::batch::PartitionBatch;
use crate::store::StoreError;
use crate::store::types::BatchWriteOutcome;

/// One partition batch to commit.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// consumer group
    pub group_id: String,
    /// input topic
    pub topic: String,
    /// owner epoch of the partition held by this instance
    pub owner_epoch: i64,
    /// the commit cycle
    pub txn_id: Uuid,
    /// the batch
    pub batch: Arc<PartitionBatch>,
    /// the commit cycle's span, parent of the write's span
    pub parent: tracing::Span,
}

/// Messages of a database writer.
#[derive(Debug)]
pub enum DbWriterMsg {
    /// commit a batch and reply with the outcome
    Write(WriteRequest, RpcReplyPort<Result<WrittenBatch, StoreError>>),
}

/// A committed batch: the one requested, or a copy in which the events the
/// database refuses became `processing` dead letters.
#[derive(Debug, Clone)]
pub struct WrittenBatch {
    /// the batch as committed
    pub batch: Arc<PartitionBatch>,
    /// what the commit did and what Kafka still owes
    pub outcome: BatchWriteOutcome,
}
