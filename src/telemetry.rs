//! Telemetry: structured logs through `tracing`, and OpenTelemetry trace export over OTLP/HTTP
//! when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) variable is set.
//!
//! Log lines are lowercase with no trailing period, and carry structured fields:
//! `warn!(%tenant, status = 429, "push rejected")`. The level comes from `RUST_LOG`
//! (default `info`); the format is human-readable or JSON.

#[cfg(feature = "otel")]
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Keeps the trace exporter alive; flushes pending spans when dropped.
pub struct TelemetryGuard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("logwarden: flushing traces failed: {e}");
            }
        }
    }
}

/// Returns true when the environment asks for OTLP trace export.
pub fn otlp_requested(env: &dyn Fn(&str) -> Option<String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| env(k).is_some_and(|v| !v.trim().is_empty()))
        && env("OTEL_TRACES_EXPORTER").is_none_or(|v| v != "none")
}

/// logwarden's spans from debug level up: the part of the trace exporter's filter that takes
/// the per-push spans, which the log layer's default `info` leaves out.
#[cfg(feature = "otel")]
fn exported_spans() -> tracing_subscriber::filter::FilterFn {
    fn exported(meta: &tracing::Metadata<'_>) -> bool {
        meta.is_span()
            && *meta.level() <= tracing::Level::DEBUG
            && (meta.target() == "logwarden" || meta.target().starts_with("logwarden::"))
    }
    tracing_subscriber::filter::FilterFn::new(exported as fn(&tracing::Metadata<'_>) -> bool)
        .with_max_level_hint(tracing::Level::DEBUG)
}

/// Installs the global subscriber. Call before starting the async runtime: the OTLP exporter's
/// blocking HTTP client must not be created inside it.
///
/// # Errors
/// When the OTLP exporter cannot be built from the environment.
pub fn init(
    format: LogFormat,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<TelemetryGuard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt_layer.with_filter(filter()));

    #[cfg(feature = "otel")]
    if otlp_requested(env) {
        // The exporter builds a reqwest client too.
        crate::http::install_crypto_provider();
        use opentelemetry::trace::TracerProvider as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("logwarden")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("logwarden");
        // Exported whatever RUST_LOG says for log lines: logwarden's spans from debug level up
        // (the per-push `push`, `forward` and `inspect` are at debug so that the log layer
        // does not build them), its events from info up.
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(EnvFilter::new("logwarden=info").or(exported_spans()));
        registry.with(otel).init();
        return Ok(TelemetryGuard {
            provider: Some(provider),
        });
    }
    let _ = env;
    registry.init();
    Ok(TelemetryGuard {
        #[cfg(feature = "otel")]
        provider: None,
    })
}
