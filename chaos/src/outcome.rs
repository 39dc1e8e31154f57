//! What one chaos scenario found: the faults it injected and the evidence
//! that each met work, the restarts it saw, and the verdict in numbers
//! (lost, duplicated, DLQ exact), with the violations in words.
//!
//! Guarantees: a scenario passes only if it ran, every violation list is
//! empty, and its fault left evidence that it was injected while there was
//! work to hit ([`Injection`] adds the violation
//! `not injected: …` otherwise); a verdict that cannot show exactly-once
//! (the mock cluster) says so in `judged_by`.

use serde::Serialize;

use crate::harness::Verdict;

/// The result of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOutcome {
    /// scenario name
    pub scenario: String,
    /// faults injected
    pub faults_injected: u64,
    /// actor restarts (from `/metrics`) plus process restarts
    pub restarts_seen: u64,
    /// records written to the input topic
    pub events_in: u64,
    /// distinct valid events without their row or output
    pub lost: u64,
    /// outputs or rows beyond one per distinct event
    pub duplicated: u64,
    /// exactly one DLQ record and one `dead_letters` row per invalid record
    pub dlq_exact: bool,
    /// seconds from the end of the last fault until caught up
    pub recover_seconds: f64,
    /// what shows that each fault was injected and met work
    pub evidence: Vec<String>,
    /// how the verdict was reached
    pub judged_by: String,
    /// every violation found (empty when the scenario passed)
    pub violations: Vec<String>,
    /// why the scenario could not be run or judged, if it could not
    pub error: Option<String>,
}

impl ScenarioOutcome {
    /// Whether the scenario ran and every guarantee held.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.violations.is_empty()
    }

    /// An outcome for a scenario that failed to run.
    pub fn failed_to_run(scenario: &str, error: String) -> ScenarioOutcome {
        ScenarioOutcome {
            scenario: scenario.to_owned(),
            faults_injected: 0,
            restarts_seen: 0,
            events_in: 0,
            lost: 0,
            duplicated: 0,
            dlq_exact: false,
            recover_seconds: 0.0,
            evidence: Vec::new(),
            judged_by: String::new(),
            violations: Vec::new(),
            error: Some(error),
        }
    }
}

/// Judged by a broker with transactions: topics read with `read_committed`.
pub const JUDGED_BY_TRANSACTIONS: &str = "Apache Kafka, 3 nodes (transactions): input, output and DLQ topics \
     read with read_committed, and the tables; exactly once on both sides";

/// Evidence that a fault met work, gathered while it was injected.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    /// what was seen (`SIGKILL at coordinator-after-db-commit: exit by signal 9`)
    pub evidence: Vec<String>,
    /// why a fault cannot be shown to have met work
    pub not_injected: Vec<String>,
}

impl Injection {
    /// Records `what` as evidence if `seen`, else as not injected.
    pub fn require(&mut self, seen: bool, what: impl Into<String>) {
        let what = what.into();
        if seen {
            self.evidence.push(what);
        } else {
            self.not_injected.push(what);
        }
    }

    /// The violations of faults without evidence.
    pub fn violations(&self) -> Vec<String> {
        self.not_injected
            .iter()
            .map(|what| format!("not injected: {what}"))
            .collect()
    }
}

/// The numbers of an outside verdict (topics read with `read_committed`).
pub fn numbers_of(verdict: &Verdict) -> (u64, u64, bool) {
    let truth = &verdict.truth;
    let lost = truth
        .distinct_events
        .saturating_sub(verdict.output_distinct_events.min(verdict.ad_events_rows));
    let duplicated = verdict
        .output_records
        .saturating_sub(verdict.output_distinct_events)
        + verdict.ad_events_rows.saturating_sub(truth.distinct_events)
        + verdict
            .output_distinct_events
            .saturating_sub(truth.distinct_events);
    let dlq_exact = verdict.dlq_records == truth.invalid
        && verdict.dead_letter_rows == truth.invalid
        && !verdict.violations.iter().any(|violation| {
            violation.to_lowercase().contains("dlq") || violation.contains("dead_letters")
        });
    (lost, duplicated, dlq_exact)
}
