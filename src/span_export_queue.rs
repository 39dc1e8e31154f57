//! The queue between onceflow's spans and the OTLP exporter: the SDK's
//! batch processor, sized for bursts of traced records, behind a gate that
//! counts what it cannot take.
//!
//! - Sized: unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise, the queue holds
//!   [`DEFAULT_QUEUE_SPANS`] spans (every `process` span of a full backlog of
//!   traced records in flight, plus their cycles), and batches leave every
//!   second (`OTEL_BSP_SCHEDULE_DELAY`, else 1 s) 2,048 at a time.
//! - Counted: the gate tracks the spans waiting (ended, not yet handed to the
//!   exporter) and refuses a span once the queue is full, so the SDK's own
//!   queue never overflows unseen: each refused span counts in
//!   `onceflow_trace_spans_dropped_total`, and the first drop is logged once.
//!
//! Guarantee: a span is either handed to the exporter or counted as
//! dropped; tracing never blocks or slows the pipeline (the gate is two
//! atomic operations).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;

/// Spans the queue holds unless `OTEL_BSP_MAX_QUEUE_SIZE` is set.
pub const DEFAULT_QUEUE_SPANS: usize = 65_536;
/// Spans per export request unless `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` is set.
const DEFAULT_EXPORT_BATCH: usize = 2_048;
/// Delay between exports unless `OTEL_BSP_SCHEDULE_DELAY` is set.
const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_secs(1);

/// The batch processor behind the counting gate.
#[derive(Debug)]
pub struct CountedSpanQueue {
    inner: BatchSpanProcessor,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    dropped: Counter,
    warned: AtomicBool,
}

impl CountedSpanQueue {
    /// The queue in front of `exporter`, counting drops in the process's
    /// `onceflow_trace_spans_dropped_total`.
    pub fn new<E: SpanExporter + 'static>(exporter: E) -> CountedSpanQueue {
        CountedSpanQueue::counting_in(exporter, onceflow_actors::telemetry::spans::dropped_spans())
    }

    /// The queue in front of `exporter`, counting drops in `dropped`.
    fn counting_in<E: SpanExporter + 'static>(exporter: E, dropped: Counter) -> CountedSpanQueue {
        let capacity = env_usize("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or(DEFAULT_QUEUE_SPANS);
        let mut config = BatchConfigBuilder::default().with_max_queue_size(capacity);
        if env_usize("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
            config = config.with_max_export_batch_size(DEFAULT_EXPORT_BATCH.min(capacity));
        }
        if env_usize("OTEL_BSP_SCHEDULE_DELAY").is_none() {
            config = config.with_scheduled_delay(DEFAULT_SCHEDULE_DELAY);
        }
        let waiting = Arc::new(AtomicUsize::new(0));
        let inner = BatchSpanProcessor::builder(Dequeued {
            inner: exporter,
            waiting: Arc::clone(&waiting),
        })
        .with_batch_config(config.build())
        .build();
        CountedSpanQueue {
            inner,
            waiting,
            capacity,
            dropped,
            warned: AtomicBool::new(false),
        }
    }
}

impl SpanProcessor for CountedSpanQueue {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            if !self.warned.swap(true, Ordering::AcqRel) {
                let capacity = self.capacity;
                // Logged from a thread of its own: this runs while a span
                // closes, where an event would be recorded into tracing's
                // own bookkeeping.
                let _ = std::thread::Builder::new()
                    .name("span-drop-warning".to_owned())
                    .spawn(move || {
                        tracing::warn!(
                            capacity,
                            "the trace export queue is full: spans are dropped (counted in onceflow_trace_spans_dropped_total; raise OTEL_BSP_MAX_QUEUE_SIZE or sample)"
                        );
                    });
            }
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter seen by the batch processor: each batch it is handed has
/// left the queue.
#[derive(Debug)]
struct Dequeued<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Dequeued<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.waiting.fetch_sub(batch.len(), Ordering::AcqRel);
        self.inner.export(batch).await
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

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer, TracerProvider};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// Counts the spans it is handed.
    #[derive(Debug, Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    impl SpanExporter for Counting {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.fetch_add(batch.len(), Ordering::AcqRel);
            Ok(())
        }
    }

    #[test]
    fn every_span_is_exported_or_counted_as_dropped() {
        let exporter = Counting::default();
        let dropped = Counter::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(CountedSpanQueue::counting_in(
                exporter.clone(),
                dropped.clone(),
            ))
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..10_000 {
            tracer.in_span("process", |_| {});
        }
        provider.force_flush().expect("flushed");
        let exported = exporter.0.load(Ordering::Acquire) as u64;
        assert_eq!(exported + dropped.get(), 10_000);
        assert_eq!(dropped.get(), 0, "a burst of 10,000 fits the default queue");
    }

    #[test]
    fn a_full_queue_counts_what_it_refuses() {
        // An exporter that never returns keeps every span waiting.
        #[derive(Debug)]
        struct Stuck;
        impl SpanExporter for Stuck {
            async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
        let dropped = Counter::default();
        let queue = CountedSpanQueue::counting_in(Stuck, dropped.clone());
        let capacity = queue.capacity as u64;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .build();
        let tracer = provider.tracer("test");
        // The queue, one export batch taken out (stuck in the exporter),
        // and 500 more than both.
        let batch = DEFAULT_EXPORT_BATCH as u64;
        for _ in 0..(capacity + batch + 500) {
            tracer.in_span("process", |_| {});
        }
        let dropped = dropped.get();
        assert!(
            (500..=500 + batch).contains(&dropped),
            "{dropped} counted: at least the 500 with no room anywhere"
        );
    }
}
