//! The recorder of confirmed Kafka offsets (`ConfirmedOffsets`) against a
//! real PostgreSQL: it keeps only the newest confirmation of a partition,
//! a flush lands what was handed over, it never holds one partition's row
//! while it waits for another's (a batch transaction in flight holds its
//! row; a lock cycle must be impossible), and a confirmation the store
//! refused is written again, unless a newer one came.

mod common;

use std::time::{Duration, Instant};

use onceflow_actors::store::{ConfirmedOffsets, KafkaCommitConfirmation, PostgresStore, Store};
use sqlx::{Connection, PgPool};

const GROUP: &str = "g";
const TOPIC: &str = "ad-events";

/// A migrated store on a fresh database, its pool, and partitions 0..3
/// claimed: their owner epochs.
async fn claimed_store() -> anyhow::Result<(Store, PgPool, String, Vec<i64>)> {
    let (url, pool) = common::fresh_database().await?;
    let store = Store::from(PostgresStore::from_pool(pool.clone()));
    store.migrate().await?;
    let mut epochs = Vec::new();
    for partition in 0..3 {
        epochs.push(
            store
                .claim_partition(GROUP, TOPIC, partition, "i")
                .await?
                .owner_epoch,
        );
    }
    Ok((store, pool, url, epochs))
}

fn confirmation(partition: i32, end_offset: i64, epochs: &[i64]) -> KafkaCommitConfirmation {
    KafkaCommitConfirmation {
        partition,
        end_offset,
        owner_epoch: epochs[usize::try_from(partition).expect("a small partition")],
    }
}

async fn recorded(store: &Store, partition: i32) -> anyhow::Result<Option<i64>> {
    Ok(store
        .read_partition(GROUP, TOPIC, partition)
        .await?
        .and_then(|stored| stored.kafka_committed_offset))
}

/// Polls until `partition`'s recorded offset is `expected`; whether it was
/// within `timeout`.
async fn recorded_within(
    store: &Store,
    partition: i32,
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if recorded(store, partition).await? == Some(expected) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn only_the_newest_confirmation_waits_and_a_flush_lands_it() -> anyhow::Result<()> {
    let (store, _pool, _url, epochs) = claimed_store().await?;
    let recorder = ConfirmedOffsets::start(store.clone(), GROUP, TOPIC);
    recorder.record([confirmation(0, 5, &epochs), confirmation(1, 4, &epochs)]);
    recorder.record([confirmation(0, 9, &epochs)]);
    assert!(recorder.flush(Duration::from_secs(10)).await);
    assert_eq!(recorder.waiting_partitions(), Vec::<i32>::new());
    assert_eq!(recorded(&store, 0).await?, Some(9));
    assert_eq!(recorded(&store, 1).await?, Some(4));
    assert_eq!(recorded(&store, 2).await?, None, "nothing confirmed there");
    // A confirmation made under an epoch a newer claim replaced changes
    // nothing (the store's fence), and the flush still reports it written.
    store.claim_partition(GROUP, TOPIC, 0, "j").await?;
    recorder.record([confirmation(0, 50, &epochs)]);
    assert!(recorder.close(Duration::from_secs(10)).await);
    assert_eq!(recorded(&store, 0).await?, Some(9));
    Ok(())
}

#[tokio::test]
async fn a_confirmation_never_holds_one_row_while_it_waits_for_another() -> anyhow::Result<()> {
    let (store, pool, url, epochs) = claimed_store().await?;
    // A batch transaction in flight on partition 1 holds its row.
    let mut batch_connection = sqlx::PgConnection::connect(&url).await?;
    let mut batch_transaction = batch_connection.begin().await?;
    sqlx::query("SELECT next_offset FROM consumer_offsets WHERE partition = 1 FOR UPDATE")
        .execute(&mut *batch_transaction)
        .await?;

    let recorder = ConfirmedOffsets::start(store.clone(), GROUP, TOPIC);
    recorder.record((0..3).map(|partition| confirmation(partition, 10, &epochs)));
    assert!(
        recorded_within(&store, 0, 10, Duration::from_secs(10)).await?,
        "partition 0 is recorded while partition 1's row is held"
    );
    assert!(
        !recorder.flush(Duration::from_millis(300)).await,
        "a flush cannot finish while a row it needs is held"
    );
    // The transaction in flight can take partition 0's row too: nothing of
    // the recorder holds it (a single statement over all three rows would,
    // until it got row 1: a lock cycle with this transaction).
    sqlx::query("SELECT next_offset FROM consumer_offsets WHERE partition = 0 FOR UPDATE NOWAIT")
        .execute(&mut *batch_transaction)
        .await?;
    batch_transaction.commit().await?;

    assert!(recorder.flush(Duration::from_secs(10)).await);
    for partition in 0..3 {
        assert_eq!(
            recorded(&store, partition).await?,
            Some(10),
            "partition {partition}"
        );
    }
    drop(pool);
    Ok(())
}

#[tokio::test]
async fn a_refused_confirmation_is_written_again_unless_a_newer_one_came() -> anyhow::Result<()> {
    let (store, pool, _url, epochs) = claimed_store().await?;
    let recorder = ConfirmedOffsets::start(store.clone(), GROUP, TOPIC);
    // The store refuses every confirmation while the table is away.
    sqlx::query("ALTER TABLE consumer_offsets RENAME TO consumer_offsets_away")
        .execute(&pool)
        .await?;
    recorder.record([confirmation(0, 7, &epochs), confirmation(1, 3, &epochs)]);
    assert!(!recorder.flush(Duration::from_secs(10)).await, "refused");
    assert_eq!(
        recorder.waiting_partitions(),
        vec![0, 1],
        "kept to be written again"
    );
    recorder.record([confirmation(0, 8, &epochs)]);
    sqlx::query("ALTER TABLE consumer_offsets_away RENAME TO consumer_offsets")
        .execute(&pool)
        .await?;
    // The background task writes them again by itself (no flush).
    assert!(recorded_within(&store, 0, 8, Duration::from_secs(15)).await?);
    assert!(recorded_within(&store, 1, 3, Duration::from_secs(15)).await?);
    assert_eq!(recorder.waiting_partitions(), Vec::<i32>::new());
    Ok(())
}
