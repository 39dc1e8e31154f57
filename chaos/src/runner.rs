//! Runs scenarios one after another with a progress bar, prints the verdict
//! table, writes the JSON report, and says how to reproduce a failure.
//!
//! Guarantees: every selected scenario runs even if an earlier one failed;
//! the report lists every outcome; [`ChaosReport::passed`] is false as soon
//! as one scenario lost, duplicated, or could not be judged.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::bail;
use crate::error::Result;
use crate::outcome::ScenarioOutcome;
use crate::random_mode::run_random;
use crate::scenarios::{ScenarioContext, ScenarioSpec, catalog, run_scenario};

/// The result of a chaos run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// the workload seed
    pub seed: u64,
    /// whether `--quick` sizes were used
    pub quick: bool,
    /// every outcome, in run order
    pub outcomes: Vec<ScenarioOutcome>,
    /// commands that reproduce each failure
    pub reproduce: Vec<String>,
}

impl ChaosReport {
    /// Whether every scenario passed.
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(ScenarioOutcome::passed)
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// The verdict table.
    pub fn table(&self) -> String {
        let width = self
            .outcomes
            .iter()
            .map(|outcome| outcome.scenario.len())
            .chain(["scenario".len()])
            .max()
            .unwrap_or_default();
        let mut lines = vec![format!(
            "{:<width$} {:>6} {:>8} {:>9} {:>5} {:>5} {:>9} {:>9}  {}",
            "scenario",
            "faults",
            "restarts",
            "events in",
            "lost",
            "dup",
            "DLQ exact",
            "recover s",
            "verdict"
        )];
        for outcome in &self.outcomes {
            let verdict = match (&outcome.error, outcome.violations.len()) {
                (Some(_), _) => "ERROR".to_owned(),
                (None, 0) => "ok".to_owned(),
                (None, count) => format!("VIOLATED ({count})"),
            };
            lines.push(format!(
                "{:<width$} {:>6} {:>8} {:>9} {:>5} {:>5} {:>9} {:>9.1}  {}",
                outcome.scenario,
                outcome.faults_injected,
                outcome.restarts_seen,
                outcome.events_in,
                outcome.lost,
                outcome.duplicated,
                if outcome.dlq_exact { "yes" } else { "NO" },
                outcome.recover_seconds,
                verdict
            ));
        }
        lines.join("\n")
    }

    /// Details of every failed scenario, and how to reproduce it.
    pub fn failures(&self) -> String {
        let mut text = String::new();
        for outcome in self.outcomes.iter().filter(|outcome| !outcome.passed()) {
            text.push_str(&format!("\n{}:\n", outcome.scenario));
            if let Some(error) = &outcome.error {
                text.push_str(&format!("  could not run: {error}\n"));
            }
            if !outcome.judged_by.is_empty() {
                text.push_str(&format!("  judged by: {}\n", outcome.judged_by));
            }
            for evidence in &outcome.evidence {
                text.push_str(&format!("  evidence: {evidence}\n"));
            }
            for violation in outcome.violations.iter().take(20) {
                text.push_str(&format!("  - {violation}\n"));
            }
        }
        for command in &self.reproduce {
            text.push_str(&format!("reproduce: {command}\n"));
        }
        text
    }
}

fn progress_bar(length: u64) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Selects scenarios by name (exact, or a prefix ending in `/`).
pub fn select(names: &[String]) -> Result<Vec<ScenarioSpec>> {
    let all = catalog();
    let mut selected = Vec::new();
    for name in names {
        let matching: Vec<&ScenarioSpec> = all
            .iter()
            .filter(|spec| {
                spec.name == *name || (name.ends_with('/') && spec.name.starts_with(name.as_str()))
            })
            .collect();
        if matching.is_empty() {
            bail!("no chaos scenario named {name}; `onceflow chaos list` shows them");
        }
        selected.extend(matching.into_iter().cloned());
    }
    Ok(selected)
}

/// The scenarios `chaos all` runs: every one, except those marked
/// `full_only` when `quick`.
pub fn all_scenarios(quick: bool) -> Vec<ScenarioSpec> {
    catalog()
        .into_iter()
        .filter(|spec| !(quick && spec.full_only))
        .collect()
}

/// Runs `specs` one after another.
pub async fn run_scenarios(
    specs: &[ScenarioSpec],
    context: &ScenarioContext,
    quick: bool,
) -> Result<ChaosReport> {
    if !onceflow_actors::failpoints::ENABLED
        && let Some(spec) = specs.iter().find(|spec| spec.needs_failpoints())
    {
        bail!(
            "scenario {} needs the kill points: build with `cargo build --features failpoints` \
             (or run `cargo run --features failpoints -- chaos …`)",
            spec.name
        );
    }
    let bar = progress_bar(specs.len() as u64);
    let mut outcomes = Vec::new();
    let mut reproduce = Vec::new();
    for spec in specs {
        let outcome = run_scenario(spec, context, &bar).await;
        bar.println(format!(
            "{} {}",
            if outcome.passed() {
                "ok      "
            } else {
                "FAILED  "
            },
            spec.name
        ));
        if !outcome.passed() {
            reproduce.push(format!(
                "onceflow chaos run {} --seed {}{}",
                spec.name,
                context.seed,
                if quick { " --quick" } else { "" }
            ));
        }
        outcomes.push(outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(ChaosReport {
        seed: context.seed,
        quick,
        outcomes,
        reproduce,
    })
}

/// Runs the seeded random mode for `duration`.
pub async fn run_random_mode(
    context: &ScenarioContext,
    duration: Duration,
    quick: bool,
) -> Result<ChaosReport> {
    let bar = progress_bar(1);
    let outcome = run_random(context, duration, &bar).await;
    bar.finish_and_clear();
    let mut reproduce = Vec::new();
    if !outcome.passed() {
        reproduce.push(format!(
            "onceflow chaos random --seed {} --duration {}s{}",
            context.seed,
            duration.as_secs(),
            if quick { " --quick" } else { "" }
        ));
    }
    Ok(ChaosReport {
        seed: context.seed,
        quick,
        outcomes: vec![outcome],
        reproduce,
    })
}
