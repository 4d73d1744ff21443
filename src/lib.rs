//! logwarden: a Loki-compatible push proxy with streaming log-threat detection.
//!
//! ```text
//!  Promtail / Alloy ──push──▶ ingest ──same bytes──▶ forward ──▶ Loki
//!                               │  ◀── Loki's status and body, unchanged ──┘
//!                               │ (accepted for good: not 429/5xx)
//!                               ▼ bounded queue, try_send (shed + counted when full)
//!                            inspect workers: decode ─▶ detect ─▶ incidents (bounded queue)
//!                                                                  ▼
//!                                                        analyze ─▶ notify / reports to Loki
//! ```
//!
//! The request path never waits on inspection, analysis or alerting. Every queue, map and body
//! is bounded, and what is shed is counted in `/metrics`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod config;
pub mod decode;
pub mod forward;
pub mod incident;
pub mod ingest;
pub mod inspect;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod server;
pub mod shutdown;
pub mod telemetry;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::decode::DecodeLimits;
use crate::forward::Forwarder;
use crate::inspect::{Inspector, PushInspector};
use crate::metrics::ProxyMetrics;

/// Shared state of one running instance; cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    config: Config,
    registry: prometheus::Registry,
    metrics: ProxyMetrics,
    forwarder: Forwarder,
    inspector: Arc<Inspector>,
    ready: AtomicBool,
}

impl App {
    /// Builds the stages from a validated config; `inspector` is what runs on each decoded push.
    ///
    /// # Errors
    /// When the upstream HTTP client cannot be built.
    pub fn try_new(config: Config, push_inspector: Arc<dyn PushInspector>) -> anyhow::Result<App> {
        let registry = prometheus::Registry::new();
        Self::with_registry(config, registry, push_inspector)
    }

    /// Like [`App::try_new`], with a registry that other stages (detection) registered into.
    ///
    /// # Errors
    /// When the upstream HTTP client cannot be built.
    pub fn with_registry(
        config: Config,
        registry: prometheus::Registry,
        push_inspector: Arc<dyn PushInspector>,
    ) -> anyhow::Result<App> {
        // reqwest needs a process-wide crypto provider before any client is built (`tls`).
        notify::install_crypto_provider();
        metrics::register_build_info(&registry);
        let metrics = ProxyMetrics::register(&registry, config.inspect.max_metric_tenants);
        let forwarder = Forwarder::try_new(&config, metrics.clone())?;
        let limits = DecodeLimits {
            max_decompressed_bytes: config.max_decompressed_bytes,
        };
        let inspector = Inspector::start(
            config.inspect.queue_capacity,
            config.inspect.workers,
            limits,
            metrics.clone(),
            push_inspector,
        );
        Ok(App {
            inner: Arc::new(AppInner {
                config,
                registry,
                metrics,
                forwarder,
                inspector,
                ready: AtomicBool::new(true),
            }),
        })
    }

    /// Returns the validated configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Returns the proxy metrics.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.inner.metrics
    }

    /// Returns the upstream forwarder.
    pub fn forwarder(&self) -> &Forwarder {
        &self.inner.forwarder
    }

    /// Returns the inspection queue.
    pub fn inspector(&self) -> &Inspector {
        &self.inner.inspector
    }

    /// Returns the metrics registry.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.inner.registry
    }

    /// Renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        self.inner
            .metrics
            .inspect_depth
            .set(self.inner.inspector.depth() as i64);
        metrics::render(&self.inner.registry)
    }

    /// Applies a re-read configuration. Settings bound at start-up (listen address, upstream,
    /// limits, queue sizes) need a restart; a change to them is logged and otherwise ignored.
    pub fn reload(&self, new: &Config) {
        let old = &self.inner.config;
        if new.listen != old.listen || new.upstream_url != old.upstream_url {
            tracing::warn!("listen and upstream changes take effect after a restart");
        }
        tracing::info!("configuration reloaded");
    }

    /// Returns false once shutdown has begun (`/ready` answers 503).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }
}

/// How long shutdown may take.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownTimings {
    /// Time for in-flight requests to finish once the listener is closed.
    pub grace: Duration,
    /// Time to inspect the pushes still queued after that.
    pub drain: Duration,
}

impl Default for ShutdownTimings {
    fn default() -> Self {
        ShutdownTimings {
            grace: Duration::from_secs(15),
            drain: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then shuts down gracefully: `/ready`
/// turns 503, no new connections are accepted, in-flight requests finish (within
/// `timings.grace`), and the inspection queue is drained (within `timings.drain`).
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    timings: ShutdownTimings,
) -> anyhow::Result<()> {
    let router = server::app(app.clone());
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_app = app.clone();
    let signal = async move {
        shutdown.await;
        signal_app.inner.ready.store(false, Ordering::Relaxed);
        tracing::info!("shutdown requested, finishing in-flight requests");
        let _ = stopping_tx.send(());
    };
    let server = std::future::IntoFuture::into_future(
        axum::serve(listener, router).with_graceful_shutdown(signal),
    );
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        _ = stopping_rx => {
            if tokio::time::timeout(timings.grace, &mut server).await.is_err() {
                tracing::warn!(grace = ?timings.grace, "in-flight requests did not finish within the grace period");
            }
        }
    }
    if !app.inner.inspector.shutdown(timings.drain).await {
        tracing::warn!("inspection queue not fully drained at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}
