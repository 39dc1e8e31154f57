//! PostgreSQL's own ceiling for the writes onceflow makes: the same rows
//! (events, spend per campaign and minute, the partitions' offsets) in
//! transactions of one batch each, with no client in the way. The rows are
//! generated inside the server into an unlogged staging table first; then
//! each batch is one transaction of three server-side statements on one
//! backend: `INSERT … SELECT … ON CONFLICT DO NOTHING` into `ad_events` (in
//! event id order, as onceflow inserts), the spend upsert aggregated per
//! `(campaign_id, minute)`, and the offset rows. What this measures is the
//! database's work alone, the bound onceflow's throughput is compared to:
//! one backend, as the issue that asked for it defined it (onceflow's
//! parallel partition writers were measured no faster than one, as they
//! queue on the same spend rows; see `docs/performance.md`), no client
//! transfer, the input's shape.

use std::time::Instant;

use onceflow_actors::store::PostgresStore;
use sqlx::PgPool;

use crate::error::Result;

/// Events written per second, and over how many.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Ceiling {
    /// rows written
    pub rows: u64,
    /// rows per transaction
    pub batch_rows: u64,
    /// seconds the transactions took (staging excluded)
    pub seconds: f64,
    /// rows per second
    pub rows_per_second: f64,
}

/// Measures the ceiling with `rows` rows over `partitions` partitions, in
/// transactions of `batch_rows`, in a fresh database (dropped afterwards).
pub async fn postgres_ceiling(rows: u64, partitions: i32, batch_rows: u64) -> Result<Ceiling> {
    let (url, pool) = onceflow_chaos::harness::fresh_database().await?;
    let measured = measure(&pool, rows, partitions, batch_rows).await;
    pool.close().await;
    onceflow_chaos::harness::drop_database(&url).await?;
    measured
}

async fn measure(pool: &PgPool, rows: u64, partitions: i32, batch_rows: u64) -> Result<Ceiling> {
    PostgresStore::from_pool(pool.clone()).migrate().await?;
    let rows_i64 = i64::try_from(rows).unwrap_or(i64::MAX);
    let partitions = i64::from(partitions.max(1));
    // The shape of the benchmark's generated input (the harness's
    // generator): 24 campaigns, 500 ads, times over 30 minutes, so a batch
    // touches at most 720 spend rows; one impression in five a click.
    sqlx::query(
        "CREATE UNLOGGED TABLE bench_staged AS
         SELECT seq,
                gen_random_uuid() AS event_id,
                'c-' || (hashint8(seq) & 1023) % 24 AS campaign_id,
                'ad-' || (hashint8(seq + 1) & 1023) % 500 AS ad_id,
                CASE WHEN seq % 5 = 0 THEN 'click' ELSE 'impression' END AS kind,
                (seq % 1000)::bigint AS cost_micros,
                timestamptz '2026-11-26 10:00:00+00'
                    + ((hashint8(seq + 2) & 4095) % 1800) * interval '1 second'
                    AS occurred_at,
                (seq % $2)::int AS source_partition,
                (seq / $2)::bigint AS source_offset
           FROM generate_series(0::bigint, $1 - 1) AS seq",
    )
    .bind(rows_i64)
    .bind(partitions)
    .execute(pool)
    .await?;
    sqlx::query("ALTER TABLE bench_staged ADD PRIMARY KEY (seq)")
        .execute(pool)
        .await?;
    sqlx::query("ANALYZE bench_staged").execute(pool).await?;
    let txn_id = uuid::Uuid::now_v7();
    let mut connection = pool.acquire().await?;
    let started = Instant::now();
    let mut from = 0i64;
    let step = i64::try_from(batch_rows.max(1)).unwrap_or(i64::MAX);
    while from < rows_i64 {
        let to = from.saturating_add(step).min(rows_i64);
        let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
        sqlx::query(
            "INSERT INTO ad_events (event_id, campaign_id, ad_id, kind, cost_micros, occurred_at,
                                    billed_minute, source_topic, source_partition, source_offset,
                                    txn_id, source_group)
             SELECT event_id, campaign_id, ad_id, kind, cost_micros, occurred_at,
                    date_trunc('minute', occurred_at), 'bench', source_partition, source_offset,
                    $3, 'bench'
               FROM bench_staged WHERE seq >= $1 AND seq < $2
              ORDER BY event_id
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(from)
        .bind(to)
        .bind(txn_id)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO campaign_spend (campaign_id, minute, impressions, clicks, spend_micros)
             SELECT campaign_id, date_trunc('minute', occurred_at),
                    count(*) FILTER (WHERE kind = 'impression'),
                    count(*) FILTER (WHERE kind = 'click'),
                    sum(cost_micros)
               FROM bench_staged WHERE seq >= $1 AND seq < $2
              GROUP BY 1, 2 ORDER BY 1, 2
             ON CONFLICT (campaign_id, minute) DO UPDATE
               SET impressions = campaign_spend.impressions + EXCLUDED.impressions,
                   clicks = campaign_spend.clicks + EXCLUDED.clicks,
                   spend_micros = campaign_spend.spend_micros + EXCLUDED.spend_micros",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, start_offset,
                                           txn_id)
             SELECT 'bench', 'bench', source_partition, max(source_offset) + 1, 0, $3
               FROM bench_staged WHERE seq >= $1 AND seq < $2
              GROUP BY source_partition ORDER BY source_partition
             ON CONFLICT (group_id, topic, partition) DO UPDATE
               SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset),
                   txn_id = EXCLUDED.txn_id, updated_at = now()",
        )
        .bind(from)
        .bind(to)
        .bind(txn_id)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        from = to;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ad_events")
        .fetch_one(&mut *connection)
        .await?;
    Ok(Ceiling {
        rows: u64::try_from(stored).unwrap_or(0),
        batch_rows,
        seconds,
        rows_per_second: stored as f64 / seconds.max(f64::EPSILON),
    })
}
