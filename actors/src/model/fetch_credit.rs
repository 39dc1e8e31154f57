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
//! The mark leaves room for a whole batch below the limit (`max_buffered_records − max_batch_records`, at
//! least half the limit): a committed batch resumes fetching at once, so
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
    paused: AtomicBool,
    limit: usize,
    resume_at: usize,
}

impl FetchCredit {
    /// A new count for a route, pausing at `limit` records and resuming
    /// once there is room below it for a batch of `batch_records` (at half
    /// the limit at the latest).
    pub fn new(limit: usize, batch_records: usize) -> FetchCredit {
        let limit = limit.max(1);
        FetchCredit {
            held: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            limit,
            resume_at: limit.saturating_sub(batch_records).max(limit / 2),
        }
    }

    /// The fetcher routed one more record: `true` when the partition must
    /// be paused now (the limit is reached and it was not paused yet).
    pub fn record_routed(&self) -> bool {
        let held = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        held >= self.limit && !self.paused.swap(true, Ordering::SeqCst)
    }

    /// `count` records left memory: `true` when the partition must be
    /// resumed now (it was paused and the count fell to the resume mark).
    pub fn records_released(&self, count: usize) -> bool {
        let before = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                Some(held.saturating_sub(count))
            })
            .unwrap_or(0);
        let held = before.saturating_sub(count);
        held <= self.resume_at && self.paused.swap(false, Ordering::SeqCst)
    }

    /// Records counted and not yet released.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_once_at_the_limit_and_resumes_once_at_half() {
        let credit = FetchCredit::new(4, 4);
        assert!(!credit.record_routed());
        assert!(!credit.record_routed());
        assert!(!credit.record_routed());
        assert!(credit.record_routed(), "the 4th record reaches the limit");
        assert!(!credit.record_routed(), "already paused: no second pause");
        assert_eq!(credit.held(), 5);
        assert!(
            !credit.records_released(2),
            "3 held is above half the limit"
        );
        assert!(credit.records_released(1), "2 held: resume");
        assert!(!credit.records_released(1), "already resumed");
        assert_eq!(credit.held(), 1);
    }

    #[test]
    fn resumes_as_soon_as_a_whole_batch_fits_below_the_limit() {
        // The defaults' shape: 20,000 held at most, batches of 5,000.
        let credit = FetchCredit::new(20_000, 5_000);
        let paused = (0..20_000).filter(|_| credit.record_routed()).count();
        assert_eq!(paused, 1, "one pause at the limit");
        assert!(!credit.records_released(4_999), "no room for a batch yet");
        assert!(
            credit.records_released(1),
            "15,000 held: a batch fits, resume"
        );
    }

    #[test]
    fn releasing_more_than_held_never_wraps() {
        let credit = FetchCredit::new(10, 5);
        credit.record_routed();
        credit.records_released(5);
        assert_eq!(credit.held(), 0);
    }
}
