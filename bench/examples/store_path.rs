//! onceflow's write path alone, without Kafka or the rest of the benchmark:
//! `cargo run --release -p onceflow-bench --example store_path -- [records]
//! [batch_records]` (300,000 and the product's `max_batch_records` by
//! default) against the tests' PostgreSQL (`scripts/dev-env.sh` starts it).
//! Prints the figures of [`onceflow_bench::store_path`]; for trying a change
//! to the write path in seconds before a full `scripts/bench.sh`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().map_or(Ok(300_000), |text| text.parse())?;
    let batch_records: usize = args.next().map_or(
        Ok(onceflow_actors::settings::Settings::default().max_batch_records),
        |text| text.parse(),
    )?;
    let workload = onceflow_bench::bench_workload(records, 3, 7);
    let measured = onceflow_bench::store_path::store_path(workload, batch_records).await?;
    println!("{}", serde_json::to_string_pretty(&measured)?);
    Ok(())
}
