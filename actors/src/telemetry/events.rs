//! The commit cycle's outcomes as typed events: each one's `emit()` writes
//! its log line, counts its metric and records the cycle's span outcome, so
//! every cycle that ends the same way is reported the same way (vector's
//! internal events).
//!
//! Guarantees:
//! - every event that reports how a commit cycle ended ("cycle committed",
//!   the aborts) is logged under [`COMMIT_EVENTS_TARGET`], a name that does
//!   not depend on the module that emits it, so that readers of these
//!   events (the demo's committed-transaction set) survive moving the code.
//!   It sits under `onceflow_actors`, so `RUST_LOG` directives for the crate
//!   (`onceflow_actors=debug`) keep covering it;
//! - the abort reasons are exactly the labels of
//!   `onceflow_txn_aborts_total{reason}` the README documents, and the span
//!   outcomes exactly the values of `onceflow.outcome` docs/tracing.md
//!   documents: both are enums here, spelled once.

use std::fmt::{Debug, Display};
use std::time::Duration;

use uuid::Uuid;

use crate::telemetry::metrics::{CommitPhase, label};
use crate::telemetry::spans::{self, RecordSpan, mark_failed};
use crate::telemetry::status::PipelineStatus;

/// Target of the commit cycle's outcome events.
pub const COMMIT_EVENTS_TARGET: &str = "onceflow_actors::commit";

/// Why a cycle was aborted: the `reason` label of
/// `onceflow_txn_aborts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// a kill point fired (tests and chaos only)
    Injected,
    /// a database write of the cycle failed
    Database,
    /// the Kafka transaction failed with an abortable error
    Abortable,
    /// the producer was fenced or failed fatally (it is recreated)
    FencedOrFatal,
    /// a retriable Kafka error persisted past the retries
    RetriesExhausted,
    /// the cycle's database phase ran beside its predecessor's Kafka phase,
    /// which failed: the cycle is replayed with it
    Predecessor,
}

impl AbortReason {
    /// Every reason, so each label's series exists from the start.
    pub const ALL: [AbortReason; 6] = [
        AbortReason::Injected,
        AbortReason::Database,
        AbortReason::Abortable,
        AbortReason::FencedOrFatal,
        AbortReason::RetriesExhausted,
        AbortReason::Predecessor,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::Injected => "injected",
            AbortReason::Database => "database",
            AbortReason::Abortable => "abortable",
            AbortReason::FencedOrFatal => "fenced_or_fatal",
            AbortReason::RetriesExhausted => "retries_exhausted",
            AbortReason::Predecessor => "predecessor",
        }
    }
}

/// How a cycle ended, as its span's `onceflow.outcome` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleEnd {
    /// every batch committed on both sides
    Committed,
    /// nothing of the cycle committed in Kafka; its partitions are rewound
    Aborted,
    /// some batches committed, the others' database writes failed
    PartlyCommitted,
}

impl CycleEnd {
    /// The span attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            CycleEnd::Committed => "committed",
            CycleEnd::Aborted => "aborted",
            CycleEnd::PartlyCommitted => "partly_committed",
        }
    }

    /// What the records' `process` spans say of a cycle that ended so.
    pub fn record_outcome(self) -> &'static str {
        match self {
            CycleEnd::Committed => "committed",
            CycleEnd::Aborted | CycleEnd::PartlyCommitted => "rewound",
        }
    }
}

/// Records how the cycle ended on its span (the current one) and on the
/// `process` spans of `records`.
pub fn end_cycle_span<'a>(
    records: impl Iterator<Item = &'a RecordSpan>,
    end: CycleEnd,
    error: Option<&dyn Display>,
) {
    let span = tracing::Span::current();
    span.record("onceflow.outcome", end.as_str());
    if let Some(error) = error {
        mark_failed(&span, error);
    }
    spans::record_outcome(records, end.record_outcome());
}

/// A cycle, or part of it, ended without committing.
#[derive(Clone, Copy)]
pub enum CycleAborted<'a> {
    /// a kill point fired before the database commit
    InjectedBeforeDatabase {
        /// the injected fault
        fault: &'a (dyn Display + Sync),
    },
    /// a kill point fired after the database commit
    InjectedAfterDatabase {
        /// the injected fault
        fault: &'a (dyn Display + Sync),
    },
    /// the database writes of `failed` did not commit (each failure was
    /// logged by itself); `partly` if others did
    Database {
        /// the partitions whose write failed
        failed: &'a [i32],
        /// whether other batches of the cycle committed
        partly: bool,
    },
    /// the Kafka transaction failed
    Kafka {
        /// the cycle
        txn_id: Uuid,
        /// the failure
        error: &'a (dyn Display + Sync),
        /// its class (what the coordinator does next)
        class: &'a (dyn Debug + Sync),
        /// the metric label its class maps to
        reason: AbortReason,
    },
    /// the cycle's database phase ran beside the Kafka phase of the cycle
    /// before it, which failed
    PredecessorFailed {
        /// the failed cycle
        predecessor: Uuid,
    },
}

impl CycleAborted<'_> {
    /// The metric label of this abort.
    pub fn reason(&self) -> AbortReason {
        match self {
            CycleAborted::InjectedBeforeDatabase { .. }
            | CycleAborted::InjectedAfterDatabase { .. } => AbortReason::Injected,
            CycleAborted::Database { .. } => AbortReason::Database,
            CycleAborted::Kafka { reason, .. } => *reason,
            CycleAborted::PredecessorFailed { .. } => AbortReason::Predecessor,
        }
    }

    /// The cycle span's outcome.
    pub fn end(&self) -> CycleEnd {
        match self {
            CycleAborted::Database { partly: true, .. } => CycleEnd::PartlyCommitted,
            _ => CycleEnd::Aborted,
        }
    }

    /// Logs the abort, records it on the cycle's span and on the `process`
    /// spans of the rewound `records`, and counts it.
    pub fn emit<'r>(&self, status: &PipelineStatus, records: impl Iterator<Item = &'r RecordSpan>) {
        let database_reason;
        let predecessor_reason;
        let error: &dyn Display = match *self {
            CycleAborted::InjectedBeforeDatabase { fault } => {
                tracing::warn!(target: COMMIT_EVENTS_TARGET, %fault, "cycle aborted before the database commit");
                fault
            }
            CycleAborted::InjectedAfterDatabase { fault } => {
                tracing::warn!(target: COMMIT_EVENTS_TARGET, %fault, "cycle aborted after the database commit");
                fault
            }
            CycleAborted::Database { failed, .. } => {
                database_reason = format!("database write failed for partitions {failed:?}");
                &database_reason
            }
            CycleAborted::Kafka {
                txn_id,
                error,
                class,
                ..
            } => {
                tracing::warn!(target: COMMIT_EVENTS_TARGET, %txn_id, %error, ?class, "kafka transaction failed");
                error
            }
            CycleAborted::PredecessorFailed { predecessor } => {
                tracing::info!(target: COMMIT_EVENTS_TARGET, %predecessor, "cycle abandoned with its failed predecessor; its partitions replay it");
                predecessor_reason =
                    format!("the kafka phase of the cycle before it ({predecessor}) failed");
                &predecessor_reason
            }
        };
        end_cycle_span(records, self.end(), Some(error));
        status.count_abort(self.reason().as_str());
    }
}

impl Debug for CycleAborted<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CycleAborted")
            .field("reason", &self.reason())
            .field("end", &self.end())
            .finish_non_exhaustive()
    }
}

/// A cycle committed on both sides and its bookkeeping is done.
#[derive(Debug, Clone, Copy)]
pub struct CycleCommitted<'a> {
    /// the cycle
    pub txn_id: Uuid,
    /// the partitions it committed
    pub partitions: &'a [i32],
    /// how long the cycle took, from its start to the end of its bookkeeping
    pub elapsed: Duration,
    /// of which its database phase (every partition's write, in parallel)
    pub database: Duration,
    /// of which its Kafka phase (produce, offsets, commit)
    pub kafka: Duration,
    /// records the cycle committed
    pub records: usize,
}

impl CycleCommitted<'_> {
    /// Counts the commit, observes its duration and logs it (the line the
    /// demo collects committed transaction ids from). The span outcome is
    /// recorded earlier, when Kafka confirms the commit (see
    /// [`end_cycle_span`]): a cycle whose bookkeeping is skipped still
    /// committed.
    pub fn emit(&self, status: &PipelineStatus) {
        status.count_commit();
        let metrics = status.metrics();
        metrics.commit_duration.observe(self.elapsed.as_secs_f64());
        for (phase, took) in [
            (CommitPhase::Database, self.database),
            (CommitPhase::Kafka, self.kafka),
        ] {
            metrics
                .commit_phase_duration
                .get_or_create(&label("phase", phase.as_str()))
                .observe(took.as_secs_f64());
        }
        tracing::debug!(
            target: COMMIT_EVENTS_TARGET,
            txn_id = %self.txn_id,
            partitions = ?self.partitions,
            elapsed_ms = self.elapsed.as_millis() as u64,
            database_ms = self.database.as_millis() as u64,
            kafka_ms = self.kafka.as_millis() as u64,
            records = self.records,
            "cycle committed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_reasons_are_the_documented_metric_labels() {
        let labels: Vec<&str> = [
            AbortReason::Abortable,
            AbortReason::FencedOrFatal,
            AbortReason::RetriesExhausted,
            AbortReason::Database,
            AbortReason::Injected,
        ]
        .into_iter()
        .map(AbortReason::as_str)
        .collect();
        assert_eq!(
            labels,
            [
                "abortable",
                "fenced_or_fatal",
                "retries_exhausted",
                "database",
                "injected"
            ]
        );
    }

    #[test]
    fn a_database_abort_with_committed_batches_is_partly_committed() {
        let failed = [1, 2];
        let partly = CycleAborted::Database {
            failed: &failed,
            partly: true,
        };
        assert_eq!(partly.end(), CycleEnd::PartlyCommitted);
        assert_eq!(partly.end().as_str(), "partly_committed");
        assert_eq!(partly.end().record_outcome(), "rewound");
        let whole = CycleAborted::Database {
            failed: &failed,
            partly: false,
        };
        assert_eq!(whole.end(), CycleEnd::Aborted);
        assert_eq!(whole.reason(), AbortReason::Database);
        let fault = "injected fault";
        assert_eq!(
            CycleAborted::InjectedAfterDatabase { fault: &fault }.reason(),
            AbortReason::Injected
        );
    }

    #[test]
    fn each_emit_counts_its_reason_once() {
        let status = PipelineStatus::default();
        let failed = [3];
        CycleAborted::Database {
            failed: &failed,
            partly: false,
        }
        .emit(&status, std::iter::empty());
        let error = "fenced";
        let class = "RecreateProducer";
        CycleAborted::Kafka {
            txn_id: Uuid::nil(),
            error: &error,
            class: &class,
            reason: AbortReason::FencedOrFatal,
        }
        .emit(&status, std::iter::empty());
        CycleCommitted {
            txn_id: Uuid::nil(),
            partitions: &failed,
            elapsed: Duration::from_millis(5),
            database: Duration::from_millis(2),
            kafka: Duration::from_millis(3),
            records: 10,
        }
        .emit(&status);
        let exported = status.metrics().encode();
        assert!(
            exported.contains(r#"onceflow_txn_aborts_total{reason="database"} 1"#),
            "{exported}"
        );
        assert!(
            exported.contains(r#"onceflow_txn_aborts_total{reason="fenced_or_fatal"} 1"#),
            "{exported}"
        );
        // Each phase observed on its own series, with its own duration.
        for line in [
            r#"onceflow_commit_phase_duration_seconds_sum{phase="database"} 0.002"#,
            r#"onceflow_commit_phase_duration_seconds_sum{phase="kafka"} 0.003"#,
            r#"onceflow_commit_phase_duration_seconds_count{phase="kafka"} 1"#,
            r#"onceflow_commit_duration_seconds_sum 0.005"#,
        ] {
            assert!(
                exported.lines().any(|exposed| exposed == line),
                "no `{line}` in\n{exported}"
            );
        }
        assert_eq!(status.committed_cycles(), 1);
    }
}
