//! Why a benchmark run failed. A run either measures everything it was asked
//! to or fails with the step that could not run; a figure is never made up.

/// A step of the benchmark that could not run. Retrying helps only for
/// [`BenchError::Harness`] and [`BenchError::Kafka`] failures caused by a
/// broker still starting; the others need a fix.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The test harness (cluster, database, instances, verdict) failed.
    #[error(transparent)]
    Harness(#[from] onceflow_chaos::ChaosError),
    /// A database statement of the benchmark itself failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A Kafka call of the benchmark itself failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// onceflow's schema could not be created.
    #[error("schema: {0}")]
    Schema(#[from] onceflow_actors::store::StoreError),
    /// The measured process could not be read in `/proc`.
    #[error("process {pid}: {reason}")]
    Process {
        /// the process id
        pid: u32,
        /// what could not be read
        reason: String,
    },
    /// A run did not finish in its time (a stalled pipeline is a result
    /// worth reporting, not a figure).
    #[error("{step} did not finish within {seconds} s: {detail}")]
    TimedOut {
        /// the step
        step: &'static str,
        /// its limit
        seconds: u64,
        /// where it was
        detail: String,
    },
    /// A run broke the guarantee it was measured under: its figures are not
    /// reported.
    #[error("{step}: the guarantee was violated ({count} violations), first: {first}")]
    Violated {
        /// the step
        step: &'static str,
        /// how many violations
        count: usize,
        /// the first one
        first: String,
    },
    /// The measured instance exited before its run ended (a setting it
    /// refused, a crash): the last line of its log says why.
    #[error("{step}: the instance exited before the end of the run: {last_log_line}")]
    InstanceExited {
        /// the step
        step: &'static str,
        /// the last line the instance logged
        last_log_line: String,
    },
    /// A blocking task of the benchmark was lost.
    #[error("task lost: {0}")]
    TaskLost(#[from] tokio::task::JoinError),
}

/// The benchmark's result type.
pub type Result<T> = std::result::Result<T, BenchError>;
