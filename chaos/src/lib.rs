//! onceflow's chaos suite: scenarios that kill actors and processes in the
//! middle of a commit, restart supervisors past their budget, stall cycles
//! during rebalances, kill, pause and restart real Kafka brokers, move
//! leaders, cut, black-hole or slow the network to the brokers and to
//! PostgreSQL, inject database faults and awkward input, a
//! seeded random mode that composes them, and verdicts computed
//! independently of the code under test (`harness`): the input comes from
//! the harness's own generator, the truth from the contract's text, and a
//! scenario passes only if its faults met work, every partition caught up,
//! and exactly-once held (on the mock cluster: what it can show).

pub mod cluster_faults;
pub mod error;
pub mod harness;
mod instance_stop;
pub mod network_faults;
pub mod outcome;
pub mod random_mode;
pub mod runner;
pub mod scenarios;

pub use error::{ChaosError, Context, Result};
