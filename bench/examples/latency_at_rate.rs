//! The latency step of the benchmark alone, at a rate you choose, for
//! comparing two builds at the same load (the full benchmark runs it at
//! half of each build's own maximum, so a faster build meets a heavier
//! load): `cargo run --release -p onceflow-bench --example latency_at_rate
//! -- BINARY RATE [SECONDS] [SEED]` (20 s and seed 7 by default) against a
//! running cluster (`CHAOS_KAFKA_DIR`, as `scripts/bench.sh` starts it) and
//! the tests' PostgreSQL. Prints the step's figures as JSON.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: latency_at_rate BINARY RATE [SECONDS] [SEED]";
    let binary = std::path::PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let rate: u64 = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let seconds: u64 = args.next().map_or(Ok(20), |text| text.parse())?;
    let seed: u64 = args.next().map_or(Ok(7), |text| text.parse())?;
    let measured =
        onceflow_bench::latency_run::latency_run(&binary, 3, rate, seconds, seed).await?;
    println!("{}", serde_json::to_string_pretty(&measured)?);
    Ok(())
}
