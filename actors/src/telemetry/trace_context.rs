//! The trace context a record hands on to the record it produces (output
//! or dead letter): read from the input record's headers and written into
//! the new record's headers by the process's OpenTelemetry propagator
//! ([`crate::telemetry::propagation`]; the headers as its carrier:
//! [`crate::telemetry::carrier`]).
//!
//! Guarantees: a valid upstream context keeps its trace id, its sampling
//! decision and its `tracestate` on every record onceflow derives from it,
//! so one trace runs from the upstream producer to the downstream consumer;
//! upstream baggage, when the baggage propagator is on, arrives downstream
//! with the same entries. A missing or malformed `traceparent` starts a new
//! trace instead of failing the record, marked not sampled and not
//! [`TraceContext::recorded`]: its span id names no recorded span, so no
//! downstream sampler keeps it as a trace whose parent it cannot find (the
//! commit cycle's span covers such records; naming it would put them into
//! the trace of whichever traced record the cycle is parented to); such a
//! root carries no `tracestate` (it belongs to the trace that was not
//! continued). With span export on, a traced record's context is its
//! `process` span's own (see [`crate::telemetry::spans`],
//! [`TraceContext::through_span`]). Every record onceflow writes carries a
//! `traceparent`: a record's context is always valid, and W3C trace context
//! is always among the propagators.

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::Injector;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use crate::telemetry::carrier::{InjectedHeaders, TraceHeaders};
use crate::telemetry::propagation;

/// Header name of the W3C trace context: the one trace header the contract
/// requires on every output and dead-letter record.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The upstream context the process's propagator reads from an input
/// record's headers: the remote span context when `traceparent` is valid,
/// and the baggage when that propagator is on. Empty without headers.
pub fn upstream_context(headers: &TraceHeaders) -> Context {
    upstream_context_with(propagation::propagator(), headers)
}

/// [`upstream_context`] with the given propagator. Starts from an empty
/// context, never from whatever is current on the thread.
pub fn upstream_context_with(
    propagator: &dyn TextMapPropagator,
    headers: &TraceHeaders,
) -> Context {
    if headers.is_empty() {
        return Context::new();
    }
    propagator.extract_with_context(&Context::new(), headers)
}

/// Whether `upstream` holds a valid span context to continue.
pub fn has_upstream_span(upstream: &Context) -> bool {
    upstream.span().span_context().is_valid()
}

/// The trace context a processed record carries on: the OpenTelemetry
/// context (span context with its `tracestate`, and baggage) that the
/// propagator injects into the records it produces.
///
/// A record buffered until its batch commits holds one, so the common case
/// is kept small: a root made up for a record that came with no trace
/// context at all (no span context, no baggage) is held as its two ids,
/// without an OpenTelemetry [`Context`] (whose span is a heap allocation);
/// what it writes is what the propagator would write for it (a unit test
/// compares the two).
#[derive(Debug, Clone)]
pub struct TraceContext(Carried);

#[derive(Debug, Clone)]
enum Carried {
    /// a made-up root with nothing else to carry: not sampled, no
    /// `tracestate`, no baggage
    BareRoot { trace_id: TraceId, span_id: SpanId },
    /// every other context: continued from upstream (`recorded`), or a
    /// made-up root that keeps the upstream baggage
    Context { context: Context, recorded: bool },
}

impl TraceContext {
    /// A new root context for a record that came without one: not sampled
    /// (no span of it is recorded), so no downstream sampler treats it as a
    /// trace to keep, and not [`TraceContext::recorded`].
    pub fn new_root() -> TraceContext {
        let (trace_id, span_id) = new_root_ids();
        TraceContext(Carried::BareRoot { trace_id, span_id })
    }

    /// A new root inside `upstream`: its span context (if any) is replaced,
    /// what else it holds (baggage) is kept.
    fn new_root_in(upstream: &Context) -> TraceContext {
        if upstream.baggage().is_empty() {
            return TraceContext::new_root();
        }
        let (trace_id, span_id) = new_root_ids();
        let root = bare_root(trace_id, span_id);
        TraceContext(Carried::Context {
            context: upstream.with_remote_span_context(root),
            recorded: false,
        })
    }

    /// The context a record with upstream context `upstream` (see
    /// [`upstream_context`]) carries on without a span of its own: a child
    /// of the upstream span (same trace id, flags and `tracestate`, a new
    /// span id) if there is a valid one, else a new root; baggage is kept
    /// either way.
    pub fn continue_from(upstream: &Context) -> TraceContext {
        if !has_upstream_span(upstream) {
            return TraceContext::new_root_in(upstream);
        }
        let parent = upstream.span().span_context().clone();
        let ids = RandomIdGenerator::default();
        let span_id = loop {
            let candidate = ids.new_span_id();
            if candidate != SpanId::INVALID {
                break candidate;
            }
        };
        let child = SpanContext::new(
            parent.trace_id(),
            span_id,
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        );
        TraceContext(Carried::Context {
            context: upstream.with_remote_span_context(child),
            recorded: true,
        })
    }

    /// The context of a record processed inside its own span `span` (a
    /// child of `upstream`): the span's ids, flags and `tracestate`, and
    /// `upstream`'s baggage.
    pub fn through_span(upstream: &Context, span: SpanContext) -> TraceContext {
        TraceContext(Carried::Context {
            context: upstream.with_remote_span_context(span),
            recorded: true,
        })
    }

    /// Whether the context continues an upstream one (false for a root
    /// onceflow made up for a record that came without one).
    pub fn recorded(&self) -> bool {
        match &self.0 {
            Carried::BareRoot { .. } => false,
            Carried::Context { recorded, .. } => *recorded,
        }
    }

    /// The span context the record's products name as their parent.
    pub fn span_context(&self) -> SpanContext {
        match &self.0 {
            Carried::BareRoot { trace_id, span_id } => bare_root(*trace_id, *span_id),
            Carried::Context { context, .. } => context.span().span_context().clone(),
        }
    }

    /// The headers the process's propagator writes for this context:
    /// `traceparent`, `tracestate` (if not empty), `baggage` (if on and not
    /// empty).
    pub fn headers(&self) -> InjectedHeaders {
        self.headers_with(propagation::propagator())
    }

    /// [`TraceContext::headers`] with the given propagator.
    pub fn headers_with(&self, propagator: &dyn TextMapPropagator) -> InjectedHeaders {
        let mut headers = InjectedHeaders::default();
        match &self.0 {
            // What W3C trace context writes for an unsampled span context
            // without `tracestate` (baggage, empty, writes nothing); the
            // supported propagators are those two (see
            // [`crate::telemetry::propagation`]).
            Carried::BareRoot { trace_id, span_id } => {
                headers.set(
                    TRACEPARENT_HEADER,
                    bare_root_traceparent(*trace_id, *span_id),
                );
            }
            Carried::Context { context, .. } => propagator.inject_context(context, &mut headers),
        }
        headers
    }

    /// Folds the headers [`TraceContext::headers`] writes, in their order,
    /// into `into` (an outgoing record's headers): for a bare root, the one
    /// `traceparent` without a list of headers in between.
    pub fn fold_headers<T>(&self, into: T, mut add: impl FnMut(T, &str, &str) -> T) -> T {
        match &self.0 {
            Carried::BareRoot { trace_id, span_id } => add(
                into,
                TRACEPARENT_HEADER,
                &bare_root_traceparent(*trace_id, *span_id),
            ),
            Carried::Context { .. } => self
                .headers()
                .iter()
                .fold(into, |into, (name, value)| add(into, name, value)),
        }
    }
}

/// What W3C trace context writes for an unsampled span context without
/// `tracestate`.
fn bare_root_traceparent(trace_id: TraceId, span_id: SpanId) -> String {
    format!("00-{trace_id}-{span_id}-{:02x}", TraceFlags::NOT_SAMPLED)
}

/// Fresh random ids for a made-up root; never the all-zero (invalid) ones,
/// which would write no `traceparent`.
fn new_root_ids() -> (TraceId, SpanId) {
    let ids = RandomIdGenerator::default();
    loop {
        let (trace_id, span_id) = (ids.new_trace_id(), ids.new_span_id());
        if trace_id != TraceId::INVALID && span_id != SpanId::INVALID {
            return (trace_id, span_id);
        }
    }
}

/// The span context of a made-up root: unsampled, no `tracestate`.
fn bare_root(trace_id: TraceId, span_id: SpanId) -> SpanContext {
    SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::NOT_SAMPLED,
        false,
        TraceState::NONE,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use opentelemetry::trace::{SpanId, TraceId};

    use super::*;
    use crate::telemetry::propagation::Propagators;

    const UPSTREAM: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    const BAGGAGE: &str = "tenant=acme,plan=gold;ttl=60";

    fn parts(traceparent: &str) -> Vec<String> {
        traceparent.split('-').map(str::to_owned).collect()
    }

    fn entries(baggage: &str) -> BTreeSet<String> {
        baggage.split(',').map(str::to_owned).collect()
    }

    /// Extracts with `propagators`, continues without a span, injects.
    fn hop(propagators: Propagators, headers: &[(&str, &str)]) -> (TraceContext, InjectedHeaders) {
        let propagator = propagators.propagator();
        let upstream = upstream_context_with(
            &propagator,
            &TraceHeaders::from_pairs(headers.iter().copied()),
        );
        let trace = TraceContext::continue_from(&upstream);
        let written = trace.headers_with(&propagator);
        (trace, written)
    }

    #[test]
    fn tracestate_round_trips_and_the_trace_id_and_flags_are_kept() {
        let (trace, written) = hop(
            Propagators::TRACE_CONTEXT,
            &[("traceparent", UPSTREAM), ("tracestate", TRACESTATE)],
        );
        assert!(trace.recorded());
        let traceparent = written.get("traceparent").expect("traceparent");
        let (sent, received) = (parts(traceparent), parts(UPSTREAM));
        assert_eq!(sent[0], "00");
        assert_eq!(sent[1], received[1], "same trace id");
        assert_ne!(sent[2], received[2], "a child: a new span id");
        assert_eq!(sent[3], "01", "upstream's sampling decision is kept");
        assert_eq!(written.get("tracestate"), Some(TRACESTATE));
        let names: Vec<&str> = written.iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["traceparent", "tracestate"]);
    }

    #[test]
    fn an_unsampled_upstream_stays_unsampled() {
        let (trace, written) = hop(
            Propagators::default(),
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            )],
        );
        assert!(trace.recorded());
        let traceparent = written.get("traceparent").expect("traceparent");
        assert!(
            traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{traceparent}"
        );
        assert!(traceparent.ends_with("-00"), "{traceparent}");
        assert_eq!(
            written.get("tracestate"),
            None,
            "none upstream, none written"
        );
    }

    #[test]
    fn baggage_is_carried_when_its_propagator_is_on_and_only_then() {
        let headers = [
            ("traceparent", UPSTREAM),
            ("tracestate", TRACESTATE),
            ("baggage", BAGGAGE),
        ];
        let (_, with_baggage) = hop(Propagators::default(), &headers);
        assert_eq!(
            with_baggage.get("baggage").map(entries),
            Some(entries(BAGGAGE)),
            "the same entries (the W3C encoding does not keep their order)"
        );
        assert_eq!(with_baggage.get("tracestate"), Some(TRACESTATE));
        let (_, without) = hop(Propagators::TRACE_CONTEXT, &headers);
        assert_eq!(without.get("baggage"), None);
        assert_eq!(without.get("tracestate"), Some(TRACESTATE));
        assert!(without.get("traceparent").is_some());
    }

    #[test]
    fn malformed_traceparents_start_a_new_unsampled_trace_without_tracestate() {
        for bad in [
            "garbage",
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let (trace, written) = hop(
                Propagators::default(),
                &[
                    ("traceparent", bad),
                    ("tracestate", TRACESTATE),
                    ("baggage", "tenant=acme"),
                ],
            );
            assert!(!trace.recorded(), "{bad:?}");
            let traceparent = written.get("traceparent").expect("always written");
            assert!(
                !traceparent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{bad:?} joined the upstream trace: {traceparent}"
            );
            assert!(traceparent.ends_with("-00"), "{bad:?}: {traceparent}");
            assert_eq!(written.get("tracestate"), None, "{bad:?}");
            assert_eq!(
                written.get("baggage"),
                Some("tenant=acme"),
                "{bad:?}: baggage does not depend on the trace context"
            );
        }
        let (first, _) = hop(Propagators::default(), &[("traceparent", "garbage")]);
        let (second, _) = hop(Propagators::default(), &[("traceparent", "garbage")]);
        assert_ne!(
            first.span_context().trace_id(),
            second.span_context().trace_id(),
            "each made-up root is a trace of its own"
        );
    }

    #[test]
    fn an_untraced_record_gets_a_made_up_unsampled_root_and_nothing_else() {
        let upstream = upstream_context(&TraceHeaders::none());
        assert!(!has_upstream_span(&upstream));
        for trace in [
            TraceContext::continue_from(&upstream),
            TraceContext::new_root(),
        ] {
            assert!(!trace.recorded());
            assert!(trace.span_context().is_valid());
            assert!(!trace.span_context().is_sampled());
            let written = trace.headers_with(&Propagators::default().propagator());
            let names: Vec<&str> = written.iter().map(|(name, _)| name).collect();
            assert_eq!(names, ["traceparent"]);
        }
    }

    #[test]
    fn a_bare_root_writes_exactly_what_each_propagator_writes_for_its_context() {
        for propagators in [Propagators::default(), Propagators::TRACE_CONTEXT] {
            let propagator = propagators.propagator();
            for _ in 0..64 {
                let trace = TraceContext::new_root();
                assert!(matches!(trace.0, Carried::BareRoot { .. }));
                let through_the_propagator = {
                    let mut headers = InjectedHeaders::default();
                    let context = Context::new().with_remote_span_context(trace.span_context());
                    propagator.inject_context(&context, &mut headers);
                    headers
                };
                assert_eq!(trace.headers_with(&propagator), through_the_propagator);
                assert_eq!(through_the_propagator.iter().count(), 1);
                let folded = trace.fold_headers(Vec::new(), |mut folded, name, value| {
                    folded.push((name.to_owned(), value.to_owned()));
                    folded
                });
                let written: Vec<(String, String)> = through_the_propagator
                    .iter()
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect();
                assert_eq!(folded, written);
            }
        }
    }

    #[test]
    fn a_root_made_up_beside_upstream_baggage_keeps_the_baggage() {
        let propagator = Propagators::default().propagator();
        let upstream = upstream_context_with(
            &propagator,
            &TraceHeaders::from_pairs([("traceparent", "garbage"), ("baggage", "tenant=acme")]),
        );
        let trace = TraceContext::continue_from(&upstream);
        assert!(matches!(trace.0, Carried::Context { .. }));
        assert!(!trace.recorded());
        let written = trace.headers_with(&propagator);
        assert_eq!(written.get("baggage"), Some("tenant=acme"));
        assert!(
            written
                .get("traceparent")
                .is_some_and(|value| value.ends_with("-00"))
        );
    }

    #[test]
    fn through_a_span_the_span_is_the_parent_and_baggage_is_kept() {
        let propagator = Propagators::default().propagator();
        let upstream = upstream_context_with(
            &propagator,
            &TraceHeaders::from_pairs([("traceparent", UPSTREAM), ("baggage", "tenant=acme")]),
        );
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("b7ad6b7169203331").expect("hex"),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("rojo", "1")]).expect("valid"),
        );
        let trace = TraceContext::through_span(&upstream, span);
        assert!(trace.recorded());
        let written = trace.headers_with(&propagator);
        assert_eq!(
            written.iter().collect::<Vec<_>>(),
            [
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
                ),
                ("tracestate", "rojo=1"),
                ("baggage", "tenant=acme"),
            ]
        );
    }
}
