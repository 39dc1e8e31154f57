//! The PostgreSQL store against a real database: own replay versus upstream
//! repeat, spend counted once, dead letters once, offsets never backwards,
//! owner-epoch fencing, and parallel writers that do not deadlock.

mod common;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use onceflow_actors::ad_event::{AdEvent, AdEventKind, DeadLetterKind};
use onceflow_actors::partition_batch::PartitionBatch;
use onceflow_actors::processed_record::{ProcessedRecord, RecordEffect, output_value};
use onceflow_actors::spans::RecordSpan;
use onceflow_actors::store::Store;
use onceflow_actors::store_error::StoreError;
use onceflow_actors::trace_context::TraceContext;
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

async fn store() -> anyhow::Result<Store> {
    let (_, pool) = common::fresh_database().await?;
    let store = Store::from_pool(pool);
    store.migrate().await?;
    Ok(store)
}

async fn spend(store: &Store, campaign: &str) -> anyhow::Result<(i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT coalesce(sum(impressions), 0)::bigint, coalesce(sum(clicks), 0)::bigint, coalesce(sum(spend_micros), 0)::bigint
           FROM campaign_spend WHERE campaign_id = $1",
    )
    .bind(campaign)
    .fetch_one(store.pool())
    .await?)
}

#[tokio::test]
async fn own_replay_owes_its_output_and_upstream_repeat_does_not() -> anyhow::Result<()> {
    let store = store().await?;
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

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ad_events")
        .fetch_one(store.pool())
        .await?;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(store.pool())
        .await?;
    assert_eq!((rows, dead), (2, 1));
    Ok(())
}

#[tokio::test]
async fn offsets_never_move_backwards_and_remember_the_group_start() -> anyhow::Result<()> {
    let store = store().await?;
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

#[tokio::test]
async fn a_stale_owner_epoch_is_fenced_and_writes_nothing() -> anyhow::Result<()> {
    let store = store().await?;
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
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ad_events")
        .fetch_one(store.pool())
        .await?;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(store.pool())
        .await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writers_with_overlapping_events_do_not_deadlock() -> anyhow::Result<()> {
    let store = store().await?;
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

#[tokio::test]
async fn rows_the_database_refuses_are_found_without_writing_anything() -> anyhow::Result<()> {
    let store = store().await?;
    let epoch = store
        .claim_partition(GROUP, TOPIC, 0, "i")
        .await?
        .owner_epoch;
    let poison = batch(
        0,
        0,
        3,
        i64::MIN,
        vec![
            event_record(0, 0, Uuid::new_v4(), "c", AdEventKind::Click, 1),
            event_record(0, 1, Uuid::new_v4(), "c-\u{0}", AdEventKind::Click, 1),
            event_record(0, 2, Uuid::new_v4(), "c", AdEventKind::Impression, 1),
        ],
    );
    let error = store
        .write_batch(GROUP, TOPIC, epoch, Uuid::now_v7(), &poison)
        .await
        .expect_err("PostgreSQL text cannot hold NUL");
    assert!(error.is_data_error(), "{error}");
    let unstorable = store
        .find_unstorable_events(TOPIC, Uuid::now_v7(), &poison)
        .await?;
    assert_eq!(
        unstorable
            .iter()
            .map(|(index, _)| *index)
            .collect::<Vec<_>>(),
        vec![1]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ad_events")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(rows, 0, "probing writes nothing");
    Ok(())
}
