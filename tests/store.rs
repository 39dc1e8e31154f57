//! The store test suite against real databases: every case runs on
//! PostgreSQL (a fresh database on the test server) and on SQLite (a file
//! in a temporary directory), as `postgres::<case>` and `sqlite::<case>`.
//! Own replay versus upstream repeat, spend counted once (one row per
//! campaign minute), dead letters once, offsets never backwards, owner-epoch
//! fencing, confirmed Kafka offsets, refused rows isolated, and parallel
//! writers that do not deadlock. SQLite only: a write that waits longer than
//! `busy_timeout` for a locked file fails transiently and writes nothing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use onceflow_actors::ad_event::{AdEvent, AdEventKind, DeadLetterKind};
use onceflow_actors::partition_batch::PartitionBatch;
use onceflow_actors::processed_record::{ProcessedRecord, RecordEffect, output_value};
use onceflow_actors::spans::RecordSpan;
use onceflow_actors::store::{KafkaCommitConfirmation, PostgresStore, Store};
use onceflow_actors::store_error::StoreError;
use onceflow_actors::trace_context::TraceContext;
use sqlx::Connection;
use uuid::Uuid;

const GROUP: &str = "g";
const TOPIC: &str = "ad-events";

fn event_record(
    partition: i32,
    offset: i64,
    event_id: Uuid,
    campaign: &str,
    kind: AdEventKind,
    cost: i64,
) -> ProcessedRecord {
    let event = AdEvent {
        event_id,
        campaign_id: campaign.to_owned(),
        ad_id: "ad-1".to_owned(),
        kind,
        cost_micros: cost,
        occurred_at: Utc
            .with_ymd_and_hms(2026, 11, 26, 10, 15, 30)
            .single()
            .expect("valid time"),
    };
    ProcessedRecord {
        partition,
        offset,
        key: Some(campaign.as_bytes().to_vec()),
        payload: None,
        trace: TraceContext::new_root(),
        span: RecordSpan::none(),
        effect: RecordEffect::Event {
            output_value: output_value(&event),
            event,
        },
    }
}

fn dead_letter_record(partition: i32, offset: i64) -> ProcessedRecord {
    ProcessedRecord {
        partition,
        offset,
        key: None,
        payload: Some(b"{".to_vec()),
        trace: TraceContext::new_root(),
        span: RecordSpan::none(),
        effect: RecordEffect::DeadLetter {
            kind: DeadLetterKind::InvalidJson,
            reason: "value is not json".to_owned(),
        },
    }
}

fn batch(
    partition: i32,
    start: i64,
    end: i64,
    outputs_from: i64,
    records: Vec<ProcessedRecord>,
) -> PartitionBatch {
    PartitionBatch {
        partition,
        start_offset: start,
        end_offset: end,
        outputs_from,
        records,
    }
}

/// Generates, for each case, `postgres::<case>` and `sqlite::<case>`.
macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::$case(super::postgres_store().await?).await
                }
            )*
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let directory = tempfile::tempdir()?;
                    let store = super::sqlite_store(&super::sqlite_url(&directory), super::Duration::from_secs(30))
                        .await?;
                    super::$case(store).await
                }
            )*
        }
    };
}

store_suite!(
    own_replay_owes_its_output_and_upstream_repeat_does_not,
    offsets_never_move_backwards_and_remember_the_group_start,
    a_stale_owner_epoch_is_fenced_and_writes_nothing,
    parallel_writers_with_overlapping_events_do_not_deadlock,
    rows_the_database_refuses_are_found_without_writing_anything,
    kafka_commit_confirmations_never_move_backwards_and_need_the_current_epoch,
    one_spend_row_per_campaign_minute_across_batches,
);

/// A migrated store on a fresh PostgreSQL database.
async fn postgres_store() -> anyhow::Result<Store> {
    let (_, pool) = common::fresh_database().await?;
    let store = Store::from(PostgresStore::from_pool(pool));
    store.migrate().await?;
    Ok(store)
}

/// The URL of a database file in `directory`.
fn sqlite_url(directory: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}",
        directory.path().join("onceflow.db").display()
    )
}

/// A migrated SQLite store, built the way `onceflow run` builds it.
async fn sqlite_store(url: &str, busy_timeout: Duration) -> anyhow::Result<Store> {
    let store = Store::connect_lazy(
        url,
        8,
        busy_timeout,
        Duration::from_secs(10),
        Duration::from_secs(10),
    )?;
    assert!(matches!(store, Store::Sqlite(_)), "{url} must be sqlite");
    store.migrate().await?;
    Ok(store)
}

/// One integer from `sql` (valid on both backends), on whichever pool the
/// store has.
async fn count(store: &Store, sql: &'static str) -> anyhow::Result<i64> {
    scalar(store, sql, None).await
}

async fn scalar(store: &Store, sql: &'static str, bind: Option<&str>) -> anyhow::Result<i64> {
    Ok(match store {
        Store::Postgres(store) => {
            sqlx::query_scalar(sql)
                .bind(bind)
                .fetch_one(store.pool())
                .await?
        }
        Store::Sqlite(store) => {
            sqlx::query_scalar(sql)
                .bind(bind)
                .fetch_one(store.pool())
                .await?
        }
    })
}

/// Impressions, clicks and spend of a campaign, over all its minutes.
async fn spend(store: &Store, campaign: &str) -> anyhow::Result<(i64, i64, i64)> {
    Ok((
        scalar(
            store,
            "SELECT CAST(coalesce(sum(impressions), 0) AS bigint) FROM campaign_spend WHERE campaign_id = $1",
            Some(campaign),
        )
        .await?,
        scalar(
            store,
            "SELECT CAST(coalesce(sum(clicks), 0) AS bigint) FROM campaign_spend WHERE campaign_id = $1",
            Some(campaign),
        )
        .await?,
        scalar(
            store,
            "SELECT CAST(coalesce(sum(spend_micros), 0) AS bigint) FROM campaign_spend WHERE campaign_id = $1",
            Some(campaign),
        )
        .await?,
    ))
}

async fn own_replay_owes_its_output_and_upstream_repeat_does_not(
    store: Store,
) -> anyhow::Result<()> {
    let epoch = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    store.claim_partition(GROUP, TOPIC, 1, "i").await?;
    let epoch_p1 = store
        .read_partition(GROUP, TOPIC, 1)
        .await?
        .expect("claimed")
        .owner_epoch;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let first = batch(
        0,
        0,
        4,
        i64::MIN,
        vec![
            event_record(0, 0, a, "c", AdEventKind::Impression, 10),
            event_record(0, 1, b, "c", AdEventKind::Click, 20),
            event_record(0, 2, a, "c", AdEventKind::Impression, 10), // upstream repeat in the batch
            dead_letter_record(0, 3),
        ],
    );

    let outcome = store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &first)
        .await?;
    assert_eq!(
        (
            outcome.new_events,
            outcome.replayed_events,
            outcome.duplicates,
            outcome.dead_letters
        ),
        (2, 0, 1, 1)
    );
    assert_eq!(outcome.owed_records, vec![0, 1, 3]);
    assert_eq!(spend(&store, "c").await?, (1, 1, 30));

    // The Kafka transaction aborted: the same batch again is our own replay.
    let replay = store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &first)
        .await?;
    assert_eq!(
        (replay.new_events, replay.replayed_events, replay.duplicates),
        (0, 2, 1)
    );
    assert_eq!(
        replay.owed_records,
        vec![0, 1, 3],
        "outputs and dead letter still owed"
    );
    assert_eq!(spend(&store, "c").await?, (1, 1, 30), "spend counted once");

    // Kafka had committed up to 4: the replay owes nothing.
    let committed = batch(0, 0, 4, 4, first.records.clone());
    let nothing = store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &committed)
        .await?;
    assert!(nothing.owed_records.is_empty());

    // The same event on another partition is an upstream repeat.
    let other = batch(
        1,
        0,
        1,
        i64::MIN,
        vec![event_record(1, 0, b, "c", AdEventKind::Click, 20)],
    );
    let repeat = store
        .write_batch(GROUP, TOPIC, epoch_p1, Uuid::now_v7(), &other)
        .await?;
    assert_eq!(
        (repeat.new_events, repeat.replayed_events, repeat.duplicates),
        (0, 0, 1)
    );
    assert!(repeat.owed_records.is_empty());

    let rows = count(&store, "SELECT count(*) FROM ad_events").await?;
    let dead = count(&store, "SELECT count(*) FROM dead_letters").await?;
    assert_eq!((rows, dead), (2, 1));
    Ok(())
}

async fn offsets_never_move_backwards_and_remember_the_group_start(
    store: Store,
) -> anyhow::Result<()> {
    let epoch = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    let later = batch(
        0,
        5,
        10,
        i64::MIN,
        vec![event_record(
            0,
            9,
            Uuid::new_v4(),
            "c",
            AdEventKind::Click,
            1,
        )],
    );
    store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &later)
        .await?;
    let earlier = batch(
        0,
        0,
        5,
        i64::MIN,
        vec![event_record(
            0,
            4,
            Uuid::new_v4(),
            "c",
            AdEventKind::Click,
            1,
        )],
    );
    store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &earlier)
        .await?;
    let stored = store.read_partition(GROUP, TOPIC, 0).await?.expect("row");
    assert_eq!(stored.next_offset, Some(10));
    assert_eq!(
        stored.start_offset,
        Some(5),
        "the first batch's start is the group start"
    );
    Ok(())
}

async fn a_stale_owner_epoch_is_fenced_and_writes_nothing(store: Store) -> anyhow::Result<()> {
    let old_epoch = store
        .claim_partition(GROUP, TOPIC, 0, "zombie")
        .await?
        .owner_epoch;
    let new_epoch = store
        .claim_partition(GROUP, TOPIC, 0, "new-owner")
        .await?
        .owner_epoch;
    assert_eq!(new_epoch, old_epoch + 1);
    let zombie = batch(
        0,
        0,
        2,
        i64::MIN,
        vec![
            event_record(0, 0, Uuid::new_v4(), "z", AdEventKind::Click, 5),
            dead_letter_record(0, 1),
        ],
    );
    let error = store
        .write_batch(GROUP, TOPIC, old_epoch, Uuid::now_v7(), &zombie)
        .await
        .expect_err("stale epoch must be fenced");
    assert!(
        matches!(error, StoreError::Fenced { partition: 0, .. }),
        "{error}"
    );
    assert!(!error.is_retriable());
    let rows = count(&store, "SELECT count(*) FROM ad_events").await?;
    let dead = count(&store, "SELECT count(*) FROM dead_letters").await?;
    assert_eq!((rows, dead), (0, 0));
    assert_eq!(spend(&store, "z").await?, (0, 0, 0));
    assert_eq!(
        store
            .read_partition(GROUP, TOPIC, 0)
            .await?
            .expect("row")
            .next_offset,
        None
    );
    Ok(())
}

async fn parallel_writers_with_overlapping_events_do_not_deadlock(
    store: Store,
) -> anyhow::Result<()> {
    let epoch_0 = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    let epoch_1 = store
        .claim_partition(GROUP, TOPIC, 1, "i")
        .await?
        .owner_epoch;
    let campaigns = ["c-1", "c-2", "c-3", "c-4"];
    let mut expected_spend = 0;
    for round in 0..20_i64 {
        let ids: Vec<Uuid> = (0..150).map(|_| Uuid::new_v4()).collect();
        let records = |partition: i32, reversed: bool| {
            let mut ordered: Vec<&Uuid> = ids.iter().collect();
            if reversed {
                ordered.reverse();
            }
            ordered
                .into_iter()
                .enumerate()
                .map(|(index, id)| {
                    event_record(
                        partition,
                        round * 150 + index as i64,
                        *id,
                        campaigns[index % 4],
                        AdEventKind::Impression,
                        1,
                    )
                })
                .collect::<Vec<_>>()
        };
        expected_spend += 150;
        let first = Arc::new(batch(
            0,
            round * 150,
            (round + 1) * 150,
            i64::MIN,
            records(0, false),
        ));
        let second = Arc::new(batch(
            1,
            round * 150,
            (round + 1) * 150,
            i64::MIN,
            records(1, true),
        ));
        let (a, b) = tokio::join!(
            store.write_batch(GROUP, TOPIC, epoch_0, Uuid::now_v7(), &first),
            store.write_batch(GROUP, TOPIC, epoch_1, Uuid::now_v7(), &second),
        );
        let (a, b) = (a?, b?);
        assert_eq!(a.new_events + b.new_events, 150, "round {round}");
        assert_eq!(a.duplicates + b.duplicates, 150, "round {round}");
    }
    let mut total = 0;
    for campaign in campaigns {
        total += spend(&store, campaign).await?.2;
    }
    assert_eq!(total, expected_spend);
    Ok(())
}

async fn rows_the_database_refuses_are_found_without_writing_anything(
    store: Store,
) -> anyhow::Result<()> {
    let epoch = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    let mut negative = event_record(0, 2, Uuid::new_v4(), "c", AdEventKind::Impression, 1);
    if let RecordEffect::Event { event, .. } = &mut negative.effect {
        event.cost_micros = -1; // refused by the CHECK of both schemas
    }
    let poison = batch(
        0,
        0,
        4,
        i64::MIN,
        vec![
            event_record(0, 0, Uuid::new_v4(), "c", AdEventKind::Click, 1),
            event_record(0, 1, Uuid::new_v4(), "c-\u{0}", AdEventKind::Click, 1),
            negative,
            event_record(0, 3, Uuid::new_v4(), "c", AdEventKind::Impression, 1),
        ],
    );
    let error = store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &poison)
        .await
        .expect_err("a negative cost violates the schema's CHECK");
    assert!(error.is_data_error(), "{error}");
    assert!(!error.is_retriable(), "{error}");
    let unstorable = store
        .find_unstorable_events(TOPIC, Uuid::now_v7(), &poison)
        .await?;
    let refused: Vec<usize> = unstorable.iter().map(|(index, _)| *index).collect();
    match store {
        // PostgreSQL text cannot hold NUL; SQLite text can.
        Store::Postgres(_) => assert_eq!(refused, vec![1, 2]),
        Store::Sqlite(_) => assert_eq!(refused, vec![2]),
    }
    assert!(
        unstorable.iter().all(|(_, reason)| !reason.contains('\n')),
        "{unstorable:?}"
    );
    let rows = count(&store, "SELECT count(*) FROM ad_events").await?;
    assert_eq!(rows, 0, "probing writes nothing");
    assert_eq!(
        store
            .read_partition(GROUP, TOPIC, 0)
            .await?
            .expect("claimed")
            .next_offset,
        None,
        "the refused batch moved no offset"
    );
    Ok(())
}

async fn kafka_commit_confirmations_never_move_backwards_and_need_the_current_epoch(
    store: Store,
) -> anyhow::Result<()> {
    let old_epoch = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    let epoch_1 = store
        .claim_partition(GROUP, TOPIC, 1, "i")
        .await?
        .owner_epoch;
    let epoch_0 = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    let confirm = |partition: i32, end_offset: i64, owner_epoch: i64| KafkaCommitConfirmation {
        partition,
        end_offset,
        owner_epoch,
    };
    store
        .confirm_kafka_commit(
            GROUP,
            TOPIC,
            &[confirm(1, 10, epoch_1), confirm(0, 7, epoch_0)],
        )
        .await?;
    store
        .confirm_kafka_commit(
            GROUP,
            TOPIC,
            &[confirm(0, 3, epoch_0), confirm(1, 12, epoch_1)],
        )
        .await?;
    // A zombie holding the old epoch of partition 0 changes nothing.
    store
        .confirm_kafka_commit(GROUP, TOPIC, &[confirm(0, 100, old_epoch)])
        .await?;
    store.confirm_kafka_commit(GROUP, TOPIC, &[]).await?;
    let committed = |partition: i32| {
        let store = store.clone();
        async move {
            anyhow::Ok(
                store
                    .read_partition(GROUP, TOPIC, partition)
                    .await?
                    .expect("claimed")
                    .kafka_committed_offset,
            )
        }
    };
    assert_eq!(
        committed(0).await?,
        Some(7),
        "never backwards, never a zombie's"
    );
    assert_eq!(committed(1).await?, Some(12));
    Ok(())
}

async fn one_spend_row_per_campaign_minute_across_batches(store: Store) -> anyhow::Result<()> {
    let epoch = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    let minute = Utc
        .with_ymd_and_hms(2026, 11, 26, 10, 15, 0)
        .single()
        .expect("valid time");
    let at = |seconds: i64, micros: i64| {
        minute + chrono::Duration::seconds(seconds) + chrono::Duration::microseconds(micros)
    };
    for (offset, occurred_at, kind) in [
        (0, at(0, 0), AdEventKind::Impression),
        (1, at(30, 123_456), AdEventKind::Click),
        (2, at(59, 999_999), AdEventKind::Impression),
        (3, at(60, 0), AdEventKind::Click), // the next minute
    ] {
        let mut record = event_record(0, offset, Uuid::new_v4(), "c", kind, 5);
        if let RecordEffect::Event { event, .. } = &mut record.effect {
            event.occurred_at = occurred_at;
        }
        let one = batch(0, offset, offset + 1, i64::MIN, vec![record]);
        store
            .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &one)
            .await?;
    }
    assert_eq!(
        count(&store, "SELECT count(*) FROM campaign_spend").await?,
        2
    );
    assert_eq!(spend(&store, "c").await?, (2, 2, 20));
    assert_eq!(
        count(
            &store,
            "SELECT CAST(impressions * 1000 + clicks AS bigint) FROM campaign_spend \
             WHERE minute = (SELECT min(minute) FROM campaign_spend)"
        )
        .await?,
        2_001,
        "the first minute holds two impressions and one click"
    );
    Ok(())
}

/// SQLite only: another connection holds the file's write lock longer than
/// `busy_timeout`. The batch write fails transiently having written nothing;
/// a write that starts while the lock is held but within `busy_timeout`
/// waits for it; once the lock is gone the batch commits in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_locked_file_fails_writes_transiently_and_half_writes_nothing()
-> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let url = sqlite_url(&directory);
    let busy_timeout = Duration::from_millis(300);
    let store = sqlite_store(&url, busy_timeout).await?;
    let epoch = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    let records = vec![
        event_record(0, 0, Uuid::new_v4(), "c", AdEventKind::Impression, 10),
        event_record(0, 1, Uuid::new_v4(), "c", AdEventKind::Click, 20),
        dead_letter_record(0, 2),
    ];
    let first = batch(0, 0, 3, i64::MIN, records);

    let mut locker = sqlx::sqlite::SqliteConnection::connect(&url).await?;
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await?;
    sqlx::raw_sql("UPDATE consumer_offsets SET owner_instance = 'locker' WHERE partition = 0")
        .execute(&mut locker)
        .await?;

    let started = Instant::now();
    let error = store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &first)
        .await
        .expect_err("the write lock is held elsewhere");
    assert!(error.is_retriable(), "{error}");
    assert!(matches!(error, StoreError::Transient(_)), "{error}");
    assert!(
        started.elapsed() >= busy_timeout,
        "gave up after {:?}, before busy_timeout",
        started.elapsed()
    );
    // Readers are not blocked in WAL mode: nothing was half-written.
    assert_eq!(count(&store, "SELECT count(*) FROM ad_events").await?, 0);
    assert_eq!(count(&store, "SELECT count(*) FROM dead_letters").await?, 0);
    assert_eq!(
        count(&store, "SELECT count(*) FROM campaign_spend").await?,
        0
    );
    assert_eq!(
        store
            .read_partition(GROUP, TOPIC, 0)
            .await?
            .expect("claimed")
            .next_offset,
        None
    );

    // A writer with a longer busy_timeout waits for the lock to go.
    let patient = sqlite_store(&url, Duration::from_secs(20)).await?;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sqlx::raw_sql("COMMIT").execute(&mut locker).await?;
        anyhow::Ok(locker)
    });
    let started = Instant::now();
    let outcome = patient
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &first)
        .await?;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "must have waited for the lock, took {:?}",
        started.elapsed()
    );
    release.await??.close().await?;
    assert_eq!(
        (
            outcome.new_events,
            outcome.dead_letters,
            outcome.owed_records.len()
        ),
        (2, 1, 3)
    );

    // And the first store, the lock gone, replays the same batch as its own.
    let replay = store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &first)
        .await?;
    assert_eq!((replay.new_events, replay.replayed_events), (0, 2));
    assert_eq!(spend(&store, "c").await?, (1, 1, 30));
    assert_eq!(count(&store, "SELECT count(*) FROM dead_letters").await?, 1);
    let stored = store.read_partition(GROUP, TOPIC, 0).await?.expect("row");
    assert_eq!(stored.next_offset, Some(3));
    Ok(())
}
