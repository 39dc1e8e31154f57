//! The baseline a team writes first (the pattern of the article this
//! project started from): for every record, one database transaction
//! (insert the event, add its spend, store the offset) and one Kafka
//! transaction (produce the output, send the offset, commit). Correct, and
//! bound by two commits per record. Run against the same cluster, database
//! and generated input as onceflow.

use std::time::{Duration, Instant};

use onceflow_actors::store::PostgresStore;
use onceflow_chaos::harness::{Scenario, WorkloadSpec, input_truth, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::error::{BenchError, Result};
use crate::machine_cpu::{Component, MachineSnapshot};
use crate::quantiles::{Quantiles, quantiles_of};

/// The figures of the per-message run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PerMessageRun {
    /// records processed
    pub records: u64,
    /// seconds they took
    pub seconds: f64,
    /// records per second
    pub records_per_second: f64,
    /// CPU milliseconds the Kafka brokers spent per record, that is per
    /// transaction (one output partition and the group's offsets), above
    /// what they spend idle: what one Kafka transaction costs them on this
    /// machine
    pub broker_cpu_ms_per_transaction: f64,
    /// cores the brokers keep busy when idle (measured for 3 s before the
    /// run), subtracted from the figure above
    pub broker_idle_cores: f64,
    /// one record's database transaction (event, spend, offset), ms
    pub database_transaction_ms: Quantiles,
    /// one record's Kafka transaction, `begin_transaction` to the return of
    /// `commit_transaction` (output, offsets, commit), ms
    pub kafka_transaction_ms: Quantiles,
}

/// The fields the baseline reads from an input record.
#[derive(Debug, serde::Deserialize)]
struct Event {
    event_id: uuid::Uuid,
    campaign_id: String,
    ad_id: String,
    kind: String,
    cost_micros: i64,
    occurred_at: chrono::DateTime<chrono::Utc>,
}

impl Event {
    /// The checks the table's constraints make (the contract's invalid
    /// kinds that parse as JSON with these fields).
    fn is_valid(&self) -> bool {
        matches!(self.kind.as_str(), "impression" | "click")
            && self.cost_micros >= 0
            && !self.campaign_id.is_empty()
            && !self.ad_id.is_empty()
    }
}

/// Processes `spec`'s records one transaction pair at a time.
pub async fn per_message_run(
    binary: &std::path::Path,
    spec: WorkloadSpec,
) -> Result<PerMessageRun> {
    let scenario = Scenario::new(binary, spec.partitions)
        .await?
        .without_live_reader();
    scenario.generate(spec).await?;
    let truth = input_truth(&scenario.bootstrap, &scenario.topics.input).await?;
    PostgresStore::from_pool(scenario.pool.clone())
        .migrate()
        .await?;

    let group = unique("bench-per-message");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &scenario.bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..scenario.partitions {
        assignment.add_partition_offset(&scenario.topics.input, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &scenario.bootstrap)
        .set("transactional.id", unique("bench-per-message"))
        .set("linger.ms", "0")
        .create()?;
    let call_timeout = Duration::from_secs(30);
    tokio::task::block_in_place(|| producer.init_transactions(call_timeout))?;

    let broker_idle_cores = brokers_idle_cores(Duration::from_secs(3)).await?;
    let started = Instant::now();
    let machine_before = MachineSnapshot::now(None)?;
    let mut processed = 0u64;
    let mut database_ms = Vec::new();
    let mut kafka_ms = Vec::new();
    while processed < truth.records {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::TimedOut {
                step: "per-message run",
                seconds: 600,
                detail: format!("{processed} of {} records", truth.records),
            });
        }
        let Some(message) =
            tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)))
        else {
            continue;
        };
        let message = message?;
        let (partition, offset) = (message.partition(), message.offset());
        let payload = message.payload().unwrap_or_default().to_vec();
        let key = message.key().map(<[u8]>::to_vec);
        drop(message);
        let event = serde_json::from_slice::<Event>(&payload)
            .ok()
            .filter(Event::is_valid);
        let database_started = Instant::now();
        write_one(
            &scenario.pool,
            &group,
            &scenario.topics.input,
            partition,
            offset,
            event.as_ref(),
            &payload,
        )
        .await?;
        database_ms.push(database_started.elapsed().as_secs_f64() * 1e3);
        let output_topic = match event {
            Some(_) => &scenario.topics.output,
            None => &scenario.topics.dlq,
        };
        let kafka_started = Instant::now();
        tokio::task::block_in_place(|| -> Result<()> {
            producer.begin_transaction()?;
            let mut record = BaseRecord::to(output_topic).payload(&payload);
            if let Some(key) = &key {
                record = record.key(key);
            }
            producer.send(record).map_err(|(error, _)| error)?;
            let mut offsets = TopicPartitionList::new();
            offsets.add_partition_offset(
                &scenario.topics.input,
                partition,
                Offset::Offset(offset + 1),
            )?;
            let metadata = consumer.group_metadata().ok_or(BenchError::Violated {
                step: "per-message run",
                count: 1,
                first: "the consumer has no group metadata".to_owned(),
            })?;
            producer.send_offsets_to_transaction(&offsets, &metadata, call_timeout)?;
            producer.commit_transaction(call_timeout)?;
            Ok(())
        })?;
        kafka_ms.push(kafka_started.elapsed().as_secs_f64() * 1e3);
        processed += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let brokers_seconds = MachineSnapshot::now(None)?
        .cpu_seconds_since(&machine_before)
        .get(&Component::KafkaBrokers)
        .copied()
        .unwrap_or(0.0);
    scenario.drop_database().await?;
    Ok(PerMessageRun {
        records: processed,
        seconds,
        records_per_second: processed as f64 / seconds.max(f64::EPSILON),
        broker_cpu_ms_per_transaction: (brokers_seconds - broker_idle_cores * seconds).max(0.0)
            * 1e3
            / processed.max(1) as f64,
        broker_idle_cores,
        database_transaction_ms: quantiles_of(database_ms),
        kafka_transaction_ms: quantiles_of(kafka_ms),
    })
}

/// The cores the Kafka brokers keep busy while nothing is asked of them
/// (replication fetches, the controllers' quorum), over `window`.
async fn brokers_idle_cores(window: Duration) -> Result<f64> {
    let before = MachineSnapshot::now(None)?;
    tokio::time::sleep(window).await;
    let seconds = MachineSnapshot::now(None)?
        .cpu_seconds_since(&before)
        .get(&Component::KafkaBrokers)
        .copied()
        .unwrap_or(0.0);
    Ok(seconds / window.as_secs_f64())
}

/// One record's database transaction: the event with its spend, or the
/// dead letter, and the partition's offset.
async fn write_one(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    event: Option<&Event>,
    payload: &[u8],
) -> Result<()> {
    let txn_id = uuid::Uuid::now_v7();
    let mut transaction = pool.begin().await?;
    match event {
        Some(event) => {
            let minute =
                event.occurred_at.timestamp() - event.occurred_at.timestamp().rem_euclid(60);
            let minute = chrono::DateTime::from_timestamp(minute, 0).unwrap_or_default();
            let inserted = sqlx::query(
                "INSERT INTO ad_events (event_id, campaign_id, ad_id, kind, cost_micros,
                                        occurred_at, billed_minute, source_topic,
                                        source_partition, source_offset, txn_id, source_group)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event.event_id)
            .bind(&event.campaign_id)
            .bind(&event.ad_id)
            .bind(&event.kind)
            .bind(event.cost_micros)
            .bind(event.occurred_at)
            .bind(minute)
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .bind(txn_id)
            .bind(group)
            .execute(&mut *transaction)
            .await?;
            if inserted.rows_affected() == 1 {
                let click = i64::from(event.kind == "click");
                sqlx::query(
                    "INSERT INTO campaign_spend (campaign_id, minute, impressions, clicks,
                                                 spend_micros)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (campaign_id, minute) DO UPDATE
                       SET impressions = campaign_spend.impressions + EXCLUDED.impressions,
                           clicks = campaign_spend.clicks + EXCLUDED.clicks,
                           spend_micros = campaign_spend.spend_micros + EXCLUDED.spend_micros",
                )
                .bind(&event.campaign_id)
                .bind(minute)
                .bind(1 - click)
                .bind(click)
                .bind(event.cost_micros)
                .execute(&mut *transaction)
                .await?;
            }
        }
        None => {
            sqlx::query(
                "INSERT INTO dead_letters (source_topic, source_partition, source_offset,
                                           error_kind, error, payload, txn_id, source_group)
                 VALUES ($1, $2, $3, 'invalid', 'not an event', $4, $5, $6)
                 ON CONFLICT DO NOTHING",
            )
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .bind(payload)
            .bind(txn_id)
            .bind(group)
            .execute(&mut *transaction)
            .await?;
        }
    }
    sqlx::query(
        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, start_offset, txn_id)
         VALUES ($1, $2, $3, $4, 0, $5)
         ON CONFLICT (group_id, topic, partition) DO UPDATE
           SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset),
               txn_id = EXCLUDED.txn_id, updated_at = now()",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(offset + 1)
    .bind(txn_id)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(())
}
