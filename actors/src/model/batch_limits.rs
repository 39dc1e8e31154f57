//! How many buffered records a partition hands to one commit cycle.
//!
//! Two limits: `max_batch_records` while the partition keeps up, and
//! `backlog_batch_records` once a backlog waits, that is once the partition
//! holds at least that many records beyond its batches in flight. Every
//! Kafka transaction costs the brokers a fixed amount of CPU (19–32 ms for
//! one with a single output partition on the benchmark's machine,
//! `docs/performance.md`), so under a backlog
//! larger batches carry that cost over more records; under a steady load
//! the small limit keeps each cycle, and so the commit latency, short. A
//! steady load never reaches the larger limit unless the cycles fell behind
//! by that many records: cycles grow to full small batches first, and full
//! batches pipeline (`docs/guarantees.md#pipelined-cycles`).
//!
//! Guarantees: a batch never takes more than is buffered nor more than the
//! larger limit; it takes at least one record whenever one is buffered; and
//! it never shrinks when more is buffered (the size is monotone in what is
//! buffered), so a backlog can only make batches larger.

/// The two batch limits of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// most records in one batch while the partition keeps up
    pub steady: usize,
    /// most records in one batch once at least this many are buffered
    pub backlog: usize,
}

impl BatchLimits {
    /// The limits of `max_batch_records` and `backlog_batch_records`; a
    /// backlog limit below the steady one is read as the steady one (the
    /// settings refuse it; this keeps the rule total).
    pub fn new(max_batch_records: usize, backlog_batch_records: usize) -> BatchLimits {
        let steady = max_batch_records.max(1);
        BatchLimits {
            steady,
            backlog: backlog_batch_records.max(steady),
        }
    }

    /// How many of `buffered` records the next batch takes.
    pub fn records_to_take(&self, buffered: usize) -> usize {
        if buffered >= self.backlog {
            self.backlog
        } else {
            buffered.min(self.steady)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_batches_until_a_backlog_batch_is_buffered() {
        let limits = BatchLimits::new(5_000, 10_000);
        assert_eq!(limits.records_to_take(0), 0);
        assert_eq!(limits.records_to_take(1), 1);
        assert_eq!(limits.records_to_take(4_999), 4_999);
        assert_eq!(limits.records_to_take(5_000), 5_000);
        assert_eq!(limits.records_to_take(9_999), 5_000);
        assert_eq!(limits.records_to_take(10_000), 10_000);
        assert_eq!(limits.records_to_take(25_000), 10_000);
    }

    #[test]
    fn a_backlog_limit_below_the_steady_one_is_the_steady_one() {
        let limits = BatchLimits::new(500, 100);
        assert_eq!(limits.backlog, 500);
        assert_eq!(limits.records_to_take(800), 500);
        assert_eq!(BatchLimits::new(0, 0).records_to_take(3), 1);
    }

    proptest! {
        #[test]
        fn a_batch_is_bounded_non_empty_and_monotone(
            steady in 1usize..2_000,
            extra in 0usize..4_000,
            buffered in 0usize..10_000,
            more in 0usize..10_000,
        ) {
            let limits = BatchLimits::new(steady, steady + extra);
            let take = limits.records_to_take(buffered);
            prop_assert!(take <= buffered);
            prop_assert!(take <= limits.backlog);
            prop_assert_eq!(take == 0, buffered == 0);
            if buffered < limits.backlog {
                prop_assert!(take <= limits.steady);
            }
            prop_assert!(limits.records_to_take(buffered + more) >= take);
        }
    }
}
