//! The recovery position of a partition: where fetching resumes after an
//! assignment, an abort or a restart, and from which offset outputs are
//! still owed.
//!
//! With `db` the database's stored next offset and `kafka` the group's
//! committed offset (read with `read_committed`, after `init_transactions`
//! fenced the previous producer), or the Kafka offset onceflow recorded
//! after its last confirmed commit if that is higher (it survives the loss
//! of the group's offsets), fetching resumes at `min(db, kafka)` and
//! outputs are owed from `kafka` on. When the group has no committed offset,
//! `kafka` is the offset the group started at (stored with the first batch),
//! never the database's: otherwise a first transaction that aborted after its
//! database commit would lose its outputs. A partition neither side has seen
//! starts at the earliest offset.

use crate::store::types::StoredPartition;

/// Where fetching of a partition resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// the earliest offset (a partition never processed)
    Earliest,
    /// this offset
    Offset(i64),
}

/// Where a partition resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPosition {
    /// where fetching resumes
    pub start: StartPosition,
    /// outputs and dead-letter records are owed from this offset on
    pub outputs_from: i64,
}

/// Computes the recovery position from what each side committed.
pub fn recovery_position(
    stored: Option<StoredPartition>,
    kafka_committed: Option<i64>,
) -> RecoveryPosition {
    let db = stored.and_then(|stored| stored.next_offset);
    let group_start = stored.and_then(|stored| stored.start_offset);
    let confirmed = stored.and_then(|stored| stored.kafka_committed_offset);
    // Both are lower bounds of what Kafka holds: take the higher one.
    let kafka = match (kafka_committed, confirmed) {
        (Some(group), Some(confirmed)) => Some(group.max(confirmed)),
        (group, confirmed) => group.or(confirmed),
    }
    .or(group_start);
    match (db, kafka) {
        (Some(db), Some(kafka)) => RecoveryPosition {
            start: StartPosition::Offset(db.min(kafka)),
            outputs_from: kafka,
        },
        (None, Some(kafka)) => RecoveryPosition {
            start: StartPosition::Offset(kafka),
            outputs_from: kafka,
        },
        // The schema writes `start_offset` with the first `next_offset`, so a
        // stored offset without a known Kafka position means the row was
        // edited by hand: replay everything, owing every output (the safe
        // side for a billing pipeline is to never lose).
        (Some(_), None) | (None, None) => RecoveryPosition {
            start: StartPosition::Earliest,
            outputs_from: i64::MIN,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(next: Option<i64>, start: Option<i64>) -> Option<StoredPartition> {
        Some(StoredPartition {
            next_offset: next,
            start_offset: start,
            kafka_committed_offset: None,
            owner_epoch: 1,
        })
    }

    #[test]
    fn never_seen_partition_starts_at_the_earliest_offset() {
        let position = recovery_position(None, None);
        assert_eq!(position.start, StartPosition::Earliest);
        let claimed_only = recovery_position(stored(None, None), None);
        assert_eq!(claimed_only.start, StartPosition::Earliest);
    }

    #[test]
    fn database_ahead_of_kafka_replays_from_kafka_owing_outputs() {
        let position = recovery_position(stored(Some(500), Some(0)), Some(300));
        assert_eq!(position.start, StartPosition::Offset(300));
        assert_eq!(position.outputs_from, 300);
    }

    #[test]
    fn both_committed_resume_at_the_common_offset() {
        let position = recovery_position(stored(Some(500), Some(0)), Some(500));
        assert_eq!(position.start, StartPosition::Offset(500));
        assert_eq!(position.outputs_from, 500);
    }

    #[test]
    fn kafka_ahead_of_database_replays_database_effects_without_outputs() {
        let position = recovery_position(stored(Some(300), Some(0)), Some(500));
        assert_eq!(position.start, StartPosition::Offset(300));
        assert_eq!(position.outputs_from, 500);
    }

    #[test]
    fn the_confirmed_kafka_offset_stands_in_for_lost_group_offsets() {
        let mut stored = stored(Some(500), Some(0));
        if let Some(row) = stored.as_mut() {
            row.kafka_committed_offset = Some(400);
        }
        let position = recovery_position(stored, None);
        assert_eq!(position.start, StartPosition::Offset(400));
        assert_eq!(position.outputs_from, 400);
        let ahead = recovery_position(stored, Some(450));
        assert_eq!(
            ahead.outputs_from, 450,
            "the group's offset wins when higher"
        );
    }

    #[test]
    fn missing_kafka_offset_falls_back_to_the_group_start_not_the_database() {
        // First transaction aborted after its database commit: the group has
        // no committed offset, the database says 200.
        let position = recovery_position(stored(Some(200), Some(0)), None);
        assert_eq!(position.start, StartPosition::Offset(0));
        assert_eq!(position.outputs_from, 0);
    }
}
