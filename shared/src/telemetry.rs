//! Logs, traces and metrics for a process (one or several services).
//!
//! - Logs are JSON lines (or pretty text) filtered by `RUST_LOG` or the
//!   configured filter.
//! - Traces: every span goes to an OpenTelemetry tracer. The OTLP exporter is
//!   off unless an endpoint is configured, but spans always get real W3C trace
//!   context, so the context received on a gRPC call travels through the
//!   outbox into event headers and on to the next service: one trace per saga.
//! - Metrics: one Prometheus recorder per process, rendered at `/metrics`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, TelemetryConfig};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Flushes and stops the trace exporter when dropped (at process exit).
#[must_use = "dropping the guard shuts tracing down"]
pub struct TelemetryGuard {
    owner: bool,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if self.owner
            && let Some(provider) = PROVIDER.get()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: shutting the tracer provider down failed: {e}");
        }
    }
}

/// Sets up logging, tracing and metrics for this process. Call it once, from
/// inside the tokio runtime (the OTLP batch exporter needs it); later calls
/// only return a guard that does nothing.
pub fn init(service: &str, cfg: &TelemetryConfig) -> TelemetryGuard {
    install(service, cfg, false)
}

/// Like [`init`], for tests: logs go to the test harness's captured output, at
/// `warn` unless `RUST_LOG` says otherwise.
pub fn init_for_tests() -> TelemetryGuard {
    let cfg = TelemetryConfig {
        log_format: LogFormat::Pretty,
        log_filter: "warn".into(),
        ..TelemetryConfig::default()
    };
    install("saga-tests", &cfg, true)
}

fn install(service: &str, cfg: &TelemetryConfig, test: bool) -> TelemetryGuard {
    if PROVIDER.get().is_some() {
        return TelemetryGuard { owner: false };
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    prometheus();

    let endpoint = if cfg.otlp_endpoint.is_empty() {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default()
    } else {
        cfg.otlp_endpoint.clone()
    };
    let ratio = cfg.sample_ratio.clamp(0.0, 1.0);
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        );
    let mut exporter_error = None;
    if !endpoint.is_empty() {
        match otlp_exporter(&endpoint) {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => exporter_error = Some(e.to_string()),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(service.to_owned());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let owner = PROVIDER.set(provider).is_ok();

    // The log filter applies to the log output only: spans at info and above
    // always reach OpenTelemetry, so traces stay whole whatever is logged.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(LevelFilter::INFO);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match (cfg.log_format, test) {
        (_, true) => tracing_subscriber::fmt::layer().with_test_writer().boxed(),
        (LogFormat::Json, false) => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        (LogFormat::Pretty, false) => tracing_subscriber::fmt::layer().boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .try_init();
    if installed.is_err() && !test {
        eprintln!("telemetry: a global tracing subscriber was already set");
    }
    match exporter_error {
        Some(e) => tracing::error!(endpoint = %endpoint, error = %e, "OTLP exporter not started"),
        None if !endpoint.is_empty() => {
            tracing::info!(endpoint = %endpoint, "exporting traces over OTLP");
        }
        None => {}
    }
    TelemetryGuard { owner }
}

/// The OTLP/gRPC span exporter for `endpoint`. An `https://` endpoint (or
/// one without a scheme, which OTLP takes for HTTPS unless
/// `OTEL_EXPORTER_OTLP_INSECURE` is true) is reached over TLS, trusting the
/// web PKI's roots. It connects when it first exports: a collector that is
/// down delays no start.
pub fn otlp_exporter(
    endpoint: &str,
) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    // As the exporter reads them: the traces' own setting first.
    let insecure = [
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        "OTEL_EXPORTER_OTLP_INSECURE",
    ]
    .iter()
    .find_map(|var| std::env::var(var).ok())
    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let tls = endpoint.starts_with("https://") || (!endpoint.contains("://") && !insecure);
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.to_owned());
    if tls {
        builder =
            builder.with_tls_config(tonic::transport::ClientTlsConfig::new().with_enabled_roots());
    }
    builder.build()
}

/// The process's Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
            .expect("static bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; ours then stays
        // unused and /metrics shows nothing, which the log says.
        if metrics::set_global_recorder(recorder).is_err() {
            eprintln!("telemetry: another metrics recorder is installed; /metrics will be empty");
        }
        // The recorder keeps every histogram sample until upkeep drains it
        // into the buckets; a scrape runs upkeep, but a service nobody
        // scrapes would otherwise grow by each sample it records.
        let drained = handle.clone();
        let upkeep = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    drained.run_upkeep();
                }
            });
        if let Err(e) = upkeep {
            eprintln!("telemetry: metrics upkeep not started ({e}); only scrapes drain histograms");
        }
        handle
    })
}

tokio::task_local! {
    /// Metrics recorded inside [`recording_on_commit`]'s work, held until
    /// it succeeds.
    static UNCOMMITTED: std::cell::RefCell<Vec<Box<dyn FnOnce() + Send>>>;
}

/// Records a metric of a change once the transaction that makes it commits:
/// inside [`recording_on_commit`], when its work succeeds (never if it
/// fails: rolled back, and perhaps redone, which records it again);
/// elsewhere at once.
pub fn record_on_commit(record: impl FnOnce() + Send + 'static) {
    let mut record = Some(record);
    let held = UNCOMMITTED.try_with(|held| {
        if let Some(r) = record.take() {
            held.borrow_mut().push(Box::new(r));
        }
    });
    if held.is_err()
        && let Some(r) = record.take()
    {
        r();
    }
}

/// Runs `work`, a transaction up to and including its commit, holding the
/// metrics it records with [`record_on_commit`] until it succeeds; if it
/// fails, they are dropped. Inside another such scope, `work` joins it.
pub async fn recording_on_commit<T, E>(
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    if UNCOMMITTED.try_with(|_| ()).is_ok() {
        return work.await;
    }
    UNCOMMITTED
        .scope(std::cell::RefCell::default(), async {
            let out = work.await;
            let held = UNCOMMITTED.with(|held| std::mem::take(&mut *held.borrow_mut()));
            if out.is_ok() {
                for record in held {
                    record();
                }
            }
            out
        })
        .await
}

/// How often histogram samples are drained into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// W3C trace context of a span, as carried in event headers and outbox rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The trace context of `span` (empty if it has none).
    pub fn of(span: &Span) -> Self {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return Self::default();
        }
        let mut map: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut map);
        Self {
            traceparent: map.remove("traceparent"),
            tracestate: map.remove("tracestate").filter(|s| !s.is_empty()),
        }
    }

    /// The trace context of the current span.
    pub fn current() -> Self {
        Self::of(&Span::current())
    }

    /// Makes `span` a child of this context. Call before the span is entered.
    pub fn set_parent_of(&self, span: &Span) {
        if let Some(cx) = self.context() {
            // Fails only if the span was already entered; the span then keeps
            // its own trace, which is all we can do.
            let _ = span.set_parent(cx);
        }
    }

    fn context(&self) -> Option<opentelemetry::Context> {
        let traceparent = self.traceparent.as_ref()?;
        let mut map = HashMap::new();
        map.insert("traceparent".to_owned(), traceparent.clone());
        if let Some(state) = &self.tracestate {
            map.insert("tracestate".to_owned(), state.clone());
        }
        let cx = TraceContextPropagator::new().extract(&map);
        cx.span().span_context().is_valid().then_some(cx)
    }

    /// The trace id, if there is a valid context.
    pub fn trace_id(&self) -> Option<String> {
        let tp = self.traceparent.as_ref()?;
        let mut parts = tp.split('-');
        let (_version, trace_id) = (parts.next()?, parts.next()?);
        (trace_id.len() == 32).then(|| trace_id.to_owned())
    }

    /// Reads the context from HTTP/2 (gRPC) headers.
    pub fn from_http(headers: &http::HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }

    /// Reads the context from NATS message headers.
    pub fn from_nats(headers: &async_nats::HeaderMap) -> Self {
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        Self {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }

    /// Writes the context into NATS message headers.
    pub fn write_nats(&self, headers: &mut async_nats::HeaderMap) {
        if let Some(tp) = &self.traceparent {
            headers.insert("traceparent", tp.as_str());
        }
        if let Some(ts) = &self.tracestate {
            headers.insert("tracestate", ts.as_str());
        }
    }

    /// Writes the context into gRPC request metadata.
    pub fn write_grpc(&self, metadata: &mut tonic::metadata::MetadataMap) {
        if let Some(tp) = self.traceparent.as_deref().and_then(|v| v.parse().ok()) {
            metadata.insert("traceparent", tp);
        }
        if let Some(ts) = self.tracestate.as_deref().and_then(|v| v.parse().ok()) {
            metadata.insert("tracestate", ts);
        }
    }
}

/// Adapters so other propagators (baggage, say) can use NATS headers too.
pub struct NatsHeaders<'a>(pub &'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// A gRPC client interceptor that sends the current span's trace context.
pub fn propagate_trace(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    TraceHeaders::current().write_grpc(request.metadata_mut());
    Ok(request)
}
