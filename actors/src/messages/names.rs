//! Registry names of the actors of one pipeline, so that a restarted actor
//! (a new `ActorRef`) can be found again by the others, and the typed
//! lookups that find them.
//!
//! Guarantees: names are unique per pipeline (prefixed by the instance id),
//! so two pipelines can share a process (tests) without mixing actors; each
//! lookup returns a reference of its actor's own message type (the pairing
//! of name and type is written once, here), so sending an actor another's
//! message does not compile.

use ractor::{ActorRef, Message, registry};

use crate::messages::circuit_breaker::CircuitBreakerMsg;
use crate::messages::consumer_supervisor::ConsumerSupervisorMsg;
use crate::messages::coordinator::CoordinatorMsg;
use crate::messages::db_writer::DbWriterMsg;
use crate::messages::dlq_forwarder::DlqForwarderMsg;

/// Names of one pipeline's actors.
#[derive(Debug, Clone)]
pub struct ActorNames {
    prefix: String,
}

impl ActorNames {
    /// Names for the pipeline of `instance_id`.
    pub fn new(instance_id: &str) -> ActorNames {
        ActorNames {
            prefix: format!("onceflow/{instance_id}"),
        }
    }

    /// the root supervisor
    pub fn root(&self) -> String {
        format!("{}/root", self.prefix)
    }
    /// the transaction coordinator
    pub fn coordinator(&self) -> String {
        format!("{}/coordinator", self.prefix)
    }
    /// the consumer supervisor
    pub fn consumer_supervisor(&self) -> String {
        format!("{}/consumer-supervisor", self.prefix)
    }
    /// database writer number `index`
    pub fn db_writer(&self, index: usize) -> String {
        format!("{}/db-writer-{index}", self.prefix)
    }
    /// the circuit breaker
    pub fn circuit_breaker(&self) -> String {
        format!("{}/circuit-breaker", self.prefix)
    }
    /// the DLQ forwarder
    pub fn dlq_forwarder(&self) -> String {
        format!("{}/dlq-forwarder", self.prefix)
    }

    /// The live actor registered under `name`, if any. Private: the typed
    /// lookups below pair each name with its message type.
    fn lookup<M: Message>(name: &str) -> Option<ActorRef<M>> {
        registry::where_is(name).map(ActorRef::<M>::from)
    }

    /// The live transaction coordinator, if any.
    pub fn find_coordinator(&self) -> Option<ActorRef<CoordinatorMsg>> {
        Self::lookup(&self.coordinator())
    }
    /// The live consumer supervisor, if any.
    pub fn find_consumer_supervisor(&self) -> Option<ActorRef<ConsumerSupervisorMsg>> {
        Self::lookup(&self.consumer_supervisor())
    }
    /// Database writer number `index`, if live.
    pub fn find_db_writer(&self, index: usize) -> Option<ActorRef<DbWriterMsg>> {
        Self::lookup(&self.db_writer(index))
    }
    /// The live circuit breaker, if any.
    pub fn find_circuit_breaker(&self) -> Option<ActorRef<CircuitBreakerMsg>> {
        Self::lookup(&self.circuit_breaker())
    }
    /// The live DLQ forwarder, if any.
    pub fn find_dlq_forwarder(&self) -> Option<ActorRef<DlqForwarderMsg>> {
        Self::lookup(&self.dlq_forwarder())
    }

    /// Casts to the circuit breaker; while it restarts the message is
    /// dropped (its successor starts closed and learns from the next
    /// outcomes).
    pub fn tell_circuit_breaker(&self, message: CircuitBreakerMsg) {
        if let Some(breaker) = self.find_circuit_breaker() {
            let _ = breaker.cast(message);
        }
    }

    /// Casts to the consumer supervisor; a message to a supervisor that is
    /// restarting is dropped (it reconciles with the assignment on start).
    pub fn cast_consumer_supervisor(&self, message: ConsumerSupervisorMsg) {
        match self.find_consumer_supervisor() {
            Some(supervisor) => {
                if let Err(error) = supervisor.cast(message) {
                    tracing::warn!(%error, "consumer supervisor did not take a message");
                }
            }
            // Restarting (it reconciles with the assignment on start) or
            // already stopped at shutdown: nothing to do either way.
            None => tracing::debug!("consumer supervisor is not running; message dropped"),
        }
    }
}
