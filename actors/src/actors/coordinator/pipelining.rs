//! The coordinator's run of commit cycles: one cycle at a time, or, under a
//! backlog, two at once, the Kafka phase of one beside the database phase
//! of the next.
//!
//! Under a light load a tick runs one cycle: take, database, Kafka,
//! settle. When the next cycle is due before this one's Kafka phase starts
//! ([`next_cycle_is_due`]: a batch was full, so its partition had more
//! waiting; or the cycle has run a commit interval already, so the next
//! tick is due), the next cycle's batches are taken at once and written to
//! the database while the first cycle's Kafka transaction runs; then the
//! second cycle's Kafka phase runs beside the third one's database phase,
//! and so on, for at most [`PIPELINE_SPAN`]; the last Kafka phase runs
//! alone, so every message other than a tick finds no cycle in flight.
//!
//! Why the second reason: one cycle after another takes the time of both
//! phases, so records arriving at a steady rate pile up during it; a
//! larger cycle takes longer still, until its batches are full. Under a
//! steady load close to what sequential cycles can carry, that made every
//! cycle as large as a batch may be, and the commit latency that of a
//! backlog. Overlapped, a cycle takes the longer of the two phases, not
//! their sum. Below a commit interval per cycle (a light load) nothing
//! overlaps, so the transactions per second stay bounded by the ticks.
//!
//! Guarantees (argued in `docs/guarantees.md#pipelined-cycles`):
//! - Kafka phases run one at a time, in the order of the cycles, and a
//!   cycle's Kafka phase starts only after its predecessor's committed and
//!   was settled: offsets committed to Kafka never pass a record whose
//!   outputs are not committed;
//! - a partition's next batch starts where the batch held for it ends
//!   ([`crate::messages::partition::BatchWanted::After`]);
//! - when a Kafka phase fails, or its bookkeeping rewinds its partitions,
//!   the cycle whose database phase ran beside it is abandoned whole and its
//!   partitions rewound: its database commit is idempotent and its outputs
//!   are owed to the replay;
//! - under that, whatever path rewinds a partition while a batch of it is
//!   held, the batch is left out of its Kafka phase
//!   ([`CoordinatorState::drop_rewound_batches`], checked before every
//!   Kafka phase): the replay owns its records;
//! - a crash at any point leaves at most two cycles committed to the
//!   database and not to Kafka, which the recovery positions replay (the
//!   stored offset is past them, the Kafka offset is not).

use std::time::{Duration, Instant};

use ractor::{ActorProcessingErr, ActorRef};

use super::cycle::DatabaseCommittedCycle;
use super::state::CoordinatorState;
use crate::messages::coordinator::CoordinatorMsg;
use crate::settings::Settings;
use crate::telemetry::metrics::BreakerState;

/// How long one tick may keep cycles overlapping before it lets the last
/// Kafka phase run alone, so that a drain, a revocation or a stop waits at
/// most this long and one cycle (the drain allows 10 s).
pub const PIPELINE_SPAN: Duration = Duration::from_secs(5);

/// Whether the cycle after `cycle` is due before `cycle`'s Kafka phase
/// starts (see [`due_beside`]).
fn next_cycle_is_due(cycle: &DatabaseCommittedCycle, settings: &Settings) -> bool {
    due_beside(
        cycle.has_full_batch(settings.max_batch_records),
        cycle.started.elapsed(),
        settings.commit_interval,
    )
}

/// The next cycle is due beside a cycle's Kafka phase when a batch of the
/// cycle was full (its partition had more waiting), or when the cycle was
/// taken a commit interval ago or more (the next tick is due already).
fn due_beside(full_batch: bool, since_taken: Duration, commit_interval: Duration) -> bool {
    full_batch || since_taken >= commit_interval
}

impl CoordinatorState {
    /// Runs the cycles of one tick (see the module doc).
    pub(super) async fn run_cycle(
        &mut self,
        me: &ActorRef<CoordinatorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if self.producer.is_none() || self.args.status.breaker_state() == BreakerState::Open {
            return Ok(());
        }
        let no_held_batches = std::collections::BTreeMap::new();
        let Some(first) = self.take_cycle(&no_held_batches).await else {
            return Ok(());
        };
        let written = self.database_phase(&first).await;
        let mut current = self.conclude_database(me, first, written).await;
        let pipelining_since = Instant::now();
        while let Some((mut cycle, group_metadata)) = current.take() {
            if !self.drop_rewound_batches(&mut cycle) {
                break;
            }
            let next = if next_cycle_is_due(&cycle, &self.args.settings)
                && pipelining_since.elapsed() < PIPELINE_SPAN
                && self.args.status.breaker_state() == BreakerState::Closed
            {
                self.take_cycle(&cycle.held_ends()).await
            } else {
                None
            };
            let Some(next) = next else {
                let kafka = self.kafka_phase_of(&cycle, group_metadata).await;
                self.conclude_kafka(me, cycle, kafka).await?;
                break;
            };
            let (kafka, written) = tokio::join!(
                self.kafka_phase_of(&cycle, group_metadata),
                self.database_phase(&next),
            );
            let predecessor = cycle.txn_id;
            if self.conclude_kafka(me, cycle, kafka).await? {
                current = self.conclude_database(me, next, written).await;
            } else {
                self.abandon_after_failed_predecessor(me, next, written, predecessor)
                    .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::due_beside;
    use std::time::Duration;

    #[test]
    fn the_next_cycle_overlaps_under_a_backlog_or_once_its_tick_is_due() {
        let interval = Duration::from_millis(100);
        let early = Duration::from_millis(40);
        assert!(
            !due_beside(false, early, interval),
            "light load: one cycle per tick"
        );
        assert!(
            due_beside(true, early, interval),
            "a full batch: a backlog waits"
        );
        assert!(
            due_beside(false, interval, interval),
            "the next tick is due"
        );
        assert!(due_beside(false, Duration::from_millis(350), interval));
    }
}
