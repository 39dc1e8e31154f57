//! Positioning tickets: the one sequence number that ties a rewind of a
//! partition together from the coordinator's decision to the first record
//! fetched after it.
//!
//! The coordinator issues a ticket whenever it decides to (re)position a
//! partition: `BeginRewind` to the partition consumer, `Position` through the
//! consumer supervisor to the record fetcher, `Positioned` from the fetcher
//! to the partition consumer, and every record routed afterwards, all carry
//! it. Tickets come from one process-wide counter that outlives every actor
//! restart, so a later decision always has a larger ticket.
//!
//! Guarantees (checked by the property test below):
//! - latest wins: once a ticket has been applied to a partition, no smaller
//!   ticket is ever applied to it again, so a stale `Position` (a seek retry,
//!   a message that waited in a mailbox) can neither reset a partition to an
//!   older position nor remove a newer route;
//! - a partition that was forgotten (revoked) is positioned again only by a
//!   ticket issued after it was forgotten: retries of earlier positionings
//!   die with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One positioning decision. Larger is later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PositionTicket(u64);

impl PositionTicket {
    /// The ticket's number (for logs).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for PositionTicket {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

/// The process-wide source of tickets; clones share the counter.
#[derive(Debug, Clone, Default)]
pub struct PositionTickets {
    last_issued: Arc<AtomicU64>,
}

impl PositionTickets {
    /// A new ticket, larger than every ticket issued before.
    pub fn issue(&self) -> PositionTicket {
        PositionTicket(self.last_issued.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// The largest ticket issued so far: a barrier below which every ticket
    /// is older than now.
    pub fn latest_issued(&self) -> PositionTicket {
        PositionTicket(self.last_issued.load(Ordering::SeqCst))
    }
}

/// What the fetcher knows of one partition's positioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// a positioning with this ticket is being carried out (its seek may
    /// have failed and be retried)
    Pending,
    /// the positioning with this ticket is done: records are routed
    Routed,
    /// the partition was forgotten; only a later ticket brings it back
    Forgotten,
}

/// The fetcher's record of the latest positioning per partition.
#[derive(Debug, Default)]
pub struct PositionBook {
    partitions: HashMap<i32, (PositionTicket, Standing)>,
}

impl PositionBook {
    /// A new `Position` with `ticket` arrived: whether to carry it out
    /// (`true`) or to drop it as stale (`false`). Carrying it out makes it
    /// the partition's pending positioning.
    pub fn accept_position(&mut self, partition: i32, ticket: PositionTicket) -> bool {
        match self.partitions.get(&partition) {
            Some((latest, _)) if *latest >= ticket => false,
            _ => {
                self.partitions
                    .insert(partition, (ticket, Standing::Pending));
                true
            }
        }
    }

    /// A retry of the positioning with `ticket` (its seek failed): whether it
    /// is still the partition's pending positioning.
    pub fn accept_retry(&self, partition: i32, ticket: PositionTicket) -> bool {
        self.partitions.get(&partition) == Some(&(ticket, Standing::Pending))
    }

    /// The positioning with `ticket` is done (seeked, routed). Ignored when a
    /// later one superseded it, or the partition was forgotten, meanwhile.
    pub fn routed(&mut self, partition: i32, ticket: PositionTicket) {
        if let Some(entry) = self.partitions.get_mut(&partition)
            && *entry == (ticket, Standing::Pending)
        {
            entry.1 = Standing::Routed;
        }
    }

    /// The partition is gone (revoked): every ticket up to `barrier` is
    /// stale for it from now on.
    pub fn forget(&mut self, partition: i32, barrier: PositionTicket) {
        let latest = self
            .partitions
            .get(&partition)
            .map_or(barrier, |(ticket, _)| (*ticket).max(barrier));
        self.partitions
            .insert(partition, (latest, Standing::Forgotten));
    }

    /// The ticket the partition is routed with, if it is routed.
    pub fn routed_ticket(&self, partition: i32) -> Option<PositionTicket> {
        match self.partitions.get(&partition) {
            Some((ticket, Standing::Routed)) => Some(*ticket),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tickets_only_grow_across_clones() {
        let tickets = PositionTickets::default();
        let clone = tickets.clone();
        let first = tickets.issue();
        let second = clone.issue();
        assert!(second > first);
        assert_eq!(tickets.latest_issued(), second);
    }

    #[test]
    fn a_stale_position_is_dropped_and_a_newer_one_wins() {
        let mut book = PositionBook::default();
        let tickets = PositionTickets::default();
        let old = tickets.issue();
        let new = tickets.issue();
        assert!(book.accept_position(0, new));
        assert!(
            !book.accept_position(0, old),
            "an older ticket must not apply"
        );
        assert!(!book.accept_retry(0, old));
        book.routed(0, new);
        assert_eq!(book.routed_ticket(0), Some(new));
    }

    #[test]
    fn retries_die_with_a_forgotten_partition() {
        let mut book = PositionBook::default();
        let tickets = PositionTickets::default();
        let ticket = tickets.issue();
        assert!(book.accept_position(3, ticket));
        book.forget(3, tickets.latest_issued());
        assert!(!book.accept_retry(3, ticket));
        assert!(!book.accept_position(3, ticket));
        let after = tickets.issue();
        assert!(book.accept_position(3, after));
    }

    /// What can happen to one partition, in any order: the coordinator issues
    /// tickets; their `Position` messages arrive late, repeated, or in any
    /// order; seeks fail and are retried; the partition is revoked.
    #[derive(Debug, Clone)]
    enum Step {
        Issue,
        Deliver(usize),
        Retry(usize),
        SeekSucceeds(usize),
        Forget,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => Just(Step::Issue),
            4 => (0usize..8).prop_map(Step::Deliver),
            2 => (0usize..8).prop_map(Step::Retry),
            3 => (0usize..8).prop_map(Step::SeekSucceeds),
            1 => Just(Step::Forget),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever the interleaving: what is applied only ever grows, is
        /// never a ticket issued before the last forget, and the routed
        /// ticket is always the latest applied one.
        #[test]
        fn latest_ticket_always_wins(steps in proptest::collection::vec(step(), 1..60)) {
            let tickets = PositionTickets::default();
            let mut issued: Vec<PositionTicket> = Vec::new();
            let mut book = PositionBook::default();
            let mut applied: Option<PositionTicket> = None;
            let mut forgotten_through: Option<PositionTicket> = None;
            for step in steps {
                let pick = |index: usize| issued.get(index % issued.len().max(1)).copied();
                match step {
                    Step::Issue => issued.push(tickets.issue()),
                    Step::Deliver(index) | Step::Retry(index) => {
                        let Some(ticket) = pick(index) else { continue };
                        let carried_out = match step {
                            Step::Deliver(_) => book.accept_position(0, ticket),
                            _ => book.accept_retry(0, ticket),
                        };
                        if carried_out {
                            prop_assert!(applied.is_none_or(|latest| ticket >= latest),
                                "ticket {ticket} applied after {applied:?}");
                            prop_assert!(forgotten_through.is_none_or(|barrier| ticket > barrier),
                                "ticket {ticket} applied after the partition was forgotten at {forgotten_through:?}");
                            applied = Some(ticket);
                        }
                    }
                    Step::SeekSucceeds(index) => {
                        let Some(ticket) = pick(index) else { continue };
                        book.routed(0, ticket);
                        if let Some(routed) = book.routed_ticket(0) {
                            prop_assert_eq!(Some(routed), applied);
                        }
                    }
                    Step::Forget => {
                        let barrier = tickets.latest_issued();
                        book.forget(0, barrier);
                        forgotten_through = Some(barrier);
                        prop_assert_eq!(book.routed_ticket(0), None);
                    }
                }
            }
        }
    }
}
