//! The output producer, and how a send learns that every record it handed
//! to librdkafka was acknowledged: one shared tally per send, not a future
//! per record.
//!
//! rdkafka's `FutureProducer` gives every record a oneshot channel (two heap
//! allocations, a boxed sender and the channel, and a task wake-up when it
//! completes). A send of a cycle waits for all of its records at once, so a
//! tally serves it: every record carries a reference to the send's
//! [`DeliveryTally`] as its delivery opaque (an `Arc` clone, no allocation),
//! and librdkafka's delivery report, on the producer's polling thread,
//! counts it off.
//!
//! Guarantees:
//! - [`DeliveryTally::acknowledged_by`] returns `Ok` only when every record
//!   counted with [`DeliveryTally::expect_one`] was reported delivered;
//! - the first failed report is returned as soon as it arrives, whatever is
//!   still outstanding;
//! - the wait is bounded by its deadline, so a delivery that never reports
//!   (seen with the transaction coordinator's broker SIGKILLed) fails the
//!   send instead of hanging it;
//! - a report is never lost between the waiter's check and its wait: the
//!   report that ends the wait (the last one, or the first failure) leaves
//!   a wake-up permit ([`tokio::sync::Notify::notify_one`]); the others wake
//!   nobody.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

/// The producer of outputs and dead letters (transactional under
/// `exactly-once`): librdkafka's producer with a polling thread of its own,
/// whose delivery reports count off a [`DeliveryTally`].
pub type OutputProducer = ThreadedProducer<TallyingContext>;

/// The output producer's context: each delivery report counts off the
/// tally its record carries.
#[derive(Debug, Default, Clone, Copy)]
pub struct TallyingContext;

impl ClientContext for TallyingContext {}

impl ProducerContext for TallyingContext {
    type DeliveryOpaque = Arc<DeliveryTally>;

    fn delivery(&self, delivery_result: &DeliveryResult<'_>, tally: Arc<DeliveryTally>) {
        match delivery_result {
            Ok(_) => tally.reported(None),
            Err((error, _)) => tally.reported(Some(error.clone())),
        }
    }
}

/// Why a send's records were not all acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryShortfall {
    /// a record's delivery report was a failure (the first one reported)
    Failed(KafkaError),
    /// records were still unreported at the deadline
    TimedOut {
        /// records without a report
        outstanding: u64,
    },
}

/// Set in [`DeliveryTally`]'s state once a failed report arrived.
const FAILED: u64 = 1 << 63;

/// The acknowledgements one send still waits for.
#[derive(Debug, Default)]
pub struct DeliveryTally {
    /// records counted and not reported yet, and [`FAILED`]: one word, so
    /// one read sees both (a failure is marked before its record is counted
    /// off, so a count of zero without the mark means no failure came)
    state: AtomicU64,
    /// the first failure reported, stored before the mark is set
    first_failure: Mutex<Option<KafkaError>>,
    reported: Notify,
}

impl DeliveryTally {
    /// A tally expecting nothing yet.
    pub fn new() -> Arc<DeliveryTally> {
        Arc::new(DeliveryTally::default())
    }

    /// One more record is about to be handed to the producer. Counted
    /// before the hand-over, so its report can never arrive first.
    pub fn expect_one(&self) {
        self.state.fetch_add(1, Ordering::AcqRel);
    }

    /// The record counted last was refused by the producer (a full queue,
    /// a bad record): no report will come for it.
    pub fn refused(&self) {
        self.state.fetch_sub(1, Ordering::AcqRel);
    }

    /// A delivery report arrived: `failure` is its error, if any.
    pub fn reported(&self, failure: Option<KafkaError>) {
        if let Some(error) = failure {
            let mut first = self
                .first_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert(error);
            drop(first);
            self.state.fetch_or(FAILED, Ordering::AcqRel);
        }
        let before = self.state.fetch_sub(1, Ordering::AcqRel);
        if before & FAILED != 0 || before & !FAILED == 1 {
            self.reported.notify_one();
        }
    }

    /// The first failed report, if one came. Reads one atomic word while
    /// none came, so it is cheap to ask before every record.
    pub fn failure(&self) -> Option<KafkaError> {
        if self.state.load(Ordering::Acquire) & FAILED == 0 {
            return None;
        }
        self.first_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How the send ended, if it did: the first failure, or every counted
    /// record reported. The count is read before the failure: a failure is
    /// marked before its record is counted off, so a count of zero read
    /// first means any failure is seen next.
    fn outcome(&self) -> Option<Result<(), DeliveryShortfall>> {
        let state = self.state.load(Ordering::Acquire);
        if let Some(error) = self.failure() {
            return Some(Err(DeliveryShortfall::Failed(error)));
        }
        (state == 0).then_some(Ok(()))
    }

    /// Waits until every counted record was reported delivered, the first
    /// failure is reported, or `deadline` passes.
    pub async fn acknowledged_by(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(), DeliveryShortfall> {
        loop {
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            if tokio::time::timeout_at(deadline, self.reported.notified())
                .await
                .is_err()
            {
                // The last report may have come with the deadline.
                return self.outcome().unwrap_or(Err(DeliveryShortfall::TimedOut {
                    outstanding: self.state.load(Ordering::Acquire) & !FAILED,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn nothing_expected_is_acknowledged_at_once() {
        let tally = DeliveryTally::new();
        assert_eq!(tally.acknowledged_by(soon()).await, Ok(()));
    }

    #[tokio::test]
    async fn a_refused_record_is_not_waited_for() {
        let tally = DeliveryTally::new();
        tally.expect_one();
        tally.refused();
        tally.expect_one();
        tally.reported(None);
        assert_eq!(tally.acknowledged_by(soon()).await, Ok(()));
    }

    #[tokio::test]
    async fn an_unreported_record_times_the_wait_out() {
        let tally = DeliveryTally::new();
        for _ in 0..3 {
            tally.expect_one();
        }
        tally.reported(None);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        assert_eq!(
            tally.acknowledged_by(deadline).await,
            Err(DeliveryShortfall::TimedOut { outstanding: 2 })
        );
    }

    #[tokio::test]
    async fn the_first_failure_ends_the_wait_whatever_is_outstanding() {
        let tally = DeliveryTally::new();
        for _ in 0..3 {
            tally.expect_one();
        }
        let first = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let later = KafkaError::MessageProduction(RDKafkaErrorCode::Fenced);
        tally.reported(Some(first.clone()));
        tally.reported(Some(later));
        assert_eq!(
            tally.acknowledged_by(soon()).await,
            Err(DeliveryShortfall::Failed(first))
        );
    }

    /// Reports from other threads, racing the waiter's check and wait at
    /// every point: the wait always ends, and ends `Ok` exactly when every
    /// report was a success.
    #[test]
    fn reports_racing_the_wait_are_never_lost() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("a runtime");
        for round in 0..200_usize {
            let tally = DeliveryTally::new();
            let records = 1 + round % 50;
            let failing = (round % 7 == 0).then_some(round % records);
            for _ in 0..records {
                tally.expect_one();
            }
            let reporters: Vec<_> = (0..2)
                .map(|thread| {
                    let tally = Arc::clone(&tally);
                    std::thread::spawn(move || {
                        for record in (thread..records).step_by(2) {
                            let failure = (failing == Some(record)).then(|| {
                                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
                            });
                            tally.reported(failure);
                            if record % 5 == 0 {
                                std::thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            let waited = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), tally.acknowledged_by(soon())).await
            });
            for reporter in reporters {
                reporter.join().expect("reporter");
            }
            let outcome = waited.expect("the wait ended: no report was lost");
            match failing {
                None => assert_eq!(outcome, Ok(()), "round {round}"),
                Some(_) => assert!(
                    matches!(outcome, Err(DeliveryShortfall::Failed(_))),
                    "round {round}: {outcome:?}"
                ),
            }
        }
    }
}
