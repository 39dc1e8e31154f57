//! The transaction ids the pipeline reports as committed, collected in
//! process from its `cycle committed` events (the same report the chaos
//! suite reads from a service's log on the mock cluster).
//!
//! Guarantees: the layer sees the commit events (the target the actors
//! crate pins, whatever module emits them) at debug and above whatever
//! `RUST_LOG` says (it has its own filter), and nothing else; collecting
//! never blocks the pipeline for longer than one set insertion.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, Filter};

use onceflow_actors::COMMIT_EVENTS_TARGET;

use crate::telemetry::ExtraLayer;

/// Message of the event the coordinator logs after each Kafka commit.
const COMMITTED_MESSAGE: &str = "cycle committed";

/// The set of committed transaction ids, shared with the layer that fills it.
#[derive(Debug, Clone, Default)]
pub struct CommittedTransactions {
    txn_ids: Arc<Mutex<HashSet<String>>>,
}

impl CommittedTransactions {
    /// The layer to install (see [`crate::telemetry::init`]).
    pub fn layer(&self) -> ExtraLayer {
        Box::new(
            CommitEventLayer {
                txn_ids: Arc::clone(&self.txn_ids),
            }
            .with_filter(CoordinatorDebugEvents),
        )
    }

    /// The transaction ids reported so far.
    pub fn snapshot(&self) -> HashSet<String> {
        self.txn_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many transactions were reported so far.
    pub fn count(&self) -> usize {
        self.txn_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

struct CommitEventLayer {
    txn_ids: Arc<Mutex<HashSet<String>>>,
}

impl<S: Subscriber> Layer<S> for CommitEventLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut fields = CommitFields::default();
        event.record(&mut fields);
        if fields.message.as_deref() == Some(COMMITTED_MESSAGE)
            && let Some(txn_id) = fields.txn_id
        {
            self.txn_ids
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(txn_id);
        }
    }
}

#[derive(Default)]
struct CommitFields {
    message: Option<String>,
    txn_id: Option<String>,
}

impl Visit for CommitFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = Some(format!("{value:?}")),
            "txn_id" => self.txn_id = Some(format!("{value:?}")),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            "txn_id" => self.txn_id = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// The commit events at DEBUG and above. Interest is "sometimes"
/// for the reason given on the telemetry module's own-span filter: a
/// per-layer filter that says "always" can be skipped by `tracing-subscriber`.
struct CoordinatorDebugEvents;

impl<S> Filter<S> for CoordinatorDebugEvents {
    fn enabled(&self, metadata: &Metadata<'_>, _context: &Context<'_, S>) -> bool {
        metadata.is_event()
            && metadata.target() == COMMIT_EVENTS_TARGET
            && *metadata.level() <= Level::DEBUG
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target() == COMMIT_EVENTS_TARGET {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn collects_only_committed_cycles_of_the_coordinator() {
        let committed = CommittedTransactions::default();
        let subscriber = tracing_subscriber::registry().with(committed.layer());
        tracing::subscriber::with_default(subscriber, || {
            let txn_id = uuid::Uuid::now_v7();
            tracing::debug!(target: "onceflow_actors::commit", %txn_id, elapsed_ms = 3u64, "cycle committed");
            tracing::warn!(target: "onceflow_actors::commit", txn_id = "aborted-one", "kafka transaction failed");
            tracing::debug!(target: "somewhere_else", txn_id = "other", "cycle committed");
            assert_eq!(committed.snapshot(), HashSet::from([txn_id.to_string()]));
        });
    }
}
