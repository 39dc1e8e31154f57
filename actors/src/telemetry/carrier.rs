//! Kafka record headers as the carrier of OpenTelemetry propagation: the
//! headers of an input record that a propagator may read
//! ([`TraceHeaders`], an [`Extractor`]), and the headers a propagator writes
//! for an output or dead-letter record ([`InjectedHeaders`], an
//! [`Injector`]).
//!
//! Guarantees: an input record keeps exactly the headers the propagator
//! names in its `fields()` (matched without regard to ASCII case, as HTTP
//! header names are; of a repeated header the first counts), their bytes
//! unchanged; a value that is not UTF-8 reads as missing. What a propagator
//! injects is written once per name (a second `set` replaces the first), in
//! the order it was first set; an empty value is not written (the trace
//! context propagator sets an empty `tracestate` when there is none).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};

/// The headers of an input record that the propagator may read: name and
/// value, as the record carried them. Empty (no allocation) for a record
/// without any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders(Vec<(String, Vec<u8>)>);

impl TraceHeaders {
    /// No headers: a record without trace context.
    pub fn none() -> TraceHeaders {
        TraceHeaders(Vec::new())
    }

    /// The headers among `headers` (name, value; in record order) that
    /// `propagator` may read: those its `fields()` name. A header without a
    /// value is left out.
    pub fn collect<'h>(
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
        propagator: &dyn TextMapPropagator,
    ) -> TraceHeaders {
        let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, value) in headers {
            let Some(value) = value else { continue };
            let wanted = propagator
                .fields()
                .any(|field| field.eq_ignore_ascii_case(name));
            let seen = kept
                .iter()
                .any(|(kept_name, _)| kept_name.eq_ignore_ascii_case(name));
            if wanted && !seen {
                kept.push((name.to_owned(), value.to_vec()));
            }
        }
        TraceHeaders(kept)
    }

    /// Builds the headers from name/value pairs (tests, replays).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> TraceHeaders {
        TraceHeaders(
            pairs
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// Whether the record carried none of the headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of header `name` (any ASCII case), as the record carried it.
    pub fn value(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(kept, _)| kept.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        self.value(key)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// The headers a propagator wrote for one outgoing record, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InjectedHeaders(Vec<(String, String)>);

impl InjectedHeaders {
    /// Name and value of each header, in the order written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// The value of header `name`, if it was written.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(written, _)| *written == name)
            .map(|(_, value)| value)
    }
}

impl Injector for InjectedHeaders {
    fn set(&mut self, key: &str, value: String) {
        let existing = self.0.iter().position(|(name, _)| name == key);
        match (existing, value.is_empty()) {
            (Some(index), true) => {
                self.0.remove(index);
            }
            (Some(index), false) => {
                if let Some(entry) = self.0.get_mut(index) {
                    entry.1 = value;
                }
            }
            (None, true) => {}
            (None, false) => self.0.push((key.to_owned(), value)),
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::propagation::Propagators;

    #[test]
    fn only_the_named_headers_are_kept_first_one_wins_any_case() {
        let headers: [(&str, Option<&[u8]>); 6] = [
            ("onceflow-txn-id", Some(b"x")),
            ("Traceparent", Some(b"first")),
            ("traceparent", Some(b"second")),
            ("tracestate", None),
            ("baggage", Some(&[0xff, 0xfe])),
            ("b3", Some(b"not named")),
        ];
        let kept = TraceHeaders::collect(headers, &Propagators::default().propagator());
        assert_eq!(kept.keys(), ["Traceparent", "baggage"]);
        assert_eq!(kept.get("traceparent"), Some("first"));
        assert_eq!(kept.get("tracestate"), None, "no value: left out");
        assert_eq!(kept.value("baggage"), Some(&[0xff, 0xfe][..]), "bytes kept");
        assert_eq!(kept.get("baggage"), None, "not UTF-8 reads as missing");
        assert_eq!(kept.get("b3"), None);
        let without_baggage = TraceHeaders::collect(
            [
                ("baggage", Some(&b"k=v"[..])),
                ("traceparent", Some(&b"x"[..])),
            ],
            &Propagators::TRACE_CONTEXT.propagator(),
        );
        assert_eq!(without_baggage.keys(), ["traceparent"]);
        assert!(TraceHeaders::collect([], &Propagators::default().propagator()).is_empty());
    }

    #[test]
    fn an_injected_header_is_written_once_and_never_empty() {
        let mut injected = InjectedHeaders::default();
        injected.set("traceparent", "a".to_owned());
        injected.set("tracestate", String::new());
        injected.set("baggage", "k=v".to_owned());
        injected.set("traceparent", "b".to_owned());
        assert_eq!(
            injected.iter().collect::<Vec<_>>(),
            [("traceparent", "b"), ("baggage", "k=v")]
        );
        injected.set("baggage", String::new());
        assert_eq!(injected.get("baggage"), None);
    }
}
