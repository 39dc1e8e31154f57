//! The verdict on librdkafka's mock cluster, which has no transaction
//! semantics (aborted records stay visible, group offsets are discarded):
//! exactly-once is judged by the database and by the transaction ids the
//! service reported as committed. Outputs and dead letters count only inside
//! those transactions, and each distinct event must appear in exactly one.
//!
//! [`judge_on_mock`] is a pure function of the ground truth, the stored
//! ledger and the topics, so the chaos scenarios (service in another
//! process, PostgreSQL) and `onceflow demo` (in process, SQLite or
//! PostgreSQL) reach their verdicts the same way.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

use super::{InputTruth, Scenario, TopicRecord};
use crate::error::Result;

/// Rows of `ad_events` (one per stored event).
const COUNT_EVENTS: &str = "SELECT count(*) FROM ad_events";
/// Rows of `dead_letters` (one per invalid input position).
const COUNT_DEAD_LETTERS: &str = "SELECT count(*) FROM dead_letters";
/// Spend per campaign; valid in both PostgreSQL and SQLite.
const SPEND_PER_CAMPAIGN: &str = "SELECT campaign_id, CAST(sum(impressions) AS BIGINT), \
     CAST(sum(clicks) AS BIGINT), CAST(sum(spend_micros) AS BIGINT) \
     FROM campaign_spend GROUP BY campaign_id";

/// Transaction ids the service reported as committed, from its log.
pub fn committed_txn_ids(log: &str) -> HashSet<String> {
    log.lines()
        .filter(|line| line.contains("cycle committed"))
        .filter_map(|line| {
            let start = line.find("txn_id=")? + "txn_id=".len();
            line.get(start..start + 36).map(str::to_owned)
        })
        .collect()
}

/// What the store holds, as far as the verdict needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLedger {
    /// rows of `ad_events`
    pub events: i64,
    /// rows of `dead_letters`
    pub dead_letters: i64,
    /// impressions, clicks and spend (micros) per campaign
    pub spend_per_campaign: BTreeMap<String, (i64, i64, i64)>,
}

impl StoredLedger {
    /// Reads the ledger from a PostgreSQL database.
    pub async fn read_postgres(pool: &PgPool) -> Result<StoredLedger> {
        StoredLedger::read(pool).await
    }

    /// Reads the ledger from a SQLite database.
    pub async fn read_sqlite(pool: &SqlitePool) -> Result<StoredLedger> {
        StoredLedger::read(pool).await
    }

    /// The same three queries on either database.
    async fn read<DB>(pool: &sqlx::Pool<DB>) -> Result<StoredLedger>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
        (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
        (String, i64, i64, i64): for<'r> sqlx::FromRow<'r, DB::Row>,
    {
        let events: i64 = sqlx::query_scalar(COUNT_EVENTS).fetch_one(pool).await?;
        let dead_letters: i64 = sqlx::query_scalar(COUNT_DEAD_LETTERS)
            .fetch_one(pool)
            .await?;
        let spend: Vec<(String, i64, i64, i64)> =
            sqlx::query_as(SPEND_PER_CAMPAIGN).fetch_all(pool).await?;
        Ok(StoredLedger::from_rows(events, dead_letters, spend))
    }

    fn from_rows(
        events: i64,
        dead_letters: i64,
        spend: Vec<(String, i64, i64, i64)>,
    ) -> StoredLedger {
        StoredLedger {
            events,
            dead_letters,
            spend_per_campaign: spend
                .into_iter()
                .map(|(campaign, impressions, clicks, micros)| {
                    (campaign, (impressions, clicks, micros))
                })
                .collect(),
        }
    }
}

/// The judgement of one run on the mock cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MockJudgement {
    /// output records inside committed transactions
    pub committed_outputs: u64,
    /// distinct event ids among them
    pub distinct_outputs: u64,
    /// dead-letter records inside committed transactions
    pub committed_dead_letters: u64,
    /// distinct valid input events with no committed output
    pub lost: u64,
    /// distinct valid input events with more than one committed output
    pub duplicated: u64,
    /// every invalid input position has exactly one committed dead letter
    /// and one `dead_letters` row
    pub dlq_exact: bool,
    /// campaigns whose stored spend was compared with the truth
    pub campaigns_checked: u64,
    /// every violation, in words
    pub violations: Vec<String>,
}

impl MockJudgement {
    /// Whether every guarantee holds.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Judges exactly-once from the truth of the input, the stored ledger, the
/// output and DLQ topics as read (aborted records included, since the mock
/// keeps them) and the transaction ids reported as committed.
pub fn judge_on_mock(
    truth: &InputTruth,
    ledger: &StoredLedger,
    outputs: &[TopicRecord],
    dead_letter_records: &[TopicRecord],
    committed: &HashSet<String>,
) -> MockJudgement {
    let mut judgement = MockJudgement {
        dlq_exact: true,
        ..MockJudgement::default()
    };
    let violations = &mut judgement.violations;
    if ledger.events != truth.distinct_events as i64 {
        violations.push(format!(
            "ad_events has {} rows, truth {}",
            ledger.events, truth.distinct_events
        ));
    }
    if ledger.dead_letters != truth.invalid as i64 {
        judgement.dlq_exact = false;
        violations.push(format!(
            "dead_letters has {} rows, truth {}",
            ledger.dead_letters, truth.invalid
        ));
    }
    for (campaign, totals) in &truth.per_campaign {
        let expected = (
            totals.impressions as i64,
            totals.clicks as i64,
            totals.spend_micros,
        );
        let stored = ledger.spend_per_campaign.get(campaign);
        if stored != Some(&expected) {
            violations.push(format!(
                "campaign_spend {campaign}: {stored:?}, truth {expected:?}"
            ));
        }
        judgement.campaigns_checked += 1;
    }
    for campaign in ledger.spend_per_campaign.keys() {
        if !truth.per_campaign.contains_key(campaign) {
            violations.push(format!("campaign_spend has {campaign}, not in the input"));
        }
    }

    let in_committed = |record: &TopicRecord| {
        record
            .header_str("onceflow-txn-id")
            .is_some_and(|txn| committed.contains(txn))
    };
    let mut outputs_per_event: HashMap<Uuid, u32> = HashMap::new();
    for record in outputs.iter().filter(|record| in_committed(record)) {
        judgement.committed_outputs += 1;
        let event_id = record
            .value
            .as_deref()
            .and_then(|value| serde_json::from_slice::<serde_json::Value>(value).ok())
            .and_then(|json| {
                json["event_id"]
                    .as_str()
                    .and_then(|id| Uuid::parse_str(id).ok())
            });
        match event_id {
            Some(event_id) => *outputs_per_event.entry(event_id).or_default() += 1,
            None => violations.push(format!(
                "output record {}:{} has no event id",
                record.partition, record.offset
            )),
        }
    }
    judgement.distinct_outputs = outputs_per_event.len() as u64;
    for event_id in truth.events.keys() {
        match outputs_per_event.get(event_id).copied().unwrap_or(0) {
            1 => {}
            0 => {
                judgement.lost += 1;
                violations.push(format!("event {event_id}: 0 committed outputs"));
            }
            count => {
                judgement.duplicated += 1;
                violations.push(format!("event {event_id}: {count} committed outputs"));
            }
        }
    }
    let unknown = outputs_per_event
        .keys()
        .filter(|event_id| !truth.events.contains_key(event_id))
        .count();
    if unknown > 0 {
        violations.push(format!(
            "{unknown} output events are not valid input events"
        ));
    }

    let mut dead_letters: HashMap<(String, String), u32> = HashMap::new();
    for record in dead_letter_records
        .iter()
        .filter(|record| in_committed(record))
    {
        judgement.committed_dead_letters += 1;
        let position = (
            record
                .header_str("onceflow-source-partition")
                .unwrap_or_default()
                .to_owned(),
            record
                .header_str("onceflow-source-offset")
                .unwrap_or_default()
                .to_owned(),
        );
        *dead_letters.entry(position).or_default() += 1;
    }
    if dead_letters.len() as u64 != truth.invalid || dead_letters.values().any(|count| *count != 1)
    {
        judgement.dlq_exact = false;
        violations.push(format!(
            "{} dead-letter positions in committed transactions (truth {}), {} of them more than once",
            dead_letters.len(),
            truth.invalid,
            dead_letters.values().filter(|count| **count != 1).count()
        ));
    }
    judgement
}

/// Judges a chaos scenario on the mock: its PostgreSQL database, its topics
/// and the transaction ids in the service's log.
pub async fn mock_judgement(scenario: &Scenario, service_log: &str) -> Result<MockJudgement> {
    let truth = super::input_truth(&scenario.bootstrap, &scenario.topics.input).await?;
    let ledger = StoredLedger::read_postgres(&scenario.pool).await?;
    let outputs = super::read_committed(&scenario.bootstrap, &scenario.topics.output).await?;
    let dead_letters = super::read_committed(&scenario.bootstrap, &scenario.topics.dlq).await?;
    Ok(judge_on_mock(
        &truth,
        &ledger,
        &outputs,
        &dead_letters,
        &committed_txn_ids(service_log),
    ))
}

/// Every violation of exactly-once in a chaos scenario on the mock.
pub async fn mock_violations(scenario: &Scenario, service_log: &str) -> Result<Vec<String>> {
    Ok(mock_judgement(scenario, service_log).await?.violations)
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
        }
    }

    fn event_json(event_id: &str) -> String {
        format!(
            r#"{{"event_id":"{event_id}","campaign_id":"c-1","ad_id":"ad-1","kind":"click","cost_micros":5,"occurred_at":"2026-11-26T10:15:30.000Z"}}"#
        )
    }

    const A: &str = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";
    const B: &str = "2b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";

    /// Two distinct events (one sent twice) and one invalid record.
    fn truth() -> InputTruth {
        InputTruth::from_records(&[
            record(0, 0, &event_json(A), &[]),
            record(0, 1, &event_json(B), &[]),
            record(1, 0, &event_json(A), &[]),
            record(1, 1, "{", &[]),
        ])
    }

    fn ledger() -> StoredLedger {
        StoredLedger {
            events: 2,
            dead_letters: 1,
            spend_per_campaign: BTreeMap::from([("c-1".to_owned(), (0, 2, 10))]),
        }
    }

    fn output(offset: i64, event_id: &str, txn: &str) -> TopicRecord {
        record(
            0,
            offset,
            &event_json(event_id),
            &[("onceflow-txn-id", txn)],
        )
    }

    fn dead_letter(txn: &str) -> TopicRecord {
        record(
            0,
            0,
            "{",
            &[
                ("onceflow-txn-id", txn),
                ("onceflow-source-partition", "1"),
                ("onceflow-source-offset", "1"),
            ],
        )
    }

    #[test]
    fn only_committed_transactions_count_and_each_event_once() {
        let committed = HashSet::from(["t1".to_owned(), "t2".to_owned()]);
        let exact = judge_on_mock(
            &truth(),
            &ledger(),
            // B also sits in an aborted transaction t9: not counted.
            &[output(0, A, "t1"), output(1, B, "t9"), output(2, B, "t2")],
            &[dead_letter("t1")],
            &committed,
        );
        assert!(exact.holds(), "{:?}", exact.violations);
        assert_eq!(
            (exact.committed_outputs, exact.lost, exact.duplicated),
            (2, 0, 0)
        );
        assert!(exact.dlq_exact);

        let lost_and_duplicated = judge_on_mock(
            &truth(),
            &ledger(),
            &[output(0, A, "t1"), output(1, A, "t2"), output(2, B, "t9")],
            &[dead_letter("t1")],
            &committed,
        );
        assert_eq!(
            (lost_and_duplicated.lost, lost_and_duplicated.duplicated),
            (1, 1)
        );
        assert!(!lost_and_duplicated.holds());

        let mut wrong_spend = ledger();
        wrong_spend
            .spend_per_campaign
            .insert("c-1".to_owned(), (0, 2, 15));
        let no_dead_letter = judge_on_mock(
            &truth(),
            &wrong_spend,
            &[output(0, A, "t1"), output(2, B, "t2")],
            &[dead_letter("t9")],
            &committed,
        );
        assert!(!no_dead_letter.dlq_exact);
        assert!(
            no_dead_letter
                .violations
                .iter()
                .any(|violation| violation.starts_with("campaign_spend c-1")),
            "{:?}",
            no_dead_letter.violations
        );
    }
}
