//! A partition's contribution to one commit cycle: the contiguous offset
//! range `[start_offset, end_offset)` it consumed and the processed records
//! in it.
//!
//! Guarantees: the range is contiguous with the previous batch of the same
//! partition (or starts at the recovery position after a rewind), so
//! committing `end_offset` never skips a record.

use crate::model::record::ProcessedRecord;

/// One partition's batch in a commit cycle.
#[derive(Debug, Clone)]
pub struct PartitionBatch {
    /// input partition
    pub partition: i32,
    /// first offset covered
    pub start_offset: i64,
    /// first offset not covered: what is stored once the batch commits
    pub end_offset: i64,
    /// outputs and dead-letter records are owed only for offsets at or past
    /// this one: those below were committed to Kafka already (replay)
    pub outputs_from: i64,
    /// processed records in offset order
    pub records: Vec<ProcessedRecord>,
}
