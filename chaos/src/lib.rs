//! onceflow's chaos suite: scenarios that kill actors and processes in the
//! middle of a commit and inject broker and database faults, a seeded random
//! mode, and a verdict computed independently of the code under test
//! (`harness`), against the workload's own ground truth.

pub mod error;
pub mod harness;
pub mod outcome;
pub mod random_mode;
pub mod runner;
pub mod scenarios;

pub use error::{ChaosError, Context, Result};
