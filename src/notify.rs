//! Notify: delivers each analysed incident ([`Alert`]) to the configured channels and writes its
//! report into Loki (and optionally a JSON-lines file).
//!
//! ```text
//!  alerts_rx ──▶ Dispatcher::run ──filter──▶ [queue] ─▶ worker ─▶ telegram   (retry, backoff)
//!   (bounded)        │  try_send;            [queue] ─▶ worker ─▶ webhook
//!                    │  full → dropped       [queue] ─▶ worker ─▶ …
//!                    └────────────────────▶  [queue] ─▶ worker ─▶ Loki report stream, file
//! ```
//!
//! Receives [`Alert`]s on a bounded channel; owns one bounded queue and one worker task per
//! notifier and per report sink, the HTTP clients, the secrets, and the metrics
//! `logwarden_notifications_total{channel,outcome}`,
//! `logwarden_notification_duration_seconds{channel}` and
//! `logwarden_reports_written_total{sink,outcome}`.
//!
//! Must never let one channel hold up another or the intake: the fan-out only `try_send`s, and a
//! full queue drops that one delivery (counted, WARN). Must never put a secret (bot token, Slack
//! URL, HMAC key, SMTP password, header value) into a log line, a metric or an error message;
//! URLs are stripped from HTTP errors. Every string of an alert is attacker-influenced (log
//! lines, LLM output) and is escaped for its channel.

pub mod alertmanager;
pub mod config;
pub mod email;
pub mod loki;
pub mod slack;
pub mod telegram;
pub mod text;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{HistogramVec, IntCounter, IntCounterVec, Registry};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use self::config::{
    check_rule_filters, validate, ChannelType, ChatId, NotifierConfig, ReportsConfig, RetryConfig,
    SmtpTls,
};
use self::config::{Channel, ChannelKind};
use crate::config::ConfigError;
use crate::incident::Severity;
use crate::metrics;
use crate::report::Alert;

pub use crate::http::install_crypto_provider;

// === errors ===

/// Why one delivery (or one request of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The service answered with a non-success status.
    #[error("answered HTTP {status}{}", detail_suffix(detail))]
    Status {
        /// HTTP status (Telegram: its `error_code`).
        status: u16,
        /// How long the service asked us to wait (Telegram `retry_after`, `Retry-After`).
        retry_after: Option<Duration>,
        /// A short, sanitized description from the answer (never contains the request URL).
        detail: String,
    },
    /// The service answered 2xx but not with what its protocol promises (e.g. Slack not `ok`).
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// No answer within the notifier's `timeout`.
    #[error("no answer within the timeout")]
    Timeout,
    /// Connecting or talking to the service failed (the URL is stripped from the error).
    #[error("request failed: {0}")]
    Network(#[source] reqwest::Error),
    /// The SMTP exchange failed.
    #[error("smtp: {message}")]
    Smtp {
        /// What went wrong, as lettre describes it (credentials are never part of it).
        message: String,
        /// A temporary failure (4xx reply, connection, timeout): worth retrying.
        transient: bool,
    },
    /// Writing the report file failed.
    #[error("cannot write the report file: {0}")]
    Io(#[from] std::io::Error),
    /// The service asked to wait longer than `retry.max_backoff` allows.
    #[error("asked to retry after {0:?}, longer than retry.max_backoff")]
    RetryAfterTooLong(Duration),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl NotifyError {
    /// The bounded reason label / log field.
    pub fn reason(&self) -> &'static str {
        match self {
            NotifyError::Status { status: 429, .. } => "rate_limited",
            NotifyError::Status { status, .. } if *status >= 500 => "server_error",
            NotifyError::Status { .. } => "rejected",
            NotifyError::Protocol(_) => "protocol",
            NotifyError::Timeout => "timeout",
            NotifyError::Network(_) => "network",
            NotifyError::Smtp { .. } => "smtp",
            NotifyError::Io(_) => "io",
            NotifyError::RetryAfterTooLong(_) => "retry_after_too_long",
        }
    }

    /// Returns true for failures worth another attempt: 429, 5xx, timeouts, network errors and
    /// transient SMTP errors. Other 4xx answers mean the request itself is wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            NotifyError::Status { status, .. } => *status == 429 || *status >= 500,
            NotifyError::Timeout | NotifyError::Network(_) => true,
            NotifyError::Smtp { transient, .. } => *transient,
            NotifyError::Protocol(_) | NotifyError::Io(_) | NotifyError::RetryAfterTooLong(_) => {
                false
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            NotifyError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Maps a reqwest error, dropping its URL (a Telegram URL carries the bot token, a Slack
    /// URL is itself the secret).
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            NotifyError::Timeout
        } else {
            NotifyError::Network(e.without_url())
        }
    }
}

/// Keeps at most `max` characters of a service's error text, without control characters.
pub(crate) fn short_detail(body: &str, max: usize) -> String {
    text::sanitize_line(body).chars().take(max).collect()
}

/// Reads `Retry-After` in its delay-seconds form (the HTTP-date form is not used by the
/// services we talk to and is ignored, falling back to our own backoff).
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Turns an HTTP answer into `Ok(body)` for 2xx, or the matching [`NotifyError::Status`].
pub(crate) async fn check_status(resp: reqwest::Response) -> Result<String, NotifyError> {
    let status = resp.status();
    let retry_after = retry_after_header(resp.headers());
    let body = read_capped(resp, 64 * 1024).await?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(NotifyError::Status {
            status: status.as_u16(),
            retry_after,
            detail: short_detail(&body, 200),
        })
    }
}

/// Reads at most `max` bytes of a response body (services answer with a few bytes; a hostile
/// or broken one must not make us buffer megabytes).
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<String, NotifyError> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(NotifyError::from_reqwest)? {
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= max {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

// === retry ===

/// Runs requests under one notifier's retry policy and counts the retries.
#[derive(Clone)]
pub struct Retrier {
    policy: RetryConfig,
    retried: IntCounter,
    channel: Arc<str>,
}

impl Retrier {
    /// Runs `attempt` until it succeeds, fails for good (non-retryable error), or the attempts
    /// are used up. Waits `retry_after` when the service gives one, otherwise an exponential
    /// backoff (`backoff`, doubled each time, capped at `max_backoff`).
    ///
    /// # Errors
    /// The last attempt's error, or [`NotifyError::RetryAfterTooLong`].
    pub async fn run<F, Fut>(&self, mut attempt: F) -> Result<(), NotifyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), NotifyError>>,
    {
        let mut backoff = self.policy.backoff;
        let mut n = 1;
        loop {
            let err = match attempt().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !err.is_retryable() || n >= self.policy.attempts {
                return Err(err);
            }
            let wait = match err.retry_after() {
                Some(asked) if asked > self.policy.max_backoff => {
                    return Err(NotifyError::RetryAfterTooLong(asked));
                }
                Some(asked) => asked,
                None => backoff,
            };
            tracing::info!(
                channel = %self.channel,
                reason = err.reason(),
                error = %err,
                attempt = n,
                wait_ms = wait.as_millis() as u64,
                "delivery attempt failed, retrying"
            );
            self.retried.inc();
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
            n += 1;
        }
    }
}

// === notifier trait ===

/// A boxed future, so notifiers of different types sit behind one trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One delivery target: a channel (Telegram, Slack, …) or a report sink (Loki, file).
pub trait Notifier: Send + Sync {
    /// Delivers one alert, running each request it needs under `retrier`.
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        retrier: &'a Retrier,
    ) -> BoxFuture<'a, Result<(), NotifyError>>;
}

// === metrics ===

/// The outcome label values of `logwarden_notifications_total`.
pub const OUTCOMES: [&str; 5] = ["sent", "failed", "retried", "dropped", "filtered"];
/// The outcome label values of `logwarden_reports_written_total`.
pub const REPORT_OUTCOMES: [&str; 4] = ["written", "failed", "retried", "dropped"];

/// Metrics of the delivery stage.
#[derive(Clone)]
pub struct NotifyMetrics {
    /// `logwarden_notifications_total{channel,outcome}`.
    pub notifications: IntCounterVec,
    /// `logwarden_notification_duration_seconds{channel}`: one delivery, retries included.
    pub duration: HistogramVec,
    /// `logwarden_reports_written_total{sink,outcome}`.
    pub reports_written: IntCounterVec,
}

/// Buckets for delivery time: network round trips up to retries over minutes.
const DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl NotifyMetrics {
    /// Registers the delivery metrics into `registry`.
    pub fn register(registry: &Registry) -> Self {
        NotifyMetrics {
            notifications: metrics::counter_vec(
                registry,
                "logwarden_notifications_total",
                "Alert deliveries per notifier, by outcome (sent, failed, retried = extra \
                 attempts, dropped = queue full, filtered = below min_severity or other rule).",
                &["channel", "outcome"],
            ),
            duration: metrics::histogram_vec(
                registry,
                "logwarden_notification_duration_seconds",
                "Time to deliver one alert to one notifier, retries and waits included.",
                &["channel"],
                DELIVERY_BUCKETS,
            ),
            reports_written: metrics::counter_vec(
                registry,
                "logwarden_reports_written_total",
                "Reports written to a sink (loki, file), by outcome.",
                &["sink", "outcome"],
            ),
        }
    }
}

// === dispatcher ===

/// Whether a worker delivers to a notification channel or writes reports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Channel,
    Sink,
}

struct Target {
    name: Arc<str>,
    role: Role,
    min_severity: Severity,
    rules: Vec<String>,
    queue_capacity: usize,
    retrier: Retrier,
    notifier: Arc<dyn Notifier>,
}

impl Target {
    fn wants(&self, alert: &Alert) -> bool {
        alert.report.severity >= self.min_severity
            && (self.rules.is_empty() || self.rules.contains(&alert.incident.rule))
    }

    fn count(&self, metrics: &NotifyMetrics, outcome: &str) {
        match self.role {
            Role::Channel => metrics
                .notifications
                .with_label_values(&[&*self.name, outcome])
                .inc(),
            Role::Sink => metrics
                .reports_written
                .with_label_values(&[&*self.name, outcome])
                .inc(),
        }
    }
}

/// The delivery stage: fans alerts out to per-notifier queues and workers.
pub struct Dispatcher {
    targets: Vec<Target>,
    metrics: NotifyMetrics,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.targets.iter().map(|t| &*t.name).collect();
        f.debug_struct("Dispatcher")
            .field("targets", &names)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Default time [`Dispatcher::run`] keeps delivering queued alerts after the intake closed.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

    /// Validates the `notify:` and `reports:` sections, reads the secrets (through `env` for
    /// `*_env` fields, from disk for `*_file` fields), builds the clients and registers the
    /// metrics in `registry`. Reports go to `{loki_url}/loki/api/v1/push`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field, e.g. `notify[2].chat_id`; a secret's value is never
    /// part of the message.
    pub fn try_new(
        notifiers: &[NotifierConfig],
        reports: &ReportsConfig,
        loki_url: &reqwest::Url,
        env: &dyn Fn(&str) -> Option<String>,
        registry: &Registry,
    ) -> Result<Self, ConfigError> {
        let tls = crate::tls::UpstreamTls::default();
        Self::try_new_with_tls(notifiers, reports, loki_url, &tls, env, registry)
    }

    /// Like [`Dispatcher::try_new`], with the `upstream.tls` trust and identity for the report
    /// pushes to Loki.
    ///
    /// # Errors
    /// As [`Dispatcher::try_new`].
    pub fn try_new_with_tls(
        notifiers: &[NotifierConfig],
        reports: &ReportsConfig,
        loki_url: &reqwest::Url,
        loki_tls: &crate::tls::UpstreamTls,
        env: &dyn Fn(&str) -> Option<String>,
        registry: &Registry,
    ) -> Result<Self, ConfigError> {
        let channels = config::compile_all(notifiers, reports, env, true)?;
        let metrics = NotifyMetrics::register(registry);
        let client_error = |e: reqwest::Error| {
            ConfigError::new(
                "notify",
                format!("cannot build the HTTP client: {}", e.without_url()),
            )
        };
        let http = crate::http::client_builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("logwarden/", env!("CARGO_PKG_VERSION")))
            // Redirects would re-send the body (and signature) elsewhere; services don't use them.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(client_error)?;
        let mut targets = Vec::with_capacity(channels.len() + 2);
        for channel in channels {
            let notifier = build_notifier(&channel, &http)?;
            targets.push(Target {
                name: Arc::from(channel.name.as_str()),
                role: Role::Channel,
                min_severity: channel.min_severity,
                rules: channel.rules.clone(),
                queue_capacity: channel.queue_capacity,
                retrier: Retrier {
                    policy: channel.retry,
                    retried: metrics
                        .notifications
                        .with_label_values(&[&channel.name, "retried"]),
                    channel: Arc::from(channel.name.as_str()),
                },
                notifier,
            });
        }
        let sink_retry = RetryConfig::default();
        if reports.loki {
            // Straight to Loki, never through our own push route: reports must not be inspected.
            let upstream = loki_tls
                .apply(crate::http::client_builder())
                .connect_timeout(Duration::from_secs(5))
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(client_error)?;
            let sink = loki::LokiSink::try_new(loki_url, reports.tenant.clone(), upstream)?;
            targets.push(sink_target(
                "loki",
                sink_retry,
                reports,
                &metrics,
                Arc::new(sink),
            ));
        }
        if let Some(path) = &reports.file {
            let sink = loki::FileSink::new(path.clone());
            targets.push(sink_target(
                "file",
                sink_retry,
                reports,
                &metrics,
                Arc::new(sink),
            ));
        }
        // Every series exists from the start (at 0), so rates and alerts on them work at once.
        for target in &targets {
            match target.role {
                Role::Channel => {
                    for outcome in OUTCOMES {
                        metrics
                            .notifications
                            .with_label_values(&[&*target.name, outcome]);
                    }
                }
                Role::Sink => {
                    for outcome in REPORT_OUTCOMES {
                        metrics
                            .reports_written
                            .with_label_values(&[&*target.name, outcome]);
                    }
                }
            }
        }
        Ok(Dispatcher {
            targets,
            metrics,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
        })
    }

    /// Sets how long [`Dispatcher::run`] keeps delivering queued alerts once the intake closed;
    /// what is still queued or in flight after that is abandoned (and logged).
    pub fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Returns the delivery metrics.
    pub fn metrics(&self) -> &NotifyMetrics {
        &self.metrics
    }

    /// Delivers alerts until `alerts_rx` closes, then drains the per-notifier queues for at most
    /// the drain timeout and returns.
    pub async fn run(self, mut alerts_rx: mpsc::Receiver<Alert>) {
        let Dispatcher {
            targets,
            metrics,
            drain_timeout,
        } = self;
        let mut queues = Vec::with_capacity(targets.len());
        let mut workers = tokio::task::JoinSet::new();
        for target in targets {
            let (tx, rx) = mpsc::channel::<Arc<Alert>>(target.queue_capacity);
            let target = Arc::new(target);
            workers.spawn(worker(target.clone(), rx, metrics.clone()));
            queues.push((target, tx));
        }
        while let Some(alert) = alerts_rx.recv().await {
            let alert = Arc::new(alert);
            for (target, tx) in &queues {
                if !target.wants(&alert) {
                    target.count(&metrics, "filtered");
                    continue;
                }
                match tx.try_send(alert.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        target.count(&metrics, "dropped");
                        tracing::warn!(
                            channel = %target.name,
                            incident = %alert.incident.id,
                            rule = %alert.incident.rule,
                            "notifier queue full, alert dropped for this channel"
                        );
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        target.count(&metrics, "dropped");
                        tracing::error!(channel = %target.name, "notifier worker gone, alert dropped");
                    }
                }
            }
        }
        // Closing the queues lets each worker finish what it holds and return.
        let pending: Vec<(Arc<Target>, usize)> = queues
            .iter()
            .map(|(t, tx)| (t.clone(), tx.max_capacity() - tx.capacity()))
            .collect();
        drop(queues);
        let drained = tokio::time::timeout(drain_timeout, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let left: Vec<String> = pending
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(t, n)| format!("{}≤{n}", t.name))
                .collect();
            tracing::warn!(
                drain_timeout_ms = drain_timeout.as_millis() as u64,
                unfinished = %left.join(","),
                "notifier queues not drained in time, abandoning the rest"
            );
            workers.abort_all();
            while workers.join_next().await.is_some() {}
        }
        tracing::info!("notify stopped");
    }
}

fn sink_target(
    name: &str,
    policy: RetryConfig,
    reports: &ReportsConfig,
    metrics: &NotifyMetrics,
    notifier: Arc<dyn Notifier>,
) -> Target {
    Target {
        name: Arc::from(name),
        role: Role::Sink,
        min_severity: Severity::Info,
        rules: Vec::new(),
        queue_capacity: reports.queue_capacity,
        retrier: Retrier {
            policy,
            retried: metrics
                .reports_written
                .with_label_values(&[name, "retried"]),
            channel: Arc::from(name),
        },
        notifier,
    }
}

fn build_notifier(
    channel: &Channel,
    http: &reqwest::Client,
) -> Result<Arc<dyn Notifier>, ConfigError> {
    let timeout = channel.timeout;
    Ok(match &channel.kind {
        ChannelKind::Telegram { .. } => Arc::new(telegram::TelegramNotifier::new(
            channel,
            http.clone(),
            timeout,
        )),
        ChannelKind::Slack { url } => Arc::new(slack::SlackNotifier::new(
            url.clone(),
            http.clone(),
            timeout,
        )),
        ChannelKind::Webhook { .. } => Arc::new(webhook::WebhookNotifier::new(
            channel,
            http.clone(),
            timeout,
        )),
        ChannelKind::Alertmanager { base, ends_after } => Arc::new(
            alertmanager::AlertmanagerNotifier::new(base, *ends_after, http.clone(), timeout),
        ),
        ChannelKind::Email { .. } => Arc::new(email::EmailNotifier::try_new(channel)?),
    })
}

async fn worker(target: Arc<Target>, mut rx: mpsc::Receiver<Arc<Alert>>, metrics: NotifyMetrics) {
    while let Some(alert) = rx.recv().await {
        let started = Instant::now();
        let result = target.notifier.deliver(&alert, &target.retrier).await;
        if target.role == Role::Channel {
            metrics
                .duration
                .with_label_values(&[&*target.name])
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(()) => {
                target.count(
                    &metrics,
                    if target.role == Role::Channel {
                        "sent"
                    } else {
                        "written"
                    },
                );
                tracing::info!(
                    channel = %target.name,
                    incident = %alert.incident.id,
                    sequence = alert.incident.sequence,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "alert delivered"
                );
            }
            Err(e) => {
                target.count(&metrics, "failed");
                tracing::warn!(
                    channel = %target.name,
                    incident = %alert.incident.id,
                    reason = e.reason(),
                    error = %e,
                    "alert delivery failed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
