//! Registry names of the actors of one pipeline, so that a restarted actor
//! (a new `ActorRef`) can be found again by the others.
//!
//! Guarantees: names are unique per pipeline (prefixed by the instance id),
//! so two pipelines can share a process (tests) without mixing actors.

use ractor::{ActorRef, Message, registry};

use crate::messages::consumer_supervisor::ConsumerSupervisorMsg;

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

    /// The live actor registered under `name`, if any.
    pub fn lookup<M: Message>(name: &str) -> Option<ActorRef<M>> {
        registry::where_is(name).map(ActorRef::<M>::from)
    }

    /// Casts to the consumer supervisor; a message to a supervisor that is
    /// restarting is dropped (it reconciles with the assignment on start).
    pub fn cast_consumer_supervisor(&self, message: ConsumerSupervisorMsg) {
        match Self::lookup::<ConsumerSupervisorMsg>(&self.consumer_supervisor()) {
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
