//! The messages of the circuit breaker.
//!
//! Guarantees: outcomes are casts (never awaited), so reporting to the
//! breaker never slows a write or a recovery read.

/// Messages of the circuit breaker.
#[derive(Debug)]
pub enum CircuitBreakerMsg {
    /// a database operation (a batch write, a recovery read) succeeded
    DatabaseSucceeded,
    /// a database operation failed with a transient error
    DatabaseFailed,
    /// the cool-down ended: probe the database
    Probe,
}
