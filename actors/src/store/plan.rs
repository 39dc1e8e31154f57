//! The backend-independent half of a batch write: which records of a
//! partition batch to insert, in which order, and what each one turned out
//! to be once the database said which event ids it held already (every
//! other first occurrence it inserted) and where those are stored. Both
//! stores use it, so the rules exist once.
//!
//! Guarantees:
//! - the first occurrence (lowest offset) of an event id in the batch is the
//!   one written; later occurrences are in-batch repeats (duplicates, no
//!   output);
//! - a first occurrence the database inserted is new (counted in the spend,
//!   output owed); one it already held at the same source position (consumer
//!   group, topic, partition and offset all equal) is our own replay (not
//!   counted again, output still owed); one it held anywhere else, another
//!   group's copy of the same position included, is an upstream repeat (a
//!   duplicate, no output);
//! - spend deltas come from new events only, aggregated per
//!   `(campaign_id, minute)`;
//! - a record is owed to Kafka only at or past the batch's `outputs_from`;
//!   dead letters are keyed by their source position: one the database
//!   inserted, or one it held from the same group, is ours and owed by the
//!   same rule; one another group stored is not owed again;
//! - a row stored before the group was recorded (no group) counts as this
//!   group's, as it did then, so an upgrade never loses an owed output;
//! - the orders the stores touch keys in are fixed here: events by event id,
//!   spend by `(campaign_id, minute)`, dead letters by offset, so parallel
//!   writers cannot deadlock each other.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::ad_event::AdEventKind;
use crate::model::batch::PartitionBatch;
use crate::model::record::RecordEffect;
use crate::store::types::BatchWriteOutcome;

/// Where a stored event came from: the consumer group that stored it (none
/// for rows stored before the group was recorded), topic, partition and
/// offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredPosition {
    pub group_id: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl StoredPosition {
    /// Whether this is the position `group_id` reads `record` from on
    /// `topic`: the same consumer group, topic, partition and offset.
    pub fn is_own(&self, group_id: &str, topic: &str, partition: i32, offset: i64) -> bool {
        self.group_id
            .as_deref()
            .is_none_or(|stored| stored == group_id)
            && self.topic == topic
            && self.partition == partition
            && self.offset == offset
    }
}

/// Which dead letters of a batch the database already held, and whether
/// another consumer group stored them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StoredDeadLetters {
    /// offsets (in the batch's partition) whose dead letter another group
    /// stored: not ours, not owed again
    pub other_groups: HashSet<i64>,
}

/// What one batch asks of the database, before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchPlan {
    /// the first occurrence of each event id, `(event_id, record index)`,
    /// sorted by event id: the order events are inserted in
    pub events: Vec<(Uuid, usize)>,
    /// indexes of records whose event id occurred earlier in the batch
    pub in_batch_repeats: Vec<usize>,
    /// indexes of the dead letters, sorted by offset
    pub dead_letters: Vec<usize>,
}

/// What the batch added to one campaign's minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpendDelta {
    pub campaign_id: String,
    pub minute: DateTime<Utc>,
    pub impressions: i64,
    pub clicks: i64,
    pub spend_micros: i64,
}

/// The batch classified against what the database holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classification {
    /// the outcome to report once the transaction commits
    pub outcome: BatchWriteOutcome,
    /// spend deltas of the new events, sorted by `(campaign_id, minute)`:
    /// the order they are upserted in
    pub spend: Vec<SpendDelta>,
}

/// Per-event classification against what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventFate {
    New,
    OwnReplay,
    Duplicate,
}

impl BatchPlan {
    /// Plans the write of `batch`.
    pub fn new(batch: &PartitionBatch) -> BatchPlan {
        let mut first_index_of: HashMap<Uuid, usize> = HashMap::new();
        let mut in_batch_repeats = Vec::new();
        let mut dead_letters = Vec::new();
        for (index, record) in batch.records.iter().enumerate() {
            match &record.effect {
                RecordEffect::Event { event, .. } => match first_index_of.entry(event.event_id) {
                    Entry::Occupied(_) => in_batch_repeats.push(index),
                    Entry::Vacant(slot) => {
                        slot.insert(index);
                    }
                },
                RecordEffect::DeadLetter { .. } => dead_letters.push(index),
            }
        }
        let mut events: Vec<(Uuid, usize)> = first_index_of.into_iter().collect();
        events.sort_unstable_by_key(|(event_id, _)| *event_id);
        dead_letters.sort_by_key(|index| batch.records[*index].offset);
        BatchPlan {
            events,
            in_batch_repeats,
            dead_letters,
        }
    }

    /// Of the first occurrences, those the database `held` already (its
    /// insert skipped them), sorted by event id.
    pub fn conflicting(&self, held: &HashSet<Uuid>) -> Vec<Uuid> {
        self.events
            .iter()
            .map(|(event_id, _)| *event_id)
            .filter(|event_id| held.contains(event_id))
            .collect()
    }

    /// The plan of the one event at `index` of a batch alone, as the batch
    /// would write it (the poison probe), or `None` if that record is not an
    /// event.
    pub fn single_event(batch: &PartitionBatch, index: usize) -> Option<BatchPlan> {
        match &batch.records.get(index)?.effect {
            RecordEffect::Event { event, .. } => Some(BatchPlan {
                events: vec![(event.event_id, index)],
                in_batch_repeats: Vec::new(),
                dead_letters: Vec::new(),
            }),
            RecordEffect::DeadLetter { .. } => None,
        }
    }

    /// Classifies every record of `batch` (read by `group_id` from
    /// `topic`), given the first occurrences the database `held` already
    /// (every other one it inserted), their stored positions and which dead
    /// letters other groups stored.
    pub fn classify(
        &self,
        batch: &PartitionBatch,
        group_id: &str,
        topic: &str,
        held: &HashSet<Uuid>,
        stored_positions: &HashMap<Uuid, StoredPosition>,
        stored_dead_letters: &StoredDeadLetters,
    ) -> Classification {
        let mut outcome = BatchWriteOutcome {
            duplicates: self.in_batch_repeats.len() as u64,
            dead_letters: self.dead_letters.len() as u64,
            ..BatchWriteOutcome::default()
        };
        // Keyed by the campaign id as the batch holds it: an id is copied
        // once per (campaign, minute) below, not once per event.
        let mut spend: BTreeMap<(&str, DateTime<Utc>), (i64, i64, i64)> = BTreeMap::new();
        for (event_id, index) in &self.events {
            let Some(record) = batch.records.get(*index) else {
                continue;
            };
            let RecordEffect::Event { event, .. } = &record.effect else {
                continue;
            };
            let fate = if !held.contains(event_id) {
                EventFate::New
            } else if stored_positions.get(event_id).is_some_and(|stored| {
                stored.is_own(group_id, topic, record.partition, record.offset)
            }) {
                EventFate::OwnReplay
            } else {
                EventFate::Duplicate
            };
            match fate {
                EventFate::New => {
                    outcome.new_events += 1;
                    let entry = spend
                        .entry((event.campaign_id.as_str(), event.billed_minute()))
                        .or_default();
                    match event.kind {
                        AdEventKind::Impression => entry.0 += 1,
                        AdEventKind::Click => entry.1 += 1,
                    }
                    entry.2 += event.cost_micros;
                }
                EventFate::OwnReplay => outcome.replayed_events += 1,
                EventFate::Duplicate => outcome.duplicates += 1,
            }
            if fate != EventFate::Duplicate && record.offset >= batch.outputs_from {
                outcome.owed_records.push(*index);
            }
        }
        outcome
            .owed_records
            .extend(self.dead_letters.iter().copied().filter(|index| {
                batch.records.get(*index).is_some_and(|record| {
                    record.offset >= batch.outputs_from
                        && !stored_dead_letters.other_groups.contains(&record.offset)
                })
            }));
        outcome.owed_records.sort_unstable();
        let spend = spend
            .into_iter()
            .map(
                |((campaign_id, minute), (impressions, clicks, spend_micros))| SpendDelta {
                    campaign_id: campaign_id.to_owned(),
                    minute,
                    impressions,
                    clicks,
                    spend_micros,
                },
            )
            .collect();
        Classification { outcome, spend }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::model::ad_event::{AdEvent, DeadLetterKind};
    use crate::model::record::ProcessedRecord;
    use crate::telemetry::spans::RecordSpan;
    use crate::telemetry::trace_context::TraceContext;

    const TOPIC: &str = "in";
    const GROUP: &str = "g";

    fn at(group_id: Option<&str>, topic: &str, partition: i32, offset: i64) -> StoredPosition {
        StoredPosition {
            group_id: group_id.map(str::to_owned),
            topic: topic.to_owned(),
            partition,
            offset,
        }
    }

    fn event(offset: i64, event_id: Uuid, campaign: &str, kind: AdEventKind) -> ProcessedRecord {
        let event = AdEvent {
            event_id,
            campaign_id: campaign.into(),
            ad_id: "ad".into(),
            kind,
            cost_micros: 10,
            occurred_at: Utc
                .with_ymd_and_hms(2026, 11, 26, 10, 15, 30)
                .single()
                .expect("valid time"),
        };
        ProcessedRecord {
            partition: 0,
            offset,
            key: None,
            payload: None,
            trace: TraceContext::new_root(),
            span: RecordSpan::none(),
            timestamp_ms: None,
            effect: RecordEffect::Event { event },
        }
    }

    fn dead_letter(offset: i64) -> ProcessedRecord {
        ProcessedRecord {
            partition: 0,
            offset,
            key: None,
            payload: None,
            trace: TraceContext::new_root(),
            span: RecordSpan::none(),
            timestamp_ms: None,
            effect: RecordEffect::DeadLetter {
                kind: DeadLetterKind::InvalidJson,
                reason: "bad".to_owned(),
            },
        }
    }

    fn batch(outputs_from: i64, records: Vec<ProcessedRecord>) -> PartitionBatch {
        PartitionBatch {
            partition: 0,
            start_offset: 0,
            end_offset: records.len() as i64,
            outputs_from,
            records,
        }
    }

    #[test]
    fn plans_first_occurrences_in_id_order_and_dead_letters_in_offset_order() {
        let (low, high) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let batch = batch(
            0,
            vec![
                event(0, high, "c", AdEventKind::Click),
                dead_letter(1),
                event(2, low, "c", AdEventKind::Click),
                event(3, high, "c", AdEventKind::Click),
                dead_letter(4),
            ],
        );
        let plan = BatchPlan::new(&batch);
        assert_eq!(plan.events, vec![(low, 2), (high, 0)]);
        assert_eq!(plan.in_batch_repeats, vec![3]);
        assert_eq!(plan.dead_letters, vec![1, 4]);
        let held = HashSet::from([low]);
        assert_eq!(plan.conflicting(&held), vec![low]);
        assert!(plan.conflicting(&HashSet::new()).is_empty());
    }

    #[test]
    fn new_own_replay_and_upstream_repeat() {
        let (new, own, other) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let batch = batch(
            0,
            vec![
                event(0, new, "c", AdEventKind::Impression),
                event(1, own, "c", AdEventKind::Click),
                event(2, other, "c", AdEventKind::Click),
                event(3, new, "c", AdEventKind::Impression),
                dead_letter(4),
            ],
        );
        let plan = BatchPlan::new(&batch);
        let held = HashSet::from([own, other]);
        let stored = HashMap::from([
            (own, at(Some(GROUP), TOPIC, 0, 1)),
            (other, at(Some(GROUP), TOPIC, 5, 1)),
        ]);
        let none = StoredDeadLetters::default();
        let classified = plan.classify(&batch, GROUP, TOPIC, &held, &stored, &none);
        assert_eq!(
            classified.outcome,
            BatchWriteOutcome {
                owed_records: vec![0, 1, 4],
                new_events: 1,
                replayed_events: 1,
                duplicates: 2,
                dead_letters: 1,
            }
        );
        assert_eq!(classified.spend.len(), 1, "only the new event adds spend");
        assert_eq!(
            (
                classified.spend[0].impressions,
                classified.spend[0].clicks,
                classified.spend[0].spend_micros
            ),
            (1, 0, 10)
        );
        // Same offset on another topic, or stored by another group, is not
        // ours; a row stored before groups were recorded still is.
        for (stored_at, own_replays) in [
            (at(Some(GROUP), "other", 0, 1), 0),
            (at(Some("another-group"), TOPIC, 0, 1), 0),
            (at(None, TOPIC, 0, 1), 1),
        ] {
            let stored = HashMap::from([(own, stored_at.clone())]);
            let classified = plan.classify(&batch, GROUP, TOPIC, &held, &stored, &none);
            assert_eq!(
                classified.outcome.replayed_events, own_replays,
                "{stored_at:?}"
            );
            assert_eq!(
                classified.outcome.owed_records.contains(&1),
                own_replays == 1,
                "{stored_at:?}"
            );
        }
        // A dead letter another group stored is not owed again.
        let theirs = StoredDeadLetters {
            other_groups: HashSet::from([4]),
        };
        let classified = plan.classify(&batch, GROUP, TOPIC, &held, &stored, &theirs);
        assert_eq!(classified.outcome.owed_records, vec![0, 1]);
        assert_eq!(classified.outcome.dead_letters, 1);
    }

    #[test]
    fn nothing_below_outputs_from_is_owed_and_spend_is_sorted() {
        let ids: Vec<Uuid> = (1..=4).map(Uuid::from_u128).collect();
        let batch = batch(
            2,
            vec![
                event(0, ids[0], "b", AdEventKind::Click),
                dead_letter(1),
                event(2, ids[1], "a", AdEventKind::Click),
                event(3, ids[2], "b", AdEventKind::Impression),
                dead_letter(4),
            ],
        );
        let plan = BatchPlan::new(&batch);
        let held = HashSet::new();
        let classified = plan.classify(
            &batch,
            GROUP,
            TOPIC,
            &held,
            &HashMap::new(),
            &StoredDeadLetters::default(),
        );
        assert_eq!(classified.outcome.owed_records, vec![2, 3, 4]);
        let keys: Vec<&str> = classified
            .spend
            .iter()
            .map(|delta| delta.campaign_id.as_str())
            .collect();
        assert_eq!(keys, vec!["a", "b"]);
        assert_eq!(
            (classified.spend[1].impressions, classified.spend[1].clicks),
            (1, 1)
        );
    }
}
