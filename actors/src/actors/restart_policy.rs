//! Restart decisions of the supervisors: exponential backoff with jitter and
//! a restart budget per window.
//!
//! Guarantees: a child that keeps failing is restarted at most `budget`
//! times within `window`; the next failure is escalated instead, so a crash
//! loop ends the process (for its orchestrator to restart) rather than
//! spinning forever.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::settings::Settings;

/// The limits of a restart policy.
#[derive(Debug, Clone, Copy)]
pub struct RestartLimits {
    /// restarts allowed within `window`
    pub budget: u32,
    /// the budget's window
    pub window: Duration,
    /// first delay
    pub initial_backoff: Duration,
    /// longest delay
    pub max_backoff: Duration,
}

impl RestartLimits {
    /// The limits configured in `settings`.
    pub fn from_settings(settings: &Settings) -> RestartLimits {
        RestartLimits {
            budget: settings.restart_budget,
            window: settings.restart_window,
            initial_backoff: settings.restart_backoff_initial,
            max_backoff: settings.restart_backoff_max,
        }
    }
}

/// What to do with a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// restart it after this delay
    RestartAfter(Duration),
    /// the budget is spent: escalate
    Escalate,
}

/// Restart history of one child.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    limits: RestartLimits,
    recent_restarts: VecDeque<Instant>,
}

impl RestartPolicy {
    /// A policy with no restarts yet.
    pub fn new(limits: RestartLimits) -> RestartPolicy {
        RestartPolicy {
            limits,
            recent_restarts: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while let Some(oldest) = self.recent_restarts.front() {
            if now.duration_since(*oldest) > self.limits.window {
                self.recent_restarts.pop_front();
            } else {
                break;
            }
        }
        if self.recent_restarts.len() >= self.limits.budget as usize {
            return RestartDecision::Escalate;
        }
        let exponent = self.recent_restarts.len().min(20) as u32;
        self.recent_restarts.push_back(now);
        let base = self
            .limits
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.limits.max_backoff);
        // Full jitter on the upper half: between base/2 and base.
        let half = base / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        RestartDecision::RestartAfter(half + Duration::from_millis(jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RestartLimits {
        RestartLimits {
            budget: 3,
            window: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        }
    }

    #[test]
    fn backs_off_exponentially_then_escalates() {
        let mut policy = RestartPolicy::new(limits());
        let start = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..3 {
            match policy.on_failure(start) {
                RestartDecision::RestartAfter(delay) => delays.push(delay),
                RestartDecision::Escalate => panic!("escalated too early"),
            }
        }
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(101));
        assert!(delays[1] >= Duration::from_millis(100) && delays[1] <= Duration::from_millis(201));
        assert!(delays[2] >= Duration::from_millis(150) && delays[2] <= Duration::from_millis(301));
        assert_eq!(policy.on_failure(start), RestartDecision::Escalate);
    }

    #[test]
    fn budget_recovers_after_the_window() {
        let mut policy = RestartPolicy::new(limits());
        let start = Instant::now();
        for _ in 0..3 {
            assert!(matches!(
                policy.on_failure(start),
                RestartDecision::RestartAfter(_)
            ));
        }
        let later = start + Duration::from_secs(11);
        assert!(matches!(
            policy.on_failure(later),
            RestartDecision::RestartAfter(_)
        ));
    }
}
