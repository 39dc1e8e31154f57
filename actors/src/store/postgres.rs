//! The PostgreSQL store: migrations, partition claims, and the idempotent
//! batch write of the commit cycle, on a `PgPool`.
//!
//! Guarantees (those of [`crate::store`]):
//! - one partition batch is one database transaction: its events, spend,
//!   dead letters and stored offset commit together or not at all;
//! - an event id is stored once (`ON CONFLICT (event_id) DO NOTHING`) and
//!   counted in `campaign_spend` only by the transaction that stored it;
//! - a conflict at the same source position (consumer group, topic,
//!   partition, offset) is our own replay (its output is still owed if Kafka
//!   did not commit it); anywhere else it is an upstream repeat (no output,
//!   counted as a duplicate), as classified by
//!   [`crate::store::plan`];
//! - the poison probe ([`PostgresStore::find_unstorable_events`]) runs each
//!   event's whole write (row, stored position, spend) alone in a savepoint
//!   and rolls everything back: it names exactly the events the database
//!   refuses on their own and writes nothing;
//! - the stored offset never moves backwards, and only a writer holding the
//!   partition's current owner epoch can move it ([`StoreError::Fenced`]);
//!   the fencing `UPDATE` also locks the partition's row until commit;
//! - keys are touched in one fixed order (events by id, spend by campaign
//!   and minute), so parallel writers do not deadlock each other.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
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

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Builds a pool for `url`. Connections are opened lazily, so a
    /// database that is down does not stop an actor from starting. A session
    /// idle inside a transaction for `idle_in_transaction_timeout` is ended
    /// by the server, so a frozen process cannot hold a row lock for ever.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        statement_timeout: Duration,
        idle_in_transaction_timeout: Duration,
        acquire_timeout: Duration,
    ) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(StoreError::Permanent)?
            .application_name("onceflow")
            .options([
                (
                    "statement_timeout",
                    format!("{}ms", statement_timeout.as_millis()),
                ),
                (
                    "idle_in_transaction_session_timeout",
                    format!("{}ms", idle_in_transaction_timeout.as_millis()),
                ),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Ok(PostgresStore { pool })
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> PostgresStore {
        PostgresStore { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Applies the migrations embedded in the binary
    /// (`actors/migrations/postgres`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|error| StoreError::from(sqlx::Error::from(error)))
    }

    /// Claims a partition for `owner`: bumps the owner epoch so that any
    /// earlier owner's writes are fenced, and returns what is stored.
    pub async fn claim_partition(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
        owner: &str,
    ) -> Result<StoredPartition, StoreError> {
        let row = sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, partition, owner_epoch, owner_instance)
             VALUES ($1, $2, $3, 1, $4)
             ON CONFLICT (group_id, topic, partition) DO UPDATE
               SET owner_epoch = consumer_offsets.owner_epoch + 1,
                   owner_instance = EXCLUDED.owner_instance,
                   updated_at = now()
             RETURNING next_offset, start_offset, kafka_committed_offset, owner_epoch",
        )
        .bind(group_id)
        .bind(topic)
        .bind(partition)
        .bind(owner)
        .fetch_one(&self.pool)
        .await?;
        Ok(StoredPartition {
            next_offset: row.try_get("next_offset")?,
            start_offset: row.try_get("start_offset")?,
            kafka_committed_offset: row.try_get("kafka_committed_offset")?,
            owner_epoch: row.try_get("owner_epoch")?,
        })
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
             WHERE group_id = $1 AND topic = $2 AND partition = $3",
        )
        .bind(group_id)
        .bind(topic)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(StoredPartition {
                next_offset: row.try_get("next_offset")?,
                start_offset: row.try_get("start_offset")?,
                kafka_committed_offset: row.try_get("kafka_committed_offset")?,
                owner_epoch: row.try_get("owner_epoch")?,
            })
        })
        .transpose()
    }

    /// Records, after a confirmed Kafka commit, the end offset each
    /// partition reached in Kafka (never backwards, only for current owners).
    /// Bookkeeping only: losing it costs duplicate-free replays nothing but
    /// time, since the group's committed offset says the same.
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
        let ids: Vec<i32> = sorted.iter().map(|c| c.partition).collect();
        let offsets: Vec<i64> = sorted.iter().map(|c| c.end_offset).collect();
        let epochs: Vec<i64> = sorted.iter().map(|c| c.owner_epoch).collect();
        sqlx::query(
            "UPDATE consumer_offsets AS o
                SET kafka_committed_offset = GREATEST(COALESCE(o.kafka_committed_offset, c.end_offset), c.end_offset)
               FROM UNNEST($3::int[], $4::bigint[], $5::bigint[]) AS c(partition, end_offset, owner_epoch)
              WHERE o.group_id = $1 AND o.topic = $2 AND o.partition = c.partition
                AND o.owner_epoch = c.owner_epoch",
        )
        .bind(group_id)
        .bind(topic)
        .bind(&ids)
        .bind(&offsets)
        .bind(&epochs)
        .execute(&self.pool)
        .await?;
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
        let mut transaction = self.pool.begin().await?;
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
    /// (a data or constraint error, such as a value a column or a spend sum
    /// cannot hold): every event record, in-batch repeats included, is
    /// written alone by the same statements a batch write runs (event row,
    /// stored position, spend), inside a savepoint that is rolled back, in a
    /// transaction that is always rolled back, so nothing is written.
    /// Returns their indexes with the database's one-line reason; any other
    /// error (the probe itself could not run) is returned as is.
    pub async fn find_unstorable_events(
        &self,
        group_id: &str,
        topic: &str,
        txn_id: Uuid,
        batch: &PartitionBatch,
    ) -> Result<Vec<(usize, String)>, StoreError> {
        let mut transaction = self.pool.begin().await?;
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
    transaction: &mut Transaction<'_, Postgres>,
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

async fn advance_offset(
    transaction: &mut Transaction<'_, Postgres>,
    group_id: &str,
    topic: &str,
    owner_epoch: i64,
    txn_id: Uuid,
    batch: &PartitionBatch,
) -> Result<(), StoreError> {
    let advanced = sqlx::query(
        "UPDATE consumer_offsets
            SET next_offset = GREATEST(COALESCE(next_offset, $5), $6),
                start_offset = COALESCE(start_offset, $5),
                txn_id = $7,
                updated_at = now()
          WHERE group_id = $1 AND topic = $2 AND partition = $3 AND owner_epoch = $4",
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

/// Inserts the first occurrences, in event-id order; returns those this
/// statement did not insert (the database held them already). `RETURNING`
/// is what tells them apart: a batch written again under the same `txn_id`
/// (a retry after a commit whose reply was lost) must find its own rows as
/// already stored, and nothing in the rows distinguishes them from rows this
/// statement would have written. The returned ids stay in the server: the
/// statement answers with one array of the ids it skipped (usually none or
/// a few), not a row per inserted id (reading 5,000 rows per batch was a
/// tenth of the instance's CPU).
async fn insert_events(
    transaction: &mut Transaction<'_, Postgres>,
    group_id: &str,
    topic: &str,
    txn_id: Uuid,
    batch: &PartitionBatch,
    sorted_firsts: &[(Uuid, usize)],
) -> Result<HashSet<Uuid>, StoreError> {
    if sorted_firsts.is_empty() {
        return Ok(HashSet::new());
    }
    let capacity = sorted_firsts.len();
    let mut event_ids = Vec::with_capacity(capacity);
    let mut campaign_ids = Vec::with_capacity(capacity);
    let mut ad_ids = Vec::with_capacity(capacity);
    let mut kinds = Vec::with_capacity(capacity);
    let mut costs = Vec::with_capacity(capacity);
    let mut occurred = Vec::with_capacity(capacity);
    let mut minutes = Vec::with_capacity(capacity);
    let mut offsets = Vec::with_capacity(capacity);
    for (_, index) in sorted_firsts {
        let record = &batch.records[*index];
        if let RecordEffect::Event { event, .. } = &record.effect {
            event_ids.push(event.event_id);
            campaign_ids.push(event.campaign_id.as_str());
            ad_ids.push(event.ad_id.as_str());
            kinds.push(event.kind.as_str());
            costs.push(event.cost_micros);
            occurred.push(event.occurred_at);
            minutes.push(event.billed_minute());
            offsets.push(record.offset);
        }
    }
    // Every first occurrence is an event: an id left out of the statement
    // would count as inserted.
    debug_assert_eq!(event_ids.len(), sorted_firsts.len());
    let held: Vec<Uuid> = sqlx::query_scalar(
        "WITH inserted AS (
           INSERT INTO ad_events (event_id, campaign_id, ad_id, kind, cost_micros, occurred_at,
                                  billed_minute, source_topic, source_partition, source_offset,
                                  txn_id, source_group)
           SELECT e.event_id, e.campaign_id, e.ad_id, e.kind, e.cost_micros, e.occurred_at,
                  e.billed_minute, $9, $10, e.source_offset, $11, $12
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::timestamptz[], $7::timestamptz[], $8::bigint[])
                  AS e(event_id, campaign_id, ad_id, kind, cost_micros, occurred_at,
                       billed_minute, source_offset)
            ORDER BY e.event_id
           ON CONFLICT (event_id) DO NOTHING
           RETURNING event_id)
         SELECT COALESCE(array_agg(given.event_id), '{}'::uuid[])
           FROM UNNEST($1::uuid[]) AS given(event_id)
          WHERE NOT EXISTS (SELECT 1 FROM inserted WHERE inserted.event_id = given.event_id)",
    )
    .bind(&event_ids)
    .bind(&campaign_ids)
    .bind(&ad_ids)
    .bind(&kinds)
    .bind(&costs)
    .bind(&occurred)
    .bind(&minutes)
    .bind(&offsets)
    .bind(topic)
    .bind(batch.partition)
    .bind(txn_id)
    .bind(group_id)
    .fetch_one(&mut **transaction)
    .await?;
    Ok(held.into_iter().collect())
}

async fn stored_positions(
    transaction: &mut Transaction<'_, Postgres>,
    event_ids: &[Uuid],
) -> Result<HashMap<Uuid, StoredPosition>, StoreError> {
    if event_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT event_id, source_group, source_topic, source_partition, source_offset
           FROM ad_events WHERE event_id = ANY($1)",
    )
    .bind(event_ids)
    .fetch_all(&mut **transaction)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("event_id")?,
                StoredPosition {
                    group_id: row.try_get("source_group")?,
                    topic: row.try_get("source_topic")?,
                    partition: row.try_get("source_partition")?,
                    offset: row.try_get("source_offset")?,
                },
            ))
        })
        .collect()
}

async fn add_spend(
    transaction: &mut Transaction<'_, Postgres>,
    sorted_deltas: &[SpendDelta],
) -> Result<(), StoreError> {
    if sorted_deltas.is_empty() {
        return Ok(());
    }
    let mut campaign_ids = Vec::with_capacity(sorted_deltas.len());
    let mut minutes = Vec::with_capacity(sorted_deltas.len());
    let mut impressions = Vec::with_capacity(sorted_deltas.len());
    let mut clicks = Vec::with_capacity(sorted_deltas.len());
    let mut spend = Vec::with_capacity(sorted_deltas.len());
    for delta in sorted_deltas {
        campaign_ids.push(delta.campaign_id.clone());
        minutes.push(delta.minute);
        impressions.push(delta.impressions);
        clicks.push(delta.clicks);
        spend.push(delta.spend_micros);
    }
    sqlx::query(
        "INSERT INTO campaign_spend (campaign_id, minute, impressions, clicks, spend_micros)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::bigint[])
          ORDER BY 1, 2
         ON CONFLICT (campaign_id, minute) DO UPDATE
           SET impressions = campaign_spend.impressions + EXCLUDED.impressions,
               clicks = campaign_spend.clicks + EXCLUDED.clicks,
               spend_micros = campaign_spend.spend_micros + EXCLUDED.spend_micros",
    )
    .bind(&campaign_ids)
    .bind(&minutes)
    .bind(&impressions)
    .bind(&clicks)
    .bind(&spend)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Inserts the dead letters (by offset) unless their position is stored;
/// says which of those already stored another consumer group stored.
async fn insert_dead_letters(
    transaction: &mut Transaction<'_, Postgres>,
    group_id: &str,
    topic: &str,
    txn_id: Uuid,
    batch: &PartitionBatch,
    indexes: &[usize],
) -> Result<StoredDeadLetters, StoreError> {
    if indexes.is_empty() {
        return Ok(StoredDeadLetters::default());
    }
    let mut offsets = Vec::with_capacity(indexes.len());
    let mut kinds = Vec::with_capacity(indexes.len());
    let mut reasons = Vec::with_capacity(indexes.len());
    let mut keys: Vec<Option<Vec<u8>>> = Vec::with_capacity(indexes.len());
    let mut payloads: Vec<Option<Vec<u8>>> = Vec::with_capacity(indexes.len());
    for index in indexes {
        let record = &batch.records[*index];
        if let RecordEffect::DeadLetter { kind, reason } = &record.effect {
            offsets.push(record.offset);
            kinds.push(kind.as_str());
            reasons.push(reason.clone());
            keys.push(record.key.clone());
            payloads.push(record.payload.clone());
        }
    }
    let inserted: HashSet<i64> = sqlx::query_scalar(
        "INSERT INTO dead_letters (source_topic, source_partition, source_offset, error_kind, error,
                                   record_key, payload, txn_id, source_group)
         SELECT $6, $7, d.source_offset, d.error_kind, d.error, d.record_key, d.payload, $8, $9
           FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bytea[])
                AS d(source_offset, error_kind, error, record_key, payload)
          ORDER BY d.source_offset
         ON CONFLICT DO NOTHING
         RETURNING source_offset",
    )
    .bind(&offsets)
    .bind(&kinds)
    .bind(&reasons)
    .bind(&keys)
    .bind(&payloads)
    .bind(topic)
    .bind(batch.partition)
    .bind(txn_id)
    .bind(group_id)
    .fetch_all(&mut **transaction)
    .await?
    .into_iter()
    .collect();
    let conflicting: Vec<i64> = offsets
        .iter()
        .copied()
        .filter(|offset| !inserted.contains(offset))
        .collect();
    if conflicting.is_empty() {
        return Ok(StoredDeadLetters::default());
    }
    let other_groups = sqlx::query_scalar(
        "SELECT source_offset FROM dead_letters
          WHERE source_topic = $1 AND source_partition = $2 AND source_offset = ANY($3)
            AND source_group IS NOT NULL AND source_group <> $4",
    )
    .bind(topic)
    .bind(batch.partition)
    .bind(&conflicting)
    .bind(group_id)
    .fetch_all(&mut **transaction)
    .await?
    .into_iter()
    .collect();
    Ok(StoredDeadLetters { other_groups })
}

impl PostgresStore {
    /// Who holds a partition's claim: its owner epoch and owner instance.
    pub async fn partition_owner(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<PartitionOwner>, StoreError> {
        let row = sqlx::query(
            "SELECT owner_epoch, owner_instance FROM consumer_offsets
             WHERE group_id = $1 AND topic = $2 AND partition = $3",
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
