//! Logs and traces: `tracing` events to stderr (filtered by `RUST_LOG`,
//! default `info`; text coloured only on a terminal, or one JSON object per
//! line with `ONCEFLOW_LOG_FORMAT=json`, see `json_log_format`) and, when an
//! OTLP endpoint is configured, onceflow's spans exported with OpenTelemetry.
//!
//! Configuration is by the standard OpenTelemetry variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
//! unset = no export and no OpenTelemetry layer at all),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`),
//! `OTEL_SERVICE_NAME` (default `onceflow`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_EXPORTER_OTLP_CERTIFICATE` (a CA
//! for an `https://` endpoint, gRPC or HTTP, besides the system's roots); `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn export off. What is propagated across
//! Kafka (`OTEL_PROPAGATORS`) does not depend on export: `main` reads it
//! before anything else (`onceflow_actors::telemetry::propagation`).
//!
//! Guarantees:
//! - an invalid `RUST_LOG` falls back to `info` with a warning;
//! - a bad or unreachable endpoint never fails or blocks start-up: one
//!   warning, then the pipeline runs as without export (spans that cannot be
//!   delivered are dropped by the batch processor, never queued without
//!   bound);
//! - [`Telemetry::shutdown`] flushes what was recorded, bounded so that the
//!   process still exits within 10 s of SIGTERM/SIGINT;
//! - only onceflow's own spans and their events are exported (never those of
//!   the HTTP/gRPC clients doing the export), whatever `RUST_LOG` says.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::json_log_format::{self, LogFormat};
use crate::span_export_queue;

/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.
const DEFAULT_SERVICE_NAME: &str = "onceflow";

/// The exit must come within 10 s of the signal; the runtime's own
/// shutdown (0.5 s) follows the flush.
const FLUSH_DEADLINE_AFTER_SIGNAL: Duration = Duration::from_millis(9_500);

/// Longest flush when the process ends without a signal.
const MAX_FLUSH: Duration = Duration::from_secs(3);

/// A further layer a command installs beside the log and export layers
/// (the demo's record of committed transactions).
pub type ExtraLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The installed telemetry; call [`Telemetry::shutdown`] before exiting.
#[derive(Debug)]
pub struct Telemetry {
    export: Option<Export>,
}

#[derive(Debug)]
struct Export {
    provider: SdkTracerProvider,
    signalled_at: Arc<OnceLock<Instant>>,
}

/// Installs the global subscriber: the stderr log layer and, if an OTLP
/// endpoint is configured, the OpenTelemetry layer. Must run inside
/// `runtime` context (the gRPC channel lives on it). `config_file` is the
/// `run` command's configuration file, read for `instance_id`
/// (`service.instance.id`). `default_filter` applies when `RUST_LOG` is unset
/// or invalid. `extra` is installed with its own filter, so it sees what it
/// asks for whatever `RUST_LOG` says.
pub fn init(
    runtime: &tokio::runtime::Runtime,
    config_file: Option<&Path>,
    default_filter: &str,
    log_format: LogFormat,
    extra: Option<ExtraLayer>,
) -> Telemetry {
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => (
            EnvFilter::new(default_filter),
            std::env::var("RUST_LOG").ok().map(|value| (value, error)),
        ),
    };

    let _entered = runtime.enter();
    let (provider, export_problem) = match export_config() {
        ExportConfig::Off => (None, None),
        ExportConfig::Invalid(problem) => (None, Some(problem)),
        ExportConfig::On(protocol) => match build_provider(protocol, config_file) {
            Ok(provider) => (Some(provider), None),
            Err(problem) => (None, Some(problem)),
        },
    };

    // The JSON lines find each span's trace through the dispatcher they run
    // in, bound once it exists.
    let json_lines = json_log_format::JsonLines::default();
    let log = log_layer(log_format, &json_lines);
    let (dispatch, export): (tracing::Dispatch, Option<Export>) = match provider {
        Some(provider) => {
            // Per-layer filters: RUST_LOG decides what is logged, not what
            // is exported. Per-record spans stay out of the log.
            let log_filter = filter.and(filter_fn(|metadata| {
                metadata.target() != onceflow_actors::telemetry::spans::RECORD_SPAN_TARGET
            }));
            let subscriber = tracing_subscriber::registry()
                .with(extra)
                .with(log.with_filter(log_filter))
                .with(otel_layer(provider.tracer("onceflow")));
            onceflow_actors::telemetry::spans::enable_span_export();
            let signalled_at = Arc::new(OnceLock::new());
            runtime.spawn(note_signal(Arc::clone(&signalled_at)));
            (
                subscriber.into(),
                Some(Export {
                    provider,
                    signalled_at,
                }),
            )
        }
        // Per-layer filters, so that `extra` sees what `RUST_LOG` hides.
        None => (
            tracing_subscriber::registry()
                .with(extra)
                .with(log.with_filter(filter))
                .into(),
            None,
        ),
    };
    json_lines.bind(&dispatch);
    dispatch.init();

    if let Some((value, error)) = bad_filter {
        tracing::warn!(rust_log = %value, %error, "RUST_LOG is not a valid filter; using info");
    }
    if let Some(problem) = export_problem {
        tracing::warn!(%problem, "traces are not exported");
    } else if export.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { export }
}

impl Telemetry {
    /// Flushes the spans recorded so far and stops the exporter, within
    /// what is left of the 10 s shutdown budget (at most 3 s without a
    /// signal). Never blocks longer, even if the collector does not answer.
    pub fn shutdown(self) {
        let Some(export) = self.export else {
            return;
        };
        let budget = match export.signalled_at.get() {
            Some(signalled) => FLUSH_DEADLINE_AFTER_SIGNAL
                .saturating_sub(signalled.elapsed())
                .clamp(Duration::from_millis(100), MAX_FLUSH),
            None => MAX_FLUSH,
        };
        let started = Instant::now();
        let (done, finished) = std::sync::mpsc::channel();
        let provider = export.provider;
        let flusher = std::thread::Builder::new()
            .name("otel-flush".to_owned())
            .spawn(move || {
                let flushed = provider.force_flush();
                let remaining = budget.saturating_sub(started.elapsed());
                let stopped = provider.shutdown_with_timeout(remaining);
                let _ = done.send((flushed, stopped));
            });
        if flusher.is_err() {
            eprintln!("onceflow: cannot start the trace flush; spans not yet exported are lost");
            return;
        }
        match finished.recv_timeout(budget) {
            Ok((Ok(()), _)) => {}
            Ok((Err(error), _)) => {
                eprintln!("onceflow: flushing traces failed: {error}");
            }
            Err(_) => eprintln!(
                "onceflow: flushing traces took longer than {} ms; the rest is dropped",
                budget.as_millis()
            ),
        }
    }
}

/// The log layer: stderr; text coloured only on a terminal, or JSON lines.
fn log_layer<S>(
    format: LogFormat,
    json_lines: &json_log_format::JsonLines,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json_lines.clone())
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

/// The OpenTelemetry layer: onceflow's spans (and the events inside them) at
/// INFO and above, as lean as possible (no source location, thread or
/// busy/idle attributes, no OpenTelemetry context attached on each enter).
fn otel_layer<S>(tracer: SdkTracer) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(OwnSpans)
}

/// Selects onceflow's own spans and events at INFO and above.
///
/// Its callsite interest is "sometimes", never "always", on purpose: with
/// per-layer filters, `tracing-subscriber` (0.3.23) skips the `enabled` pass
/// for callsites every layer always wants, and then reuses the per-layer
/// verdicts left behind by the last `enabled` call on the thread. A `log`
/// record that no layer wants (librdkafka's debug lines through
/// `tracing-log`) leaves "disabled" verdicts behind, and the next span would
/// silently go missing from the export. "Sometimes" makes every span and
/// event of ours go through `enabled`, which sets fresh verdicts.
struct OwnSpans;

impl OwnSpans {
    fn wants(metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::INFO && metadata.target().starts_with("onceflow")
    }
}

impl<S> Filter<S> for OwnSpans {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        OwnSpans::wants(metadata)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if OwnSpans::wants(metadata) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }
}

/// Remembers when the first SIGTERM/SIGINT came, to bound the flush.
async fn note_signal(signalled_at: Arc<OnceLock<Instant>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    let _ = signalled_at.set(Instant::now());
}

enum ExportConfig {
    Off,
    On(Protocol),
    Invalid(String),
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Whether to export, and over which protocol, from the environment.
fn export_config() -> ExportConfig {
    if env_value("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || env_value("OTEL_TRACES_EXPORTER").is_some_and(|value| value == "none")
    {
        return ExportConfig::Off;
    }
    if env_value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        && env_value("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
    {
        return ExportConfig::Off;
    }
    let protocol = env_value("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env_value("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref() {
        None | Some("grpc") => ExportConfig::On(Protocol::Grpc),
        Some("http/protobuf") => ExportConfig::On(Protocol::HttpBinary),
        Some(other) => ExportConfig::Invalid(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported (use `grpc` or `http/protobuf`)"
        )),
    }
}

fn build_provider(
    protocol: Protocol,
    config_file: Option<&Path>,
) -> Result<SdkTracerProvider, String> {
    // The builders read the endpoint, headers, timeout and compression
    // from the standard variables themselves.
    let exporter = match protocol {
        Protocol::HttpBinary => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            match trusted_certificate()? {
                // The system's roots and the named CA, as for gRPC.
                Some(pem) => {
                    use opentelemetry_otlp::WithHttpConfig;
                    builder.with_http_client(http_client_trusting(pem)?)
                }
                None => builder,
            }
            .build()
        }
        _ => {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            match trusted_certificate()? {
                // The system's roots and the named CA (a collector with a
                // certificate of a private CA).
                Some(pem) => {
                    use opentelemetry_otlp::WithTonicConfig;
                    use opentelemetry_otlp::tonic_types::transport::{
                        Certificate, ClientTlsConfig,
                    };
                    builder.with_tls_config(
                        ClientTlsConfig::new()
                            .with_native_roots()
                            .ca_certificate(Certificate::from_pem(pem)),
                    )
                }
                None => builder,
            }
            .build()
        }
    }
    .map_err(|error| error.to_string())?;
    let endpoint = env_value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env_value("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_default();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(span_export_queue::CountedSpanQueue::new(WarnOnFailure {
            inner: exporter,
            endpoint,
            failing: AtomicBool::new(false),
        }))
        .with_resource(resource(config_file))
        .build())
}

/// The CA certificate (PEM) an `https://` endpoint is verified with,
/// besides the system's roots: the file `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`
/// or `OTEL_EXPORTER_OTLP_CERTIFICATE` names (the standard variables).
fn trusted_certificate() -> Result<Option<Vec<u8>>, String> {
    let Some((variable, path)) = [
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ]
    .into_iter()
    .find_map(|variable| env_value(variable).map(|path| (variable, path))) else {
        return Ok(None);
    };
    std::fs::read(&path)
        .map(Some)
        .map_err(|error| format!("{variable}: cannot read {path}: {error}"))
}

/// The blocking HTTP client of the `http/protobuf` exporter, trusting the
/// system's roots and `pem`, with the exporter's timeout
/// (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT` in
/// ms, 10 s by default). Built on a thread of its own: a blocking client
/// cannot be made inside the async runtime.
fn http_client_trusting(pem: Vec<u8>) -> Result<reqwest::blocking::Client, String> {
    let timeout_ms = env_value("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| env_value("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(10_000);
    let certificate = reqwest::Certificate::from_pem(&pem).map_err(|error| {
        format!("OTEL_EXPORTER_OTLP_CERTIFICATE: not a PEM certificate: {error}")
    })?;
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .add_root_certificate(certificate)
            .build()
    })
    .join()
    .map_err(|_| "the thread building the OTLP HTTP client panicked".to_owned())?
    .map_err(|error| format!("cannot build the OTLP HTTP client: {error}"))
}

/// `service.name`, `service.version` and `service.instance.id`, merged with
/// `OTEL_RESOURCE_ATTRIBUTES` (which may set `service.instance.id` itself).
fn resource(config_file: Option<&Path>) -> Resource {
    let detected = Resource::builder().build();
    let service_name = detected
        .get(&Key::from_static_str("service.name"))
        .map(|value| value.to_string())
        .filter(|name| !name.starts_with("unknown_service"))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if detected
        .get(&Key::from_static_str("service.instance.id"))
        .is_none()
    {
        attributes.push(KeyValue::new(
            "service.instance.id",
            instance_id(config_file),
        ));
    }
    Resource::builder()
        .with_service_name(service_name)
        .with_attributes(attributes)
        .build()
}

/// The `instance_id` setting (file and environment), or the host name if the
/// settings cannot be read (`run` then reports why and stops).
fn instance_id(config_file: Option<&Path>) -> String {
    match onceflow_actors::Settings::load(config_file) {
        Ok(settings) => settings.instance_id(),
        Err(_) => onceflow_actors::Settings::default().instance_id(),
    }
}

/// The OTLP exporter, warning once when exports start failing (and once
/// when they work again) instead of failing silently.
#[derive(Debug)]
struct WarnOnFailure {
    inner: opentelemetry_otlp::SpanExporter,
    endpoint: String,
    failing: AtomicBool,
}

impl opentelemetry_sdk::trace::SpanExporter for WarnOnFailure {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %error,
                        spans,
                        "cannot export traces; spans are dropped until the collector answers"
                    );
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "trace export works again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing::Instrument;

    struct ForeignCallsite;
    static FOREIGN_CALLSITE: ForeignCallsite = ForeignCallsite;
    static FOREIGN_DEBUG: tracing::Metadata<'static> = tracing::Metadata::new(
        "log record",
        "rdkafka::client",
        Level::DEBUG,
        None,
        None,
        None,
        tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&FOREIGN_CALLSITE)),
        tracing::metadata::Kind::EVENT,
    );
    impl tracing::callsite::Callsite for ForeignCallsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            &FOREIGN_DEBUG
        }
    }

    #[derive(Debug, Clone, Default)]
    struct Memory(Arc<Mutex<Vec<SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Memory {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Ok(mut spans) = self.0.lock() {
                spans.extend(batch);
            }
            Ok(())
        }
    }

    #[test]
    /// Every span of an instrumented cycle reaches the exporter, even right
    /// after a foreign `log` record that no layer wants (regression: such
    /// spans went missing with plain per-layer target filters).
    fn every_span_of_a_cycle_is_exported_after_unwanted_log_records() {
        let memory = Memory::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(memory.clone())
            .build();
        let otel_layer = otel_layer(provider.tracer("test"));
        let log_layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(EnvFilter::new("info,onceflow=debug"));
        let subscriber = tracing_subscriber::registry()
            .with(log_layer)
            .with(otel_layer);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tracing::subscriber::with_default(subscriber, || {
            onceflow_actors::telemetry::spans::enable_span_export();
            runtime.block_on(async {
                for _ in 0..3 {
                    let cycle = tracing::info_span!("cycle");
                    async {
                        tracing::info!(target: "sqlx::query", "foreign event, logged only");
                        // What `tracing-log` does for a `log` record that
                        // no layer wants: an `enabled` call, no event.
                        tracing::dispatcher::get_default(|dispatch| {
                            dispatch.enabled(&FOREIGN_DEBUG)
                        });
                        let produce = tracing::info_span!("produce", x = 1);
                        let _ = onceflow_actors::telemetry::spans::in_span(produce, async {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Ok::<(), String>(())
                        })
                        .await;
                        let offsets = tracing::info_span!("offsets");
                        let _ = onceflow_actors::telemetry::spans::in_span(offsets, async {
                            tokio::task::spawn_blocking(|| ())
                                .await
                                .map_err(|e| e.to_string())
                        })
                        .await;
                    }
                    .instrument(cycle)
                    .await;
                }
            });
        });
        let names: Vec<String> = memory
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(|span| span.name.to_string())
            .collect();
        assert_eq!(names.len(), 9, "{names:?}");
    }
}
