//! W3C trace context (`traceparent`) carried in Kafka record headers.
//!
//! Guarantees: a valid upstream `traceparent` keeps its trace id (and its
//! sampling decision) on every record onceflow derives from it (output or
//! dead letter), so one trace runs from the upstream producer to the
//! downstream consumer; a missing or malformed one starts a new trace
//! instead of failing the record, marked not sampled: its span id names no
//! recorded span, so no downstream sampler keeps it as a trace whose parent
//! it cannot find (the commit cycle's span covers such records; naming it
//! would put them into the trace of whichever traced record the cycle is
//! parented to). With span
//! export on, the record's context is its `process` span's own (see
//! [`crate::telemetry::spans`]), converted with [`TraceContext::from_span_context`].

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use rand::RngCore;

/// Header name of the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A parsed `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id, never all zero
    pub trace_id: [u8; 16],
    /// 8-byte span id, never all zero
    pub span_id: [u8; 8],
    /// trace flags (bit 0: sampled)
    pub flags: u8,
    /// whether the span id names a span somebody records (upstream's, or
    /// one onceflow exports); false for a root onceflow made up for a record
    /// that came without a context (never sampled)
    pub recorded: bool,
}

impl TraceContext {
    /// Parses a `traceparent` header value; `None` if it is not a valid one.
    pub fn parse(value: &[u8]) -> Option<TraceContext> {
        let text = std::str::from_utf8(value).ok()?.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let trace_hex = parts.next()?;
        let span_hex = parts.next()?;
        let flags_hex = parts.next()?;
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        decode_hex(trace_hex, &mut trace_id)?;
        decode_hex(span_hex, &mut span_id)?;
        let mut flags = [0u8; 1];
        decode_hex(flags_hex, &mut flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags: flags[0],
            recorded: true,
        })
    }

    /// A new root context for a record that came without one: not sampled
    /// (no span of it is recorded), so no downstream sampler treats it as a
    /// trace to keep, and marked as made up ([`TraceContext::recorded`]).
    pub fn new_root() -> TraceContext {
        let mut rng = rand::rng();
        let mut trace_id = [0u8; 16];
        while trace_id == [0; 16] {
            rng.fill_bytes(&mut trace_id);
        }
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            flags: 0,
            recorded: false,
        }
    }

    /// A context in the same trace with a new span id.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// The child of an upstream header if it is valid, else a new root.
    pub fn continue_from(header: Option<&[u8]>) -> TraceContext {
        header
            .and_then(TraceContext::parse)
            .map(|parent| parent.child())
            .unwrap_or_else(TraceContext::new_root)
    }

    /// The header value: `00-{trace}-{span}-{flags}`.
    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            encode_hex(&self.trace_id),
            encode_hex(&self.span_id),
            self.flags
        )
    }

    /// The trace id in lowercase hex.
    pub fn trace_id_hex(&self) -> String {
        encode_hex(&self.trace_id)
    }

    /// The same context as an OpenTelemetry span context received from
    /// another process (remote), for use as a parent or a link.
    pub fn to_span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::NONE,
        )
    }

    /// The context of an OpenTelemetry span; `None` if it is not valid (no
    /// OpenTelemetry layer installed, or the span is disabled).
    pub fn from_span_context(context: &SpanContext) -> Option<TraceContext> {
        if !context.is_valid() {
            return None;
        }
        Some(TraceContext {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
            recorded: true,
        })
    }
}

fn new_span_id() -> [u8; 8] {
    let mut rng = rand::rng();
    let mut span_id = [0u8; 8];
    while span_id == [0; 8] {
        rng.fill_bytes(&mut span_id);
    }
    span_id
}

fn decode_hex(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(())
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keeps_the_trace_id_and_round_trips() {
        let header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceContext::parse(header).expect("valid");
        let child = TraceContext::continue_from(Some(header));
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(
            TraceContext::parse(child.to_header().as_bytes()),
            Some(child)
        );
        assert_eq!(child.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn converts_to_and_from_opentelemetry() {
        let header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).expect("valid");
        let otel = context.to_span_context();
        assert!(otel.is_remote() && otel.is_sampled());
        assert_eq!(
            otel.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(otel.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(TraceContext::from_span_context(&otel), Some(context));
    }

    #[test]
    fn a_made_up_root_is_not_sampled_and_says_so() {
        let root = TraceContext::continue_from(None);
        assert_eq!(root.flags & 1, 0);
        assert!(!root.recorded);
        assert!(root.to_header().ends_with("-00"), "{}", root.to_header());
        let upstream = TraceContext::continue_from(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(upstream.recorded);
        assert_eq!(upstream.flags, 0, "upstream's decision is kept");
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            &b"garbage"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(
                TraceContext::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let a = TraceContext::continue_from(Some(b"garbage"));
        assert_eq!(
            TraceContext::from_span_context(&SpanContext::empty_context()),
            None
        );
        let b = TraceContext::continue_from(None);
        assert_ne!(a.trace_id, b.trace_id);
    }
}
