//! Property tests of batch classification and poison isolation, against
//! both stores (PostgreSQL: a fresh database per case, dropped afterwards;
//! SQLite: a file in a temporary directory).
//!
//! Each case is a generated history of partition batches written through a
//! real database writer actor (so refused records are isolated exactly as in
//! production): upstream repeats in a batch, across batches and across
//! partitions; own replays (a batch re-written after a rewind, Kafka having
//! committed a random prefix of it); invalid records (made by the real
//! validation from bad payloads: not JSON, a NUL in an id, a 129-character
//! id, a time outside the years 0000–9999 in UTC); far but valid dates; and
//! events the store refuses (a negative cost, which both schemas' CHECK
//! refuses), alone or repeated. A model written from the contract predicts
//! every write's outcome, and the database afterwards:
//!
//! - each distinct storable event id has exactly one row, at the position of
//!   the first write that committed it; refused ones have none;
//! - spend is counted exactly once per stored event;
//! - across all writes exactly one output is owed per distinct event by the
//!   first commit, an own replay owes it again only when it replays that
//!   same position (at or past the replay's `outputs_from`), and an upstream
//!   repeat never does;
//! - every invalid or refused record position has exactly one dead-letter
//!   row, of the right kind, owed once by its first write and again only by
//!   a replay of it;
//! - `next_offset` never moves backwards and equals the highest batch end;
//! - a refused record never opens the circuit breaker.
//!
//! 32 cases per store by default (`PROPTEST_CASES` overrides it); set
//! `PROPTEST_RNG_SEED` to replay one sequence of cases.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use onceflow_actors::ActorNames;
use onceflow_actors::actors::circuit_breaker::{CircuitBreaker, CircuitBreakerArgs};
use onceflow_actors::actors::db_writer::{DbWriter, DbWriterArgs};
use onceflow_actors::messages::circuit_breaker::CircuitBreakerMsg;
use onceflow_actors::messages::db_writer::{DbWriterMsg, WriteRequest, WrittenBatch};
use onceflow_actors::model::batch::PartitionBatch;
use onceflow_actors::model::record::{ConsumedRecord, ProcessedRecord, RecordEffect};
use onceflow_actors::processing::process_record;
use onceflow_actors::store::{BatchWriteOutcome, PostgresStore, Store};
use onceflow_actors::{BreakerState, PipelineStatus};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use ractor::ActorRef;
use uuid::Uuid;

const GROUP: &str = "g";
const TOPIC: &str = "ad-events";
const PARTITIONS: i32 = 3;
const UNIVERSE: usize = 8;

/// One distinct upstream event: the same id always carries the same fields.
#[derive(Debug, Clone)]
struct EventSpec {
    campaign: &'static str,
    click: bool,
    cost: i64,
    occurred_at: &'static str,
    /// the store refuses it (a negative cost; validation never lets one
    /// through, so it stands for any value a store refuses)
    refused: bool,
}

/// One record of a generated batch.
#[derive(Debug, Clone, Copy)]
enum RecordSpec {
    /// the event of that index in the universe
    Event(usize),
    /// an invalid payload of that index in [`INVALID_PAYLOADS`]
    Invalid(usize),
}

/// One step of a history.
#[derive(Debug, Clone)]
enum Step {
    /// a new batch at the partition's next offset
    Fresh {
        partition: i32,
        records: Vec<RecordSpec>,
    },
    /// an earlier fresh batch again (a rewind), Kafka having committed its
    /// first `committed` records
    Replay { of: usize, committed: usize },
}

const CAMPAIGNS: [&str; 3] = ["a", "b", "é-c"];
const TIMES: [&str; 5] = [
    "2026-11-26T10:15:30.123Z",
    "2026-11-26T10:15:59.999999+00:00",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "1500-03-01T12:00:00.5-05:00",
];

fn invalid_payloads() -> Vec<(Vec<u8>, &'static str)> {
    let valid = |field: &str, value: serde_json::Value| {
        let mut json = serde_json::json!({
            "event_id": Uuid::new_v4().to_string(), "campaign_id": "a", "ad_id": "ad",
            "kind": "click", "cost_micros": 1, "occurred_at": "2026-11-26T10:15:30Z",
        });
        json[field] = value;
        json.to_string().into_bytes()
    };
    vec![
        (b"{not json".to_vec(), "invalid-json"),
        (valid("campaign_id", "c-\u{0}".into()), "invalid-event"),
        (valid("ad_id", "x".repeat(129).into()), "invalid-event"),
        (
            valid("occurred_at", "9999-12-31T23:59:59-00:01".into()),
            "invalid-event",
        ),
    ]
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    (
        0..CAMPAIGNS.len(),
        any::<bool>(),
        0..1_000_i64,
        0..TIMES.len(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(campaign, click, cost, time, refused)| EventSpec {
            campaign: CAMPAIGNS[campaign],
            click,
            cost,
            occurred_at: TIMES[time],
            refused,
        })
}

fn record_spec() -> impl Strategy<Value = RecordSpec> {
    prop_oneof![
        5 => (0..UNIVERSE).prop_map(RecordSpec::Event),
        1 => (0..4_usize).prop_map(RecordSpec::Invalid),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..PARTITIONS, prop::collection::vec(record_spec(), 1..7))
            .prop_map(|(partition, records)| Step::Fresh { partition, records }),
        1 => (0..8_usize, 0..8_usize).prop_map(|(of, committed)| Step::Replay { of, committed }),
    ]
}

fn history() -> impl Strategy<Value = (Vec<EventSpec>, Vec<Step>)> {
    (
        prop::collection::vec(event_spec(), UNIVERSE),
        prop::collection::vec(step(), 1..7),
    )
}

/// What the model expects of one write.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    /// owed positions: (offset, is an event)
    owed: BTreeSet<(i64, bool)>,
    new_events: u64,
    replayed_events: u64,
    duplicates: u64,
    dead_letters: u64,
}

/// The contract's view of the database after a history.
#[derive(Debug, Default)]
struct Model {
    /// event id → (partition, offset) where it is stored
    stored: HashMap<Uuid, (i32, i64)>,
    /// (partition, offset) → error kind
    dead: BTreeMap<(i32, i64), String>,
    /// campaign → (impressions, clicks, spend)
    spend: BTreeMap<String, (i64, i64, i64)>,
    next_offset: HashMap<i32, i64>,
    /// event id → times owed by a first write
    owed_by_first_writes: HashMap<Uuid, u32>,
}

impl Model {
    fn apply(
        &mut self,
        universe: &[EventSpec],
        ids: &[Uuid],
        batch: &PartitionBatch,
        specs: &[RecordSpec],
        invalid: &[(Vec<u8>, &'static str)],
        first_write: bool,
    ) -> Expected {
        let mut expected = Expected::default();
        let mut seen = HashSet::new();
        for (record, spec) in batch.records.iter().zip(specs) {
            let position = (batch.partition, record.offset);
            let owed = record.offset >= batch.outputs_from;
            match *spec {
                RecordSpec::Invalid(which) => {
                    expected.dead_letters += 1;
                    self.dead
                        .entry(position)
                        .or_insert_with(|| invalid[which].1.to_owned());
                    if owed {
                        expected.owed.insert((record.offset, false));
                    }
                }
                RecordSpec::Event(which) if universe[which].refused => {
                    expected.dead_letters += 1;
                    self.dead
                        .entry(position)
                        .or_insert_with(|| "processing".to_owned());
                    if owed {
                        expected.owed.insert((record.offset, false));
                    }
                }
                RecordSpec::Event(which) => {
                    let id = ids[which];
                    if !seen.insert(id) {
                        expected.duplicates += 1;
                        continue;
                    }
                    match self.stored.get(&id) {
                        None => {
                            expected.new_events += 1;
                            self.stored.insert(id, position);
                            let spec = &universe[which];
                            let cell = self.spend.entry(spec.campaign.to_owned()).or_default();
                            if spec.click {
                                cell.1 += 1;
                            } else {
                                cell.0 += 1;
                            }
                            cell.2 += spec.cost;
                        }
                        Some(stored) if *stored == position => expected.replayed_events += 1,
                        Some(_) => {
                            expected.duplicates += 1;
                            continue;
                        }
                    }
                    if owed {
                        expected.owed.insert((record.offset, true));
                        if first_write {
                            *self.owed_by_first_writes.entry(id).or_default() += 1;
                        }
                    }
                }
            }
        }
        let next = self.next_offset.entry(batch.partition).or_insert(i64::MIN);
        *next = (*next).max(batch.end_offset);
        expected
    }
}

fn record(
    universe: &[EventSpec],
    ids: &[Uuid],
    invalid: &[(Vec<u8>, &'static str)],
    partition: i32,
    offset: i64,
    spec: RecordSpec,
) -> ProcessedRecord {
    let payload = match spec {
        RecordSpec::Invalid(which) => invalid[which].0.clone(),
        RecordSpec::Event(which) => {
            let event = &universe[which];
            serde_json::json!({
                "event_id": ids[which].to_string(),
                "campaign_id": event.campaign,
                "ad_id": "ad",
                "kind": if event.click { "click" } else { "impression" },
                "cost_micros": event.cost,
                "occurred_at": event.occurred_at,
            })
            .to_string()
            .into_bytes()
        }
    };
    let mut processed = process_record(ConsumedRecord {
        partition,
        offset,
        key: None,
        payload: Some(payload),
        trace_headers: onceflow_actors::telemetry::carrier::TraceHeaders::none(),
        timestamp_ms: None,
    });
    if let (RecordSpec::Event(which), RecordEffect::Event { event, .. }) =
        (spec, &mut processed.effect)
        && universe[which].refused
    {
        event.cost_micros = -1;
    }
    processed
}

fn observed(batch: &PartitionBatch, outcome: &BatchWriteOutcome) -> Expected {
    Expected {
        owed: outcome
            .owed_records
            .iter()
            .map(|index| {
                let record = &batch.records[*index];
                (
                    record.offset,
                    matches!(record.effect, RecordEffect::Event { .. }),
                )
            })
            .collect(),
        new_events: outcome.new_events,
        replayed_events: outcome.replayed_events,
        duplicates: outcome.duplicates,
        dead_letters: outcome.dead_letters,
    }
}

/// A database writer and a breaker that opens at the first failure.
struct Writer {
    writer: ActorRef<DbWriterMsg>,
    breaker: ActorRef<CircuitBreakerMsg>,
    status: PipelineStatus,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

async fn start_writer(store: &Store) -> anyhow::Result<Writer> {
    let names = ActorNames::new(&format!("store-properties-{}", Uuid::new_v4()));
    let status = PipelineStatus::default();
    let (breaker, breaker_handle) = ractor::Actor::spawn(
        Some(names.circuit_breaker()),
        CircuitBreaker,
        CircuitBreakerArgs {
            store: store.clone(),
            status: status.clone(),
            names: names.clone(),
            failure_threshold: 1,
            cooldown: Duration::from_secs(600),
            max_cooldown: Duration::from_secs(600),
        },
    )
    .await?;
    let (writer, writer_handle) = ractor::Actor::spawn(
        None,
        DbWriter,
        DbWriterArgs {
            store: store.clone(),
            names,
            retry_attempts: 2,
            retry_backoff: Duration::from_millis(5),
        },
    )
    .await?;
    Ok(Writer {
        writer,
        breaker,
        status,
        handles: vec![breaker_handle, writer_handle],
    })
}

impl Writer {
    async fn write(&self, epoch: i64, batch: PartitionBatch) -> anyhow::Result<WrittenBatch> {
        let request = WriteRequest {
            group_id: GROUP.to_owned(),
            topic: TOPIC.to_owned(),
            owner_epoch: epoch,
            txn_id: Uuid::now_v7(),
            batch: Arc::new(batch),
            parent: tracing::Span::none(),
        };
        match self
            .writer
            .call(
                |port| DbWriterMsg::Write(request, port),
                Some(Duration::from_secs(60)),
            )
            .await?
        {
            ractor::rpc::CallResult::Success(written) => Ok(written?),
            other => anyhow::bail!("the db writer did not answer: {other:?}"),
        }
    }

    /// Stops both actors, the breaker after handling every report; returns
    /// its final state.
    async fn stop(self) -> anyhow::Result<BreakerState> {
        self.writer.stop(None);
        self.breaker
            .drain_and_wait(Some(Duration::from_secs(10)))
            .await?;
        for handle in self.handles {
            handle.await?;
        }
        Ok(self.status.breaker_state())
    }
}

async fn rows<T>(store: &Store, sql: &'static str) -> anyhow::Result<Vec<T>>
where
    T: Send + Unpin,
    for<'r> T:
        sqlx::FromRow<'r, sqlx::postgres::PgRow> + sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
{
    Ok(match store {
        Store::Postgres(pg) => sqlx::query_as(sql).fetch_all(pg.pool()).await?,
        Store::Sqlite(lite) => sqlx::query_as(sql).fetch_all(lite.pool()).await?,
    })
}

/// Runs one generated history on `store` and checks it against the model.
async fn check_history(
    store: &Store,
    universe: &[EventSpec],
    steps: &[Step],
) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = (0..UNIVERSE).map(|_| Uuid::new_v4()).collect();
    let invalid = invalid_payloads();
    let mut epochs = HashMap::new();
    for partition in 0..PARTITIONS {
        epochs.insert(
            partition,
            store
                .claim_partition(GROUP, TOPIC, partition, "i")
                .await?
                .owner_epoch,
        );
    }
    let writer = start_writer(store).await?;
    let mut model = Model::default();
    let mut fresh: Vec<(PartitionBatch, Vec<RecordSpec>)> = Vec::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    for (number, step) in steps.iter().enumerate() {
        let (batch, specs, first_write) = match step {
            Step::Fresh { partition, records } => {
                let start = *next.entry(*partition).or_insert(100);
                let batch = PartitionBatch {
                    partition: *partition,
                    start_offset: start,
                    end_offset: start + records.len() as i64,
                    outputs_from: start,
                    records: records
                        .iter()
                        .enumerate()
                        .map(|(index, spec)| {
                            record(
                                universe,
                                &ids,
                                &invalid,
                                *partition,
                                start + index as i64,
                                *spec,
                            )
                        })
                        .collect(),
                };
                next.insert(*partition, batch.end_offset);
                fresh.push((batch.clone(), records.clone()));
                (batch, records.clone(), true)
            }
            Step::Replay { of, committed } => {
                if fresh.is_empty() {
                    continue;
                }
                let (original, specs) = &fresh[of % fresh.len()];
                let mut batch = original.clone();
                batch.outputs_from =
                    batch.start_offset + (*committed as i64).min(batch.records.len() as i64);
                (batch, specs.clone(), false)
            }
        };
        let expected = model.apply(universe, &ids, &batch, &specs, &invalid, first_write);
        // The written batch is the one committed: refused events in it have
        // become `processing` dead letters.
        let written = writer
            .write(epochs[&batch.partition], batch.clone())
            .await?;
        let did = observed(&written.batch, &written.outcome);
        anyhow::ensure!(
            did == expected,
            "step {number} ({step:?}): the write did\n  {did:?}\nthe contract says\n  {expected:?}"
        );
        let stored = store
            .read_partition(GROUP, TOPIC, batch.partition)
            .await?
            .and_then(|stored| stored.next_offset);
        anyhow::ensure!(
            stored == model.next_offset.get(&batch.partition).copied(),
            "step {number}: next_offset {stored:?}, the highest batch end is {:?}",
            model.next_offset.get(&batch.partition)
        );
    }
    let breaker = writer.stop().await?;
    anyhow::ensure!(
        breaker == BreakerState::Closed,
        "refused records opened the breaker"
    );

    // One row per stored event, at its first commit's position.
    let events: Vec<(Uuid, i32, i64)> = rows(
        store,
        "SELECT event_id, source_partition, source_offset FROM ad_events",
    )
    .await?;
    let in_db: HashMap<Uuid, (i32, i64)> = events
        .iter()
        .map(|(id, partition, offset)| (*id, (*partition, *offset)))
        .collect();
    anyhow::ensure!(events.len() == in_db.len(), "an event id has two rows");
    anyhow::ensure!(
        in_db == model.stored,
        "ad_events {in_db:?}, the contract says {:?}",
        model.stored
    );
    // Exactly one output owed per distinct event by the first writes.
    for id in model.stored.keys() {
        let times = model.owed_by_first_writes.get(id).copied().unwrap_or(0);
        anyhow::ensure!(times == 1, "event {id} owed {times} times by first writes");
    }
    // Spend counted once per stored event.
    let spend: Vec<(String, i64, i64, i64)> = rows(
        store,
        "SELECT campaign_id, CAST(sum(impressions) AS bigint), CAST(sum(clicks) AS bigint),
                CAST(sum(spend_micros) AS bigint)
           FROM campaign_spend GROUP BY campaign_id ORDER BY campaign_id",
    )
    .await?;
    let spend: BTreeMap<String, (i64, i64, i64)> = spend
        .into_iter()
        .map(|(campaign, impressions, clicks, micros)| (campaign, (impressions, clicks, micros)))
        .collect();
    anyhow::ensure!(
        spend == model.spend,
        "campaign_spend {spend:?}, the contract says {:?}",
        model.spend
    );
    // One dead-letter row per invalid or refused position, of its kind.
    let dead: Vec<(i32, i64, String)> = rows(
        store,
        "SELECT source_partition, source_offset, error_kind FROM dead_letters",
    )
    .await?;
    let dead: BTreeMap<(i32, i64), String> = dead
        .into_iter()
        .map(|(partition, offset, kind)| ((partition, offset), kind))
        .collect();
    anyhow::ensure!(
        dead == model.dead,
        "dead_letters {dead:?}, the contract says {:?}",
        model.dead
    );
    Ok(())
}

fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/store_properties.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 32;
    }
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A migrated store on a fresh PostgreSQL database, and its name.
async fn postgres_store() -> anyhow::Result<(Store, String)> {
    let (url, pool) = common::fresh_database().await?;
    let name = url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .unwrap_or_default()
        .to_owned();
    let store = Store::from(PostgresStore::from_pool(pool));
    store.migrate().await?;
    Ok((store, name))
}

async fn drop_postgres(store: Store, name: &str) -> anyhow::Result<()> {
    if let Store::Postgres(pg) = &store {
        pg.pool().close().await;
    }
    let admin_url = std::env::var("CHAOS_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = sqlx::PgPool::connect(&admin_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    Ok(())
}

fn outcome(result: anyhow::Result<()>) -> Result<(), TestCaseError> {
    result.map_err(|error| TestCaseError::fail(format!("{error:#}")))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn postgres_histories_keep_the_contract((universe, steps) in history()) {
        let runtime = runtime();
        outcome(runtime.block_on(async {
            let (store, name) = postgres_store().await?;
            let checked = check_history(&store, &universe, &steps).await;
            drop_postgres(store, &name).await?;
            checked
        }))?;
    }

    #[test]
    fn sqlite_histories_keep_the_contract((universe, steps) in history()) {
        let runtime = runtime();
        outcome(runtime.block_on(async {
            let directory = tempfile::tempdir()?;
            let url = format!("sqlite://{}", directory.path().join("onceflow.db").display());
            let store = Store::connect_lazy(
                &url,
                4,
                Duration::from_secs(30),
                Duration::from_secs(10),
                Duration::from_secs(10),
            )?;
            store.migrate().await?;
            check_history(&store, &universe, &steps).await
        }))?;
    }
}
