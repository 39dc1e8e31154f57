//! The integration tests' harness: the chaos crate's verification toolkit,
//! which is independent of the code under test (see `chaos/src/harness`).

#![allow(unused_imports)]

pub use onceflow_chaos::harness::*;
