//! `ONCEFLOW_LOG_FORMAT=json`: one JSON object per log line, for log
//! aggregators. Each line holds `timestamp` (RFC 3339, UTC, microseconds),
//! `level`, `target`, `message`, the event's other fields under `fields`,
//! the spans it happened in (outermost first, each with its name and
//! fields) under `spans`, and, inside a span that OpenTelemetry traces,
//! `trace_id` and `span_id` (lower-case hex, as Jaeger shows them).
//!
//! Guarantees: a line is always one valid JSON object ending in `\n`
//! (field values that are not numbers or booleans become strings, whatever
//! bytes they hold); nothing else is written to the log stream.

use std::fmt;

use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written (`ONCEFLOW_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// human-readable text (the default)
    Text,
    /// one JSON object per line
    Json,
}

impl LogFormat {
    /// The format `ONCEFLOW_LOG_FORMAT` names: `text` (or unset) or `json`,
    /// in any case; anything else is a configuration error naming it.
    pub fn from_env() -> Result<LogFormat, String> {
        match std::env::var("ONCEFLOW_LOG_FORMAT") {
            Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err("setting `log_format` (ONCEFLOW_LOG_FORMAT): not UTF-8".to_owned())
            }
            Ok(value) => LogFormat::parse(&value),
        }
    }

    fn parse(value: &str) -> Result<LogFormat, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "setting `log_format` (ONCEFLOW_LOG_FORMAT): {value:?} is neither `text` nor `json`"
            )),
        }
    }
}

/// The event formatter of [`LogFormat::Json`]. Clones share the dispatcher
/// bound with [`JsonLines::bind`].
#[derive(Debug, Default, Clone)]
pub struct JsonLines {
    /// The dispatcher the formatter runs in: while an event is dispatched,
    /// `tracing` hides it from `Span::current()` (re-entrance guard), so the
    /// span's OpenTelemetry context is looked up through it directly.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonLines {
    /// Names the dispatcher this formatter is installed in (once).
    pub fn bind(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    /// `(trace_id, span_id)` of span `id`, if OpenTelemetry traces it. The
    /// caller must hold no borrow of the span's extensions.
    fn trace_of(&self, id: &tracing::span::Id) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| {
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        })
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".to_owned(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert(
            "level".to_owned(),
            Value::String(metadata.level().to_string()),
        );
        let mut fields = FieldsToJson::default();
        event.record(&mut fields);
        // Records of the `log` crate (librdkafka's, through rdkafka) carry
        // their real target and source position as `log.*` fields.
        let target = match fields.values.remove("log.target") {
            Some(Value::String(target)) => target,
            _ => metadata.target().to_owned(),
        };
        for position in ["log.file", "log.line", "log.module_path"] {
            fields.values.remove(position);
        }
        line.insert("target".to_owned(), Value::String(target));
        let message = fields
            .values
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        line.insert("message".to_owned(), message);
        if !fields.values.is_empty() {
            line.insert("fields".to_owned(), Value::Object(fields.values));
        }

        if let Some(scope) = context.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut entry = Map::new();
                    entry.insert("name".to_owned(), Value::String(span.name().to_owned()));
                    let extensions = span.extensions();
                    if let Some(recorded) = extensions.get::<FormattedFields<JsonFields>>()
                        && let Ok(Value::Object(span_fields)) =
                            serde_json::from_str::<Value>(recorded.as_str())
                    {
                        entry.extend(span_fields);
                    }
                    Value::Object(entry)
                })
                .collect();
            if !spans.is_empty() {
                line.insert("spans".to_owned(), Value::Array(spans));
                // The span's OpenTelemetry context (present only when the
                // OpenTelemetry layer runs): read after every extension
                // borrow above ended.
                if let Some(current) = context.lookup_current()
                    && let Some((trace_id, span_id)) = self.trace_of(&current.id())
                {
                    line.insert("trace_id".to_owned(), Value::String(trace_id));
                    line.insert("span_id".to_owned(), Value::String(span_id));
                }
            }
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// An event's fields as JSON values.
#[derive(Default)]
struct FieldsToJson {
    values: Map<String, Value>,
}

impl Visit for FieldsToJson {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.values.insert(field.name().to_owned(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.values
            .insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.values
            .insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.values
            .insert(field.name().to_owned(), Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.values
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.values
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.values
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// A writer that keeps what is written.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(run: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::default())
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, run);
        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let text = String::from_utf8(bytes).expect("UTF-8");
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"))
            })
            .collect()
    }

    #[test]
    fn each_event_is_one_json_object_with_its_fields_and_spans() {
        let lines = lines_of(|| {
            tracing::info!("outside");
            let cycle = tracing::info_span!("commit_cycle", txn_id = "t-1", partitions = 3_u64);
            let _entered = cycle.enter();
            tracing::warn!(
                records = 200_u64,
                ok = false,
                reason = "a \"quoted\"\nline",
                "cycle aborted"
            );
        });
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0].get("spans").is_none());
        let aborted = &lines[1];
        assert_eq!(aborted["message"], "cycle aborted");
        assert_eq!(aborted["level"], "WARN");
        assert_eq!(aborted["target"], module_path!());
        assert_eq!(aborted["fields"]["records"], 200);
        assert_eq!(aborted["fields"]["ok"], false);
        assert_eq!(aborted["fields"]["reason"], "a \"quoted\"\nline");
        assert_eq!(aborted["spans"][0]["name"], "commit_cycle");
        assert_eq!(aborted["spans"][0]["txn_id"], "t-1");
        assert_eq!(aborted["spans"][0]["partitions"], 3);
        let timestamp = aborted["timestamp"].as_str().expect("a timestamp");
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "{timestamp}"
        );
        // Without the OpenTelemetry layer there is no trace to name.
        assert!(aborted.get("trace_id").is_none());
    }

    #[test]
    fn inside_a_traced_span_the_line_names_its_trace_and_span() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let captured = Captured::default();
        let writer = captured.clone();
        let json_lines = JsonLines::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(json_lines.clone())
                    .with_writer(move || writer.clone()),
            );
        let dispatch = Dispatch::new(subscriber);
        json_lines.bind(&dispatch);
        let mut expected = (String::new(), String::new());
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("commit_cycle");
            let _entered = span.enter();
            let context = span.context();
            let span_context = context.span().span_context().clone();
            expected = (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            );
            tracing::info!("cycle committed");
        });
        let text = String::from_utf8(
            captured
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
        .expect("UTF-8");
        let line: Value = serde_json::from_str(text.trim_end()).expect("one JSON line");
        assert_eq!(expected.0.len(), 32);
        assert_eq!(line["trace_id"], expected.0.as_str());
        assert_eq!(line["span_id"], expected.1.as_str());
    }

    #[test]
    fn the_format_setting_is_text_or_json_and_nothing_else() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("JSON"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(""), Ok(LogFormat::Text));
        let refused = LogFormat::parse("logfmt").expect_err("refused");
        assert!(
            refused.contains("ONCEFLOW_LOG_FORMAT") && refused.contains("logfmt"),
            "{refused}"
        );
    }
}
