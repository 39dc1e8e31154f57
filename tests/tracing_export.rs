//! Trace export end to end: the real `onceflow` binary exports its spans over
//! OTLP/gRPC to a receiver running inside this test process (the
//! `opentelemetry-proto` `TraceService` on 127.0.0.1), reads records that
//! carry an upstream `traceparent`, and is stopped with SIGTERM, so the
//! spans arrive only if the shutdown flush delivers them.
//!
//! Checked: the upstream trace contains one `process` span per traced
//! record, child of the upstream span, with the messaging attributes; the
//! commit cycles that took those records, with their database and Kafka
//! commit spans (same `txn_id`), are in the same trace; output and DLQ
//! records carry the trace id and the `process` span as parent; records
//! without a `traceparent` get no span of their own; upstream `tracestate`
//! and `baggage` arrive unchanged on outputs and dead letters, and
//! `OTEL_PROPAGATORS=tracecontext` leaves the baggage out. Also: the same trace
//! over OTLP/HTTP (protobuf) to an HTTP receiver; an unreachable collector
//! costs one warning and neither start-up nor shutdown time. The
//! no-endpoint path is what every other integration test runs.
//!
//! `throughput_with_and_without_export` (ignored) is the benchmark: run it
//! by hand on a release build (see docs/tracing.md).

mod service;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use onceflow_chaos::harness::{TopicRecord, read_committed, wait_for_progress};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use service::Scenario;
use tokio::sync::oneshot;
use uuid::Uuid;

const UPSTREAM_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UPSTREAM_SPAN: &str = "00f067aa0ba902b7";
/// An upstream trace that its producer chose not to sample (flags 00).
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CATCH_UP: Duration = Duration::from_secs(90);
/// `Status.code` of a failed span in OTLP.
const STATUS_ERROR: i32 = 2;

/// An OTLP/gRPC trace receiver on 127.0.0.1 that keeps every request.
struct Collector {
    endpoint: String,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> anyhow::Result<Collector> {
        Collector::start_with_tls(None).await
    }

    /// A collector; with `tls` (certificate and key, PEM) on `https://`.
    async fn start_with_tls(tls: Option<(Vec<u8>, Vec<u8>)>) -> anyhow::Result<Collector> {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?;
        let port = incoming.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        let scheme = match tls {
            Some((certificate, key)) => {
                builder = builder.tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(certificate, key)),
                )?;
                "https"
            }
            None => "http",
        };
        let server = builder
            .add_service(TraceServiceServer::new(Receiver {
                requests: Arc::clone(&requests),
            }))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        Ok(Collector {
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
            requests,
            stop: Some(stop),
        })
    }

    /// Every span received so far, with its resource's attributes.
    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        flatten(self.requests.lock().map(|r| r.clone()).unwrap_or_default())
    }
}

/// The spans of export requests, each with its resource's attributes.
fn flatten(requests: Vec<ExportTraceServiceRequest>) -> Vec<(Vec<KeyValue>, Span)> {
    let mut spans = Vec::new();
    for request in requests {
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| resource.attributes)
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
    }
    spans
}

/// What an OTLP/HTTP receiver saw: (path, content type, request).
type HttpExports = Arc<Mutex<Vec<(String, String, ExportTraceServiceRequest)>>>;

/// An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1; returns its base
/// URL (the exporter appends `/v1/traces`), on `https://` with `tls`
/// (certificate and key, PEM).
async fn start_http_collector(
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> anyhow::Result<(String, HttpExports)> {
    let received: HttpExports = Arc::new(Mutex::new(Vec::new()));
    let state = Arc::clone(&received);
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = Arc::clone(&state);
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                };
                if let Ok(mut received) = state.lock() {
                    received.push((uri.path().to_owned(), content_type, request));
                }
                let response = ExportTraceServiceResponse {
                    partial_success: None,
                };
                (axum::http::StatusCode::OK, response.encode_to_vec())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let scheme = match tls {
        Some((certificate, key)) => {
            let listener = TlsListener::new(listener, &certificate, &key)?;
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            "https"
        }
        None => {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            "http"
        }
    };
    Ok((format!("{scheme}://127.0.0.1:{port}"), received))
}

/// A TCP listener that hands axum only connections whose TLS handshake
/// succeeded (a client that does not trust the certificate never gets
/// through).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    fn new(tcp: tokio::net::TcpListener, certificate: &[u8], key: &[u8]) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(certificate).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key)?;
        // ring is the only provider built in (as for tonic), so it is the
        // builder's default.
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(stream)).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn value_text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(number) => Some(number.to_string()),
        Value::BoolValue(flag) => Some(flag.to_string()),
        Value::DoubleValue(number) => Some(number.to_string()),
        _ => None,
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| value_text(attribute.value.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn event_json(event_id: Uuid, campaign: &str) -> String {
    serde_json::json!({
        "event_id": event_id,
        "campaign_id": campaign,
        "ad_id": "ad-1",
        "kind": "click",
        "cost_micros": 1_000,
        "occurred_at": "2026-11-26T10:15:30.123Z",
    })
    .to_string()
}

/// One input record the test writes.
struct Input {
    partition: i32,
    value: String,
    traceparent: Option<String>,
}

/// One record to write: partition, value, headers (name, value).
type RecordToWrite<'a> = (i32, &'a str, Vec<(&'a str, &'a str)>);

/// Writes the records; returns (partition, offset) of each, in order.
async fn write_inputs(scenario: &Scenario, inputs: &[Input]) -> anyhow::Result<Vec<(i32, i64)>> {
    let records: Vec<RecordToWrite<'_>> = inputs
        .iter()
        .map(|input| {
            let headers = input
                .traceparent
                .as_deref()
                .map(|traceparent| vec![("traceparent", traceparent)])
                .unwrap_or_default();
            (input.partition, input.value.as_str(), headers)
        })
        .collect();
    write_records(scenario, &records).await
}

/// Writes (partition, value, headers) records to the input topic, in order;
/// returns (partition, offset) of each.
async fn write_records(
    scenario: &Scenario,
    records: &[RecordToWrite<'_>],
) -> anyhow::Result<Vec<(i32, i64)>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &scenario.bootstrap)
        .set("message.timeout.ms", "30000")
        .create()?;
    let mut positions = Vec::new();
    for (partition, value, headers) in records {
        let mut record = FutureRecord::<[u8], [u8]>::to(&scenario.topics.input)
            .partition(*partition)
            .key(b"c-1")
            .payload(value.as_bytes());
        if !headers.is_empty() {
            let headers = headers
                .iter()
                .fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(*value),
                    })
                });
            record = record.headers(headers);
        }
        let delivered = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)?;
        positions.push((delivered.partition, delivered.offset));
    }
    Ok(positions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_trace_runs_through_onceflow_to_the_output_records() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let scenario = Scenario::new(service::bin(), 3).await?;
    let upstream = format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01");

    // 24 valid traced events, 2 invalid traced records, 12 untraced events,
    // 3 events of an unsampled upstream trace.
    let mut inputs = Vec::new();
    let mut traced_events = BTreeSet::new();
    for index in 0..24 {
        let event_id = Uuid::new_v4();
        traced_events.insert(event_id);
        inputs.push(Input {
            partition: index % 3,
            value: event_json(event_id, "c-traced"),
            traceparent: Some(upstream.clone()),
        });
    }
    for partition in [0, 2] {
        inputs.push(Input {
            partition,
            value: "{not json".to_owned(),
            traceparent: Some(upstream.clone()),
        });
    }
    for index in 0..12 {
        inputs.push(Input {
            partition: index % 3,
            value: event_json(Uuid::new_v4(), "c-plain"),
            traceparent: None,
        });
    }
    let mut unsampled_events = BTreeSet::new();
    for index in 0..3 {
        let event_id = Uuid::new_v4();
        unsampled_events.insert(event_id);
        inputs.push(Input {
            partition: index % 3,
            value: event_json(event_id, "c-unsampled"),
            traceparent: Some(format!("00-{UNSAMPLED_TRACE}-b7ad6b7169203331-00")),
        });
    }
    let positions = write_inputs(&scenario, &inputs).await?;
    let traced_positions: BTreeSet<(i32, i64)> = inputs
        .iter()
        .zip(&positions)
        .filter(|(input, _)| input.traceparent.as_deref() == Some(upstream.as_str()))
        .map(|(_, position)| *position)
        .collect();

    let service =
        scenario.start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str())])?;
    scenario.wait_caught_up(39, 2, CATCH_UP).await?;
    let (exit, took) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    // Received before the exit: the flush delivered them (the batch
    // processor's schedule is 5 s, longer than this run's tail).
    let spans = collector.spans();
    assert!(!spans.is_empty(), "no span was exported");
    let (resource, _) = &spans[0];
    assert_eq!(
        attribute(resource, "service.name").as_deref(),
        Some("onceflow")
    );
    assert_eq!(
        attribute(resource, "service.instance.id").as_deref(),
        Some(scenario.instance_id.as_str())
    );
    assert_eq!(
        attribute(resource, "service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let spans: Vec<Span> = spans.into_iter().map(|(_, span)| span).collect();
    assert!(
        spans
            .iter()
            .all(|span| hex(&span.trace_id) != UNSAMPLED_TRACE),
        "spans of an unsampled upstream trace were exported"
    );
    let by_id: HashMap<Vec<u8>, &Span> = spans
        .iter()
        .map(|span| (span.span_id.clone(), span))
        .collect();

    // One `process` span per traced record, child of the upstream span.
    let process: Vec<&Span> = spans.iter().filter(|span| span.name == "process").collect();
    let mut processed_positions = BTreeSet::new();
    let mut process_span_of: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for span in &process {
        assert_eq!(
            hex(&span.trace_id),
            UPSTREAM_TRACE,
            "process span outside the upstream trace"
        );
        assert_eq!(hex(&span.parent_span_id), UPSTREAM_SPAN);
        let attrs = &span.attributes;
        assert_eq!(
            attribute(attrs, "messaging.system").as_deref(),
            Some("kafka")
        );
        assert_eq!(
            attribute(attrs, "messaging.destination.name").as_deref(),
            Some(scenario.topics.input.as_str())
        );
        assert_eq!(
            attribute(attrs, "messaging.consumer.group.name").as_deref(),
            Some(scenario.group_id.as_str())
        );
        assert_eq!(
            attribute(attrs, "messaging.operation.name").as_deref(),
            Some("process")
        );
        let partition: i32 = attribute(attrs, "messaging.destination.partition.id")
            .context("partition attribute")?
            .parse()?;
        let offset: i64 = attribute(attrs, "messaging.kafka.offset")
            .context("offset attribute")?
            .parse()?;
        assert!(
            attribute(attrs, "txn_id").is_some(),
            "process span without txn_id"
        );
        processed_positions.insert((partition, offset));
        if attribute(attrs, "onceflow.outcome").as_deref() == Some("committed") {
            process_span_of.insert((partition, offset), hex(&span.span_id));
        }
    }
    assert_eq!(
        processed_positions, traced_positions,
        "exactly the traced records have a process span"
    );
    assert_eq!(
        process_span_of.len(),
        traced_positions.len(),
        "every traced record's span ends committed"
    );

    // The cycles that committed them: in the same trace, with their
    // database and Kafka commit spans under them, all with the same txn_id.
    let txn_ids: BTreeSet<String> = process
        .iter()
        .filter_map(|span| attribute(&span.attributes, "txn_id"))
        .collect();
    for txn_id in &txn_ids {
        let of_cycle: Vec<&Span> = spans
            .iter()
            .filter(|span| attribute(&span.attributes, "txn_id").as_deref() == Some(txn_id))
            .collect();
        let cycle = of_cycle
            .iter()
            .find(|span| span.name == "commit_cycle")
            .with_context(|| format!("no commit_cycle span for txn {txn_id}"))?;
        assert_eq!(
            hex(&cycle.trace_id),
            UPSTREAM_TRACE,
            "cycle outside the upstream trace"
        );
        let parent = by_id
            .get(&cycle.parent_span_id)
            .context("the cycle's parent was not exported")?;
        assert_eq!(
            parent.name, "process",
            "a cycle's parent is a traced record's span"
        );
        assert_eq!(
            attribute(&cycle.attributes, "onceflow.outcome").as_deref(),
            Some("committed")
        );
        // Links to every other traced record of the cycle (those of the
        // unsampled trace too, which are not exported).
        let linked: BTreeSet<Vec<u8>> = cycle
            .links
            .iter()
            .map(|link| link.span_id.clone())
            .collect();
        for span in &process {
            if attribute(&span.attributes, "txn_id").as_deref() == Some(txn_id)
                && span.span_id != cycle.parent_span_id
            {
                assert!(
                    linked.contains(&span.span_id),
                    "the cycle links to its other traced records"
                );
            }
        }
        for name in [
            "db.commit_batch",
            "kafka.produce",
            "kafka.send_offsets",
            "kafka.commit_transaction",
        ] {
            let child = of_cycle
                .iter()
                .find(|span| span.name == name)
                .with_context(|| format!("no {name} span for txn {txn_id}"))?;
            assert_eq!(
                child.parent_span_id, cycle.span_id,
                "{name} is a child of its cycle"
            );
            assert_eq!(child.trace_id, cycle.trace_id);
            assert_ne!(
                child.status.as_ref().map(|status| status.code),
                Some(STATUS_ERROR),
                "{name} failed"
            );
        }
        let db = of_cycle
            .iter()
            .find(|span| span.name == "db.commit_batch")
            .context("db span")?;
        assert_eq!(
            attribute(&db.attributes, "db.system.name").as_deref(),
            Some("postgresql")
        );
        assert_eq!(
            attribute(&db.attributes, "db.collection.name").as_deref(),
            Some("ad_events")
        );
    }
    let dlq_spans = spans
        .iter()
        .filter(|span| span.name == "dlq.forward")
        .count();
    assert!(
        dlq_spans >= 1,
        "the dead letters' cycle has a dlq.forward span"
    );

    // Outputs: the traced events continue the upstream trace through their
    // `process` span; the others do not.
    let committed_process_spans: BTreeSet<&String> = process_span_of.values().collect();
    let outputs = read_committed(&scenario.bootstrap, &scenario.topics.output).await?;
    assert_eq!(outputs.len(), 39);
    for output in &outputs {
        let value: serde_json::Value =
            serde_json::from_slice(output.value.as_deref().unwrap_or_default())?;
        let event_id: Uuid = value["event_id"].as_str().context("event_id")?.parse()?;
        let traceparent = output
            .header_str("traceparent")
            .context("traceparent header")?;
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        if traced_events.contains(&event_id) {
            assert_eq!(parts[1], UPSTREAM_TRACE, "output of a traced event");
            assert!(
                committed_process_spans.contains(&parts[2].to_owned()),
                "the output's parent is its record's process span: {traceparent}"
            );
        } else if unsampled_events.contains(&event_id) {
            assert_eq!(parts[1], UNSAMPLED_TRACE, "output of an unsampled event");
            assert_eq!(parts[3], "00", "the upstream's sampling decision is kept");
        } else {
            assert_ne!(
                parts[1], UPSTREAM_TRACE,
                "an untraced event joined the upstream trace"
            );
            assert_eq!(
                parts[3], "00",
                "an untraced event's context names no recorded span: not sampled"
            );
        }
    }
    let dead_letters = read_committed(&scenario.bootstrap, &scenario.topics.dlq).await?;
    assert_eq!(dead_letters.len(), 2);
    for dead_letter in &dead_letters {
        let partition: i32 = dead_letter
            .header_str("onceflow-source-partition")
            .context("source partition")?
            .parse()?;
        let offset: i64 = dead_letter
            .header_str("onceflow-source-offset")
            .context("source offset")?
            .parse()?;
        let traceparent = dead_letter
            .header_str("traceparent")
            .context("traceparent")?;
        let expected_span = process_span_of
            .get(&(partition, offset))
            .context("dead letter without a process span")?;
        assert_eq!(
            traceparent,
            format!("00-{UPSTREAM_TRACE}-{expected_span}-01"),
            "the dead letter's parent is its record's process span"
        );
    }
    Ok(())
}

/// The output record of event `event_id` among `outputs`.
fn output_of(outputs: &[TopicRecord], event_id: Uuid) -> anyhow::Result<&TopicRecord> {
    outputs
        .iter()
        .find(|record| {
            serde_json::from_slice::<serde_json::Value>(record.value.as_deref().unwrap_or_default())
                .is_ok_and(|value| value["event_id"] == event_id.to_string())
        })
        .with_context(|| format!("no output of event {event_id}"))
}

/// Upstream `tracestate` and `baggage` ride through onceflow: an input
/// record with `traceparent`, `tracestate` and `baggage` yields an output
/// and a dead letter whose `traceparent` continues the upstream trace
/// through the record's `process` span and whose `tracestate` and `baggage`
/// are the upstream ones. Then, with `OTEL_PROPAGATORS=tracecontext` (and no
/// export: the path without a span), the trace and its `tracestate` still
/// arrive, the baggage does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracestate_and_baggage_reach_the_output_and_the_dead_letter() -> anyhow::Result<()> {
    const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    const BAGGAGE: &str = "tenant=acme,plan=gold;ttl=60";
    let entries = |baggage: &str| -> BTreeSet<String> {
        baggage
            .split(',')
            .map(|entry| entry.trim().to_owned())
            .collect()
    };
    let collector = Collector::start().await?;
    let scenario = Scenario::new(service::bin(), 3).await?;
    let upstream = format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01");
    let headers = vec![
        ("traceparent", upstream.as_str()),
        ("tracestate", TRACESTATE),
        ("baggage", BAGGAGE),
    ];

    // With the default propagators (tracecontext,baggage) and export on;
    // an untraced event on the third partition (every partition has input,
    // so the group commits an offset for each).
    let propagated = Uuid::new_v4();
    let propagated_json = event_json(propagated, "c-propagated");
    let untraced = Uuid::new_v4();
    let untraced_json = event_json(untraced, "c-untraced");
    let first = write_records(
        &scenario,
        &[
            (0, propagated_json.as_str(), headers.clone()),
            (1, "{not json", headers.clone()),
            (2, untraced_json.as_str(), Vec::new()),
        ],
    )
    .await?;
    let service =
        scenario.start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str())])?;
    scenario.wait_caught_up(2, 1, CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");
    let process_spans: BTreeSet<String> = collector
        .spans()
        .iter()
        .filter(|(_, span)| span.name == "process")
        .map(|(_, span)| {
            assert_eq!(hex(&span.trace_id), UPSTREAM_TRACE);
            assert_eq!(
                hex(&span.parent_span_id),
                UPSTREAM_SPAN,
                "child of upstream"
            );
            hex(&span.span_id)
        })
        .collect();
    assert_eq!(process_spans.len(), 2, "one process span per traced record");

    let outputs = read_committed(&scenario.bootstrap, &scenario.topics.output).await?;
    let dead_letters = read_committed(&scenario.bootstrap, &scenario.topics.dlq).await?;
    assert_eq!((outputs.len(), dead_letters.len()), (2, 1));
    for record in [output_of(&outputs, propagated)?, &dead_letters[0]] {
        let at = format!("{}/{}", record.partition, record.offset);
        for name in ["traceparent", "tracestate", "baggage"] {
            assert_eq!(record.header_count(name), 1, "{at}: {name} once");
        }
        let traceparent = record.header_str("traceparent").context("traceparent")?;
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{at}: {traceparent}");
        assert_eq!(parts[1], UPSTREAM_TRACE, "{at}: the upstream trace");
        assert!(
            process_spans.contains(parts[2]),
            "{at}: the parent is the record's process span: {traceparent}"
        );
        assert_eq!(parts[3], "01", "{at}: sampled, as upstream");
        assert_eq!(record.header_str("tracestate"), Some(TRACESTATE), "{at}");
        assert_eq!(
            record.header_str("baggage").map(entries),
            Some(entries(BAGGAGE)),
            "{at}: the upstream baggage (entries in any order)"
        );
    }
    assert_eq!(
        dead_letters[0].header_str("onceflow-source-offset"),
        Some(first[1].1.to_string().as_str())
    );
    // The untraced event: a made-up unsampled root, nothing of upstream's.
    let plain = output_of(&outputs, untraced)?;
    let traceparent = plain.header_str("traceparent").context("traceparent")?;
    assert!(
        !traceparent.contains(UPSTREAM_TRACE) && traceparent.ends_with("-00"),
        "{traceparent}"
    );
    assert_eq!(plain.header_count("tracestate"), 0);
    assert_eq!(plain.header_count("baggage"), 0);

    // OTEL_PROPAGATORS=tracecontext, no export: no baggage downstream.
    let unpropagated = Uuid::new_v4();
    let unpropagated_json = event_json(unpropagated, "c-trace-only");
    let second = write_records(
        &scenario,
        &[
            (2, unpropagated_json.as_str(), headers.clone()),
            (2, "{still not json", headers.clone()),
        ],
    )
    .await?;
    let service = scenario.start(&[("OTEL_PROPAGATORS", "tracecontext")])?;
    scenario.wait_caught_up(3, 2, CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");
    let outputs = read_committed(&scenario.bootstrap, &scenario.topics.output).await?;
    let output = output_of(&outputs, unpropagated)?;
    let dead_letters = read_committed(&scenario.bootstrap, &scenario.topics.dlq).await?;
    let offset = second[1].1.to_string();
    let dead_letter = dead_letters
        .iter()
        .find(|record| {
            record.header_str("onceflow-source-partition") == Some("2")
                && record.header_str("onceflow-source-offset") == Some(offset.as_str())
        })
        .context("the second run's dead letter")?;
    for record in [output, dead_letter] {
        let at = format!("{}/{}", record.partition, record.offset);
        let traceparent = record.header_str("traceparent").context("traceparent")?;
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{at}: {traceparent}");
        assert_eq!(parts[1], UPSTREAM_TRACE, "{at}: the upstream trace");
        assert_eq!(parts[3], "01", "{at}: sampled, as upstream");
        assert_eq!(record.header_str("tracestate"), Some(TRACESTATE), "{at}");
        assert_eq!(record.header_count("baggage"), 0, "{at}: baggage is off");
    }
    scenario.drop_database().await?;
    Ok(())
}

/// A burst of traced records larger than the SDK's default export queue
/// (2,048 spans), in the default batch sizes (5,000 records a cycle): every
/// record's `process` span reaches the collector, and nothing is counted as
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10_000_traced_records_is_exported_whole() -> anyhow::Result<()> {
    const BURST: usize = 10_000;
    let collector = Collector::start().await?;
    let scenario = Scenario::new(service::bin(), 3).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &scenario.bootstrap)
        .set("linger.ms", "5")
        .create()?;
    let upstream = format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01");
    let values: Vec<String> = (0..BURST)
        .map(|_| event_json(Uuid::new_v4(), "c-burst"))
        .collect();
    let sends = values.iter().enumerate().map(|(index, value)| {
        let record = FutureRecord::<[u8], [u8]>::to(&scenario.topics.input)
            .partition(i32::try_from(index % 3).unwrap_or(0))
            .key(b"c-burst")
            .payload(value.as_bytes())
            .headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(upstream.as_str()),
            }));
        producer.send(record, Duration::from_secs(60))
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(error, _)| error)?;
    }

    let service = scenario.start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        // The defaults, not the scenario's small batches.
        ("ONCEFLOW_MAX_BATCH_RECORDS", "5000"),
        ("ONCEFLOW_BACKLOG_BATCH_RECORDS", "10000"),
        ("ONCEFLOW_MAX_BUFFERED_RECORDS", "30000"),
    ])?;
    scenario
        .wait_caught_up(i64::try_from(BURST)?, 0, CATCH_UP)
        .await?;
    let dropped = scenario
        .metric("onceflow_trace_spans_dropped_total", &[])
        .await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");
    let process_spans = collector
        .spans()
        .iter()
        .filter(|(_, span)| span.name == "process" && hex(&span.trace_id) == UPSTREAM_TRACE)
        .count();
    assert_eq!(
        (process_spans, dropped),
        (BURST, 0.0),
        "process spans received, spans counted as dropped"
    );
    scenario.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_name_the_exported_trace() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let scenario = Scenario::new(service::bin(), 3).await?;
    let upstream = format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01");
    let inputs: Vec<Input> = (0..3)
        .map(|partition| Input {
            partition,
            value: event_json(Uuid::new_v4(), "c-json"),
            traceparent: Some(upstream.clone()),
        })
        .collect();
    write_inputs(&scenario, &inputs).await?;
    let service = scenario.start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("ONCEFLOW_LOG_FORMAT", "json"),
    ])?;
    scenario.wait_caught_up(3, 0, CATCH_UP).await?;
    let log_path = service.log_path.clone();
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");

    let log = std::fs::read_to_string(&log_path)?;
    let mut lines = Vec::new();
    for line in log.lines() {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .map_err(|error| anyhow::anyhow!("not one JSON object ({error}): {line}"))?;
        for key in ["timestamp", "level", "target", "message"] {
            assert!(parsed.get(key).is_some(), "no {key} in {line}");
        }
        lines.push(parsed);
    }
    assert!(lines.len() > 5, "a run logs more than this: {log}");
    // Every commit cycle the log names is a trace the collector received,
    // with the same span id.
    let exported: std::collections::HashSet<(String, String)> = collector
        .spans()
        .iter()
        .filter(|(_, span)| span.name == "commit_cycle")
        .map(|(_, span)| (hex(&span.trace_id), hex(&span.span_id)))
        .collect();
    let logged: Vec<(String, String)> = lines
        .iter()
        .filter(|line| {
            line["spans"]
                .as_array()
                .and_then(|spans| spans.last())
                .is_some_and(|span| span["name"] == "commit_cycle")
        })
        .filter_map(|line| {
            Some((
                line["trace_id"].as_str()?.to_owned(),
                line["span_id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert!(
        !logged.is_empty(),
        "no line inside a commit cycle names its trace:\n{log}"
    );
    for ids in &logged {
        assert!(
            exported.contains(ids),
            "{ids:?} was logged but never exported"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_delivers_the_same_trace() -> anyhow::Result<()> {
    let (endpoint, received) = start_http_collector(None).await?;
    let scenario = Scenario::new(service::bin(), 3).await?;
    let upstream = format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01");
    let inputs: Vec<Input> = (0..3)
        .map(|partition| Input {
            partition,
            value: event_json(Uuid::new_v4(), "c-http"),
            traceparent: Some(upstream.clone()),
        })
        .collect();
    write_inputs(&scenario, &inputs).await?;

    let service = scenario.start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ])?;
    scenario.wait_caught_up(3, 0, CATCH_UP).await?;
    let (exit, took) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    let received = received.lock().map(|r| r.clone()).unwrap_or_default();
    assert!(!received.is_empty(), "nothing was exported over HTTP");
    for (path, content_type, _) in &received {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
    }
    let spans = flatten(
        received
            .into_iter()
            .map(|(_, _, request)| request)
            .collect(),
    );
    let in_trace = |name: &str| {
        spans
            .iter()
            .filter(|(_, span)| span.name == name && hex(&span.trace_id) == UPSTREAM_TRACE)
            .count()
    };
    assert_eq!(in_trace("process"), 3);
    assert!(in_trace("commit_cycle") >= 1);
    assert!(in_trace("db.commit_batch") >= 1);
    assert!(in_trace("kafka.commit_transaction") >= 1);
    Ok(())
}

/// A collector of either OTLP protocol on `https://`, for the trust tests.
enum TlsCollector {
    Grpc(Collector),
    Http(String, HttpExports),
}

impl TlsCollector {
    /// Starts one for `protocol` (`grpc` or `http/protobuf`) with `identity`.
    async fn start(protocol: &str, identity: (Vec<u8>, Vec<u8>)) -> anyhow::Result<Self> {
        Ok(match protocol {
            "grpc" => TlsCollector::Grpc(Collector::start_with_tls(Some(identity)).await?),
            _ => {
                let (endpoint, received) = start_http_collector(Some(identity)).await?;
                TlsCollector::Http(endpoint, received)
            }
        })
    }

    fn endpoint(&self) -> &str {
        match self {
            TlsCollector::Grpc(collector) => &collector.endpoint,
            TlsCollector::Http(endpoint, _) => endpoint,
        }
    }

    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        match self {
            TlsCollector::Grpc(collector) => collector.spans(),
            TlsCollector::Http(_, received) => flatten(
                received
                    .lock()
                    .map(|r| r.iter().map(|(_, _, request)| request.clone()).collect())
                    .unwrap_or_default(),
            ),
        }
    }
}

/// OTLP over `https://` (`protocol`) to a collector whose certificate a
/// private CA signed: without the CA `OTEL_EXPORTER_OTLP_CERTIFICATE` names
/// nothing arrives (the system's roots do not know it); with it, the
/// trace's 3 `process` spans do.
async fn https_export_trusts_only_the_named_ca(protocol: &str) -> anyhow::Result<()> {
    let material = onceflow_chaos::harness::TlsMaterial::generate()?;
    let identity = (
        std::fs::read(&material.server_certificate)?,
        std::fs::read(&material.server_key)?,
    );
    let scenario = Scenario::new(service::bin(), 3).await?;
    let upstream = format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01");
    let traced = |campaign: &str| -> Vec<Input> {
        (0..3)
            .map(|partition| Input {
                partition,
                value: event_json(Uuid::new_v4(), campaign),
                traceparent: Some(upstream.clone()),
            })
            .collect()
    };
    let ca = material.ca_certificate.to_string_lossy().into_owned();
    let protocol_env = ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol);

    let untrusted = TlsCollector::start(protocol, identity.clone()).await?;
    assert!(untrusted.endpoint().starts_with("https://"));
    write_inputs(&scenario, &traced("c-untrusted")).await?;
    let service = scenario.start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", untrusted.endpoint()),
        protocol_env,
    ])?;
    scenario.wait_caught_up(3, 0, CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    assert!(
        untrusted.spans().is_empty(),
        "{protocol}: spans crossed an unverified TLS connection"
    );

    let trusted = TlsCollector::start(protocol, identity).await?;
    write_inputs(&scenario, &traced("c-trusted")).await?;
    let service = scenario.start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", trusted.endpoint()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        protocol_env,
    ])?;
    scenario.wait_caught_up(6, 0, CATCH_UP).await?;
    let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success());
    let process_spans = trusted
        .spans()
        .iter()
        .filter(|(_, span)| span.name == "process" && hex(&span.trace_id) == UPSTREAM_TRACE)
        .count();
    assert_eq!(process_spans, 3, "{protocol}: the trace arrived over https");
    scenario.drop_database().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_grpc_export_trusts_the_ca_the_standard_variable_names() -> anyhow::Result<()> {
    https_export_trusts_only_the_named_ca("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_http_protobuf_export_trusts_the_ca_the_standard_variable_names() -> anyhow::Result<()>
{
    https_export_trusts_only_the_named_ca("http/protobuf").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_collector_costs_one_warning_and_no_time() -> anyhow::Result<()> {
    // Nothing listens on this port: every export fails.
    let closed_port = service::free_port()?;
    let endpoint = format!("http://127.0.0.1:{closed_port}");
    let scenario = Scenario::new(service::bin(), 3).await?;
    scenario.produce(1_000, 5).await?;
    let truth =
        onceflow_chaos::harness::input_truth(&scenario.bootstrap, &scenario.topics.input).await?;

    let started = Instant::now();
    let service = scenario.start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export often, so failures happen while the pipeline runs.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])?;
    wait_for_progress(&scenario, Duration::from_secs(60)).await?;
    scenario
        .wait_caught_up(truth.distinct_events as i64, truth.invalid as i64, CATCH_UP)
        .await?;
    // The exporter's own retries may take a while to give up on a batch.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !service.log().contains("cannot export traces") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log_path = service.log_path.clone();
    let (exit, took) = service.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert!(started.elapsed() < CATCH_UP);
    let log = std::fs::read_to_string(&log_path)?;
    let warnings = log.matches("cannot export traces").count();
    assert_eq!(
        warnings, 1,
        "one warning for a failing collector; log:\n{log}"
    );
    scenario.verdict().await?.assert_holds();
    Ok(())
}

/// CPU time (user + system) the process `pid` has used so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// Milliseconds since the Unix epoch in a UUID v7.
fn v7_millis(id: Uuid) -> anyhow::Result<u64> {
    let (seconds, nanos) = id
        .get_timestamp()
        .context("txn_id is not a UUID v7")?
        .to_unix();
    Ok(seconds * 1_000 + u64::from(nanos) / 1_000_000)
}

/// Throughput of the real binary for `BENCH_EVENTS` (default 50,000)
/// events, without export and with export to an in-process collector,
/// `BENCH_ROUNDS` (default 3) times, alternating. Two figures per run: the
/// rate between the first and the last commit cycle (their `txn_id`s are
/// UUID v7, so the database holds when each cycle began) and the CPU time
/// the process spent on the records (robust against other load on the
/// machine). Run by hand:
/// `cargo nextest run --release --features failpoints --test tracing_export
/// --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by hand on a release build"]
async fn throughput_with_and_without_export() -> anyhow::Result<()> {
    let events: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(50_000);
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3);
    let collector = Collector::start().await?;
    let mut results: BTreeMap<bool, Vec<(f64, f64)>> = BTreeMap::new();
    for round in 1..=rounds {
        for export in [false, true] {
            let scenario = Scenario::new(service::bin(), 3).await?;
            scenario.produce(events, 42).await?;
            let truth =
                onceflow_chaos::harness::input_truth(&scenario.bootstrap, &scenario.topics.input)
                    .await?;
            // The product's batch sizes, not the small ones the other tests use.
            let mut env = vec![
                ("ONCEFLOW_MAX_BATCH_RECORDS", "5000"),
                ("ONCEFLOW_BACKLOG_BATCH_RECORDS", "10000"),
                ("ONCEFLOW_MAX_BUFFERED_RECORDS", "30000"),
                ("RUST_LOG", "info"),
            ];
            if export {
                env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()));
            }
            let spans_before = collector.spans().len();
            let service = scenario.start(&env)?;
            let pid = service.child.id().context("service pid")?;
            // Start-up (producer init, group join) is not part of the work.
            let mut cpu_before = cpu_time(pid)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while scenario.table_counts().await?.0 == 0 && Instant::now() < deadline {
                cpu_before = cpu_time(pid)?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            scenario
                .wait_caught_up(truth.distinct_events as i64, truth.invalid as i64, CATCH_UP)
                .await?;
            let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
            let (first, last): (Uuid, Uuid) = sqlx::query_as(
                "SELECT (SELECT txn_id FROM ad_events ORDER BY txn_id LIMIT 1), \
                            (SELECT txn_id FROM ad_events ORDER BY txn_id DESC LIMIT 1)",
            )
            .fetch_one(&scenario.pool)
            .await?;
            let cycles_ms = v7_millis(last)?.saturating_sub(v7_millis(first)?).max(1);
            let (exit, _) = service.terminate(Duration::from_secs(15)).await?;
            assert!(exit.success());
            let spans = collector.spans().len() - spans_before;
            let rate = truth.records as f64 * 1_000.0 / cycles_ms as f64;
            let cpu_per_thousand = cpu.as_secs_f64() * 1_000.0 / (truth.records as f64 / 1_000.0);
            results
                .entry(export)
                .or_default()
                .push((rate, cpu_per_thousand));
            println!(
                "round {round} export={export}: {} records, first to last cycle {cycles_ms} ms = {rate:.0} records/s, CPU {:.2} s = {cpu_per_thousand:.1} ms per 1000 records, {spans} spans exported",
                truth.records,
                cpu.as_secs_f64(),
            );
        }
    }
    for (export, runs) in &results {
        let mut rates: Vec<f64> = runs.iter().map(|(rate, _)| *rate).collect();
        let mut cpus: Vec<f64> = runs.iter().map(|(_, cpu)| *cpu).collect();
        rates.sort_by(f64::total_cmp);
        cpus.sort_by(f64::total_cmp);
        println!(
            "median export={export}: {:.0} records/s, {:.1} ms CPU per 1000 records",
            rates[rates.len() / 2],
            cpus[cpus.len() / 2]
        );
    }
    Ok(())
}
