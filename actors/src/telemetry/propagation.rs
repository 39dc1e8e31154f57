//! Which OpenTelemetry propagator carries a record's context across Kafka:
//! `OTEL_PROPAGATORS`, read as the OpenTelemetry specification says
//! (comma-separated, case-insensitive, repeated names count once, empty or
//! unset = `tracecontext,baggage`), and the one propagator of the process
//! built from it.
//!
//! Supported: `tracecontext` (W3C `traceparent` and `tracestate`),
//! `baggage` (W3C `baggage`) and `none`. W3C trace context is on whatever
//! the value says: the contract requires a `traceparent` on every output and
//! dead-letter record, so `baggage` alone means trace context and baggage,
//! and `none` means trace context only. `b3`, `b3multi`, `jaeger`, `xray`,
//! `ottrace` and anything else need propagators onceflow is not built with.
//!
//! Guarantees: a value onceflow cannot honour is a [`PropagatorsError`],
//! one line naming `OTEL_PROPAGATORS` and the value, never a silent
//! fallback; the process has one propagator, chosen once ([`install`])
//! before any record is read, and until then (library tests, a library
//! user that installs none) it is the default, trace context and baggage.

use std::sync::OnceLock;

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

/// The standard variable that names the propagators.
pub const PROPAGATORS_VARIABLE: &str = "OTEL_PROPAGATORS";

/// The propagators `OTEL_PROPAGATORS` asks for. W3C trace context is
/// always among them; W3C baggage is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagators {
    baggage: bool,
}

/// `OTEL_PROPAGATORS` names something onceflow cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropagatorsError {
    /// A name that is not `tracecontext`, `baggage` or `none`.
    #[error(
        "OTEL_PROPAGATORS={value:?}: {} not supported (supported: tracecontext, baggage, none; W3C tracecontext is always on)",
        quoted_list(unsupported)
    )]
    Unsupported {
        /// the variable's value, as set
        value: String,
        /// the names onceflow does not know, in the order given
        unsupported: Vec<String>,
    },
    /// `none` together with a propagator: contradictory.
    #[error("OTEL_PROPAGATORS={value:?}: `none` cannot be combined with other propagators")]
    NoneWithOthers {
        /// the variable's value, as set
        value: String,
    },
    /// The value is not UTF-8.
    #[error("OTEL_PROPAGATORS: the value is not UTF-8")]
    NotUnicode,
}

fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.len() {
        1 => format!("{} is", quoted.join("")),
        _ => format!("{} are", quoted.join(", ")),
    }
}

impl Default for Propagators {
    /// The specification's default: `tracecontext,baggage`.
    fn default() -> Self {
        Propagators { baggage: true }
    }
}

impl Propagators {
    /// W3C trace context alone (`OTEL_PROPAGATORS=tracecontext` or `none`).
    pub const TRACE_CONTEXT: Propagators = Propagators { baggage: false };

    /// What `OTEL_PROPAGATORS` asks for (unset: the default).
    pub fn from_env() -> Result<Propagators, PropagatorsError> {
        match std::env::var(PROPAGATORS_VARIABLE) {
            Ok(value) => Propagators::parse(&value),
            Err(std::env::VarError::NotPresent) => Ok(Propagators::default()),
            Err(std::env::VarError::NotUnicode(_)) => Err(PropagatorsError::NotUnicode),
        }
    }

    /// Reads a value of `OTEL_PROPAGATORS`: comma-separated names in any
    /// case, blanks around them and empty items ignored; an empty value is
    /// the default.
    pub fn parse(value: &str) -> Result<Propagators, PropagatorsError> {
        let names: Vec<String> = value
            .split(',')
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        if names.is_empty() {
            return Ok(Propagators::default());
        }
        let mut unsupported: Vec<String> = Vec::new();
        for name in &names {
            let known = matches!(name.as_str(), "tracecontext" | "baggage" | "none");
            if !known && !unsupported.contains(name) {
                unsupported.push(name.clone());
            }
        }
        if !unsupported.is_empty() {
            return Err(PropagatorsError::Unsupported {
                value: value.to_owned(),
                unsupported,
            });
        }
        if names.iter().any(|name| name == "none") {
            if names.iter().any(|name| name != "none") {
                return Err(PropagatorsError::NoneWithOthers {
                    value: value.to_owned(),
                });
            }
            return Ok(Propagators::TRACE_CONTEXT);
        }
        Ok(Propagators {
            baggage: names.iter().any(|name| name == "baggage"),
        })
    }

    /// Whether W3C baggage is propagated.
    pub fn baggage(self) -> bool {
        self.baggage
    }

    /// The names in force, for the log: `tracecontext` or
    /// `tracecontext,baggage`.
    pub fn names(self) -> &'static str {
        if self.baggage {
            "tracecontext,baggage"
        } else {
            "tracecontext"
        }
    }

    /// The OpenTelemetry propagator: trace context first (it writes
    /// `traceparent`, then `tracestate`), then baggage when asked for.
    pub fn propagator(self) -> TextMapCompositePropagator {
        let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> =
            vec![Box::new(TraceContextPropagator::new())];
        if self.baggage {
            propagators.push(Box::new(BaggagePropagator::new()));
        }
        TextMapCompositePropagator::new(propagators)
    }
}

static PROPAGATOR: OnceLock<(Propagators, TextMapCompositePropagator)> = OnceLock::new();

/// Makes `propagators` the process's propagator. Call once at start-up,
/// before any record is read; returns the propagators already in force if
/// one was chosen (or used) before, which then stays.
pub fn install(propagators: Propagators) -> Result<(), Propagators> {
    let mut installed = false;
    let (in_force, _) = PROPAGATOR.get_or_init(|| {
        installed = true;
        (propagators, propagators.propagator())
    });
    if installed || *in_force == propagators {
        Ok(())
    } else {
        Err(*in_force)
    }
}

/// The process's propagator: the installed one, else the default.
pub fn propagator() -> &'static TextMapCompositePropagator {
    let (_, propagator) = PROPAGATOR.get_or_init(|| {
        let propagators = Propagators::default();
        (propagators, propagators.propagator())
    });
    propagator
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(propagators: Propagators) -> Vec<String> {
        let mut fields: Vec<String> = propagators
            .propagator()
            .fields()
            .map(str::to_owned)
            .collect();
        fields.sort();
        fields
    }

    #[test]
    fn unset_or_empty_is_tracecontext_and_baggage() {
        for value in ["", "  ", ",", " , "] {
            assert_eq!(
                Propagators::parse(value),
                Ok(Propagators::default()),
                "{value:?}"
            );
        }
        assert!(Propagators::default().baggage());
        assert_eq!(
            fields(Propagators::default()),
            ["baggage", "traceparent", "tracestate"]
        );
    }

    #[test]
    fn names_are_a_comma_separated_list_in_any_case() {
        let both = Propagators::parse(" TraceContext , BAGGAGE ,tracecontext").expect("valid");
        assert!(both.baggage());
        assert_eq!(both.names(), "tracecontext,baggage");
        let trace_only = Propagators::parse("tracecontext").expect("valid");
        assert_eq!(trace_only, Propagators::TRACE_CONTEXT);
        assert_eq!(fields(trace_only), ["traceparent", "tracestate"]);
    }

    #[test]
    fn trace_context_stays_on_whatever_the_value() {
        // The contract requires `traceparent` on every record onceflow writes.
        let baggage_only = Propagators::parse("baggage").expect("valid");
        assert_eq!(
            fields(baggage_only),
            ["baggage", "traceparent", "tracestate"]
        );
        let none = Propagators::parse("none").expect("valid");
        assert_eq!(none, Propagators::TRACE_CONTEXT);
        assert_eq!(fields(none), ["traceparent", "tracestate"]);
        assert_eq!(Propagators::parse("None,none"), Ok(none));
    }

    #[test]
    fn an_unsupported_name_is_one_line_naming_the_variable_and_the_value() {
        let error = Propagators::parse("b3").expect_err("b3 is not built in");
        assert_eq!(
            error.to_string(),
            "OTEL_PROPAGATORS=\"b3\": `b3` is not supported (supported: tracecontext, \
             baggage, none; W3C tracecontext is always on)"
        );
        let error = Propagators::parse("tracecontext,Jaeger,xray,jaeger").expect_err("unsupported");
        assert_eq!(
            error,
            PropagatorsError::Unsupported {
                value: "tracecontext,Jaeger,xray,jaeger".to_owned(),
                unsupported: vec!["jaeger".to_owned(), "xray".to_owned()],
            }
        );
        let line = error.to_string();
        assert!(
            line.starts_with("OTEL_PROPAGATORS=\"tracecontext,Jaeger,xray,jaeger\": `jaeger`, `xray` are not supported"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn none_with_another_propagator_is_refused() {
        let error = Propagators::parse("none,baggage").expect_err("contradictory");
        assert_eq!(
            error.to_string(),
            "OTEL_PROPAGATORS=\"none,baggage\": `none` cannot be combined with other propagators"
        );
    }
}
