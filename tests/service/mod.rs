//! Runs the real `onceflow` binary built for these tests (the instance
//! helpers live in the chaos crate's harness).

#![allow(unused_imports, dead_code)]

use std::path::Path;

pub use onceflow_chaos::harness::{
    DatabaseOutage, Scenario, Service, free_port, wait_for_progress,
};

/// The `onceflow` binary cargo built for this test run.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_onceflow"))
}
