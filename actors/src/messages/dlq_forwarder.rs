//! The messages of the DLQ forwarder.
//!
//! Guarantees: a request carries the coordinator's producer inside its open
//! transaction, so what the forwarder produces commits or aborts with the
//! cycle.

use crate::kafka::delivery::OutputProducer;
use ractor::RpcReplyPort;
use uuid::Uuid;

use crate::kafka::error::KafkaTxnError;
use crate::kafka::records::DeadLetter;

/// A batch of dead letters for one cycle.
pub struct ForwardRequest {
    /// the coordinator's producer, inside its open transaction
    pub producer: OutputProducer,
    /// the commit cycle's span, parent of the `dlq.forward` span
    pub parent: tracing::Span,
    /// the cycle
    pub txn_id: Uuid,
    /// the input topic (header `onceflow-source-topic`)
    pub source_topic: String,
    /// the dead letters
    pub dead_letters: Vec<DeadLetter>,
    /// how long their acknowledgements may take in all
    pub delivery_timeout: std::time::Duration,
}

/// Messages of the DLQ forwarder.
#[derive(Debug)]
pub enum DlqForwarderMsg {
    /// produce the dead letters and reply with how many were acknowledged
    Forward(ForwardRequest, RpcReplyPort<Result<usize, KafkaTxnError>>),
}

impl std::fmt::Debug for ForwardRequest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ForwardRequest")
            .finish_non_exhaustive()
    }
}
