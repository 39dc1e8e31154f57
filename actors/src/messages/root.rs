//! The messages of the root supervisor (it sends them to itself, after a
//! child's restart backoff).
//!
//! Guarantees: a child is named by its role, so a restart after the backoff
//! starts the same role again, with a fresh actor.

/// The children of the root supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RootChild {
    /// the circuit breaker
    CircuitBreaker,
    /// database writer number n
    DbWriter(usize),
    /// the DLQ forwarder
    DlqForwarder,
    /// the transaction coordinator
    Coordinator,
    /// the consumer supervisor
    ConsumerSupervisor,
}

impl RootChild {
    /// The metric label of this child.
    pub fn label(self) -> &'static str {
        match self {
            RootChild::CircuitBreaker => "circuit_breaker",
            RootChild::DbWriter(_) => "db_writer",
            RootChild::DlqForwarder => "dlq_forwarder",
            RootChild::Coordinator => "transaction_coordinator",
            RootChild::ConsumerSupervisor => "consumer_supervisor",
        }
    }
}

/// Messages of the root supervisor.
#[derive(Debug)]
pub enum RootMsg {
    /// start a child again (after its backoff)
    Restart(RootChild),
}
