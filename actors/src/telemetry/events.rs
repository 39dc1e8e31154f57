//! The log target of the commit cycle's outcome events.
//!
//! Guarantees: every event that reports how a commit cycle ended ("cycle
//! committed", the aborts) is logged under [`COMMIT_EVENTS_TARGET`], a
//! name that does not depend on the module that emits it, so that readers
//! of these events (the demo's committed-transaction set) survive moving
//! the code. It sits under `onceflow_actors`, so `RUST_LOG` directives for
//! the crate (`onceflow_actors=debug`) keep covering it.

/// Target of the commit cycle's outcome events.
pub const COMMIT_EVENTS_TARGET: &str = "onceflow_actors::commit";
