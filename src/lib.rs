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

pub mod analyze;
pub mod auth;
pub mod body;
pub mod config;
pub mod decode;
pub mod detect;
pub mod forward;
pub mod http;
pub mod incident;
pub mod ingest;
pub mod inspect;
pub mod loadgen;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod scan;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod threads;
pub mod tls;

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
    auth: std::sync::RwLock<Arc<auth::Authenticator>>,
    detector: Option<Arc<detect::Detector>>,
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
        Self::with_registry(config, registry, push_inspector, None)
    }

    /// Builds the stages with the detection engine as the inspector. Returns the receiving end
    /// of the bounded incident queue, for the stage that consumes incidents.
    ///
    /// # Errors
    /// When the rules do not compile or the upstream HTTP client cannot be built.
    pub fn with_detection(config: Config) -> anyhow::Result<(App, IncidentReceiver)> {
        let registry = prometheus::Registry::new();
        let shared = state::SharedState::from_config(&config.raw.state, &registry)?;
        if let Some(s) = &shared {
            tracing::info!(
                redis = %state::redact(&s.config().redis_url),
                key_prefix = %s.config().key_prefix,
                replica = %s.replica_id(),
                "detection windows and incident claims shared through Redis"
            );
        }
        let detector = Arc::new(
            detect::Detector::try_new(&config.raw.detect, &registry)
                .map_err(config::detect_error)?
                .with_shared_state(shared),
        );
        let (queue, incidents_rx) =
            incident::IncidentQueue::try_new(incident::IncidentQueue::DEFAULT_CAPACITY, &registry)?;
        let stage = Arc::new(DetectStage {
            detector: Arc::clone(&detector),
            queue,
        });
        let app = Self::with_registry(config, registry, stage, Some(detector))?;
        Ok((app, incidents_rx))
    }

    /// Like [`App::try_new`], with a registry that other stages (detection) registered into.
    ///
    /// # Errors
    /// When the upstream HTTP client cannot be built.
    pub fn with_registry(
        config: Config,
        registry: prometheus::Registry,
        push_inspector: Arc<dyn PushInspector>,
        detector: Option<Arc<detect::Detector>>,
    ) -> anyhow::Result<App> {
        metrics::register_build_info(&registry);
        let metrics = ProxyMetrics::register(&registry, config.inspect.max_metric_tenants);
        let forwarder = Forwarder::try_new(&config, metrics.clone())?;
        let limits = DecodeLimits {
            max_decompressed_bytes: config.max_decompressed_bytes,
        };
        let inspector = Inspector::start(
            config.inspect.queue_capacity,
            usize::try_from(config.inspect.queue_bytes.0).unwrap_or(usize::MAX),
            config.inspect.workers,
            inspect::Priority {
                idle: config.inspect.idle_priority,
                nice: config.inspect.nice,
                forwarding_first: config.inspect.forwarding_first,
                aside_share: config.inspect.aside_share,
            },
            limits,
            metrics.clone(),
            push_inspector,
        );
        Ok(App {
            inner: Arc::new(AppInner {
                auth: std::sync::RwLock::new(Arc::new(auth::Authenticator::try_new(
                    &config.raw.auth,
                )?)),
                config,
                detector,
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

    /// Returns the client authenticator (auth may be off).
    pub fn auth(&self) -> Arc<auth::Authenticator> {
        Arc::clone(&self.inner.auth.read().unwrap_or_else(|e| e.into_inner()))
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
    ///
    /// Rules and the `detect:` section are swapped atomically; a rule set that does not compile
    /// is rejected and the running one stays in force.
    pub fn reload(&self, new: &Config) {
        let old = &self.inner.config;
        if new.listen != old.listen || new.upstream_url != old.upstream_url {
            tracing::warn!("listen and upstream changes take effect after a restart");
        }
        if new.raw.state != old.raw.state {
            tracing::warn!("state: changes take effect after a restart");
        }
        // Credentials first: a bad credentials file rejects the whole reload.
        let auth = match auth::Authenticator::try_new(&new.raw.auth) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "credentials reload rejected, keeping the running ones");
                return;
            }
        };
        if let Some(detector) = &self.inner.detector {
            if let Err(e) = detector.reload(&new.raw.detect) {
                tracing::error!(error = %e, "rule reload rejected, keeping the running rules");
                return;
            }
        }
        *self.inner.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
        tracing::info!("configuration reloaded");
    }

    /// Returns false once shutdown has begun (`/ready` answers 503).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }
}

/// The consuming end of the incident queue.
pub type IncidentReceiver = tokio::sync::mpsc::Receiver<incident::Incident>;

/// The detection engine as the inspection workers' inspector: runs the rules over each decoded
/// push and offers incidents to the bounded incident queue (never blocking).
struct DetectStage {
    detector: Arc<detect::Detector>,
    queue: incident::IncidentQueue,
}

impl PushInspector for DetectStage {
    fn inspect(&self, tenant: &str, push: &decode::PushView<'_>) {
        self.detector.process(tenant, push, &self.queue);
    }
}

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid (exit status 64).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Everything `serve` runs: the proxy and the incident pipeline behind it
/// (detect → incident queue → analyze → alerts).
pub struct Service {
    /// The proxy's shared state.
    pub app: App,
    pipeline: tokio::task::JoinHandle<()>,
}

/// Capacity of the queue between analysis and delivery.
const ALERT_QUEUE_CAPACITY: usize = 256;

impl Service {
    /// Builds every stage from a validated config and starts the pipeline tasks. Call inside a
    /// Tokio runtime, before binding the listener, so a bad setting fails before any port is
    /// bound. Secrets are read through `env`.
    ///
    /// # Errors
    /// [`StartError::Config`] for settings that only fail when built (missing secrets, rules).
    pub fn build(
        config: Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Service, StartError> {
        let raw = config.raw.clone();
        let upstream = config.upstream_url.clone();
        let (app, incidents_rx) = App::with_detection(config)?;
        let analyzer = analyze::Analyzer::try_new(&raw.analyze, env, app.registry())?;
        let dispatcher = notify::Dispatcher::try_new_with_tls(
            &raw.notify,
            &raw.reports,
            &upstream,
            &app.inner.config.upstream_tls,
            env,
            app.registry(),
        )?;
        let (alerts_tx, alerts_rx) = tokio::sync::mpsc::channel(ALERT_QUEUE_CAPACITY);
        let analysis = tokio::spawn(analyzer.run(incidents_rx, alerts_tx));
        let delivery = tokio::spawn(dispatcher.run(alerts_rx));
        let pipeline = tokio::spawn(async move {
            let _ = analysis.await;
            let _ = delivery.await;
        });
        Ok(Service { app, pipeline })
    }

    /// Serves until `shutdown`, then drains: in-flight requests, queued inspections, and the
    /// incidents and alerts behind them (each within its bound).
    ///
    /// # Errors
    /// When the listener fails.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        timings: ShutdownTimings,
    ) -> anyhow::Result<()> {
        serve(self.app, listener, shutdown, timings).await?;
        // The inspection workers are gone, so the incident queue is closed; analysis finishes
        // what is queued, then the alert queue closes and delivery drains.
        if tokio::time::timeout(timings.drain, self.pipeline)
            .await
            .is_err()
        {
            tracing::warn!("incident pipeline not drained at shutdown");
        }
        Ok(())
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
    let threads =
        threads::ServingThreads::start(threads::resolve(app.inner.config.raw.server.threads))
            .map_err(|e| anyhow::anyhow!("cannot start the serving threads: {e}"))?;
    app.inner
        .inspector
        .watch_forwarding(threads.runnable_probe());
    let signal_app = app.clone();
    let signal = async move {
        shutdown.await;
        signal_app.inner.ready.store(false, Ordering::Relaxed);
        tracing::info!("shutdown requested, finishing in-flight requests");
    };
    server::serve_connections(listener, router, &app, &threads, signal, timings.grace).await?;
    threads.shutdown().await;
    if !app.inner.inspector.shutdown(timings.drain).await {
        tracing::warn!("inspection queue not fully drained at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Formats an error and its causes on one line ("client error (Connect): tcp connect error:
/// Connection refused"), for logs: the outer message alone often hides the reason.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
