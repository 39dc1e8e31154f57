//! The exactly-once verdict: the contract's three guarantees checked from
//! the outside (topics read with `read_committed`, tables read with SQL from
//! PostgreSQL or from a SQLite file), against the ground truth of the input
//! topic.

use super::*;
use crate::bail;
use crate::error::{Context, Result};
use serde_json::Value;
use sqlx::{PgPool, SqlitePool};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// The topics of one pipeline under test.
#[derive(Debug, Clone)]
pub struct PipelineTopics {
    pub input: String,
    pub output: String,
    pub dlq: String,
}

/// The database a pipeline writes to, read by the verdict with its own SQL.
#[derive(Debug, Clone, Copy)]
pub enum Tables<'a> {
    Postgres(&'a PgPool),
    /// uuids as 16-byte blobs, timestamps as RFC 3339 text
    Sqlite(&'a SqlitePool),
}

/// A column of `consumer_offsets` the harness reads.
#[derive(Debug, Clone, Copy)]
enum OffsetColumn {
    NextOffset,
    KafkaCommitted,
}

/// One `ad_events` row as the verdict reads it: event id, campaign, ad,
/// kind, cost, `occurred_at` in µs since the epoch, its minute in seconds
/// since the epoch, source partition and offset.
type AdEventTuple = (Uuid, String, String, String, i64, i64, i64, i64, i64);

/// Seconds since the epoch of an RFC 3339 text, as µs.
fn rfc3339_micros(text: &str) -> Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("not an RFC 3339 timestamp: {text:?}"))?
        .timestamp_micros())
}

impl Tables<'_> {
    /// Rows of `table` (a fixed name of the schema).
    pub async fn count(&self, table: &'static str) -> Result<i64> {
        let sql = match table {
            "ad_events" => "SELECT count(*) FROM ad_events",
            "dead_letters" => "SELECT count(*) FROM dead_letters",
            "campaign_spend" => "SELECT count(*) FROM campaign_spend",
            "consumer_offsets" => "SELECT count(*) FROM consumer_offsets",
            other => bail!("no table {other} in the schema"),
        };
        Ok(match self {
            Tables::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(*pool).await?,
            Tables::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(*pool).await?,
        })
    }

    async fn ad_events(&self) -> Result<Vec<AdEventTuple>> {
        match self {
            Tables::Postgres(pool) => Ok(sqlx::query_as(
                "SELECT event_id, campaign_id::text, ad_id::text, kind::text, cost_micros::int8, \
                 (extract(epoch FROM occurred_at) * 1000000)::int8, \
                 (floor(extract(epoch FROM occurred_at) / 60) * 60)::int8, \
                 source_partition::int8, source_offset::int8 \
                 FROM ad_events",
            )
            .fetch_all(*pool)
            .await?),
            Tables::Sqlite(pool) => {
                type Row = (Uuid, String, String, String, i64, String, i64, i64);
                let rows: Vec<Row> = sqlx::query_as(
                    "SELECT event_id, campaign_id, ad_id, kind, cost_micros, occurred_at, \
                     source_partition, source_offset FROM ad_events",
                )
                .fetch_all(*pool)
                .await?;
                rows.into_iter()
                    .map(
                        |(id, campaign, ad, kind, cost, occurred_at, partition, offset)| {
                            let micros = rfc3339_micros(&occurred_at)?;
                            let minute = micros.div_euclid(60_000_000) * 60;
                            Ok((
                                id, campaign, ad, kind, cost, micros, minute, partition, offset,
                            ))
                        },
                    )
                    .collect()
            }
        }
    }

    /// `campaign_spend` rows: campaign, minute in seconds since the epoch,
    /// impressions, clicks, spend.
    async fn campaign_spend(&self) -> Result<Vec<(String, i64, i64, i64, i64)>> {
        match self {
            Tables::Postgres(pool) => Ok(sqlx::query_as(
                "SELECT campaign_id::text, extract(epoch FROM minute)::int8, impressions::int8, \
                 clicks::int8, spend_micros::int8 FROM campaign_spend",
            )
            .fetch_all(*pool)
            .await?),
            Tables::Sqlite(pool) => {
                let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
                    "SELECT campaign_id, minute, impressions, clicks, spend_micros \
                     FROM campaign_spend",
                )
                .fetch_all(*pool)
                .await?;
                rows.into_iter()
                    .map(|(campaign, minute, impressions, clicks, spend)| {
                        let micros = rfc3339_micros(&minute)?;
                        if micros.rem_euclid(1_000_000) != 0 {
                            bail!("campaign_spend {campaign} at {minute}: not a whole second");
                        }
                        Ok((campaign, micros / 1_000_000, impressions, clicks, spend))
                    })
                    .collect()
            }
        }
    }

    /// `consumer_offsets.next_offset` per partition of `topic` for `group_id`.
    pub async fn consumer_offsets(
        &self,
        group_id: &str,
        topic: &str,
    ) -> Result<HashMap<i32, Option<i64>>> {
        self.offsets_column(OffsetColumn::NextOffset, group_id, topic)
            .await
    }

    /// `consumer_offsets.kafka_committed_offset` (the Kafka offset onceflow
    /// confirmed committed) per partition of `topic` for `group_id`.
    pub async fn kafka_committed_offsets(
        &self,
        group_id: &str,
        topic: &str,
    ) -> Result<HashMap<i32, Option<i64>>> {
        self.offsets_column(OffsetColumn::KafkaCommitted, group_id, topic)
            .await
    }

    async fn offsets_column(
        &self,
        column: OffsetColumn,
        group_id: &str,
        topic: &str,
    ) -> Result<HashMap<i32, Option<i64>>> {
        let sql = match column {
            OffsetColumn::NextOffset => {
                "SELECT CAST(partition AS BIGINT), next_offset FROM consumer_offsets \
                 WHERE group_id = $1 AND topic = $2"
            }
            OffsetColumn::KafkaCommitted => {
                "SELECT CAST(partition AS BIGINT), kafka_committed_offset FROM consumer_offsets \
                 WHERE group_id = $1 AND topic = $2"
            }
        };
        let rows: Vec<(i64, Option<i64>)> = match self {
            Tables::Postgres(pool) => {
                sqlx::query_as(sql)
                    .bind(group_id)
                    .bind(topic)
                    .fetch_all(*pool)
                    .await?
            }
            Tables::Sqlite(pool) => {
                sqlx::query_as(sql)
                    .bind(group_id)
                    .bind(topic)
                    .fetch_all(*pool)
                    .await?
            }
        };
        rows.into_iter()
            .map(|(partition, next)| {
                let partition = i32::try_from(partition)
                    .with_context(|| format!("consumer_offsets partition {partition}"))?;
                Ok((partition, next))
            })
            .collect()
    }

    /// `dead_letters` rows: topic, partition, offset, error kind.
    async fn dead_letters(&self) -> Result<Vec<(String, i64, i64, String)>> {
        Ok(match self {
            Tables::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT source_topic::text, source_partition::int8, source_offset::int8, \
                     error_kind::text FROM dead_letters",
                )
                .fetch_all(*pool)
                .await?
            }
            Tables::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT source_topic, source_partition, source_offset, error_kind \
                     FROM dead_letters",
                )
                .fetch_all(*pool)
                .await?
            }
        })
    }
}

/// What [`check_exactly_once`] found: the counts and every violation of the
/// contract's guarantees, in words.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub truth: InputTruth,
    pub output_records: u64,
    pub output_distinct_events: u64,
    pub dlq_records: u64,
    pub ad_events_rows: u64,
    pub campaign_spend_rows: u64,
    pub dead_letter_rows: u64,
    pub violations: Vec<String>,
    /// Things worth knowing that are not violations.
    pub notes: Vec<String>,
}

impl Verdict {
    /// Whether every guarantee holds.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics listing every violation (the first 200) unless all guarantees hold.
    #[track_caller]
    pub fn assert_holds(&self) {
        if self.holds() {
            return;
        }
        let shown: Vec<&str> = self
            .violations
            .iter()
            .take(200)
            .map(String::as_str)
            .collect();
        let more = self.violations.len().saturating_sub(shown.len());
        panic!(
            "exactly-once violated ({} violations{}):\n  - {}\n{}",
            self.violations.len(),
            if more > 0 {
                format!(", {more} not shown")
            } else {
                String::new()
            },
            shown.join("\n  - "),
            self.summary()
        );
    }

    /// One line of counts.
    pub fn summary(&self) -> String {
        format!(
            "input: {} records, {} distinct valid events, {} repeats, {} invalid; \
             output: {} records ({} distinct); ad_events: {}; dlq: {}; dead_letters: {}; \
             campaign_spend rows: {}",
            self.truth.records,
            self.truth.distinct_events,
            self.truth.repeats,
            self.truth.invalid,
            self.output_records,
            self.output_distinct_events,
            self.ad_events_rows,
            self.dlq_records,
            self.dead_letter_rows,
            self.campaign_spend_rows
        )
    }

    /// Adds a violation for every count of a `produce` manifest (its JSON)
    /// that disagrees with what the input topic holds.
    pub fn compare_manifest(&mut self, manifest: &Value) {
        let truth = &self.truth;
        let counts: [(&str, i128); 8] = [
            ("records", i128::from(truth.records)),
            ("valid_records", i128::from(truth.valid_records)),
            ("distinct_events", i128::from(truth.distinct_events)),
            ("repeats", i128::from(truth.repeats)),
            ("invalid", i128::from(truth.invalid)),
            ("impressions", i128::from(truth.impressions)),
            ("clicks", i128::from(truth.clicks)),
            ("spend_micros_total", i128::from(truth.spend_micros_total)),
        ];
        for (field, expected) in counts {
            let claimed = manifest.get(field).and_then(Value::as_i64).map(i128::from);
            if claimed != Some(expected) {
                self.violations.push(format!(
                    "manifest {field} is {claimed:?}, the input topic says {expected}"
                ));
            }
        }
        let claimed: BTreeMap<String, Totals> = manifest
            .get("per_campaign")
            .and_then(Value::as_object)
            .map(|campaigns| {
                campaigns
                    .iter()
                    .map(|(campaign, t)| {
                        let totals = Totals {
                            impressions: t.get("impressions").and_then(Value::as_u64).unwrap_or(0),
                            clicks: t.get("clicks").and_then(Value::as_u64).unwrap_or(0),
                            spend_micros: t
                                .get("spend_micros")
                                .and_then(Value::as_i64)
                                .unwrap_or(0),
                        };
                        (campaign.clone(), totals)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if claimed != self.truth.per_campaign {
            self.violations.push(format!(
                "manifest per_campaign {claimed:?} differs from the input topic's {:?}",
                self.truth.per_campaign
            ));
        }
    }
}

/// Waits until the pipeline has caught up with the input as it is now: at
/// least one `ad_events` row and one output record per distinct valid event,
/// and one `dead_letters` row and one DLQ record per invalid record. Errors
/// (such as tables that do not exist yet) count as "not yet". Call
/// [`check_exactly_once`] afterwards: this only counts, it does not check.
pub async fn wait_for_catch_up(
    bootstrap: &str,
    pool: &PgPool,
    topics: &PipelineTopics,
    timeout: Duration,
) -> Result<()> {
    let truth = input_truth(bootstrap, &topics.input).await?;
    let events = i64::try_from(truth.distinct_events).unwrap_or(i64::MAX);
    let invalid = i64::try_from(truth.invalid).unwrap_or(i64::MAX);
    let what = format!(
        "the pipeline has caught up with {} distinct events and {} invalid records",
        truth.distinct_events, truth.invalid
    );
    wait_until(timeout, &what, || async {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ad_events")
            .fetch_one(pool)
            .await
            .context("cannot count ad_events")?;
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(pool)
            .await
            .context("cannot count dead_letters")?;
        if stored < events || dead < invalid {
            bail!("{stored} ad_events rows, {dead} dead_letters rows so far");
        }
        let (output, dlq) = tokio::try_join!(
            read_committed(bootstrap, &topics.output),
            read_committed(bootstrap, &topics.dlq),
        )?;
        let outputs = i64::try_from(output.len()).unwrap_or(i64::MAX);
        let dead_lettered = i64::try_from(dlq.len()).unwrap_or(i64::MAX);
        if outputs < events || dead_lettered < invalid {
            bail!("{outputs} output records, {dead_lettered} dlq records so far");
        }
        Ok(true)
    })
    .await
}

/// Reads a header as a decimal integer.
fn header_number(record: &TopicRecord, name: &str) -> Option<i64> {
    record.header_str(name).and_then(|v| v.parse().ok())
}

/// Whether `value` is a W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].chars().any(|c| c != '0')
        && parts[2].chars().any(|c| c != '0')
}

/// Checks the contract's guarantees for a pipeline that has caught up:
///
/// 1. every distinct valid `event_id` of the input has exactly one row in
///    `ad_events` (matching the input event and one of its input positions)
///    and exactly one record in the output topic (`read_committed`), and
///    `campaign_spend` holds exactly the totals of the distinct events (per
///    campaign and per `(campaign_id, minute)`), which also equal the totals
///    of the `ad_events` rows;
/// 2. every invalid input record has exactly one DLQ record (original key and
///    value, the contract's headers) and exactly one `dead_letters` row;
/// 3. nothing else appears: no output or row for an unknown event, no DLQ
///    record or `dead_letters` row for a valid or unknown position.
///
/// The ground truth comes from the input topic itself (see [`InputTruth`]).
pub async fn check_exactly_once(
    bootstrap: &str,
    pool: &PgPool,
    topics: &PipelineTopics,
) -> Result<Verdict> {
    check_exactly_once_in(bootstrap, Tables::Postgres(pool), topics).await
}

/// [`check_exactly_once`] for a pipeline writing to `tables`.
pub async fn check_exactly_once_in(
    bootstrap: &str,
    tables: Tables<'_>,
    topics: &PipelineTopics,
) -> Result<Verdict> {
    check_exactly_once_observed(bootstrap, tables, topics, None).await
}

/// [`check_exactly_once_in`], plus what a `read_committed` reader saw during
/// the run (see [`super::LiveReader`]): aborted reads, duplicates visible at
/// any moment, offsets that moved backwards.
pub async fn check_exactly_once_observed(
    bootstrap: &str,
    tables: Tables<'_>,
    topics: &PipelineTopics,
    live: Option<&super::LiveObservations>,
) -> Result<Verdict> {
    // A transaction a dead process left open hides every later record of
    // its partitions until the broker aborts it: judge what is decided.
    let (undecided_outputs, undecided_dead_letters) = tokio::try_join!(
        wait_until_decided(bootstrap, &topics.output, DECIDED_WITHIN),
        wait_until_decided(bootstrap, &topics.dlq, DECIDED_WITHIN),
    )?;
    let (input, output, dlq) = tokio::try_join!(
        read_committed(bootstrap, &topics.input),
        read_committed(bootstrap, &topics.output),
        read_committed(bootstrap, &topics.dlq),
    )?;
    let truth = InputTruth::from_records(&input);

    let mut violations = Vec::new();
    for (topic, undecided) in [
        (&topics.output, &undecided_outputs),
        (&topics.dlq, &undecided_dead_letters),
    ] {
        violations.extend(undecided.iter().map(|range| {
            format!(
                "liveness: {topic} partition {}: offsets {}..{} still undecided after {} s \
                 (a transaction left open hides them from read_committed readers)",
                range.partition,
                range.stable,
                range.end,
                DECIDED_WITHIN.as_secs()
            )
        }));
    }
    let mut notes = Vec::new();
    if truth.conflicting_repeats > 0 {
        notes.push(format!(
            "{} repeats carry different contents than the earlier copies of their event id: \
             each is judged by the copy its ad_events row holds",
            truth.conflicting_repeats
        ));
    }

    let (ad_events, resolved) = check_ad_events(&truth, tables, &mut violations).await?;
    let stored: HashSet<Uuid> = ad_events.iter().map(|row| row.event_id).collect();
    let output_distinct = check_output(&truth, &resolved, &stored, &output, &mut violations);
    if let Some(live) = live {
        violations.extend(super::live_anomalies(live, topics, &output, &dlq));
        notes.push(format!(
            "a read_committed reader ran during the run: {} records seen, {} offset samples",
            live.records.len(),
            live.samples
        ));
    }
    let campaign_spend_rows =
        check_campaign_spend(&resolved, &ad_events, tables, &mut violations).await?;
    check_dlq(&truth, &topics.input, &dlq, &mut violations);
    let dead_letter_rows =
        check_dead_letters(&truth, &topics.input, tables, &mut violations).await?;

    Ok(Verdict {
        output_records: output.len() as u64,
        output_distinct_events: output_distinct,
        dlq_records: dlq.len() as u64,
        ad_events_rows: ad_events.len() as u64,
        campaign_spend_rows,
        dead_letter_rows,
        truth,
        violations,
        notes,
    })
}

/// Output topic: one record per distinct valid event, with the contract's
/// key, value fields and headers. Returns the number of distinct event ids.
///
/// `resolved` holds, per event id, the input copy the store kept (the first
/// copy when there is no row): the output must carry that same copy.
fn check_output(
    truth: &InputTruth,
    resolved: &HashMap<Uuid, ValidEvent>,
    stored: &HashSet<Uuid>,
    output: &[TopicRecord],
    violations: &mut Vec<String>,
) -> u64 {
    let mut seen: HashMap<Uuid, (i32, i64)> = HashMap::new();
    for record in output {
        let at = format!("output {}/{}", record.partition, record.offset);
        let Some(json) = record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        else {
            violations.push(format!("{at}: value is not json"));
            continue;
        };
        let Some(event_id) = json
            .get("event_id")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            violations.push(format!("{at}: no uuid event_id in {json}"));
            continue;
        };
        if let Some((p, o)) = seen.insert(event_id, (record.partition, record.offset)) {
            violations.push(format!(
                "duplicate: {at}: event {event_id} output twice (also at {p}/{o})"
            ));
        }
        let Some(event) = resolved.get(&event_id) else {
            violations.push(format!("{at}: event {event_id} is not a valid input event"));
            continue;
        };
        let text = |name: &str| json.get(name).and_then(Value::as_str);
        let mismatches = [
            (
                "campaign_id",
                text("campaign_id") == Some(event.campaign_id.as_str()),
            ),
            ("ad_id", text("ad_id") == Some(event.ad_id.as_str())),
            ("kind", text("kind") == Some(event.kind.as_str())),
            (
                "cost_micros",
                json.get("cost_micros").and_then(Value::as_i64) == Some(event.cost_micros),
            ),
            (
                "occurred_at",
                text("occurred_at")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_micros())
                    == Some(event.occurred_at_micros),
            ),
            (
                "billed_minute",
                text("billed_minute")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_micros())
                    == Some(event.minute * 1_000_000),
            ),
        ];
        for (field, ok) in mismatches {
            if !ok {
                violations.push(format!(
                    "{at}: event {event_id} has a wrong or missing {field}: {json}"
                ));
            }
        }
        if record.key.as_deref() != Some(event.campaign_id.as_bytes()) {
            violations.push(format!(
                "{at}: key is not the campaign_id {}",
                event.campaign_id
            ));
        }
        if record
            .header_str("onceflow-txn-id")
            .and_then(|v| Uuid::parse_str(v).ok())
            .is_none()
        {
            violations.push(format!("{at}: no uuid onceflow-txn-id header"));
        }
        if !record.header_str("traceparent").is_some_and(is_traceparent) {
            violations.push(format!("{at}: no valid traceparent header"));
        }
    }
    let mut missing: Vec<&Uuid> = truth
        .events
        .keys()
        .filter(|id| !seen.contains_key(id))
        .collect();
    missing.sort();
    // Jepsen's names: committed in the database but never visible in Kafka
    // is `unseen`; nowhere at all is `lost`.
    for event_id in missing {
        if stored.contains(event_id) {
            violations.push(format!(
                "unseen: event {event_id} is committed in ad_events but has no output record"
            ));
        } else {
            violations.push(format!(
                "lost: event {event_id} has no output record and no ad_events row"
            ));
        }
    }
    seen.len() as u64
}

/// One `ad_events` row.
#[derive(Debug, Clone)]
pub(super) struct AdEventRow {
    pub(super) event_id: Uuid,
    campaign_id: String,
    kind: String,
    cost_micros: i64,
    minute: i64,
}

/// Every `ad_events` row must hold one of the input copies of its event id
/// (at one of that id's input positions). Returns the rows and, per
/// distinct event, the copy the store kept (the first input copy for an
/// event without a row or whose row matches no copy, both violations).
pub(super) async fn check_ad_events(
    truth: &InputTruth,
    tables: Tables<'_>,
    violations: &mut Vec<String>,
) -> Result<(Vec<AdEventRow>, HashMap<Uuid, ValidEvent>)> {
    let mut resolved: HashMap<Uuid, ValidEvent> = truth.events.clone();
    let rows = tables.ad_events().await.context("cannot read ad_events")?;
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for (
        event_id,
        campaign_id,
        ad_id,
        kind,
        cost_micros,
        occurred_micros,
        minute,
        partition,
        offset,
    ) in rows
    {
        let at = format!("ad_events row {event_id}");
        if !seen.insert(event_id) {
            violations.push(format!("{at}: event stored twice"));
        }
        match truth.variants.get(&event_id) {
            None => violations.push(format!("{at}: not a valid input event")),
            Some(variants) => {
                let stored = variants.iter().find(|event| {
                    (
                        campaign_id.as_str(),
                        ad_id.as_str(),
                        kind.as_str(),
                        cost_micros,
                        occurred_micros,
                    ) == (
                        event.campaign_id.as_str(),
                        event.ad_id.as_str(),
                        event.kind.as_str(),
                        event.cost_micros,
                        event.occurred_at_micros,
                    )
                });
                match stored {
                    Some(event) => {
                        if event.minute != minute {
                            violations.push(format!(
                                "{at}: stored occurred_at falls in minute {minute}, \
                                 the input's in {}",
                                event.minute
                            ));
                        }
                        resolved.insert(event_id, event.clone());
                    }
                    None => violations.push(format!(
                        "{at}: stored ({campaign_id:?}, {ad_id:?}, {kind}, {cost_micros}, \
                         {occurred_micros} µs) is none of the {} input copies {variants:?}",
                        variants.len()
                    )),
                }
                let position = i32::try_from(partition).ok().map(|p| (p, offset));
                let known = truth.positions.get(&event_id);
                if !position.is_some_and(|pos| known.is_some_and(|k| k.contains(&pos))) {
                    violations.push(format!(
                        "{at}: source position {partition}/{offset} does not hold this \
                             event (it is at {known:?})"
                    ));
                }
            }
        }
        out.push(AdEventRow {
            event_id,
            campaign_id,
            kind,
            cost_micros,
            minute,
        });
    }
    let mut missing: Vec<&Uuid> = truth
        .events
        .keys()
        .filter(|id| !seen.contains(id))
        .collect();
    missing.sort();
    for event_id in missing {
        violations.push(format!("event {event_id} has no ad_events row"));
    }
    Ok((out, resolved))
}

/// `campaign_spend`, cell by cell (campaign, minute): equal to the totals
/// of the stored rows and to the totals of the input events as the store
/// kept them (`resolved`). Never skipped.
pub(super) async fn check_campaign_spend(
    resolved: &HashMap<Uuid, ValidEvent>,
    ad_events: &[AdEventRow],
    tables: Tables<'_>,
    violations: &mut Vec<String>,
) -> Result<u64> {
    let rows = tables
        .campaign_spend()
        .await
        .context("cannot read campaign_spend")?;
    let row_count = rows.len() as u64;

    let mut per_minute: BTreeMap<(String, i64), Totals> = BTreeMap::new();
    for (campaign_id, minute, impressions, clicks, spend_micros) in rows {
        if minute.rem_euclid(60) != 0 {
            violations.push(format!(
                "campaign_spend {campaign_id} at {minute}: minute is not whole"
            ));
        }
        let totals = per_minute.entry((campaign_id, minute)).or_default();
        totals.impressions += u64::try_from(impressions).unwrap_or(u64::MAX);
        totals.clicks += u64::try_from(clicks).unwrap_or(u64::MAX);
        totals.spend_micros += spend_micros;
    }
    per_minute.retain(|_, totals| !totals.is_zero());

    // Counted once: campaign_spend equals the totals of the stored events.
    let mut from_rows: BTreeMap<(String, i64), Totals> = BTreeMap::new();
    for row in ad_events {
        from_rows
            .entry((row.campaign_id.clone(), row.minute))
            .or_default()
            .add(&row.kind, row.cost_micros);
    }
    compare_totals(
        "campaign_spend vs ad_events",
        &per_minute,
        &from_rows,
        describe_minute,
        violations,
    );

    let mut from_input: BTreeMap<(String, i64), Totals> = BTreeMap::new();
    for event in resolved.values() {
        from_input
            .entry((event.campaign_id.clone(), event.minute))
            .or_default()
            .add(&event.kind, event.cost_micros);
    }
    compare_totals(
        "campaign_spend per minute vs input",
        &per_minute,
        &from_input,
        describe_minute,
        violations,
    );
    Ok(row_count)
}

/// `c-1 at 2026-11-26T10:15:00Z`.
fn describe_minute((campaign_id, minute): &(String, i64)) -> String {
    match chrono::DateTime::from_timestamp(*minute, 0) {
        Some(at) => format!(
            "{campaign_id} at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("{campaign_id} at epoch second {minute}"),
    }
}

fn compare_totals<K: Ord>(
    what: &str,
    found: &BTreeMap<K, Totals>,
    expected: &BTreeMap<K, Totals>,
    describe: impl Fn(&K) -> String,
    violations: &mut Vec<String>,
) {
    let keys: BTreeSet<&K> = found.keys().chain(expected.keys()).collect();
    for key in keys {
        let have = found.get(key).copied().unwrap_or_default();
        let want = expected.get(key).copied().unwrap_or_default();
        if have != want {
            violations.push(format!(
                "{what}: {} has {have}, expected {want}",
                describe(key)
            ));
        }
    }
}

/// DLQ topic: one record per invalid input record, original bytes, headers.
fn check_dlq(
    truth: &InputTruth,
    input_topic: &str,
    dlq: &[TopicRecord],
    violations: &mut Vec<String>,
) {
    let mut seen: HashMap<(i32, i64), (i32, i64)> = HashMap::new();
    for record in dlq {
        let at = format!("dlq {}/{}", record.partition, record.offset);
        for header in [
            "onceflow-error-kind",
            "onceflow-error",
            "onceflow-source-topic",
            "onceflow-source-partition",
            "onceflow-source-offset",
            "traceparent",
        ] {
            if record.header_count(header) != 1 {
                violations.push(format!(
                    "{at}: header {header} appears {} times",
                    record.header_count(header)
                ));
            }
        }
        if record
            .header_str("onceflow-error")
            .is_some_and(|e| e.contains('\n'))
        {
            violations.push(format!("{at}: onceflow-error is not one line"));
        }
        if !record.header_str("traceparent").is_some_and(is_traceparent) {
            violations.push(format!("{at}: traceparent header is not w3c"));
        }
        if record.header_str("onceflow-source-topic") != Some(input_topic) {
            violations.push(format!(
                "{at}: source topic {:?} is not {input_topic}",
                record.header_str("onceflow-source-topic")
            ));
            continue;
        }
        let partition =
            header_number(record, "onceflow-source-partition").and_then(|p| i32::try_from(p).ok());
        let offset = header_number(record, "onceflow-source-offset");
        let (Some(partition), Some(offset)) = (partition, offset) else {
            violations.push(format!("{at}: source partition or offset is not a number"));
            continue;
        };
        let position = (partition, offset);
        if let Some((p, o)) = seen.insert(position, (record.partition, record.offset)) {
            violations.push(format!(
                "{at}: source {partition}/{offset} dead-lettered twice (also at {p}/{o})"
            ));
        }
        let Some(invalid) = truth.invalid_records.get(&position) else {
            violations.push(format!(
                "{at}: source {partition}/{offset} is not an invalid input record"
            ));
            continue;
        };
        let kind = record.header_str("onceflow-error-kind");
        if kind != Some(invalid.error_kind) {
            violations.push(format!(
                "{at}: error kind {kind:?} for source {partition}/{offset}, the contract \
                     implies {} ({})",
                invalid.error_kind, invalid.reason
            ));
        }
        if record.key != invalid.key {
            violations.push(format!("{at}: key differs from the original"));
        }
        if record.value.as_deref().unwrap_or_default()
            != invalid.value.as_deref().unwrap_or_default()
        {
            violations.push(format!("{at}: value differs from the original"));
        }
    }
    for (partition, offset) in truth.invalid_records.keys() {
        if !seen.contains_key(&(*partition, *offset)) {
            violations.push(format!(
                "invalid input {partition}/{offset} has no dlq record"
            ));
        }
    }
}

pub(super) async fn check_dead_letters(
    truth: &InputTruth,
    input_topic: &str,
    tables: Tables<'_>,
    violations: &mut Vec<String>,
) -> Result<u64> {
    let rows = tables
        .dead_letters()
        .await
        .context("cannot read dead_letters")?;
    let count = rows.len() as u64;
    let mut seen: HashSet<(i32, i64)> = HashSet::new();
    for (topic, partition, offset, error_kind) in rows {
        let at = format!("dead_letters row {topic}/{partition}/{offset}");
        if topic != input_topic {
            violations.push(format!("{at}: not from the input topic {input_topic}"));
            continue;
        }
        let Ok(partition) = i32::try_from(partition) else {
            violations.push(format!("{at}: partition out of range"));
            continue;
        };
        if !seen.insert((partition, offset)) {
            violations.push(format!("{at}: stored twice"));
        }
        match truth.invalid_records.get(&(partition, offset)) {
            None => violations.push(format!("{at}: not an invalid input record")),
            Some(invalid) if invalid.error_kind != error_kind => violations.push(format!(
                "{at}: error kind {error_kind}, the contract implies {}",
                invalid.error_kind
            )),
            Some(_) => {}
        }
    }
    for (partition, offset) in truth.invalid_records.keys() {
        if !seen.contains(&(*partition, *offset)) {
            violations.push(format!(
                "invalid input {partition}/{offset} has no dead_letters row"
            ));
        }
    }
    Ok(count)
}
