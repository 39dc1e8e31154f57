//! Named fault-injection points of the commit cycle ("kill points").
//!
//! Compiled in only with the `failpoints` cargo feature; in production
//! builds every point is an empty inline function. A point is configured
//! through the `fail` crate (`fail::cfg`, or the `FAILPOINTS` environment
//! variable read by the binary): `panic` kills the actor there, `return`
//! makes the step fail with [`InjectedFault`], and `return(sigkill)` kills
//! the whole process with SIGKILL there.

/// A fault injected at a named point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fault injected at {0}")]
pub struct InjectedFault(pub &'static str);

impl InjectedFault {
    /// Injected faults stand for transient failures: a retry can help.
    pub fn is_retriable(&self) -> bool {
        true
    }
}

/// Whether the kill points are compiled into this build.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Every kill point, for `chaos` and documentation.
pub const ALL_POINTS: &[&str] = &[
    COORDINATOR_BEFORE_DB_COMMIT,
    COORDINATOR_AFTER_DB_COMMIT,
    COORDINATOR_DURING_KAFKA_COMMIT,
    COORDINATOR_AFTER_KAFKA_COMMIT,
    COORDINATOR_CONFIRM_KAFKA_COMMIT,
    PARTITION_CONSUMER_MID_BATCH,
    PARTITION_CONSUMER_TAKE_BATCH,
    DB_WRITER_MID_STATEMENT,
    DLQ_FORWARDER,
];

/// in the coordinator, batches taken, before any database write
pub const COORDINATOR_BEFORE_DB_COMMIT: &str = "coordinator-before-db-commit";
/// in the coordinator, database committed, Kafka transaction not committed
pub const COORDINATOR_AFTER_DB_COMMIT: &str = "coordinator-after-db-commit";
/// in the coordinator, records produced, just before `commit_transaction`
pub const COORDINATOR_DURING_KAFKA_COMMIT: &str = "coordinator-during-kafka-commit";
/// in the coordinator, Kafka committed, partitions not yet told
pub const COORDINATOR_AFTER_KAFKA_COMMIT: &str = "coordinator-after-kafka-commit";
/// in the coordinator, Kafka committed, the committed offsets about to be
/// recorded in the store (`return`: not recorded, as in a store outage)
pub const COORDINATOR_CONFIRM_KAFKA_COMMIT: &str = "coordinator-confirm-kafka-commit";
/// in a partition consumer, while it adds a record to its batch
pub const PARTITION_CONSUMER_MID_BATCH: &str = "partition-consumer-mid-batch";
/// in a partition consumer, before it hands a batch to the coordinator
/// (`sleep(N)`: the hand-over misses the coordinator's deadline)
pub const PARTITION_CONSUMER_TAKE_BATCH: &str = "partition-consumer-take-batch";
/// in a database writer, events inserted, transaction not committed
pub const DB_WRITER_MID_STATEMENT: &str = "db-writer-mid-statement";
/// in the DLQ forwarder, before it produces dead letters
pub const DLQ_FORWARDER: &str = "dlq-forwarder";
/// in the record fetcher, a record received (`return`: the input consumer
/// is taken as fenced out of its group, as by `FENCED_INSTANCE_ID`; not in
/// [`ALL_POINTS`]: the fetcher is a task, not an actor that can panic)
pub const RECORD_FETCHER_FENCED: &str = "record-fetcher-fenced";

/// in the pipeline, shutdown asked for, before the graceful stop (`return`:
/// the graceful stop hangs for a minute, so the binary's shutdown deadline
/// or a second signal has to end the process; not in [`ALL_POINTS`]: no
/// actor dies there)
pub const PIPELINE_GRACEFUL_STOP: &str = "pipeline-graceful-stop";

/// Evaluates the point `name`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) -> Result<(), InjectedFault> {
    fail::fail_point!(name, |argument: Option<String>| {
        if argument.as_deref() == Some("sigkill") {
            kill_this_process();
        }
        Err(InjectedFault(name))
    });
    Ok(())
}

/// Evaluates the point `name` (compiled out).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) -> Result<(), InjectedFault> {
    Ok(())
}

#[cfg(feature = "failpoints")]
fn kill_this_process() -> ! {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    // SIGKILL is not deliverable only if `kill` is missing; never go on.
    std::process::abort()
}

/// The partition consumer's point (its step cannot fail, only die).
#[inline(always)]
pub fn partition_consumer_mid_batch() {
    if let Err(fault) = hit(PARTITION_CONSUMER_MID_BATCH) {
        tracing::warn!(%fault, "ignoring a `return` at a point that can only panic or kill");
    }
}

/// The partition consumer's hand-over point (it can sleep, panic or kill).
#[inline(always)]
pub fn partition_consumer_take_batch() {
    if let Err(fault) = hit(PARTITION_CONSUMER_TAKE_BATCH) {
        tracing::warn!(%fault, "ignoring a `return` at a point that can only sleep, panic or kill");
    }
}
