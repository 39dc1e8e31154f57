//! The embedded SQLite store: the same operations and guarantees as the
//! PostgreSQL store ([`crate::store`]), in one database file.
//!
//! Guarantees:
//! - one partition batch is one database transaction: its events, spend,
//!   dead letters and stored offset commit together or not at all; the file
//!   is in WAL mode with `synchronous = FULL`, so a committed batch survives
//!   a process crash and a power loss (billing data: durability over speed);
//! - every transaction that writes starts with `BEGIN IMMEDIATE`, taking the
//!   database's single write lock up front (waiting up to `busy_timeout`), so
//!   writers are serialised and never deadlock on a read-to-write upgrade;
//!   a wait longer than `busy_timeout` fails with `SQLITE_BUSY`, a transient
//!   error, having written nothing;
//! - an event id is stored once (`ON CONFLICT (event_id) DO NOTHING`, one
//!   statement per event in event-id order, the affected row count saying
//!   whether it was inserted) and counted in `campaign_spend` only by the
//!   transaction that stored it; own replay and upstream repeat are told
//!   apart by the stored source position, consumer group included
//!   ([`crate::store::plan`]);
//! - the poison probe ([`SqliteStore::find_unstorable_events`]) runs each
//!   event's whole write alone in a savepoint and rolls everything back;
//! - the stored offset never moves backwards, and only a writer holding the
//!   partition's current owner epoch can move it ([`StoreError::Fenced`]);
//! - uuids are stored as their 16 bytes and timestamps as RFC 3339 UTC text
//!   with microseconds, always in that one format ([`timestamp`]), so the
//!   `(campaign_id, minute)` key of a minute is the same text every time.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::model::batch::PartitionBatch;
use crate::model::record::RecordEffect;
use crate::store::error::StoreError;
use crate::store::plan::{
    BatchPlan, Classification, SpendDelta, StoredDeadLetters, StoredPosition,
};
use crate::store::types::{
    BatchWriteOutcome, KafkaCommitConfirmation, PartitionOwner, StoredPartition,
};

/// Starts a transaction holding the write lock from its first statement.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// The one text format of every timestamp the store writes: RFC 3339, UTC,
/// microseconds, `Z` (`2026-11-26T10:15:00.000000Z`). Fixed width for the
/// years 0000 to 9999 (validation refuses any other event time), so text
/// order is time order, and one instant is always one text.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl SqliteStore {
    /// Builds a pool for the database file of `url` (`sqlite:` URL), created
    /// if missing. Connections are opened lazily. `busy_timeout` is how long
    /// a statement waits for the write lock before failing transiently.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        busy_timeout: Duration,
        acquire_timeout: Duration,
    ) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Permanent)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Ok(SqliteStore { pool })
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: SqlitePool) -> SqliteStore {
        SqliteStore { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Whether the database file can be read.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT count(*) FROM sqlite_schema")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Applies the migrations embedded in the binary
    /// (`actors/migrations/sqlite`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|error| StoreError::from(sqlx::Error::from(error)))
    }

    /// Claims a partition for `owner`: bumps the owner epoch so that any
    /// earlier owner's writes are fenced, and returns what is stored. One
    /// statement, so it takes the write lock at once and waits for any
    /// batch write in flight.
    pub async fn claim_partition(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
        owner: &str,
    ) -> Result<StoredPartition, StoreError> {
        let row = sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, partition, owner_epoch, owner_instance)
             VALUES (?1, ?2, ?3, 1, ?4)
             ON CONFLICT (group_id, topic, partition) DO UPDATE
               SET owner_epoch = consumer_offsets.owner_epoch + 1,
                   owner_instance = excluded.owner_instance,
                   updated_at = strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')
             RETURNING next_offset, start_offset, kafka_committed_offset, owner_epoch",
        )
        .bind(group_id)
        .bind(topic)
        .bind(partition)
        .bind(owner)
        .fetch_one(&self.pool)
        .await?;
        stored_partition(&row)
    }

    /// Reads what is stored for a partition without claiming it.
    pub async fn read_partition(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StoredPartition>, StoreError> {
        let row = sqlx::query(
            "SELECT next_offset, start_offset, kafka_committed_offset, owner_epoch FROM consumer_offsets
             WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
        )
        .bind(group_id)
        .bind(topic)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_partition).transpose()
    }

    /// Records, after a confirmed Kafka commit, the end offset each
    /// partition reached in Kafka (never backwards, only for current owners),
    /// in one transaction.
    pub async fn confirm_kafka_commit(
        &self,
        group_id: &str,
        topic: &str,
        partitions: &[KafkaCommitConfirmation],
    ) -> Result<(), StoreError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut sorted = partitions.to_vec();
        sorted.sort_unstable_by_key(|confirmation| confirmation.partition);
        let mut transaction = self.pool.begin_with(BEGIN_WRITE).await?;
        for confirmation in &sorted {
            sqlx::query(
                "UPDATE consumer_offsets
                    SET kafka_committed_offset = MAX(COALESCE(kafka_committed_offset, ?4), ?4)
                  WHERE group_id = ?1 AND topic = ?2 AND partition = ?3 AND owner_epoch = ?5",
            )
            .bind(group_id)
            .bind(topic)
            .bind(confirmation.partition)
            .bind(confirmation.end_offset)
            .bind(confirmation.owner_epoch)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Commits one partition batch in one database transaction (see the
    /// module guarantees) and says which Kafka records are still owed.
    pub async fn write_batch(
        &self,
        group_id: &str,
        topic: &str,
        owner_epoch: i64,
        txn_id: Uuid,
        batch: &PartitionBatch,
    ) -> Result<BatchWriteOutcome, StoreError> {
        let mut transaction = self.pool.begin_with(BEGIN_WRITE).await?;
        advance_offset(
            &mut transaction,
            group_id,
            topic,
            owner_epoch,
            txn_id,
            batch,
        )
        .await?;
        let plan = BatchPlan::new(batch);
        let classified =
            write_records(&mut transaction, group_id, topic, txn_id, batch, &plan).await?;
        crate::failpoints::hit(crate::failpoints::DB_WRITER_MID_STATEMENT)?;
        transaction.commit().await?;
        Ok(classified.outcome)
    }

    /// Finds the events of `batch` that the database refuses on their own
    /// (a constraint, type or size error, such as a value a column or a
    /// spend sum cannot hold): every event record, in-batch repeats
    /// included, is written alone by the same statements a batch write runs
    /// (event row, stored position, spend), inside a savepoint that is
    /// rolled back, in a transaction that is always rolled back, so nothing
    /// is written. Returns their indexes with the database's one-line
    /// reason; any other error (the probe itself could not run) is returned
    /// as is.
    pub async fn find_unstorable_events(
        &self,
        group_id: &str,
        topic: &str,
        txn_id: Uuid,
        batch: &PartitionBatch,
    ) -> Result<Vec<(usize, String)>, StoreError> {
        let mut transaction = self.pool.begin_with(BEGIN_WRITE).await?;
        let mut unstorable = Vec::new();
        for index in 0..batch.records.len() {
            let Some(plan) = BatchPlan::single_event(batch, index) else {
                continue;
            };
            sqlx::query("SAVEPOINT probe")
                .execute(&mut *transaction)
                .await?;
            let probe =
                write_records(&mut transaction, group_id, topic, txn_id, batch, &plan).await;
            if let Err(error) = probe {
                if !error.is_data_error() {
                    return Err(error);
                }
                unstorable.push((index, one_line(&error)));
            }
            sqlx::query("ROLLBACK TO SAVEPOINT probe")
                .execute(&mut *transaction)
                .await?;
            sqlx::query("RELEASE SAVEPOINT probe")
                .execute(&mut *transaction)
                .await?;
        }
        transaction.rollback().await?;
        Ok(unstorable)
    }
}

/// The error's text on one line.
fn one_line(error: &StoreError) -> String {
    error
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes the records `plan` names (events, their spend, dead letters) and
/// classifies them: the body of a batch write, and of one probe.
async fn write_records(
    transaction: &mut Transaction<'_, Sqlite>,
    group_id: &str,
    topic: &str,
    txn_id: Uuid,
    batch: &PartitionBatch,
    plan: &BatchPlan,
) -> Result<Classification, StoreError> {
    let held = insert_events(transaction, group_id, topic, txn_id, batch, &plan.events).await?;
    let conflicting = plan.conflicting(&held);
    let stored_positions = stored_positions(transaction, &conflicting).await?;
    let stored_dead_letters = insert_dead_letters(
        transaction,
        group_id,
        topic,
        txn_id,
        batch,
        &plan.dead_letters,
    )
    .await?;
    let classified = plan.classify(
        batch,
        group_id,
        topic,
        &held,
        &stored_positions,
        &stored_dead_letters,
    );
    add_spend(transaction, &classified.spend).await?;
    Ok(classified)
}

fn stored_partition(row: &sqlx::sqlite::SqliteRow) -> Result<StoredPartition, StoreError> {
    Ok(StoredPartition {
        next_offset: row.try_get("next_offset")?,
        start_offset: row.try_get("start_offset")?,
        kafka_committed_offset: row.try_get("kafka_committed_offset")?,
        owner_epoch: row.try_get("owner_epoch")?,
    })
}

async fn advance_offset(
    transaction: &mut Transaction<'_, Sqlite>,
    group_id: &str,
    topic: &str,
    owner_epoch: i64,
    txn_id: Uuid,
    batch: &PartitionBatch,
) -> Result<(), StoreError> {
    let advanced = sqlx::query(
        "UPDATE consumer_offsets
            SET next_offset = MAX(COALESCE(next_offset, ?5), ?6),
                start_offset = COALESCE(start_offset, ?5),
                txn_id = ?7,
                updated_at = strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')
          WHERE group_id = ?1 AND topic = ?2 AND partition = ?3 AND owner_epoch = ?4",
    )
    .bind(group_id)
    .bind(topic)
    .bind(batch.partition)
    .bind(owner_epoch)
    .bind(batch.start_offset)
    .bind(batch.end_offset)
    .bind(txn_id)
    .execute(&mut **transaction)
    .await?;
    if advanced.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            topic: topic.to_owned(),
            partition: batch.partition,
            epoch: owner_epoch,
        })
    }
}

/// Inserts the event of record `index` unless its id is stored; returns
/// whether it was inserted.
async fn insert_event(
    transaction: &mut Transaction<'_, Sqlite>,
    group_id: &str,
    topic: &str,
    txn_id: Uuid,
    batch: &PartitionBatch,
    index: usize,
) -> Result<bool, StoreError> {
    let Some(record) = batch.records.get(index) else {
        return Ok(false);
    };
    let RecordEffect::Event { event, .. } = &record.effect else {
        return Ok(false);
    };
    let result = sqlx::query(
        "INSERT INTO ad_events (event_id, campaign_id, ad_id, kind, cost_micros, occurred_at,
                                billed_minute, source_topic, source_partition, source_offset, txn_id,
                                source_group)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(event.campaign_id.as_str())
    .bind(event.ad_id.as_str())
    .bind(event.kind.as_str())
    .bind(event.cost_micros)
    .bind(timestamp(event.occurred_at))
    .bind(timestamp(event.billed_minute()))
    .bind(topic)
    .bind(batch.partition)
    .bind(record.offset)
    .bind(txn_id)
    .bind(group_id)
    .execute(&mut **transaction)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Inserts the first occurrences, in event-id order; returns those it did
/// not insert because the database held them already (one statement per
/// event, each telling whether it inserted its row).
async fn insert_events(
    transaction: &mut Transaction<'_, Sqlite>,
    group_id: &str,
    topic: &str,
    txn_id: Uuid,
    batch: &PartitionBatch,
    sorted_firsts: &[(Uuid, usize)],
) -> Result<HashSet<Uuid>, StoreError> {
    let mut held = HashSet::new();
    for (event_id, index) in sorted_firsts {
        if !insert_event(transaction, group_id, topic, txn_id, batch, *index).await? {
            held.insert(*event_id);
        }
    }
    Ok(held)
}

async fn stored_positions(
    transaction: &mut Transaction<'_, Sqlite>,
    event_ids: &[Uuid],
) -> Result<HashMap<Uuid, StoredPosition>, StoreError> {
    let mut positions = HashMap::with_capacity(event_ids.len());
    for event_id in event_ids {
        let row = sqlx::query(
            "SELECT source_group, source_topic, source_partition, source_offset
               FROM ad_events WHERE event_id = ?1",
        )
        .bind(event_id)
        .fetch_optional(&mut **transaction)
        .await?;
        if let Some(row) = row {
            positions.insert(
                *event_id,
                StoredPosition {
                    group_id: row.try_get("source_group")?,
                    topic: row.try_get("source_topic")?,
                    partition: row.try_get("source_partition")?,
                    offset: row.try_get("source_offset")?,
                },
            );
        }
    }
    Ok(positions)
}

async fn add_spend(
    transaction: &mut Transaction<'_, Sqlite>,
    sorted_deltas: &[SpendDelta],
) -> Result<(), StoreError> {
    for delta in sorted_deltas {
        sqlx::query(
            "INSERT INTO campaign_spend (campaign_id, minute, impressions, clicks, spend_micros)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (campaign_id, minute) DO UPDATE
               SET impressions = campaign_spend.impressions + excluded.impressions,
                   clicks = campaign_spend.clicks + excluded.clicks,
                   spend_micros = campaign_spend.spend_micros + excluded.spend_micros",
        )
        .bind(&delta.campaign_id)
        .bind(timestamp(delta.minute))
        .bind(delta.impressions)
        .bind(delta.clicks)
        .bind(delta.spend_micros)
        .execute(&mut **transaction)
        .await?;
    }
    Ok(())
}

/// Inserts the dead letters (by offset) unless their position is stored;
/// says which of those already stored another consumer group stored.
async fn insert_dead_letters(
    transaction: &mut Transaction<'_, Sqlite>,
    group_id: &str,
    topic: &str,
    txn_id: Uuid,
    batch: &PartitionBatch,
    sorted_indexes: &[usize],
) -> Result<StoredDeadLetters, StoreError> {
    let mut stored = StoredDeadLetters::default();
    for index in sorted_indexes {
        let Some(record) = batch.records.get(*index) else {
            continue;
        };
        let RecordEffect::DeadLetter { kind, reason } = &record.effect else {
            continue;
        };
        let inserted = sqlx::query(
            "INSERT INTO dead_letters (source_topic, source_partition, source_offset, error_kind, error,
                                       record_key, payload, txn_id, source_group)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(batch.partition)
        .bind(record.offset)
        .bind(kind.as_str())
        .bind(reason)
        .bind(&record.key)
        .bind(&record.payload)
        .bind(txn_id)
        .bind(group_id)
        .execute(&mut **transaction)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            continue;
        }
        let stored_group: Option<String> = sqlx::query_scalar(
            "SELECT source_group FROM dead_letters
              WHERE source_topic = ?1 AND source_partition = ?2 AND source_offset = ?3",
        )
        .bind(topic)
        .bind(batch.partition)
        .bind(record.offset)
        .fetch_optional(&mut **transaction)
        .await?
        .flatten();
        if stored_group.is_some_and(|stored_group| stored_group != group_id) {
            stored.other_groups.insert(record.offset);
        }
    }
    Ok(stored)
}

impl SqliteStore {
    /// Who holds a partition's claim: its owner epoch and owner instance.
    pub async fn partition_owner(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<PartitionOwner>, StoreError> {
        let row = sqlx::query(
            "SELECT owner_epoch, owner_instance FROM consumer_offsets
             WHERE group_id = ?1 AND topic = ?2 AND partition = ?3",
        )
        .bind(group_id)
        .bind(topic)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(PartitionOwner {
                owner_epoch: row.try_get("owner_epoch")?,
                owner_instance: row.try_get("owner_instance")?,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_have_one_fixed_width_format() {
        let minute = Utc
            .with_ymd_and_hms(2026, 11, 26, 10, 15, 0)
            .single()
            .expect("valid time");
        assert_eq!(timestamp(minute), "2026-11-26T10:15:00.000000Z");
        let precise = minute + chrono::Duration::microseconds(30_123_456);
        assert_eq!(timestamp(precise), "2026-11-26T10:15:30.123456Z");
    }
}
