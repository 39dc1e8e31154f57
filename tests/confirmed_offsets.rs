//! The recorder of confirmed Kafka offsets (`ConfirmedOffsets`) against a
//! real PostgreSQL: a flush lands what was handed over; a batch transaction
//! of one partition never waits behind the recorder for its row while
//! another partition's row is held; a confirmation stays waiting until a
//! write of it succeeded (a flush cut off at its deadline loses nothing, a
//! newer one handed over during an older one's write is written too); a
//! refused one is written again by the background task alone.

mod common;

use std::time::{Duration, Instant};

use onceflow_actors::store::{ConfirmedOffsets, KafkaCommitConfirmation, PostgresStore, Store};
use sqlx::{Connection, PgConnection, PgPool};

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

/// A transaction on its own connection holding `partition`'s row, as a
/// batch transaction in flight does: it waits for the row, or with
/// `NOWAIT` fails at once if anyone else holds it.
async fn hold_row(url: &str, partition: i32, wait: Wait) -> anyhow::Result<PgConnection> {
    let mut connection = PgConnection::connect(url).await?;
    sqlx::query("BEGIN").execute(&mut connection).await?;
    let statement = match wait {
        Wait::UntilFree => {
            "SELECT next_offset FROM consumer_offsets WHERE partition = $1 FOR UPDATE"
        }
        Wait::NoWait => {
            "SELECT next_offset FROM consumer_offsets WHERE partition = $1 FOR UPDATE NOWAIT"
        }
    };
    sqlx::query(statement)
        .bind(partition)
        .execute(&mut connection)
        .await?;
    Ok(connection)
}

/// Whether [`hold_row`] waits for a held row.
#[derive(Clone, Copy)]
enum Wait {
    UntilFree,
    NoWait,
}

async fn release(mut connection: PgConnection) -> anyhow::Result<()> {
    sqlx::query("COMMIT").execute(&mut connection).await?;
    Ok(())
}

#[tokio::test]
async fn a_flush_lands_what_was_handed_over_and_an_old_epoch_changes_nothing() -> anyhow::Result<()>
{
    let (store, _pool, _url, epochs) = claimed_store().await?;
    let recorder = ConfirmedOffsets::start(store.clone(), GROUP, TOPIC);
    recorder.record([confirmation(0, 5, &epochs), confirmation(1, 4, &epochs)]);
    assert!(recorder.flush(Duration::from_secs(10)).await);
    assert_eq!(recorder.waiting_partitions(), Vec::<i32>::new());
    assert_eq!(recorded(&store, 0).await?, Some(5));
    assert_eq!(recorded(&store, 1).await?, Some(4));
    assert_eq!(recorded(&store, 2).await?, None, "nothing confirmed there");
    // A confirmation made under an epoch a newer claim replaced changes
    // nothing (the store's fence), and is not written again forever.
    store.claim_partition(GROUP, TOPIC, 0, "j").await?;
    recorder.record([confirmation(0, 50, &epochs)]);
    assert!(recorder.close(Duration::from_secs(10)).await);
    assert_eq!(recorder.waiting_partitions(), Vec::<i32>::new());
    assert_eq!(recorded(&store, 0).await?, Some(5));
    Ok(())
}

#[tokio::test]
async fn a_held_row_delays_the_recorder_never_another_partitions_batch() -> anyhow::Result<()> {
    let (store, _pool, url, epochs) = claimed_store().await?;
    // Partition 1's batch transaction is in flight.
    let partition_1_batch = hold_row(&url, 1, Wait::UntilFree).await?;
    let recorder = ConfirmedOffsets::start(store.clone(), GROUP, TOPIC);
    recorder.record((0..3).map(|partition| confirmation(partition, 10, &epochs)));
    assert!(
        recorded_within(&store, 0, 10, Duration::from_secs(10)).await?,
        "partition 0 is recorded while partition 1's row is held"
    );
    // Partition 0's next batch transaction takes its row at once: the
    // recorder, waiting for partition 1's row, holds nothing (one statement
    // over all rows would hold partition 0's until it got partition 1's).
    let partition_0_batch = hold_row(&url, 0, Wait::NoWait).await?;
    release(partition_0_batch).await?;
    // A flush cut off at its deadline loses nothing: what it did not write
    // still waits, and lands once the row is free.
    assert!(
        !recorder.flush(Duration::from_millis(300)).await,
        "a flush cannot finish while a row it needs is held"
    );
    assert_eq!(recorder.waiting_partitions(), vec![1, 2]);
    assert_eq!(
        recorded(&store, 2).await?,
        None,
        "written after partition 1"
    );
    release(partition_1_batch).await?;
    assert!(recorder.flush(Duration::from_secs(10)).await);
    for partition in 0..3 {
        assert_eq!(
            recorded(&store, partition).await?,
            Some(10),
            "partition {partition}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_newer_confirmation_handed_over_during_a_write_is_written_too() -> anyhow::Result<()> {
    let (store, _pool, url, epochs) = claimed_store().await?;
    let partition_0_batch = hold_row(&url, 0, Wait::UntilFree).await?;
    let recorder = ConfirmedOffsets::start(store.clone(), GROUP, TOPIC);
    recorder.record([confirmation(0, 7, &epochs)]);
    // The write of 7 is under way (waiting for the row) when 8 comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    recorder.record([confirmation(0, 8, &epochs)]);
    release(partition_0_batch).await?;
    assert!(
        recorded_within(&store, 0, 8, Duration::from_secs(10)).await?,
        "the newer confirmation lands after the older one's write"
    );
    assert!(recorder.flush(Duration::from_secs(10)).await);
    assert_eq!(recorder.waiting_partitions(), Vec::<i32>::new());
    Ok(())
}

#[tokio::test]
async fn a_refused_confirmation_is_written_again_by_the_background_task() -> anyhow::Result<()> {
    let (store, pool, _url, epochs) = claimed_store().await?;
    let recorder = ConfirmedOffsets::start(store.clone(), GROUP, TOPIC);
    // The store refuses every confirmation while the table is away.
    sqlx::query("ALTER TABLE consumer_offsets RENAME TO consumer_offsets_away")
        .execute(&pool)
        .await?;
    recorder.record([confirmation(0, 7, &epochs), confirmation(1, 3, &epochs)]);
    assert!(!recorder.flush(Duration::from_secs(10)).await, "refused");
    assert_eq!(recorder.waiting_partitions(), vec![0, 1], "still waiting");
    sqlx::query("ALTER TABLE consumer_offsets_away RENAME TO consumer_offsets")
        .execute(&pool)
        .await?;
    // Nothing new is handed over and nobody flushes: the background task's
    // retry writes them.
    assert!(recorded_within(&store, 0, 7, Duration::from_secs(15)).await?);
    assert!(recorded_within(&store, 1, 3, Duration::from_secs(15)).await?);
    assert_eq!(recorder.waiting_partitions(), Vec::<i32>::new());
    Ok(())
}
