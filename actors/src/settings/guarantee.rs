//! The delivery guarantee a deployment chooses for its outputs (setting
//! `guarantee`).
//!
//! Guarantees, per mode:
//! - `exactly-once` (the default): the database side and the Kafka side
//!   each commit a record's effects once; outputs, dead-letter records and
//!   the group's offsets commit in one Kafka transaction (see
//!   `docs/guarantees.md`);
//! - `at-least-once`: the database side is still exactly once (it
//!   deduplicates by event id and source position, and stores its offsets in
//!   the same database transaction); outputs and dead-letter records are
//!   produced by an idempotent producer without a transaction and the
//!   group's offsets are committed after every record was acknowledged, so a
//!   failure between the two produces them again on replay: downstream may
//!   see an output twice, never miss one. It exists so the cost of
//!   exactly-once can be measured and for users who deduplicate downstream.

use serde::{Deserialize, Serialize};

/// The delivery guarantee of the outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// one Kafka transaction per commit cycle (the default)
    #[default]
    ExactlyOnce,
    /// outputs without a Kafka transaction; duplicates possible downstream
    AtLeastOnce,
}

impl Guarantee {
    /// The setting's value as written (`exactly-once`, `at-least-once`).
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::AtLeastOnce => "at-least-once",
        }
    }

    /// Whether outputs commit in Kafka transactions.
    pub fn is_transactional(self) -> bool {
        self == Guarantee::ExactlyOnce
    }
}
