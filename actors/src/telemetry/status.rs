//! The pipeline's health status, shared by all actors and served on
//! `/healthz` and `/readyz`; it owns the metrics ([`PipelineMetrics`]) it
//! updates.
//!
//! Guarantees: updating the status never blocks or fails; healthy means no
//! supervisor gave up and the pipeline is not wedged.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::metrics::{BreakerState, PipelineMetrics, label, unix_millis};

/// Health and metrics shared by the actors of one pipeline.
#[derive(Debug, Clone)]
pub struct PipelineStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug)]
struct StatusInner {
    metrics: PipelineMetrics,
    breaker_state: AtomicU8,
    coordinator_ready: AtomicBool,
    escalated: AtomicBool,
    committed_cycles: AtomicI64,
    actor_restarts: AtomicU64,
    /// unix milliseconds at which the open transaction began; 0 if none
    txn_opened_at_ms: AtomicU64,
    /// unix milliseconds of the last committed cycle, or of the start
    last_commit_at_ms: AtomicU64,
    /// milliseconds without a commit (while input waits) that make the
    /// pipeline wedged; 0: never
    wedged_after_ms: AtomicU64,
    /// the lag of the assigned partitions, summed, at the last measurement
    total_lag: AtomicI64,
    /// partitions whose lag series is exported
    lag_partitions: Mutex<std::collections::BTreeSet<i32>>,
    fatal: CancellationToken,
    fatal_reason: Mutex<Option<String>>,
    /// the current group membership: cancelled when the input consumer is
    /// fenced out of its group (see [`PipelineStatus::lose_membership`])
    membership: Mutex<Membership>,
    /// the newest owner epoch this process claimed, per input partition
    claims: Mutex<std::collections::BTreeMap<i32, i64>>,
}

/// One membership of the consumer group: a fresh consumer and actor tree.
#[derive(Debug, Default)]
struct Membership {
    lost: CancellationToken,
    reason: Option<String>,
}

impl Default for PipelineStatus {
    fn default() -> Self {
        PipelineStatus {
            inner: Arc::new(StatusInner {
                metrics: PipelineMetrics::new(),
                breaker_state: AtomicU8::new(BreakerState::Closed as u8),
                coordinator_ready: AtomicBool::new(false),
                escalated: AtomicBool::new(false),
                committed_cycles: AtomicI64::new(0),
                actor_restarts: AtomicU64::new(0),
                txn_opened_at_ms: AtomicU64::new(0),
                last_commit_at_ms: AtomicU64::new(unix_millis()),
                wedged_after_ms: AtomicU64::new(0),
                total_lag: AtomicI64::new(0),
                lag_partitions: Mutex::new(std::collections::BTreeSet::new()),
                fatal: CancellationToken::new(),
                fatal_reason: Mutex::new(None),
                membership: Mutex::new(Membership::default()),
                claims: Mutex::new(std::collections::BTreeMap::new()),
            }),
        }
    }
}

impl PipelineStatus {
    /// The metrics.
    pub fn metrics(&self) -> &PipelineMetrics {
        &self.inner.metrics
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        BreakerState::from_u8(self.inner.breaker_state.load(Ordering::Acquire))
    }

    /// Records a breaker transition.
    pub fn set_breaker_state(&self, state: BreakerState) {
        let previous = self.inner.breaker_state.swap(state as u8, Ordering::AcqRel);
        if previous != state as u8 {
            self.metrics().circuit_breaker_state.set(state as i64);
            self.metrics()
                .circuit_breaker_transitions
                .get_or_create(&label("to", state.as_str()))
                .inc();
        }
    }

    /// Whether the coordinator holds an initialised producer.
    pub fn set_coordinator_ready(&self, ready: bool) {
        self.inner.coordinator_ready.store(ready, Ordering::Release);
    }

    /// Ready: producer initialised and breaker not open.
    pub fn is_ready(&self) -> bool {
        self.inner.coordinator_ready.load(Ordering::Acquire)
            && self.breaker_state() != BreakerState::Open
    }

    /// Healthy: no supervisor has given up and the pipeline is not wedged
    /// ([`PipelineStatus::unhealthy_reason`]).
    pub fn is_healthy(&self) -> bool {
        self.unhealthy_reason().is_none()
    }

    /// Why the pipeline is not healthy, if it is not: a supervisor gave up,
    /// or no cycle committed for longer than the wedge limit while input
    /// waits (lag above zero) and the database breaker is not open (an
    /// outage the breaker handles is not a wedge: `/readyz` shows it).
    pub fn unhealthy_reason(&self) -> Option<String> {
        if self.inner.escalated.load(Ordering::Acquire) {
            return Some("escalated: a supervisor gave up".to_owned());
        }
        let limit = self.inner.wedged_after_ms.load(Ordering::Acquire);
        let lag = self.inner.total_lag.load(Ordering::Acquire);
        let since =
            unix_millis().saturating_sub(self.inner.last_commit_at_ms.load(Ordering::Acquire));
        (limit > 0 && lag > 0 && since > limit && self.breaker_state() != BreakerState::Open).then(
            || {
                format!(
                    "wedged: no cycle committed for {} s while {lag} records wait",
                    since / 1_000
                )
            },
        )
    }

    /// Sets how long without a committed cycle (while input waits) makes the
    /// pipeline wedged, and starts counting from now.
    pub fn set_wedge_limit(&self, limit: Duration) {
        self.inner.wedged_after_ms.store(
            u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.inner
            .last_commit_at_ms
            .store(unix_millis(), Ordering::Release);
    }

    /// A supervisor gave up.
    pub fn mark_escalated(&self) {
        self.inner.escalated.store(true, Ordering::Release);
    }

    /// A condition no restart can mend (this instance was fenced out of its
    /// group): the pipeline stops with `reason` and the process exits
    /// non-zero.
    pub fn fail_fatally(&self, reason: String) {
        if let Ok(mut slot) = self.inner.fatal_reason.lock()
            && slot.is_none()
        {
            *slot = Some(reason);
        }
        self.mark_escalated();
        self.inner.fatal.cancel();
    }

    /// Begins a new membership of the consumer group; the token resolves
    /// when it is lost.
    pub fn begin_membership(&self) -> CancellationToken {
        let mut membership = self
            .inner
            .membership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *membership = Membership::default();
        membership.lost.clone()
    }

    /// The input consumer was fenced out of its group or failed fatally:
    /// this membership is over (the pipeline rejoins with a fresh consumer
    /// and actor tree, a bounded number of times). Not a fatal condition by
    /// itself: a static member can be fenced by its own `group.instance.id`
    /// when a join response is lost while the group coordinator moves, and a
    /// real duplicate instance is stopped by the producer and owner-epoch
    /// fencing instead.
    pub fn lose_membership(&self, reason: String) {
        let mut membership = self
            .inner
            .membership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if membership.reason.is_none() {
            membership.reason = Some(reason);
        }
        membership.lost.cancel();
    }

    /// This process claimed `partition` with `owner_epoch` (over every
    /// membership: a rejoin must know whether someone claimed after us).
    pub fn record_claim(&self, partition: i32, owner_epoch: i64) {
        let mut claims = self
            .inner
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let newest = claims.entry(partition).or_insert(owner_epoch);
        *newest = (*newest).max(owner_epoch);
    }

    /// The newest owner epoch this process claimed, per partition.
    pub fn claims(&self) -> Vec<(i32, i64)> {
        self.inner
            .claims
            .lock()
            .map(|claims| claims.iter().map(|(p, e)| (*p, *e)).collect())
            .unwrap_or_default()
    }

    /// Why the current membership was lost, if it was.
    pub fn membership_lost_reason(&self) -> Option<String> {
        self.inner
            .membership
            .lock()
            .ok()
            .and_then(|membership| membership.reason.clone())
    }

    /// Resolves when [`PipelineStatus::fail_fatally`] was called.
    pub fn fatal(&self) -> CancellationToken {
        self.inner.fatal.clone()
    }

    /// The reason given to [`PipelineStatus::fail_fatally`].
    pub fn fatal_reason(&self) -> Option<String> {
        self.inner
            .fatal_reason
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
    }

    /// A Kafka transaction was opened now.
    pub fn txn_opened(&self) {
        self.inner
            .txn_opened_at_ms
            .store(unix_millis().max(1), Ordering::Release);
    }

    /// The open Kafka transaction ended (committed or aborted).
    pub fn txn_closed(&self) {
        self.inner.txn_opened_at_ms.store(0, Ordering::Release);
        self.metrics().open_txn_age_seconds.set(0.0);
    }

    /// Age of the open transaction, if one is open; refreshes the gauge.
    pub fn open_txn_age(&self) -> Option<Duration> {
        let opened = self.inner.txn_opened_at_ms.load(Ordering::Acquire);
        let age =
            (opened != 0).then(|| Duration::from_millis(unix_millis().saturating_sub(opened)));
        self.metrics()
            .open_txn_age_seconds
            .set(age.map_or(0.0, |age| age.as_secs_f64()));
        age
    }

    /// Counts a committed cycle.
    pub fn count_commit(&self) {
        self.inner.committed_cycles.fetch_add(1, Ordering::AcqRel);
        self.inner
            .last_commit_at_ms
            .store(unix_millis(), Ordering::Release);
        self.metrics().txn_commits.inc();
    }

    /// Committed cycles so far.
    pub fn committed_cycles(&self) -> i64 {
        self.inner.committed_cycles.load(Ordering::Acquire)
    }

    /// Counts an aborted cycle.
    pub fn count_abort(&self, reason: &str) {
        self.metrics()
            .txn_aborts
            .get_or_create(&label("reason", reason))
            .inc();
    }

    /// Counts a dead letter of `kind`.
    pub fn count_dead_letter(&self, kind: &str) {
        self.metrics()
            .dlq_records
            .get_or_create(&label("kind", kind))
            .inc();
    }

    /// Counts an actor restart.
    pub fn count_restart(&self, actor: &str) {
        self.inner.actor_restarts.fetch_add(1, Ordering::AcqRel);
        self.metrics()
            .actor_restarts
            .get_or_create(&label("actor", actor))
            .inc();
    }

    /// Actor restarts so far, all actors together.
    pub fn actor_restarts(&self) -> u64 {
        self.inner.actor_restarts.load(Ordering::Acquire)
    }

    /// Sets the lag of every partition assigned now; the series of a
    /// partition no longer assigned is removed (another instance reports
    /// it), so a sum over instances counts each partition once.
    pub fn set_assigned_lags(&self, lags: &[(i32, i64)]) {
        let assigned: std::collections::BTreeSet<i32> =
            lags.iter().map(|(partition, _)| *partition).collect();
        let mut exported = self
            .inner
            .lag_partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in exported.difference(&assigned) {
            self.metrics()
                .consumer_lag
                .remove(&label("partition", gone.to_string()));
        }
        for (partition, lag) in lags {
            self.metrics()
                .consumer_lag
                .get_or_create(&label("partition", partition.to_string()))
                .set(*lag);
        }
        *exported = assigned;
        self.inner
            .total_lag
            .store(lags.iter().map(|(_, lag)| *lag).sum(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wedged_only_without_commits_while_input_waits_and_the_breaker_is_not_open() {
        let status = PipelineStatus::default();
        status.set_wedge_limit(Duration::from_millis(50));
        status.set_assigned_lags(&[(0, 10), (1, 0)]);
        assert_eq!(status.unhealthy_reason(), None, "within the limit");
        std::thread::sleep(Duration::from_millis(80));
        let reason = status.unhealthy_reason().expect("wedged");
        assert!(
            reason.starts_with("wedged") && reason.contains("10 records"),
            "{reason}"
        );
        assert!(!status.is_healthy());

        // A commit resets the clock.
        status.count_commit();
        assert_eq!(status.unhealthy_reason(), None);
        std::thread::sleep(Duration::from_millis(80));
        assert!(status.unhealthy_reason().is_some());
        // Nothing waiting: idle, not wedged.
        status.set_assigned_lags(&[(0, 0)]);
        assert_eq!(status.unhealthy_reason(), None);
        // A database outage the breaker handles is not a wedge.
        status.set_assigned_lags(&[(0, 3)]);
        status.set_breaker_state(BreakerState::Open);
        assert_eq!(status.unhealthy_reason(), None);
        status.set_breaker_state(BreakerState::Closed);
        assert!(status.unhealthy_reason().is_some());
        // A supervisor that gave up is unhealthy whatever else holds.
        status.count_commit();
        status.mark_escalated();
        assert!(
            status
                .unhealthy_reason()
                .expect("escalated")
                .starts_with("escalated")
        );
    }

    #[test]
    fn no_wedge_limit_never_wedges() {
        let status = PipelineStatus::default();
        status.set_assigned_lags(&[(0, 10)]);
        std::thread::sleep(Duration::from_millis(20));
        assert!(status.is_healthy());
    }

    #[test]
    fn a_revoked_partition_s_lag_is_no_longer_exported() {
        let status = PipelineStatus::default();
        status.set_assigned_lags(&[(0, 5), (1, 7)]);
        let text = status.metrics().encode();
        assert!(
            text.contains("onceflow_consumer_lag{partition=\"1\"} 7"),
            "{text}"
        );
        status.set_assigned_lags(&[(0, 4)]);
        let text = status.metrics().encode();
        assert!(
            text.contains("onceflow_consumer_lag{partition=\"0\"} 4"),
            "{text}"
        );
        assert!(!text.contains("partition=\"1\""), "{text}");
    }
}
