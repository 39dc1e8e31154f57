//! The demo's verdict: what went in, what came out, what was injected, and
//! whether every event was processed exactly once, as a table or as JSON.
//!
//! Guarantees: every number comes from outside the pipeline (the input
//! topic re-read and re-validated, the store's tables, the output and DLQ
//! topics as read); nothing the pipeline reports about itself is judged.
//! On the mock cluster (no transactions) the verdict holds only if the
//! store is exact (one row per distinct event, spend per campaign and
//! minute, one dead letter per invalid position, offsets at the end) and
//! nothing is missing from the topics; it does not claim exactly-once on
//! the topics, and says so ([`JUDGED_BY`]).

use onceflow_chaos::harness::{InputTruth, MOCK_JUDGED_BY, MockJudgement};
use serde::Serialize;

/// How the verdict is reached on the mock cluster, said in every output.
pub const JUDGED_BY: &str = MOCK_JUDGED_BY;

/// Violations shown at most, in the table and in the JSON.
const VIOLATIONS_SHOWN: usize = 20;

/// One injected fault and what the pipeline did about it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// short name
    pub fault: &'static str,
    /// what was done and what was seen
    pub detail: String,
}

/// The demo's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct DemoVerdict {
    /// whether everything the mock can show held (the store exact, nothing
    /// missing from the topics); see `judged_by`
    pub exactly_once: bool,
    /// generator seed
    pub seed: u64,
    /// `sqlite` or `postgresql`
    pub store: &'static str,
    /// input records written
    pub events: u64,
    /// distinct valid events among them
    pub distinct_events: u64,
    /// repeats of an earlier event (exact bytes re-sent)
    pub repeats: u64,
    /// invalid records
    pub invalid: u64,
    /// output records read (aborted ones included: the mock keeps them)
    pub outputs: u64,
    /// distinct events among the output records
    pub distinct_outputs: u64,
    /// dead-letter records read (aborted ones included)
    pub dlq_records: u64,
    /// faults injected
    pub faults_injected: u64,
    /// actor restarts by supervisors
    pub restarts: u64,
    /// Kafka transactions the pipeline reported committed (not judged)
    pub committed_transactions: u64,
    /// distinct events without their row or without any output
    pub lost: u64,
    /// `ad_events` rows beyond one per distinct event
    pub duplicated: u64,
    /// `(campaign, minute)` cells of `campaign_spend` checked against the truth
    pub spend_cells_checked: u64,
    /// total spend of the input's distinct events, in micros
    pub spend_micros_total: i64,
    /// every invalid record has exactly one `dead_letters` row and at least
    /// one DLQ record
    pub dlq_exact: bool,
    /// wall-clock seconds from start to verdict
    pub elapsed_seconds: f64,
    /// how the verdict is reached
    pub judged_by: &'static str,
    /// the faults, in order
    pub faults: Vec<FaultReport>,
    /// planned faults that could not be injected, and why
    pub faults_not_injected: Vec<FaultReport>,
    /// the first violations, in words
    pub violations: Vec<String>,
    /// how many violations there were in all
    pub violation_count: usize,
}

/// What the demo knows beside the judgement.
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// generator seed
    pub seed: u64,
    /// store kind
    pub store: &'static str,
    /// faults and outcomes
    pub faults: Vec<FaultReport>,
    /// planned faults that could not be injected
    pub not_injected: Vec<FaultReport>,
    /// actor restarts
    pub restarts: u64,
    /// committed Kafka transactions reported
    pub committed_transactions: u64,
    /// seconds from start to verdict
    pub elapsed_seconds: f64,
    /// violations found outside the judgement (the generator's manifest
    /// disagreeing with the input topic, the pipeline not catching up)
    pub extra_violations: Vec<String>,
}

impl DemoVerdict {
    /// The verdict from the truth, the judgement and the run's facts.
    pub fn new(truth: &InputTruth, judgement: MockJudgement, facts: RunFacts) -> DemoVerdict {
        let mut violations = facts.extra_violations;
        violations.extend(judgement.violations);
        let violation_count = violations.len();
        violations.truncate(VIOLATIONS_SHOWN);
        DemoVerdict {
            exactly_once: violation_count == 0,
            seed: facts.seed,
            store: facts.store,
            events: truth.records,
            distinct_events: truth.distinct_events,
            repeats: truth.repeats,
            invalid: truth.invalid,
            outputs: judgement.outputs,
            distinct_outputs: judgement.distinct_outputs,
            dlq_records: judgement.dlq_records,
            faults_injected: facts.faults.len() as u64,
            restarts: facts.restarts,
            committed_transactions: facts.committed_transactions,
            lost: judgement.lost,
            duplicated: judgement.duplicated,
            spend_cells_checked: judgement.spend_cells_checked,
            spend_micros_total: truth.spend_micros_total,
            dlq_exact: judgement.dlq_exact,
            elapsed_seconds: facts.elapsed_seconds,
            judged_by: JUDGED_BY,
            faults: facts.faults,
            faults_not_injected: facts.not_injected,
            violations,
            violation_count,
        }
    }

    /// The verdict as a table, with the faults and any violations below it.
    pub fn table(&self) -> String {
        let spend_ok = !self
            .violations
            .iter()
            .any(|violation| violation.starts_with("campaign_spend"));
        let rows: Vec<(&str, String, &str)> = vec![
            ("events written", digits(self.events), ""),
            ("distinct events", digits(self.distinct_events), ""),
            ("repeats", digits(self.repeats), "stored once, no output"),
            (
                "invalid",
                digits(self.invalid),
                "dead-lettered with a reason",
            ),
            (
                "outputs",
                digits(self.outputs),
                if self.distinct_outputs == self.distinct_events {
                    "every distinct event (at least once)"
                } else {
                    "MISSING events"
                },
            ),
            (
                "DLQ records",
                digits(self.dlq_records),
                if self.dlq_exact {
                    "every invalid record"
                } else {
                    "MISSING or wrong dead letters"
                },
            ),
            ("faults injected", digits(self.faults_injected), ""),
            ("actor restarts", digits(self.restarts), "by supervisors"),
            (
                "transactions",
                digits(self.committed_transactions),
                "reported committed (not judged)",
            ),
            ("lost", digits(self.lost), ""),
            ("duplicated rows", digits(self.duplicated), "in the store"),
            (
                "spend cells checked",
                format!("{} cells", self.spend_cells_checked),
                if spend_ok {
                    "all equal the input"
                } else {
                    "MISMATCH"
                },
            ),
        ];
        let mut table = String::from("\n  onceflow demo: verdict\n");
        table.push_str("  ----------------------+--------------+--------------------------\n");
        for (label, value, note) in rows {
            let row = format!("  {label:<21} | {value:>12} | {note}");
            table.push_str(row.trim_end());
            table.push('\n');
        }
        table.push_str("  ----------------------+--------------+--------------------------\n");
        table.push_str(&format!(
            "  {:<21} | {:>12} | seed {}, {} store, {:.1} s\n",
            "verdict",
            if self.exactly_once {
                "HELD"
            } else {
                "VIOLATED"
            },
            self.seed,
            self.store,
            self.elapsed_seconds
        ));
        if !self.faults.is_empty() {
            table.push_str("\n  faults:\n");
            for fault in &self.faults {
                table.push_str(&format!("  - {}: {}\n", fault.fault, fault.detail));
            }
        }
        if !self.faults_not_injected.is_empty() {
            table.push_str("\n  planned but not injected:\n");
            for fault in &self.faults_not_injected {
                table.push_str(&format!("  - {}: {}\n", fault.fault, fault.detail));
            }
        }
        if !self.violations.is_empty() {
            table.push_str(&format!(
                "\n  violations ({} in all, first {} shown):\n",
                self.violation_count,
                self.violations.len()
            ));
            for violation in &self.violations {
                table.push_str(&format!("  - {violation}\n"));
            }
        }
        table.push_str(&format!("\n  How it was judged: {JUDGED_BY}.\n"));
        table
    }
}

/// `1234567` as `1,234,567`.
pub fn digits(value: u64) -> String {
    let text = value.to_string();
    let mut grouped = String::with_capacity(text.len() + text.len() / 3);
    for (index, character) in text.chars().enumerate() {
        if index > 0 && (text.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(character);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits_by_thousands() {
        assert_eq!(digits(0), "0");
        assert_eq!(digits(999), "999");
        assert_eq!(digits(1_000), "1,000");
        assert_eq!(digits(1_234_567), "1,234,567");
    }

    #[test]
    fn a_lost_event_makes_the_verdict_fail() {
        let truth = InputTruth {
            records: 10,
            distinct_events: 9,
            invalid: 1,
            ..InputTruth::default()
        };
        let judgement = MockJudgement {
            outputs: 8,
            distinct_outputs: 8,
            dlq_records: 1,
            lost: 1,
            dlq_exact: true,
            violations: vec!["event x has no output record at all".to_owned()],
            ..MockJudgement::default()
        };
        let facts = RunFacts {
            seed: 1,
            store: "sqlite",
            faults: Vec::new(),
            not_injected: Vec::new(),
            restarts: 0,
            committed_transactions: 3,
            elapsed_seconds: 1.0,
            extra_violations: Vec::new(),
        };
        let verdict = DemoVerdict::new(&truth, judgement, facts);
        assert!(!verdict.exactly_once);
        let table = verdict.table();
        assert!(table.contains("VIOLATED"), "{table}");
        assert!(table.contains("MISSING events"), "{table}");
        assert!(table.contains("event x has no output record"), "{table}");
    }
}
