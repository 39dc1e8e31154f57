//! onceflow's write path alone, without Kafka: the benchmark's generated
//! input, processed by onceflow's own processing into the batches the
//! product writes (5,000 records per partition by default), written by
//! [`Store::write_batch`] (its statements, the client's transfer, the
//! classification; one transaction per partition batch) in cycles of one
//! batch per partition. Measured twice, each in a fresh database: the
//! partitions of a cycle written in parallel, as the coordinator's writer
//! pool writes them, and one after another.
//!
//! Between PostgreSQL's ceiling (the database's work alone, no client) and a
//! product run (everything), it says which share of the gap is the write
//! path and which is the rest of the pipeline.
//!
//! Guarantees: generation and processing happen before the clock starts;
//! each run must store exactly the distinct events of its input (counted in
//! the database afterwards) or it fails instead of giving a figure.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use onceflow_actors::model::batch::PartitionBatch;
use onceflow_actors::model::record::{ConsumedRecord, ProcessedRecord, RecordEffect};
use onceflow_actors::processing::process_record;
use onceflow_actors::store::Store;
use onceflow_actors::telemetry::carrier::TraceHeaders;
use onceflow_chaos::harness::{Generator, WorkloadSpec};

use crate::error::{BenchError, Result};

/// Group, topic and owner the batches are written for.
const GROUP: &str = "bench-store-path";
const TOPIC: &str = "bench-input";
const OWNER: &str = "bench";

/// The figures of the write path alone.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StorePath {
    /// records written (dead letters and repeats included)
    pub records: u64,
    /// records per partition batch
    pub batch_records: usize,
    /// cycles of one batch per partition
    pub cycles: usize,
    /// the partitions of a cycle in parallel, as the product writes them
    pub parallel: WriteTiming,
    /// the partitions of a cycle one after another
    pub sequential: WriteTiming,
}

/// One way of writing the cycles, timed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WriteTiming {
    /// seconds all cycles took
    pub seconds: f64,
    /// records per second
    pub records_per_second: f64,
    /// slowest cycle, ms
    pub slowest_cycle_ms: f64,
}

/// Measures the write path on `workload`, in batches of `batch_records`
/// records per partition.
pub async fn store_path(workload: WorkloadSpec, batch_records: usize) -> Result<StorePath> {
    let partitions = workload.partitions.max(1);
    let by_partition = processed_input(workload);
    let records: usize = by_partition.values().map(Vec::len).sum();
    let distinct_events = distinct_events(&by_partition);
    let cycles = cycles_of(&by_partition, batch_records.max(1));
    let cycle_count = cycles.len();
    let parallel = timed_run(cycles.clone(), partitions, true, distinct_events).await?;
    let sequential = timed_run(cycles, partitions, false, distinct_events).await?;
    Ok(StorePath {
        records: records as u64,
        batch_records,
        cycles: cycle_count,
        parallel,
        sequential,
    })
}

/// The workload's records, processed, by partition in offset order.
fn processed_input(workload: WorkloadSpec) -> BTreeMap<i32, Vec<ProcessedRecord>> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut by_partition: BTreeMap<i32, Vec<ProcessedRecord>> = BTreeMap::new();
    for generated in Generator::new(workload) {
        let records = by_partition.entry(generated.partition).or_default();
        let offset = records.len() as i64;
        records.push(process_record(ConsumedRecord {
            partition: generated.partition,
            offset,
            key: generated.key,
            payload: generated.value,
            trace_headers: TraceHeaders::none(),
            timestamp_ms: Some(now_ms),
        }));
    }
    by_partition
}

fn distinct_events(by_partition: &BTreeMap<i32, Vec<ProcessedRecord>>) -> u64 {
    let ids: HashSet<uuid::Uuid> = by_partition
        .values()
        .flatten()
        .filter_map(|record| match &record.effect {
            RecordEffect::Event { event, .. } => Some(event.event_id),
            RecordEffect::DeadLetter { .. } => None,
        })
        .collect();
    ids.len() as u64
}

/// Cycle `i` holds each partition's `i`-th batch of `batch_records`.
fn cycles_of(
    by_partition: &BTreeMap<i32, Vec<ProcessedRecord>>,
    batch_records: usize,
) -> Vec<Vec<PartitionBatch>> {
    let mut cycles: Vec<Vec<PartitionBatch>> = Vec::new();
    for (partition, records) in by_partition {
        for (index, chunk) in records.chunks(batch_records).enumerate() {
            let start_offset = chunk.first().map_or(0, |record| record.offset);
            let end_offset = chunk.last().map_or(0, |record| record.offset + 1);
            if cycles.len() <= index {
                cycles.push(Vec::new());
            }
            cycles[index].push(PartitionBatch {
                partition: *partition,
                start_offset,
                end_offset,
                outputs_from: 0,
                records: chunk.to_vec(),
            });
        }
    }
    cycles
}

/// Writes every cycle into a fresh database and checks what was stored.
async fn timed_run(
    cycles: Vec<Vec<PartitionBatch>>,
    partitions: i32,
    parallel: bool,
    distinct_events: u64,
) -> Result<WriteTiming> {
    let (url, admin_pool) = onceflow_chaos::harness::fresh_database().await?;
    let measured = write_cycles(&url, cycles, partitions, parallel, distinct_events).await;
    admin_pool.close().await;
    onceflow_chaos::harness::drop_database(&url).await?;
    measured
}

async fn write_cycles(
    url: &str,
    cycles: Vec<Vec<PartitionBatch>>,
    partitions: i32,
    parallel: bool,
    distinct_events: u64,
) -> Result<WriteTiming> {
    let defaults = onceflow_actors::settings::Settings::default();
    let store = Store::connect_lazy(
        url,
        u32::try_from(defaults.db_writers).unwrap_or(4).max(1),
        Duration::from_secs(60),
        Duration::from_secs(60),
        Duration::from_secs(10),
    )?;
    store.migrate().await?;
    let mut epochs = BTreeMap::new();
    for partition in 0..partitions {
        let claimed = store
            .claim_partition(GROUP, TOPIC, partition, OWNER)
            .await?;
        epochs.insert(partition, claimed.owner_epoch);
    }
    let records: usize = cycles.iter().flatten().map(|b| b.records.len()).sum();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for cycle in cycles {
        let cycle_started = Instant::now();
        let txn_id = uuid::Uuid::now_v7();
        if parallel {
            let mut writes = tokio::task::JoinSet::new();
            for batch in cycle {
                let store = store.clone();
                let epoch = epochs.get(&batch.partition).copied().unwrap_or(1);
                writes.spawn(async move {
                    store.write_batch(GROUP, TOPIC, epoch, txn_id, &batch).await
                });
            }
            while let Some(written) = writes.join_next().await {
                written??;
            }
        } else {
            for batch in cycle {
                let epoch = epochs.get(&batch.partition).copied().unwrap_or(1);
                store
                    .write_batch(GROUP, TOPIC, epoch, txn_id, &batch)
                    .await?;
            }
        }
        slowest = slowest.max(cycle_started.elapsed());
    }
    let seconds = started.elapsed().as_secs_f64();
    let Store::Postgres(postgres) = &store else {
        return Err(BenchError::Violated {
            step: "write path alone",
            count: 1,
            first: "the benchmark's database is not PostgreSQL".to_owned(),
        });
    };
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ad_events")
        .fetch_one(postgres.pool())
        .await?;
    postgres.pool().close().await;
    if u64::try_from(stored).ok() != Some(distinct_events) {
        return Err(BenchError::Violated {
            step: "write path alone",
            count: 1,
            first: format!("{stored} events stored, {distinct_events} distinct in the input"),
        });
    }
    Ok(WriteTiming {
        seconds,
        records_per_second: records as f64 / seconds.max(f64::EPSILON),
        slowest_cycle_ms: slowest.as_secs_f64() * 1_000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_cover_every_record_once_in_contiguous_batches() {
        let by_partition = processed_input(crate::bench_workload(2_345, 3, 5));
        let cycles = cycles_of(&by_partition, 300);
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for cycle in &cycles {
            assert!(cycle.len() <= 3);
            for batch in cycle {
                let expected = next.entry(batch.partition).or_insert(0);
                assert_eq!(batch.start_offset, *expected, "contiguous");
                assert!(batch.records.len() <= 300 && !batch.records.is_empty());
                assert_eq!(
                    batch.end_offset - batch.start_offset,
                    batch.records.len() as i64
                );
                *expected = batch.end_offset;
            }
        }
        let written: usize = cycles.iter().flatten().map(|b| b.records.len()).sum();
        assert_eq!(written, 2_345, "every generated record, once");
        assert!(
            distinct_events(&by_partition) < 2_345,
            "invalid records and repeats"
        );
    }
}
