//! The verdict on librdkafka's mock cluster, which has no transaction
//! semantics (aborted records stay visible, group offsets are discarded):
//! exactly-once is judged by the database and by the transaction ids the
//! service reported as committed. Outputs and dead letters count only inside
//! those transactions, and each distinct event must appear in exactly one.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::Scenario;
use crate::error::Result;

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

/// Every violation of exactly-once, judged by the database and by the
/// records of committed transactions only.
pub async fn mock_violations(scenario: &Scenario, service_log: &str) -> Result<Vec<String>> {
    let truth = super::input_truth(&scenario.bootstrap, &scenario.topics.input).await?;
    let mut violations = Vec::new();
    let (events, dead) = scenario.table_counts().await?;
    if events != truth.distinct_events as i64 {
        violations.push(format!(
            "ad_events has {events} rows, truth {}",
            truth.distinct_events
        ));
    }
    if dead != truth.invalid as i64 {
        violations.push(format!(
            "dead_letters has {dead} rows, truth {}",
            truth.invalid
        ));
    }
    let spend: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT campaign_id, sum(impressions)::bigint, sum(clicks)::bigint, sum(spend_micros)::bigint
           FROM campaign_spend GROUP BY campaign_id",
    )
    .fetch_all(&scenario.pool)
    .await?;
    let stored: HashMap<String, (i64, i64, i64)> = spend
        .into_iter()
        .map(|(campaign, i, c, s)| (campaign, (i, c, s)))
        .collect();
    for (campaign, totals) in &truth.per_campaign {
        let expected = (
            totals.impressions as i64,
            totals.clicks as i64,
            totals.spend_micros,
        );
        if stored.get(campaign) != Some(&expected) {
            violations.push(format!(
                "campaign_spend {campaign}: {:?}, truth {expected:?}",
                stored.get(campaign)
            ));
        }
    }

    let committed = committed_txn_ids(service_log);
    let in_committed = |record: &super::TopicRecord| {
        record
            .header_str("onceflow-txn-id")
            .is_some_and(|txn| committed.contains(txn))
    };
    let mut outputs: HashMap<Uuid, u32> = HashMap::new();
    for record in super::read_committed(&scenario.bootstrap, &scenario.topics.output).await? {
        if !in_committed(&record) {
            continue;
        }
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
            Some(event_id) => *outputs.entry(event_id).or_default() += 1,
            None => violations.push("an output record without an event id".to_owned()),
        }
    }
    for event_id in truth.events.keys() {
        match outputs.get(event_id).copied().unwrap_or(0) {
            1 => {}
            count => violations.push(format!("event {event_id}: {count} committed outputs")),
        }
    }
    if outputs.len() != truth.events.len() {
        violations.push(format!(
            "{} distinct events output, truth {}",
            outputs.len(),
            truth.events.len()
        ));
    }
    let mut dead_letters: HashMap<(String, String), u32> = HashMap::new();
    for record in super::read_committed(&scenario.bootstrap, &scenario.topics.dlq).await? {
        if in_committed(&record) {
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
    }
    if dead_letters.len() as u64 != truth.invalid || dead_letters.values().any(|count| *count != 1)
    {
        violations.push(format!(
            "{} dead-letter positions in committed transactions (truth {}), {} of them more than once",
            dead_letters.len(),
            truth.invalid,
            dead_letters.values().filter(|count| **count != 1).count()
        ));
    }
    Ok(violations)
}
