//! The count of a partition's records held in memory between the fetcher
//! and the database, mailbox included, shared by the record fetcher and
//! the partition consumer of one route.
//!
//! The fetcher adds every record it routes (before it is handled, while it
//! waits in the partition consumer's mailbox); the partition consumer takes
//! records off when they leave memory (their batch committed). When the
//! count reaches the limit (`max_buffered_records`) the fetcher holds the
//! partition back (stops reading its queue); when the partition consumer
//! brings it down to the resume mark it asks the fetcher to read it again.
//! The mark leaves room for a whole steady batch below the limit
//! (`max_buffered_records − max_batch_records`, at least half the limit;
//! under a backlog, one committed backlog batch brings the count below it): a committed batch resumes fetching at once, so
//! the next batches are fetched while the ones in flight commit instead of
//! after the partition ran dry. At most `max_buffered_records` records
//! (plus the few fetched in the poll that crossed the limit) of a partition
//! are held at any time, whatever the backlog.
//!
//! A credit belongs to one route (one positioning): a rewind starts a new
//! one, so nothing counted for records that were dropped can leak into the
//! next route's count.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The shared count of one route.
#[derive(Debug)]
pub struct FetchCredit {
    held: AtomicUsize,
    /// the fetcher holds the partition back and no `Resume` was asked for
    /// since
    held_back: AtomicBool,
    limit: usize,
    resume_at: usize,
}

impl FetchCredit {
    /// A new count for a route, held back at `limit` records and read again
    /// once there is room below it for a batch of `batch_records` (at half
    /// the limit at the latest).
    pub fn new(limit: usize, batch_records: usize) -> FetchCredit {
        let limit = limit.max(1);
        FetchCredit {
            held: AtomicUsize::new(0),
            held_back: AtomicBool::new(false),
            limit,
            resume_at: limit.saturating_sub(batch_records).max(limit / 2),
        }
    }

    /// The fetcher routed `count` more records (one delivery): `true` when
    /// the partition must be held back now. Decided on every delivery, not
    /// only when the limit is first crossed, so a delivery that finds the
    /// count at the limit always holds the partition back, whatever
    /// `Resume` raced with it.
    pub fn records_routed(&self, count: usize) -> bool {
        let held = self.count_routed(count);
        self.hold_back_at(held)
    }

    /// The first half of [`FetchCredit::records_routed`]: the count after
    /// the delivery.
    fn count_routed(&self, count: usize) -> usize {
        self.held.fetch_add(count, Ordering::SeqCst) + count
    }

    /// The second half of [`FetchCredit::records_routed`]. The mark is set
    /// before the count is read again: a release that ran after the count
    /// above either sees the mark (and asks for a `Resume`) or is seen here
    /// (and the partition is not held back), so a held-back partition
    /// always has a `Resume` coming unless it holds more than the resume
    /// mark, which a later release brings down.
    fn hold_back_at(&self, held: usize) -> bool {
        if held < self.limit {
            return false;
        }
        self.held_back.store(true, Ordering::SeqCst);
        let released_since = self.held.load(Ordering::SeqCst) <= self.resume_at
            && self.held_back.swap(false, Ordering::SeqCst);
        !released_since
    }

    /// `count` records left memory: `true` when the partition must be read
    /// again now (it was held back and the count fell to the resume mark).
    pub fn records_released(&self, count: usize) -> bool {
        let before = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                Some(held.saturating_sub(count))
            })
            .unwrap_or(0);
        let held = before.saturating_sub(count);
        held <= self.resume_at && self.held_back.swap(false, Ordering::SeqCst)
    }

    /// Records counted and not yet released.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn held_back_at_the_limit_and_read_again_once_at_half() {
        let credit = FetchCredit::new(4, 4);
        assert!(!credit.records_routed(3));
        assert!(credit.records_routed(1), "the 4th record reaches the limit");
        assert!(
            credit.records_routed(1),
            "still at the limit: held back again (harmless)"
        );
        assert_eq!(credit.held(), 5);
        assert!(
            !credit.records_released(2),
            "3 held is above half the limit"
        );
        assert!(credit.records_released(1), "2 held: read again");
        assert!(!credit.records_released(1), "already asked for");
        assert_eq!(credit.held(), 1);
    }

    #[test]
    fn read_again_as_soon_as_a_whole_batch_fits_below_the_limit() {
        // A limit four steady batches deep: 20,000 held at most, batches of 5,000.
        let credit = FetchCredit::new(20_000, 5_000);
        assert!(!credit.records_routed(19_999));
        assert!(credit.records_routed(1), "held back at the limit");
        assert!(!credit.records_released(4_999), "no room for a batch yet");
        assert!(
            credit.records_released(1),
            "15,000 held: a batch fits, read again"
        );
    }

    #[test]
    fn releasing_more_than_held_never_wraps() {
        let credit = FetchCredit::new(10, 5);
        credit.records_routed(1);
        credit.records_released(5);
        assert_eq!(credit.held(), 0);
    }

    #[test]
    fn a_release_between_the_count_and_the_decision_is_not_missed() {
        // The fetcher counts a delivery that reaches the limit; before it
        // decides, the partition consumer releases everything (its only
        // batches committed). Deciding on the count alone held the partition
        // back with nothing left to release: stalled for good.
        let credit = FetchCredit::new(10, 5);
        assert!(!credit.records_routed(5));
        let held = credit.count_routed(5);
        assert!(!credit.records_released(10), "not held back yet: no Resume");
        assert!(
            !credit.hold_back_at(held),
            "the release is seen: not held back"
        );
    }

    #[test]
    fn a_resume_racing_a_delivery_at_the_limit_leaves_it_held_back() {
        // Held back; a release reaches the resume mark and asks for a Resume;
        // before the fetcher carries it out, records of the same poll cross
        // the limit again. Deciding only on the first crossing read the
        // partition again with the credit saying "held back": never held
        // back again, memory without bound.
        let credit = FetchCredit::new(10, 5);
        assert!(credit.records_routed(10));
        assert!(credit.records_released(5), "a Resume is asked for");
        assert!(credit.records_routed(6), "at the limit again: held back");
        assert!(
            credit.records_released(6),
            "and the next release asks for a Resume again"
        );
    }

    /// One step of the fetcher or of the partition consumer, at the points
    /// where they can interleave.
    #[derive(Debug, Clone)]
    enum Step {
        /// the fetcher counts a delivery
        Count(usize),
        /// the fetcher decides on the count it took last
        Decide,
        /// the fetcher carries out a Resume asked for earlier
        CarryOutResume,
        /// the partition consumer releases records it holds
        Release(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (1usize..8).prop_map(Step::Count),
                Just(Step::Decide),
                Just(Step::CarryOutResume),
                (1usize..12).prop_map(Step::Release),
            ],
            1..80,
        )
    }

    proptest! {
        /// Any interleaving of the two sides: a partition the fetcher holds
        /// back always has a Resume asked for or records above the resume
        /// mark that a release will bring down (never stalled for good), and
        /// a delivery decided at the limit always holds it back (memory
        /// bounded).
        #[test]
        fn never_stalled_and_never_read_at_the_limit(steps in steps()) {
            let credit = FetchCredit::new(20, 5);
            let mut held_back = false;
            let mut resumes_asked = 0usize;
            let mut counted: Option<usize> = None;
            // What the partition consumer holds (it releases only that).
            let mut releasable = 0usize;
            for step in steps {
                match step {
                    Step::Count(count) => {
                        if counted.is_none() && !held_back {
                            counted = Some(credit.count_routed(count));
                            releasable += count;
                        }
                    }
                    Step::Decide => {
                        if let Some(held) = counted.take() {
                            let hold_back = credit.hold_back_at(held);
                            if held >= 20 && hold_back {
                                held_back = true;
                            }
                            if held >= 20 && !hold_back {
                                // Not held back only because a release since
                                // brought the count to the resume mark.
                                prop_assert!(credit.held() <= 15);
                            }
                            if held < 20 {
                                prop_assert!(!hold_back);
                            }
                        }
                    }
                    Step::CarryOutResume => {
                        if resumes_asked > 0 {
                            resumes_asked -= 1;
                            held_back = false;
                        }
                    }
                    Step::Release(count) => {
                        let count = count.min(releasable);
                        releasable -= count;
                        if credit.records_released(count) {
                            resumes_asked += 1;
                        }
                    }
                }
                if held_back && counted.is_none() {
                    prop_assert!(
                        resumes_asked > 0 || credit.held() > 15,
                        "held back with {} held and no Resume coming",
                        credit.held()
                    );
                }
            }
        }
    }
}
