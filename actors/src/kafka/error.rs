//! Classification of Kafka client errors for the transactional commit.
//!
//! Guarantees: every error of a transactional call maps to exactly one
//! [`KafkaFailureClass`], which says what the coordinator must do next; an
//! unknown error is treated as requiring a new producer (the safe choice).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::telemetry::events::AbortReason;

/// What to do after a Kafka call failed, in order of severity: each one's
/// handling covers the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KafkaFailureClass {
    /// retry the same call (retriable, timed out)
    RetryCall,
    /// abort the transaction and rewind the partitions
    AbortTransaction,
    /// the producer is unusable (fatal, fenced): recreate it, then rewind
    RecreateProducer,
}

impl KafkaFailureClass {
    /// The abort reason a failed transaction of this class is counted as.
    pub fn abort_reason(self) -> AbortReason {
        match self {
            KafkaFailureClass::RecreateProducer => AbortReason::FencedOrFatal,
            KafkaFailureClass::AbortTransaction => AbortReason::Abortable,
            KafkaFailureClass::RetryCall => AbortReason::RetriesExhausted,
        }
    }
}

/// Why the DLQ forwarder did not forward a cycle's dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwarderFailure {
    /// it is between incarnations
    #[error("dlq forwarder is restarting")]
    Restarting,
    /// it did not reply in time
    #[error("timed out")]
    TimedOut,
    /// it stopped before replying
    #[error("dlq forwarder died")]
    Died,
}

/// A Kafka operation of the commit cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaTxnError {
    /// The client call failed.
    #[error("kafka {operation} failed: {source}")]
    Client {
        /// which call
        operation: &'static str,
        /// the client error
        #[source]
        source: KafkaError,
    },
    /// A record could not be delivered within the transaction.
    #[error("delivery of a record to {topic} failed: {source}")]
    Delivery {
        /// destination topic
        topic: String,
        /// the client error
        #[source]
        source: KafkaError,
    },
    /// Records of the transaction were not acknowledged in time: the
    /// producer's state is unknown (its transaction coordinator may be gone),
    /// so it is recreated, which fences and aborts the open transaction.
    #[error("records to {topic} were not acknowledged in time")]
    DeliveryTimedOut {
        /// destination topic
        topic: String,
    },
    /// A fault injected at a kill point (tests and chaos only); handled like
    /// an abortable transaction error.
    #[error("{0}")]
    Injected(#[from] crate::failpoints::InjectedFault),
    /// A partition of the transaction was revoked while the cycle ran: its
    /// offsets must not be committed here (the new owner may already have
    /// read the group offset). Abort and let the revocation remove it.
    #[error("partition {partition} was revoked before {operation}; aborting the transaction")]
    PartitionRevoked {
        /// the step that found it out
        operation: &'static str,
        /// the revoked partition
        partition: i32,
    },
    /// Under `at-least-once`: the consumer's offset commit failed or did not
    /// answer in time. The outputs are acknowledged and stay; the cycle is
    /// rewound and its outputs produced again (the producer is fine).
    #[error("committing the offsets failed: {reason}")]
    OffsetCommit {
        /// the client's error, or the timeout
        reason: String,
    },
    /// The coordinator has no producer (a recreation failed): the cycle's
    /// transaction cannot begin.
    #[error("kafka begin_transaction task did not finish: no producer")]
    NoProducer,
    /// The DLQ forwarder did not produce the cycle's dead letters; the
    /// producer's state is unknown.
    #[error("kafka dlq forward task did not finish: {0}")]
    ForwarderUnavailable(ForwarderFailure),
    /// The blocking task running the call died (panicked or was cancelled).
    #[error("kafka {operation} task did not finish: {reason}")]
    TaskLost {
        /// which call
        operation: &'static str,
        /// why
        reason: String,
    },
}

impl KafkaTxnError {
    /// What the coordinator must do about it.
    pub fn class(&self) -> KafkaFailureClass {
        match self {
            KafkaTxnError::Client { source, .. } | KafkaTxnError::Delivery { source, .. } => {
                classify(source)
            }
            KafkaTxnError::TaskLost { .. }
            | KafkaTxnError::NoProducer
            | KafkaTxnError::ForwarderUnavailable(_)
            | KafkaTxnError::DeliveryTimedOut { .. } => KafkaFailureClass::RecreateProducer,
            KafkaTxnError::Injected(_)
            | KafkaTxnError::PartitionRevoked { .. }
            | KafkaTxnError::OffsetCommit { .. } => KafkaFailureClass::AbortTransaction,
        }
    }

    /// Whether retrying the same call can help.
    pub fn is_retriable(&self) -> bool {
        self.class() == KafkaFailureClass::RetryCall
    }

    /// Of two failures of one step (two sends run side by side), the one
    /// whose handling covers both, and the other: the graver class wins, so
    /// a failure that needs a new producer is never handled as one the
    /// transaction's abort would settle; on a tie, `self`.
    pub fn graver(self, other: KafkaTxnError) -> (KafkaTxnError, KafkaTxnError) {
        if other.class() > self.class() {
            (other, self)
        } else {
            (self, other)
        }
    }
}

/// Classifies one client error as the design notes list.
pub fn classify(error: &KafkaError) -> KafkaFailureClass {
    if let KafkaError::Transaction(rd_error) = error {
        let code = rd_error.code();
        if rd_error.is_fatal() || is_fencing_code(code) {
            return KafkaFailureClass::RecreateProducer;
        }
        if rd_error.txn_requires_abort() {
            return KafkaFailureClass::AbortTransaction;
        }
        if rd_error.is_retriable() || code == RDKafkaErrorCode::OperationTimedOut {
            return KafkaFailureClass::RetryCall;
        }
        return KafkaFailureClass::RecreateProducer;
    }
    match error.rdkafka_error_code() {
        Some(code) if is_fencing_code(code) => KafkaFailureClass::RecreateProducer,
        Some(RDKafkaErrorCode::OperationTimedOut) if matches!(error, KafkaError::Flush(_)) => {
            KafkaFailureClass::RetryCall
        }
        // A failed delivery inside a transaction makes the transaction
        // abortable; anything else unknown is handled by a new producer.
        _ if matches!(error, KafkaError::MessageProduction(_)) => {
            KafkaFailureClass::AbortTransaction
        }
        _ => KafkaFailureClass::RecreateProducer,
    }
}

fn is_fencing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fatal
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_transaction_errors_are_classified() {
        assert_eq!(
            classify(&KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
            KafkaFailureClass::RetryCall
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            )),
            KafkaFailureClass::AbortTransaction
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::ProducerFenced
            )),
            KafkaFailureClass::RecreateProducer
        );
        assert_eq!(
            classify(&KafkaError::Canceled),
            KafkaFailureClass::RecreateProducer
        );
    }

    #[test]
    fn of_two_failures_the_graver_class_is_handled_whichever_came_first() {
        let abortable = || KafkaTxnError::Delivery {
            topic: "out".to_owned(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        let forwarder = || KafkaTxnError::ForwarderUnavailable(ForwarderFailure::TimedOut);
        for (first, second) in [(abortable(), forwarder()), (forwarder(), abortable())] {
            let (handled, other) = first.graver(second);
            assert_eq!(handled.class(), KafkaFailureClass::RecreateProducer);
            assert_eq!(other.class(), KafkaFailureClass::AbortTransaction);
        }
        let (handled, _) = KafkaTxnError::NoProducer.graver(forwarder());
        assert!(
            matches!(handled, KafkaTxnError::NoProducer),
            "a tie keeps the first"
        );
        assert!(KafkaFailureClass::RetryCall < KafkaFailureClass::AbortTransaction);
        assert!(KafkaFailureClass::AbortTransaction < KafkaFailureClass::RecreateProducer);
    }

    #[test]
    fn a_missing_producer_or_forwarder_recreates_the_producer_with_the_old_wording() {
        let no_producer = KafkaTxnError::NoProducer;
        assert_eq!(no_producer.class(), KafkaFailureClass::RecreateProducer);
        assert_eq!(
            no_producer.to_string(),
            "kafka begin_transaction task did not finish: no producer"
        );
        for (failure, reason) in [
            (ForwarderFailure::Restarting, "dlq forwarder is restarting"),
            (ForwarderFailure::TimedOut, "timed out"),
            (ForwarderFailure::Died, "dlq forwarder died"),
        ] {
            let error = KafkaTxnError::ForwarderUnavailable(failure);
            assert_eq!(error.class(), KafkaFailureClass::RecreateProducer);
            assert_eq!(
                error.to_string(),
                format!("kafka dlq forward task did not finish: {reason}")
            );
        }
        assert_eq!(
            KafkaFailureClass::RecreateProducer.abort_reason().as_str(),
            "fenced_or_fatal"
        );
        assert_eq!(
            KafkaFailureClass::AbortTransaction.abort_reason().as_str(),
            "abortable"
        );
        assert_eq!(
            KafkaFailureClass::RetryCall.abort_reason().as_str(),
            "retries_exhausted"
        );
    }
}
