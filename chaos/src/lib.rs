//! onceflow's chaos suite: scenarios that kill actors and processes in the
//! middle of a commit and inject broker and database faults, a seeded random
//! mode, and a verdict computed independently of the code under test.

pub mod error;
pub mod harness;

pub use error::{ChaosError, Context, Result};
