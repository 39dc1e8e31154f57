//! The coordinator's run of commit cycles: one cycle at a time, or, under a
//! backlog, two at once, the Kafka phase of one beside the database phase
//! of the next.
//!
//! Without a backlog a tick runs one cycle: take, database, Kafka, settle.
//! When a cycle's database phase committed a full batch (its partition had
//! more waiting), the next cycle's batches are taken at once and written to
//! the database while the first cycle's Kafka transaction runs; then the
//! second cycle's Kafka phase runs beside the third one's database phase,
//! and so on, for at most [`PIPELINE_SPAN`]; the last Kafka phase runs
//! alone, so every message other than a tick finds no cycle in flight.
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

use super::state::CoordinatorState;
use crate::messages::coordinator::CoordinatorMsg;
use crate::telemetry::metrics::BreakerState;

/// How long one tick may keep cycles overlapping before it lets the last
/// Kafka phase run alone, so that a drain, a revocation or a stop waits at
/// most this long and one cycle (the drain allows 10 s).
pub const PIPELINE_SPAN: Duration = Duration::from_secs(5);

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
            let max_batch_records = self.args.settings.max_batch_records;
            let next = if cycle.has_full_batch(max_batch_records)
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
