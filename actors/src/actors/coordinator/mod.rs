//! The transaction coordinator actor: owns the transactional producer and
//! runs the commit cycles, one at a time.
//!
//! One cycle: take a batch from every positioned partition; commit each
//! batch to the database through the writer pool (database first: it is
//! idempotent); then, in one Kafka transaction, produce the outputs still
//! owed, have the DLQ forwarder produce the dead letters, send every
//! committed partition's end offset with the group metadata, and commit.
//! On any failure before the Kafka commit is confirmed, the transaction is
//! aborted (or the producer recreated) and the partitions are rewound to
//! their recovery positions.
//!
//! Guarantees:
//! - Kafka offsets are sent only for partitions whose database transaction
//!   committed, so the stored offset never passes an effect that is not
//!   committed;
//! - recovery positions are computed between cycles, after the producer has
//!   been initialised (fencing the previous incarnation), so they never see a
//!   half-finished cycle of this instance;
//! - the coordinator keeps nothing recovery needs: a restarted coordinator
//!   fences its predecessor, re-claims the partitions and rewinds them;
//! - the group metadata sent with the offsets is the one read when the
//!   cycle took its batches, and a partition no longer assigned when the
//!   offsets are sent or the transaction commits aborts the transaction: an
//!   old owner's commit is refused by the broker (stale generation) instead
//!   of landing after the new owner read the group offset;
//! - one cycle at a time and one tick pending at most: the next tick is
//!   scheduled when a cycle ends, so drain, assignment, breaker and
//!   shutdown messages never wait behind a queue of ticks;
//! - every rewind carries a new positioning ticket (see
//!   [`crate::model::position_ticket`]): the latest decision wins everywhere;
//! - a write fenced while Kafka still assigns the partition to this
//!   instance re-claims it (the claim that fenced it was stale); only a
//!   newer incarnation of this very instance makes it stop as a zombie.
//!
//! Files: [`state`] (arguments and state), [`positioning`] (claims,
//! recovery positions, rewinds), [`pipelining`] (the cycles of a tick, one
//! at a time or overlapped under a backlog), [`cycle`] (the stages of one
//! commit cycle), [`database`] (the database phase), [`kafka_phase`] (the
//! Kafka transaction), [`producer`] (creating, aborting and recreating the
//! transactional producer).

mod cycle;
mod database;
mod kafka_phase;
mod pipelining;
mod positioning;
mod producer;
mod state;

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::messages::consumer_supervisor::ConsumerSupervisorMsg;
use crate::messages::coordinator::CoordinatorMsg;
pub use state::{CoordinatorArgs, CoordinatorState};

/// The transaction coordinator actor.
#[derive(Debug)]
pub struct TransactionCoordinator;

impl Actor for TransactionCoordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.status.set_coordinator_ready(false);
        // A predecessor killed mid-transaction left it "open"; init fences it.
        args.status.txn_closed();
        Ok(CoordinatorState::new(args))
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Fencing first: recovery must not read offsets before the previous
        // incarnation's transaction is aborted or completed.
        let producer = producer::new_producer(&state.args.settings).await?;
        state.producer = Some(producer);
        state.args.status.set_coordinator_ready(true);
        let settings = &state.args.settings;
        if settings.guarantee.is_transactional() {
            tracing::info!(
                transactional_id = %settings.transactional_id(),
                "transactional producer initialised"
            );
        } else {
            tracing::warn!(
                guarantee = settings.guarantee.as_str(),
                "producer initialised without transactions: outputs may be produced twice"
            );
        }
        state
            .args
            .names
            .cast_consumer_supervisor(ConsumerSupervisorMsg::ReportAssignment);
        myself.send_after(state.args.settings.commit_interval, || CoordinatorMsg::Tick);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.args.status.set_coordinator_ready(false);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CoordinatorMsg::Tick => {
                let started = Instant::now();
                state.run_cycle(&myself).await?;
                // One tick pending at most: the next one is due a commit
                // interval after this one started, or at once if the cycle
                // took longer than that.
                let next = state
                    .args
                    .settings
                    .commit_interval
                    .saturating_sub(started.elapsed());
                myself.send_after(next, || CoordinatorMsg::Tick);
            }
            CoordinatorMsg::PartitionsAssigned(assigned) => {
                state.on_assigned(&myself, assigned).await;
            }
            CoordinatorMsg::PartitionsRevoked(revoked) => state.forget(&revoked),
            CoordinatorMsg::RetryRecovery => {
                state.retry_scheduled = false;
                state.position_partitions(&myself).await;
            }
            CoordinatorMsg::Flush(reply) => {
                state.run_cycle(&myself).await?;
                let _ = reply.send(());
            }
            CoordinatorMsg::BreakerOpened => state.on_breaker_opened(),
            CoordinatorMsg::BreakerClosed => state.position_partitions(&myself).await,
            CoordinatorMsg::DrainPartitions(partitions, reply) => {
                // Handled between cycles: the cycle that held these partitions
                // has committed or been rewound. Forget them so that no later
                // cycle takes their batches.
                state.forget(&partitions);
                // The next owner's claim refuses confirmations made under
                // this ownership's epoch: record them before letting go.
                state.flush_confirmed_offsets("drain").await;
                tracing::info!(?partitions, "partitions drained before revocation");
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
