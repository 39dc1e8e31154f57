//! OpenTelemetry spans: the `process` span of a single record, how commit
//! cycles are tied to those, and small helpers for the spans of a cycle.
//!
//! The rule (see docs/tracing.md): a record that arrives with a valid
//! upstream context (a `traceparent` the propagator accepts, see
//! [`crate::telemetry::propagation`]) gets one `process` span, a child of the
//! upstream span, that lives from the moment the record is processed until
//! its batch is committed or dropped (rewind, abort, shutdown). Its context
//! is what the record's output or dead-letter record carries in
//! `traceparent` (with the upstream `tracestate`), so the downstream
//! consumer continues the same trace through a span that was exported. A
//! record without one gets no span of its own (it is covered by its commit
//! cycle's span); otherwise every record would flood the exporter.
//!
//! A commit cycle's span is a child of the `process` span of the first
//! sampled traced record it commits (so a trace begun upstream contains the
//! database and Kafka commits that carried it; without one the cycle is a
//! root) and links to the `process` spans of the others, at most
//! [`MAX_CYCLE_LINKS`]; each `process` span gets the cycle's `txn_id` and a
//! link back to the cycle.
//!
//! Guarantees: nothing here creates a span unless the binary switched span
//! export on ([`enable_span_export`]), so without an OTLP endpoint the only
//! cost per record is one relaxed atomic load; tracing never changes what is
//! processed or committed.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, Status, TraceContextExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// Target of the per-record `process` spans: the binary keeps them out of
/// the log (formatting their fields for every traced record would cost more
/// than the spans themselves).
pub const RECORD_SPAN_TARGET: &str = "onceflow_actors::record";

/// Most links one commit-cycle span carries to the records it commits.
pub const MAX_CYCLE_LINKS: usize = 128;

static SPAN_EXPORT: AtomicBool = AtomicBool::new(false);

/// Switches per-record and cycle linking on: called by the binary once an
/// OpenTelemetry layer is installed.
pub fn enable_span_export() {
    SPAN_EXPORT.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (an OpenTelemetry layer is installed).
pub fn span_export_enabled() -> bool {
    SPAN_EXPORT.load(Ordering::Relaxed)
}

/// Spans the exporter's queue had no room for, since the start: one counter
/// for the process, shared by the binary's export queue and `/metrics`
/// (`onceflow_trace_spans_dropped_total`).
pub fn dropped_spans() -> prometheus_client::metrics::counter::Counter {
    static DROPPED: std::sync::OnceLock<prometheus_client::metrics::counter::Counter> =
        std::sync::OnceLock::new();
    DROPPED.get_or_init(Default::default).clone()
}

/// Where records come from, for the attributes of their spans.
#[derive(Debug, Clone)]
pub struct RecordSource {
    /// input topic
    pub topic: String,
    /// consumer group
    pub group_id: String,
}

/// The `process` span of one record, if it has one. Cloning shares the
/// span; the span ends when the last clone is dropped.
#[derive(Debug, Clone, Default)]
pub struct RecordSpan(Option<tracing::Span>);

impl RecordSpan {
    /// A record without a span of its own.
    pub fn none() -> RecordSpan {
        RecordSpan(None)
    }

    /// Whether the record has a `process` span.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The OpenTelemetry context holding the span (`None` without one).
    pub fn otel_context(&self) -> Option<opentelemetry::Context> {
        let context = self.0.as_ref()?.context();
        context.span().span_context().is_valid().then_some(context)
    }

    /// The OpenTelemetry span context of the span (`None` without one).
    pub fn span_context(&self) -> Option<SpanContext> {
        self.otel_context()
            .map(|context| context.span().span_context().clone())
    }

    /// Marks the span with the commit cycle that took the record and links
    /// it to that cycle's span.
    pub fn joined_cycle(&self, txn_id: &str, cycle: &SpanContext) {
        if let Some(span) = &self.0 {
            span.record("txn_id", txn_id);
            span.add_link(cycle.clone());
        }
    }

    /// Opens the `process` span of the record at `partition`/`offset` of
    /// `source`, a child of the upstream context `upstream` (as the
    /// propagator extracted it: remote span context and baggage), with `effect`
    /// (`event` or the dead-letter kind) as an attribute. `None` if the span
    /// is disabled or no layer is installed: the record then has no span of
    /// its own.
    pub fn open_process(
        source: &RecordSource,
        partition: i32,
        offset: i64,
        effect: &str,
        upstream: &opentelemetry::Context,
    ) -> Option<RecordSpan> {
        let span = tracing::info_span!(
            target: RECORD_SPAN_TARGET,
            "process",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.name = "process",
            messaging.operation.type = "process",
            messaging.destination.name = %source.topic,
            messaging.destination.partition.id = %partition,
            messaging.kafka.offset = offset,
            messaging.consumer.group.name = %source.group_id,
            onceflow.effect = effect,
            txn_id = tracing::field::Empty,
            onceflow.outcome = tracing::field::Empty,
        );
        // Fails only if the span is disabled or no layer is installed: the
        // record then has no span of its own.
        if span.set_parent(upstream.clone()).is_err() {
            return None;
        }
        Some(RecordSpan(Some(span)))
    }

    /// Records how the record's cycle ended (`committed`, `rewound`).
    pub fn outcome(&self, outcome: &'static str) {
        if let Some(span) = &self.0 {
            span.record("onceflow.outcome", outcome);
        }
    }
}

/// Ties a commit cycle's span to the traced records it commits: parent =
/// the first sampled one's `process` span, links to the others (capped),
/// and each `process` span gets `txn_id` and a link back. Call before the
/// cycle span is entered.
pub fn tie_cycle_to_records<'a>(
    cycle: &tracing::Span,
    txn_id: Uuid,
    records: impl Iterator<Item = &'a RecordSpan>,
) {
    if !span_export_enabled() {
        return;
    }
    let txn_id = txn_id.to_string();
    let traced: Vec<(&RecordSpan, opentelemetry::Context)> = records
        .filter(|span| span.is_some())
        .filter_map(|span| Some((span, span.otel_context()?)))
        .collect();
    // The parent must be sampled, or the sampler would drop the whole cycle
    // for the sake of one record whose upstream chose not to be traced.
    let parent = traced
        .iter()
        .position(|(_, context)| context.span().span_context().is_sampled());
    if let Some((_, context)) = parent.and_then(|index| traced.get(index)) {
        // Fails only if the cycle span is disabled: then nothing is exported.
        let _ = cycle.set_parent(context.clone());
    }
    let others = traced
        .iter()
        .enumerate()
        .filter(|(index, _)| Some(*index) != parent);
    for (_, (_, context)) in others.take(MAX_CYCLE_LINKS) {
        cycle.add_link(context.span().span_context().clone());
    }
    let cycle_context = cycle.context().span().span_context().clone();
    if cycle_context.is_valid() {
        for (span, _) in &traced {
            span.joined_cycle(&txn_id, &cycle_context);
        }
    }
}

/// Records the outcome of a cycle on the `process` spans of its records.
pub fn record_outcome<'a>(records: impl Iterator<Item = &'a RecordSpan>, outcome: &'static str) {
    if !span_export_enabled() {
        return;
    }
    for span in records {
        span.outcome(outcome);
    }
}

/// Marks `span` failed: OpenTelemetry status `ERROR` with `error` as its
/// description. Without span export it does nothing (and costs nothing).
pub fn mark_failed(span: &tracing::Span, error: &dyn Display) {
    if span_export_enabled() {
        span.set_status(Status::error(error.to_string()));
    }
}

/// Runs `future` inside `span`; if it fails, marks the span failed.
pub async fn in_span<T, E: Display>(
    span: tracing::Span,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = future.instrument(span.clone()).await;
    if let Err(error) = &result {
        mark_failed(&span, error);
    }
    result
}
