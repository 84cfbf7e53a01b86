//! Telemetry in one place: structured logs (text or JSON, the level changeable
//! at run time) and OpenTelemetry traces exported by OTLP when the standard
//! `OTEL_*` variables ask for it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use futures_util::FutureExt;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogLevel {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }

    /// Replaces the filter (`debug`, `sseplane=trace,info`, …).
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(filter).map_err(|e| format!("not a log filter: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// What [`init`] set up; call [`Telemetry::shutdown`] before exiting to flush spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The runtime handle on the log filter.
    pub log_level: Option<LogLevel>,
}

impl Telemetry {
    /// Flushes and stops the span exporter (bounded by its own timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "trace exporter did not flush");
            }
        }
    }
}

/// True when the environment asks for OTLP export.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
        && std::env::var("OTEL_TRACES_EXPORTER")
            .map(|v| v != "none")
            .unwrap_or(true)
        && std::env::var("OTEL_SDK_DISABLED")
            .map(|v| v != "true")
            .unwrap_or(true)
}

/// Installs logging and, when configured, tracing. `replica_id` and the
/// downward-API variables `POD_NAME`/`POD_NAMESPACE` become resource attributes.
pub fn init(format: LogFormat, level: &str, replica_id: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = otlp_configured()
        .then(|| tracer_provider(replica_id))
        .flatten();
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("sseplane"))
            // Only sseplane's own spans become trace spans, whatever the log level.
            .with_filter(Targets::new().with_target("sseplane", tracing::Level::INFO))
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // The log filter applies to log lines only: spans for traces are chosen
    // by the OpenTelemetry layer's own filter, whatever the log level.
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok();
    if provider.is_some() {
        tracing::info!("exporting traces by OTLP");
    }
    TRACING_ON.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    Telemetry {
        provider,
        log_level: installed.then_some(LogLevel { handle }),
    }
}

static TRACING_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when spans are exported (so the hot path can skip building them).
pub fn tracing_on() -> bool {
    TRACING_ON.load(std::sync::atomic::Ordering::Relaxed)
}

fn tracer_provider(replica_id: &str) -> Option<SdkTracerProvider> {
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "grpc".to_owned());
    let exporter = match protocol.as_str() {
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build(),
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        other => {
            tracing::error!(
                protocol = other,
                "unsupported OTEL_EXPORTER_OTLP_PROTOCOL (grpc, http/protobuf): traces off"
            );
            return None;
        }
    };
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the OTLP exporter: traces off");
            return None;
        }
    };
    let mut attributes = vec![KeyValue::new("service.instance.id", replica_id.to_owned())];
    for (variable, key) in [
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
    ] {
        if let Ok(value) = std::env::var(variable) {
            attributes.push(KeyValue::new(key, value));
        }
    }
    let mut resource = Resource::builder().with_attributes(attributes);
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("sseplane");
    }
    // The batch processor's queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE, 2048):
    // a collector that is down costs dropped spans, never delivery latency.
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(CountingExporter(exporter))
            .with_resource(resource.build())
            .build(),
    )
}

/// Counts spans the exporter failed to send, and turns a panic of the exporter
/// into a failed export: the batch processor's thread (the only one that sends
/// spans) outlives a broken exporter instead of dying with it.
#[derive(Debug)]
struct CountingExporter<E>(E);

/// What a panic of the exporter becomes.
fn panicked(what: &str, payload: &(dyn std::any::Any + Send)) -> OTelSdkError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    tracing::error!(error = %message, "the OTLP exporter panicked during {what}");
    OTelSdkError::InternalFailure(format!(
        "the OTLP exporter panicked during {what}: {message}"
    ))
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = match catch_unwind(AssertUnwindSafe(|| self.0.export(batch))) {
            Ok(export) => AssertUnwindSafe(export)
                .catch_unwind()
                .await
                .unwrap_or_else(|payload| Err(panicked("export", &*payload))),
            Err(payload) => Err(panicked("export", &*payload)),
        };
        if result.is_err() {
            metrics::counter!(crate::metrics::SPANS_DROPPED).increment(spans);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        catch_unwind(AssertUnwindSafe(|| self.0.shutdown_with_timeout(timeout)))
            .unwrap_or_else(|payload| Err(panicked("shutdown", &*payload)))
    }

    fn force_flush(&self) -> OTelSdkResult {
        catch_unwind(AssertUnwindSafe(|| self.0.force_flush()))
            .unwrap_or_else(|payload| Err(panicked("flush", &*payload)))
    }

    fn set_resource(&mut self, resource: &Resource) {
        let inner = &mut self.0;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| inner.set_resource(resource))) {
            panicked("set_resource", &*payload);
        }
    }
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct TraceParentOut(Option<String>);

impl Injector for TraceParentOut {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The span of one public request: it continues the caller's W3C trace context
/// and carries a `trace_id` field (the exported span's, else the caller's) so
/// that log lines inside the request name their trace.
pub fn request_span(method: &str, route: &str, headers: &axum::http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let caller = context_from_headers(headers);
    let _ = span.set_parent(caller.clone());
    if let Some(trace_id) = trace_id_of(&span).or_else(|| trace_id_of_context(&caller)) {
        span.record("trace_id", trace_id);
    }
    span
}

/// The caller's trace context from `traceparent`/`tracestate` headers.
pub fn context_from_headers(headers: &axum::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The trace context a `traceparent` value names.
pub fn context_from_traceparent(traceparent: &str) -> Context {
    TraceContextPropagator::new().extract(&OneHeader(traceparent))
}

/// The `traceparent` of `span`, empty when it is not being traced.
pub fn traceparent_of(span: &tracing::Span) -> String {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return String::new();
    }
    let mut out = TraceParentOut(None);
    TraceContextPropagator::new().inject_context(&context, &mut out);
    out.0.unwrap_or_default()
}

/// The trace id of `span` as hex, when it is being traced.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    trace_id_of_context(&span.context())
}

/// The trace id of `context` as hex, when it has a valid one.
pub fn trace_id_of_context(context: &Context) -> Option<String> {
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};

    use super::*;

    /// An exporter that panics on its first export and keeps what follows.
    #[derive(Debug, Default)]
    struct PanicsOnce {
        calls: Mutex<u32>,
        kept: Arc<Mutex<Vec<String>>>,
    }

    impl SpanExporter for PanicsOnce {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let first = {
                let mut calls = self.calls.lock().unwrap();
                *calls += 1;
                *calls == 1
            };
            assert!(!first, "the exporter breaks");
            let mut kept = self.kept.lock().unwrap();
            kept.extend(batch.into_iter().map(|s| s.name.into_owned()));
            Ok(())
        }
    }

    #[test]
    fn a_panicking_exporter_fails_one_export_and_the_next_ones_go_out() {
        let exporter = PanicsOnce::default();
        let kept = exporter.kept.clone();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(CountingExporter(exporter))
            .build();
        let tracer = provider.tracer("test");
        tracer.start("lost").end();
        assert!(
            provider.force_flush().is_err(),
            "the panic is a failed export"
        );
        tracer.start("sent").end();
        provider
            .force_flush()
            .expect("the batch processor survived the panic");
        assert_eq!(*kept.lock().unwrap(), ["sent"]);
        provider.shutdown().unwrap();
    }
}
