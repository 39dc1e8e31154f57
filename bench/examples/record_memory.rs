//! What one buffered record costs in heap memory: the benchmark's generated
//! input (every 100th record carries a `traceparent`, as `onceflow produce`
//! writes), read into `ConsumedRecord`s and processed into the
//! `ProcessedRecord`s a partition consumer buffers until their batch
//! commits. `cargo run --release -p onceflow-bench --example record_memory
//! -- [records]` (30,000 by default) prints the heap bytes and allocations
//! each holds per record, counted by dhat's allocator (requested bytes:
//! glibc adds 8 to 16 bytes per allocation, 32 at least).
//!
//! The figure behind the default `max_buffered_records`: a partition holds
//! at most that many processed records (see `docs/performance.md`).

use onceflow_actors::model::record::{ConsumedRecord, ProcessedRecord};
use onceflow_actors::processing::process_record;
use onceflow_actors::telemetry::carrier::TraceHeaders;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Heap bytes and allocations held, per record.
#[derive(Debug, serde::Serialize)]
struct HeldPerRecord {
    bytes: f64,
    allocations: f64,
}

fn held_since(before: &dhat::HeapStats, records: usize) -> HeldPerRecord {
    let now = dhat::HeapStats::get();
    let records = records.max(1) as f64;
    HeldPerRecord {
        bytes: (now.curr_bytes as f64 - before.curr_bytes as f64) / records,
        allocations: (now.curr_blocks as f64 - before.curr_blocks as f64) / records,
    }
}

fn main() -> anyhow::Result<()> {
    let records: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(30_000), |text| text.parse())?;
    let _profiler = dhat::Profiler::builder().testing().build();
    let traced = TraceHeaders::from_pairs([(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    let before = dhat::HeapStats::get();
    let consumed: Vec<ConsumedRecord> =
        onceflow_chaos::harness::Generator::new(onceflow_bench::bench_workload(records, 3, 7))
            .enumerate()
            .map(|(index, record)| ConsumedRecord {
                partition: record.partition,
                offset: index as i64,
                key: record.key,
                payload: record.value,
                trace_headers: if index % 100 == 0 {
                    traced.clone()
                } else {
                    TraceHeaders::none()
                },
                timestamp_ms: Some(1_780_000_000_000),
            })
            .collect();
    let count = consumed.len();
    let consumed_held = held_since(&before, count);
    let processed: Vec<ProcessedRecord> = consumed.into_iter().map(process_record).collect();
    let processed_held = held_since(&before, count);

    let figures = serde_json::json!({
        "records": count,
        "processed_record_inline_bytes": std::mem::size_of::<ProcessedRecord>(),
        "consumed_per_record": consumed_held,
        "processed_per_record": processed_held,
    });
    println!("{}", serde_json::to_string_pretty(&figures)?);
    drop(processed);
    Ok(())
}
