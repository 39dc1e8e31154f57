//! What the demo shows while it runs: a bar of records written, a bar of
//! records committed (database and Kafka), the breaker's state, restarts and
//! transactions, and one line per fault. On a terminal the bars redraw in
//! place; elsewhere (a CI log, a pipe) a plain line every few seconds.
//!
//! Guarantees: progress goes to stderr only, so `--json` keeps stdout to
//! the verdict alone; drawing never blocks the demo.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use onceflow_actors::PipelineStatus;

use super::demo_verdict::digits;

/// How often a plain progress line is printed when there is no terminal.
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(3);

/// Whether every record written is committed, as the display last saw it.
#[derive(Debug, Clone)]
pub struct Backlog {
    committed: ProgressBar,
    events: u64,
}

impl Backlog {
    /// Every record of the run is committed.
    pub fn is_drained(&self) -> bool {
        self.committed.position() >= self.events
    }
}

/// The demo's progress display.
#[derive(Debug)]
pub struct DemoProgress {
    multi: MultiProgress,
    written: ProgressBar,
    committed: ProgressBar,
    events: u64,
    last_plain_line: Instant,
}

impl DemoProgress {
    /// Bars for `events` records.
    pub fn new(events: u64) -> DemoProgress {
        let multi = MultiProgress::new();
        let style = |what: &str| {
            ProgressStyle::with_template(&format!(
                "  {what:<10} {{bar:36}} {{human_pos:>7}}/{{human_len}} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        let written = multi.add(ProgressBar::new(events).with_style(style("written")));
        let committed = multi.add(ProgressBar::new(events).with_style(style("committed")));
        DemoProgress {
            multi,
            written,
            committed,
            events,
            last_plain_line: Instant::now(),
        }
    }

    /// The bar the load generator advances.
    pub fn written_bar(&self) -> ProgressBar {
        self.written.clone()
    }

    /// What the faults look at to know whether work is left.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            committed: self.committed.clone(),
            events: self.events,
        }
    }

    /// Records committed so far.
    pub fn committed(&self) -> u64 {
        self.committed.position()
    }

    /// Shows `committed` records and the pipeline's state.
    pub fn update(&mut self, committed: u64, status: &PipelineStatus, transactions: usize) {
        self.committed.set_position(committed.min(self.events));
        let state = format!(
            "{} txns, breaker {}, restarts {}",
            digits(transactions as u64),
            status.breaker_state().as_str(),
            status.actor_restarts()
        );
        self.committed.set_message(state.clone());
        if self.multi.is_hidden() && self.last_plain_line.elapsed() >= PLAIN_LINE_EVERY {
            self.last_plain_line = Instant::now();
            eprintln!(
                "  progress: {}/{} written, {} committed; {state}",
                digits(self.written.position()),
                digits(self.events),
                digits(committed)
            );
        }
    }

    /// Prints a line above the bars (or plainly without a terminal).
    pub fn say(&self, line: &str) {
        if self.multi.is_hidden() || self.multi.println(line).is_err() {
            eprintln!("{line}");
        }
    }

    /// Leaves the bars as they are, drawn one last time.
    pub fn finish(&self) {
        self.written.abandon();
        self.committed.abandon();
    }
}
