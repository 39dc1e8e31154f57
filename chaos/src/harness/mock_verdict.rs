//! The verdict on librdkafka's mock cluster, which has no transaction
//! semantics: aborted records stay visible to a `read_committed` reader,
//! transactional group offsets are discarded, producers do not fence each
//! other. So the mock cannot show which transactions committed, and this
//! verdict does not pretend it can (it never reads the pipeline's own
//! "cycle committed" reports). It judges only what the mock can show:
//!
//! - the database, exactly: each distinct valid event exactly one
//!   `ad_events` row holding one of its input copies at one of its input
//!   positions; `campaign_spend` equal, cell by cell (campaign, minute), to
//!   the totals of the events as stored; each invalid record exactly one
//!   `dead_letters` row at its (partition, offset) with the kind the
//!   contract implies; every partition's stored `next_offset` at the end of
//!   the input;
//! - the topics, for loss only: at least one output record per distinct
//!   event and at least one DLQ record per invalid position, and nothing
//!   for an unknown event or a valid position. Never "exactly once": that
//!   verdict needs a broker with transactions (see [`super::check_exactly_once`]).
//!
//! [`judge_on_mock`] takes the tables and the topics as read, so the chaos
//! scenarios (service in another process) and `onceflow demo` (in process,
//! SQLite or PostgreSQL) reach their verdicts the same way.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use uuid::Uuid;

use super::{InputTruth, PipelineTopics, Scenario, Tables, TopicRecord};
use crate::error::Result;

/// How a verdict on the mock is reached, said in every report of one.
pub const MOCK_JUDGED_BY: &str = "librdkafka's mock cluster has no transactions (aborted records \
     stay visible, group offsets are discarded), so it cannot show what committed: the store's \
     tables are judged exactly (one row per distinct event, spend per campaign and minute, one \
     dead letter per invalid position, offsets at the end of the input), the output and DLQ \
     topics only for loss (at least one record each); exactly-once on the topics is judged on a \
     broker with transactions";

/// The judgement of one run on the mock cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MockJudgement {
    /// output records read (aborted ones included: the mock keeps them)
    pub outputs: u64,
    /// distinct event ids among them
    pub distinct_outputs: u64,
    /// DLQ records read (aborted ones included)
    pub dlq_records: u64,
    /// distinct valid input events without their row or without any output
    pub lost: u64,
    /// `ad_events` rows beyond one per distinct event (the only duplicates
    /// the mock can show)
    pub duplicated: u64,
    /// every invalid position has exactly one `dead_letters` row of the
    /// right kind and at least one DLQ record
    pub dlq_exact: bool,
    /// `(campaign, minute)` cells of `campaign_spend` compared
    pub spend_cells_checked: u64,
    /// every violation, in words
    pub violations: Vec<String>,
}

impl MockJudgement {
    /// Whether everything the mock can show holds.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What the mock verdict reads besides the tables.
#[derive(Debug, Clone, Copy)]
pub struct MockEvidence<'a> {
    /// the truth of the input topic
    pub truth: &'a InputTruth,
    /// the pipeline's topics
    pub topics: &'a PipelineTopics,
    /// the pipeline's consumer group (its `consumer_offsets` rows)
    pub group_id: &'a str,
    /// the high watermark of each input partition
    pub high_watermarks: &'a BTreeMap<i32, i64>,
    /// the output topic as read (aborted records included)
    pub outputs: &'a [TopicRecord],
    /// the DLQ topic as read (aborted records included)
    pub dead_letter_records: &'a [TopicRecord],
}

/// Judges a run on the mock: the tables exactly, the topics for loss.
pub async fn judge_on_mock(
    evidence: MockEvidence<'_>,
    tables: Tables<'_>,
) -> Result<MockJudgement> {
    let truth = evidence.truth;
    let mut violations = Vec::new();
    let (rows, resolved) = super::check_ad_events(truth, tables, &mut violations).await?;
    let distinct_rows = rows
        .iter()
        .map(|row| row.event_id)
        .collect::<std::collections::HashSet<_>>();
    let duplicated = (rows.len() - distinct_rows.len()) as u64;
    let spend_cells_checked =
        super::check_campaign_spend(&resolved, &rows, tables, &mut violations).await?;
    let dead_letter_violations_before = violations.len();
    super::check_dead_letters(truth, &evidence.topics.input, tables, &mut violations).await?;
    let mut dlq_exact = violations.len() == dead_letter_violations_before;

    let stored_offsets = tables
        .consumer_offsets(evidence.group_id, &evidence.topics.input)
        .await?;
    judge_offsets(evidence.high_watermarks, &stored_offsets, &mut violations);

    let topics = judge_topics_for_loss(
        truth,
        &evidence.topics.input,
        evidence.outputs,
        evidence.dead_letter_records,
        &mut violations,
    );
    dlq_exact &= topics.dlq_complete;
    let lost = truth
        .events
        .keys()
        .filter(|id| !distinct_rows.contains(id) || !topics.output_ids.contains_key(id))
        .count() as u64;
    Ok(MockJudgement {
        outputs: evidence.outputs.len() as u64,
        distinct_outputs: topics.output_ids.len() as u64,
        dlq_records: evidence.dead_letter_records.len() as u64,
        lost,
        duplicated,
        dlq_exact,
        spend_cells_checked,
        violations,
    })
}

/// Every partition's stored `next_offset` must equal its high watermark.
pub fn judge_offsets(
    high_watermarks: &BTreeMap<i32, i64>,
    stored: &HashMap<i32, Option<i64>>,
    violations: &mut Vec<String>,
) {
    for (partition, high) in high_watermarks {
        let next = stored.get(partition).copied().flatten();
        if *high > 0 && next != Some(*high) {
            violations.push(format!(
                "consumer_offsets of partition {partition}: next_offset {next:?}, the input \
                 ends at {high}"
            ));
        }
    }
    for partition in stored.keys() {
        if !high_watermarks.contains_key(partition) {
            violations.push(format!(
                "consumer_offsets has partition {partition}, which the input topic has not"
            ));
        }
    }
}

/// What the topics showed.
#[derive(Debug, Default)]
pub struct TopicsForLoss {
    /// output records per event id
    pub output_ids: HashMap<Uuid, u32>,
    /// every invalid position has at least one DLQ record
    pub dlq_complete: bool,
}

/// The topics on a broker without transactions: at least one output per
/// distinct event (an unknown event id is a violation), at least one DLQ
/// record per invalid position (a valid or unknown position is one).
pub fn judge_topics_for_loss(
    truth: &InputTruth,
    input_topic: &str,
    outputs: &[TopicRecord],
    dead_letter_records: &[TopicRecord],
    violations: &mut Vec<String>,
) -> TopicsForLoss {
    let mut found = TopicsForLoss {
        dlq_complete: true,
        ..TopicsForLoss::default()
    };
    for record in outputs {
        let event_id = record
            .value
            .as_deref()
            .and_then(|value| serde_json::from_slice::<serde_json::Value>(value).ok())
            .and_then(|json| {
                json.get("event_id")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|id| Uuid::parse_str(id).ok())
            });
        match event_id {
            Some(event_id) if truth.events.contains_key(&event_id) => {
                *found.output_ids.entry(event_id).or_default() += 1;
            }
            Some(event_id) => violations.push(format!(
                "output {}/{}: event {event_id} is not a valid input event",
                record.partition, record.offset
            )),
            None => violations.push(format!(
                "output {}/{}: no uuid event_id",
                record.partition, record.offset
            )),
        }
    }
    let mut missing: Vec<&Uuid> = truth
        .events
        .keys()
        .filter(|id| !found.output_ids.contains_key(id))
        .collect();
    missing.sort();
    for event_id in missing {
        violations.push(format!("event {event_id} has no output record at all"));
    }

    let mut dead_lettered: HashMap<(i32, i64), u32> = HashMap::new();
    for record in dead_letter_records {
        let at = format!("dlq {}/{}", record.partition, record.offset);
        let partition = record
            .header_str("onceflow-source-partition")
            .and_then(|p| p.parse::<i32>().ok());
        let offset = record
            .header_str("onceflow-source-offset")
            .and_then(|o| o.parse::<i64>().ok());
        let (Some(partition), Some(offset)) = (partition, offset) else {
            violations.push(format!("{at}: source partition or offset is not a number"));
            continue;
        };
        if record.header_str("onceflow-source-topic") != Some(input_topic) {
            violations.push(format!("{at}: source topic is not {input_topic}"));
            continue;
        }
        match truth.invalid_records.get(&(partition, offset)) {
            None => violations.push(format!(
                "{at}: source {partition}/{offset} is not an invalid input record"
            )),
            Some(invalid) => {
                if record.header_str("onceflow-error-kind") != Some(invalid.error_kind) {
                    violations.push(format!(
                        "{at}: error kind {:?} for source {partition}/{offset}, the contract \
                         implies {}",
                        record.header_str("onceflow-error-kind"),
                        invalid.error_kind
                    ));
                }
                *dead_lettered.entry((partition, offset)).or_default() += 1;
            }
        }
    }
    for (partition, offset) in truth.invalid_records.keys() {
        if !dead_lettered.contains_key(&(*partition, *offset)) {
            found.dlq_complete = false;
            violations.push(format!(
                "invalid input {partition}/{offset} has no dlq record at all"
            ));
        }
    }
    found
}

/// Judges a chaos scenario on the mock: its database and its topics.
pub async fn mock_judgement(scenario: &Scenario) -> Result<MockJudgement> {
    let (input, outputs, dead_letters) = tokio::try_join!(
        super::read_committed(&scenario.bootstrap, &scenario.topics.input),
        super::read_committed(&scenario.bootstrap, &scenario.topics.output),
        super::read_committed(&scenario.bootstrap, &scenario.topics.dlq),
    )?;
    let truth = InputTruth::from_records(&input);
    let high_watermarks =
        super::high_watermarks(&scenario.bootstrap, &scenario.topics.input).await?;
    judge_on_mock(
        MockEvidence {
            truth: &truth,
            topics: &scenario.topics,
            group_id: &scenario.group_id,
            high_watermarks: &high_watermarks,
            outputs: &outputs,
            dead_letter_records: &dead_letters,
        },
        scenario.tables(),
    )
    .await
}

/// Every violation found on the mock (see [`mock_judgement`]).
pub async fn mock_violations(scenario: &Scenario) -> Result<Vec<String>> {
    Ok(mock_judgement(scenario).await?.violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64, value: &str, headers: &[(&str, &str)]) -> TopicRecord {
        TopicRecord {
            partition,
            offset,
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec()))
                .collect(),
            timestamp_ms: None,
        }
    }

    fn event_json(event_id: &str) -> String {
        format!(
            r#"{{"event_id":"{event_id}","campaign_id":"c-1","ad_id":"ad-1","kind":"click","cost_micros":5,"occurred_at":"2026-11-26T10:15:30.000Z"}}"#
        )
    }

    const A: &str = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";
    const B: &str = "2b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";

    /// Two distinct events (one sent twice) and one invalid record at 1/1.
    fn truth() -> InputTruth {
        InputTruth::from_records(&[
            record(0, 0, &event_json(A), &[]),
            record(0, 1, &event_json(B), &[]),
            record(1, 0, &event_json(A), &[]),
            record(1, 1, "{", &[]),
        ])
    }

    fn dead_letter(partition: &str, offset: &str, kind: &str) -> TopicRecord {
        record(
            0,
            0,
            "{",
            &[
                ("onceflow-error-kind", kind),
                ("onceflow-source-topic", "in"),
                ("onceflow-source-partition", partition),
                ("onceflow-source-offset", offset),
            ],
        )
    }

    #[test]
    fn the_topics_are_judged_for_loss_only() {
        let mut violations = Vec::new();
        // A twice (a replay of an aborted transaction is visible on the mock).
        let outputs = [
            record(0, 0, &event_json(A), &[]),
            record(0, 1, &event_json(A), &[]),
            record(0, 2, &event_json(B), &[]),
        ];
        let found = judge_topics_for_loss(
            &truth(),
            "in",
            &outputs,
            &[dead_letter("1", "1", "invalid-json")],
            &mut violations,
        );
        assert!(violations.is_empty(), "{violations:?}");
        assert!(found.dlq_complete);

        let mut violations = Vec::new();
        let found = judge_topics_for_loss(
            &truth(),
            "in",
            &outputs[..2],
            &[dead_letter("0", "1", "invalid-json")],
            &mut violations,
        );
        assert!(!found.dlq_complete);
        for needle in [
            &format!("event {B} has no output record"),
            "source 0/1 is not an invalid input record",
            "invalid input 1/1 has no dlq record",
        ] {
            assert!(
                violations
                    .iter()
                    .any(|violation| violation.contains(needle)),
                "no violation says {needle:?}: {violations:?}"
            );
        }
    }

    #[test]
    fn every_stored_offset_must_be_at_the_end_of_its_partition() {
        let high = BTreeMap::from([(0, 2), (1, 2), (2, 0)]);
        let mut violations = Vec::new();
        judge_offsets(
            &high,
            &HashMap::from([(0, Some(2)), (1, Some(2))]),
            &mut violations,
        );
        assert!(violations.is_empty(), "{violations:?}");
        judge_offsets(
            &high,
            &HashMap::from([(0, Some(2)), (1, Some(1))]),
            &mut violations,
        );
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("partition 1"), "{violations:?}");
    }
}
