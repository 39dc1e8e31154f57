//! What the store hands back and takes: a partition's stored position and
//! claim, a batch's outcome, a Kafka commit's confirmation.
//!
//! Guarantees: plain data, the same for every backend.

/// What the store holds for one partition of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPartition {
    /// first offset not yet committed in the database, if any batch was
    pub next_offset: Option<i64>,
    /// first offset the group ever fetched in this partition
    pub start_offset: Option<i64>,
    /// highest offset onceflow saw committed to Kafka (after the commit)
    pub kafka_committed_offset: Option<i64>,
    /// the current owner epoch
    pub owner_epoch: i64,
}

/// Who holds a partition's claim in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    /// the current owner epoch
    pub owner_epoch: i64,
    /// the instance that made the current claim
    pub owner_instance: Option<String>,
}

/// A partition's end offset confirmed committed in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaCommitConfirmation {
    /// input partition
    pub partition: i32,
    /// the committed end offset
    pub end_offset: i64,
    /// the owner epoch the commit was made under
    pub owner_epoch: i64,
}

/// The outcome of one committed partition batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchWriteOutcome {
    /// indexes into the batch's records whose Kafka record is owed: new
    /// events, own replays and dead letters, at or past `outputs_from`
    pub owed_records: Vec<usize>,
    /// events stored for the first time
    pub new_events: u64,
    /// events that were our own replay of an already stored record
    pub replayed_events: u64,
    /// upstream repeats of an event stored at another position
    pub duplicates: u64,
    /// dead letters in the batch
    pub dead_letters: u64,
}
