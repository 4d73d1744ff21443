//! Analyze: turns each incident into an [`Alert`] carrying a plain-English [`Report`].
//!
//! Receives incidents from the bounded incident queue; emits one alert per incident on the alert
//! channel. Owns the LLM client (if any), the operator's knowledge text and the analysis metrics.
//!
//! ```text
//! incidents_rx ─▶ run ─┬─ template backend ───────────────────────────────▶ alerts_tx
//!                      └─ LLM slot free within the deadline? ─▶ prompt ─▶ chat
//!                            │ no / timeout / error / invalid twice      │ valid verdict
//!                            ▼                                           ▼
//!                       template report + note              severity floor, evidence check
//! ```
//!
//! Must never let the LLM decide whether an alert goes out or how low its severity is: every
//! incident produces exactly one alert, at most `analyze.timeout` after the analyzer took it, with
//! `severity >= rule severity`. The model's output is validated against the schema, retried once
//! when invalid, and otherwise replaced by the template report with a `note` saying why.

pub mod config;
pub mod llm;
pub mod prompt;
pub mod template;
pub mod verdict;

use std::path::Path;
use std::sync::Arc;

use prometheus::{Histogram, HistogramVec, IntCounterVec, Registry};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use config::{AnalyzeConfig, Backend};
pub use llm::{ChatRequest, ChatResponse, Finish, LlmClient, LlmError};
pub use template::template_report;

use crate::config::ConfigError;
use crate::incident::Incident;
use crate::metrics::{counter_vec, histogram, histogram_vec};
use crate::report::{Alert, Report};
use llm::{ApiKey, HttpSettings, OllamaClient, OpenAiClient};
use verdict::VerdictError;

/// How many incidents may wait for an LLM slot, per slot, before new ones get the template
/// report at once (so a burst cannot queue alerts behind a slow model).
pub const WAITING_PER_SLOT: usize = 4;

/// Spawned analyses beyond the LLM slots and waiters: template reports waiting for room on the
/// alert channel. When this many are pending, the analyzer stops taking incidents and the
/// incident queue (bounded, counted) absorbs the burst.
const EXTRA_TASKS: usize = 64;

/// How an analysis ended (the `outcome` label of `logwarden_analyses_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The configured analyzer wrote the report.
    Ok,
    /// No valid LLM answer within `analyze.timeout`.
    FallbackTimeout,
    /// The LLM answered twice with output that failed validation (or was cut off).
    FallbackInvalid,
    /// The LLM server could not be reached or answered with an error.
    FallbackError,
    /// Too many incidents were already waiting for the LLM.
    FallbackBusy,
}

impl Outcome {
    /// Every outcome (bounded label values).
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::FallbackTimeout,
        Outcome::FallbackInvalid,
        Outcome::FallbackError,
        Outcome::FallbackBusy,
    ];

    /// Returns the metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::FallbackTimeout => "fallback_timeout",
            Outcome::FallbackInvalid => "fallback_invalid",
            Outcome::FallbackError => "fallback_error",
            Outcome::FallbackBusy => "fallback_busy",
        }
    }
}

/// Metrics of the analysis stage.
#[derive(Clone)]
pub struct AnalyzeMetrics {
    /// `logwarden_analyses_total{analyzer,outcome}`.
    pub analyses: IntCounterVec,
    /// `logwarden_llm_request_duration_seconds{backend}`: one chat request, answered or not.
    pub llm_request_duration: HistogramVec,
    /// `logwarden_llm_tokens_total{backend,kind}`: `kind` is `prompt` or `completion`, as counted
    /// by the server.
    pub llm_tokens: IntCounterVec,
    /// `logwarden_analysis_duration_seconds`: from taking the incident to its report.
    pub analysis_duration: Histogram,
}

/// Buckets for LLM request and analysis durations, in seconds (template reports take
/// microseconds, local models seconds).
const ANALYSIS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

impl AnalyzeMetrics {
    /// Registers the metrics into `registry`, with every label value of `analyzer` at 0.
    pub fn register(registry: &Registry, analyzer: &str) -> Self {
        let m = AnalyzeMetrics {
            analyses: counter_vec(
                registry,
                "logwarden_analyses_total",
                "Incidents analyzed, by analyzer and outcome (fallback_* used the template report).",
                &["analyzer", "outcome"],
            ),
            llm_request_duration: histogram_vec(
                registry,
                "logwarden_llm_request_duration_seconds",
                "Time of one request to the LLM server, answered or not.",
                &["backend"],
                ANALYSIS_BUCKETS,
            ),
            llm_tokens: counter_vec(
                registry,
                "logwarden_llm_tokens_total",
                "Tokens processed by the LLM server, by kind (prompt, completion), as it reported.",
                &["backend", "kind"],
            ),
            analysis_duration: histogram(
                registry,
                "logwarden_analysis_duration_seconds",
                "Time from taking an incident off the queue to its finished report.",
                ANALYSIS_BUCKETS,
            ),
        };
        if analyzer == Backend::Template.as_str() {
            m.analyses.with_label_values(&[analyzer, "ok"]).reset();
        } else {
            for outcome in Outcome::ALL {
                m.analyses
                    .with_label_values(&[analyzer, outcome.as_str()])
                    .reset();
            }
            for kind in ["prompt", "completion"] {
                m.llm_tokens.with_label_values(&[analyzer, kind]).reset();
            }
        }
        m
    }
}

/// The analysis stage: built once from the config, then [`Analyzer::run`] as a worker.
pub struct Analyzer {
    shared: Arc<Shared>,
}

struct Shared {
    config: AnalyzeConfig,
    /// `template`, or the LLM client's backend name.
    analyzer: &'static str,
    llm: Option<Arc<dyn LlmClient>>,
    knowledge: Option<Arc<str>>,
    /// Prompt budget in tokens: `num_ctx - max_tokens`.
    budget_tokens: usize,
    /// One permit per concurrent LLM request.
    llm_slots: Arc<Semaphore>,
    /// Permits for analyses that may wait for an LLM slot (slots × (1 + WAITING_PER_SLOT)).
    admission: Arc<Semaphore>,
    metrics: AnalyzeMetrics,
}

impl Analyzer {
    /// Builds the analyzer: validates `cfg`, reads the knowledge file, resolves the API key
    /// through `env` (or its file) and builds the backend's HTTP client.
    ///
    /// # Errors
    /// An invalid field, an unreadable or oversized knowledge or key file, or an unset key
    /// variable. Messages never contain the key.
    pub fn try_new(
        cfg: &AnalyzeConfig,
        env: &dyn Fn(&str) -> Option<String>,
        registry: &Registry,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let llm: Option<Arc<dyn LlmClient>> = match cfg.backend {
            Backend::Template => None,
            Backend::Ollama | Backend::OpenAi => {
                let url = cfg.url.as_deref().unwrap_or_default();
                let settings = HttpSettings {
                    base: cfg.parse_url(url)?,
                    timeout: cfg.timeout,
                    api_key: resolve_api_key(cfg, env)?,
                    temperature: cfg.temperature,
                    num_ctx: cfg.num_ctx,
                    max_tokens: cfg.max_tokens,
                    keep_alive: cfg.keep_alive,
                };
                let client_error = |e: reqwest::Error| {
                    ConfigError::new("analyze.url", format!("cannot build the HTTP client: {e}"))
                };
                Some(if cfg.backend == Backend::Ollama {
                    Arc::new(OllamaClient::try_new(settings).map_err(client_error)?)
                } else {
                    Arc::new(OpenAiClient::try_new(settings).map_err(client_error)?)
                })
            }
        };
        Self::build(cfg, llm, registry)
    }

    /// Builds an analyzer around a given LLM client (a fake in tests, or a custom backend); the
    /// config's `url` and key settings are not used.
    ///
    /// # Errors
    /// As [`Analyzer::try_new`].
    pub fn with_llm(
        cfg: &AnalyzeConfig,
        llm: Arc<dyn LlmClient>,
        registry: &Registry,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if cfg.backend == Backend::Template {
            return Err(ConfigError::new(
                "analyze.backend",
                "\"template\" uses no LLM (expected ollama or openai with an LLM client)",
            ));
        }
        Self::build(cfg, Some(llm), registry)
    }

    fn build(
        cfg: &AnalyzeConfig,
        llm: Option<Arc<dyn LlmClient>>,
        registry: &Registry,
    ) -> Result<Self, ConfigError> {
        let knowledge = match &cfg.knowledge {
            Some(path) => Some(read_bounded(
                "analyze.knowledge",
                path,
                config::MAX_KNOWLEDGE_BYTES,
            )?),
            None => None,
        };
        let analyzer = llm
            .as_ref()
            .map_or(Backend::Template.as_str(), |l| l.backend());
        let slots = cfg.concurrency;
        Ok(Analyzer {
            shared: Arc::new(Shared {
                config: cfg.clone(),
                analyzer,
                llm,
                knowledge: knowledge.map(Arc::from),
                budget_tokens: cfg.num_ctx.saturating_sub(cfg.max_tokens) as usize,
                llm_slots: Arc::new(Semaphore::new(slots)),
                admission: Arc::new(Semaphore::new(slots * (1 + WAITING_PER_SLOT))),
                metrics: AnalyzeMetrics::register(registry, analyzer),
            }),
        })
    }

    /// Returns the analyzer name used in reports and metrics (`template`, `ollama`, `openai`).
    pub fn analyzer(&self) -> &'static str {
        self.shared.analyzer
    }

    /// Analyzes one incident (waiting at most `analyze.timeout`) and returns its report.
    pub async fn analyze(&self, incident: &Incident) -> Report {
        let admission = self.shared.admission.clone().try_acquire_owned().ok();
        analyze_one(&self.shared, incident, Instant::now(), admission).await
    }

    /// Takes incidents until `incidents_rx` is closed and drained, sends one alert per incident
    /// on `alerts_tx`, then returns once every analysis in flight has finished.
    pub async fn run(
        self,
        mut incidents_rx: mpsc::Receiver<Incident>,
        alerts_tx: mpsc::Sender<Alert>,
    ) {
        let shared = self.shared;
        let max_tasks = shared.admission.available_permits() + EXTRA_TASKS;
        let mut tasks = JoinSet::new();
        loop {
            if tasks.len() >= max_tasks {
                // Only when alerts are not being taken downstream: stop taking incidents.
                if let Some(done) = tasks.join_next().await {
                    reap(done);
                }
                continue;
            }
            tokio::select! {
                biased;
                Some(done) = tasks.join_next(), if !tasks.is_empty() => reap(done),
                next = incidents_rx.recv() => {
                    let Some(incident) = next else { break };
                    let received = Instant::now();
                    let admission = shared.admission.clone().try_acquire_owned().ok();
                    let shared = shared.clone();
                    let alerts_tx = alerts_tx.clone();
                    tasks.spawn(async move {
                        let report = analyze_one(&shared, &incident, received, admission).await;
                        if alerts_tx.send(Alert { incident, report }).await.is_err() {
                            tracing::warn!("alert channel closed, alert dropped");
                        }
                    });
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            reap(done);
        }
        tracing::debug!("incident queue closed, analyzer stopped");
    }
}

fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "analysis task failed");
    }
}

/// Resolves the bearer key from the configured variable or file.
fn resolve_api_key(
    cfg: &AnalyzeConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ApiKey>, ConfigError> {
    let (field, key) = match (&cfg.api_key_env, &cfg.api_key_file) {
        (Some(name), _) => {
            let value = env(name).ok_or_else(|| {
                ConfigError::new(
                    "analyze.api_key_env",
                    format!("environment variable {name:?} is not set (expected the API key)"),
                )
            })?;
            ("analyze.api_key_env", ApiKey::new(&value))
        }
        (None, Some(path)) => {
            let text = read_bounded("analyze.api_key_file", path, 64 << 10)?;
            ("analyze.api_key_file", ApiKey::new(&text))
        }
        (None, None) => return Ok(None),
    };
    if !key.is_valid() {
        // Never echo the value: say only what is wrong with it.
        return Err(ConfigError::new(
            field,
            "the API key is empty or contains characters not allowed in an HTTP header",
        ));
    }
    Ok(Some(key))
}

/// Reads a UTF-8 file of at most `max` bytes.
fn read_bounded(field: &str, path: &Path, max: u64) -> Result<String, ConfigError> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(field, format!("\"{shown}\": cannot read: {e}")))?
        .len();
    if len > max {
        return Err(ConfigError::new(
            field,
            format!("\"{shown}\" is {len} bytes (expected at most {max})"),
        ));
    }
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            field,
            format!("\"{shown}\": cannot read as UTF-8 text: {e}"),
        )
    })
}

/// Why the LLM path produced no report.
enum Failure {
    Invalid(String),
    Error(LlmError),
    Internal(String),
}

/// Analyzes one incident, never taking longer than the deadline (`received + timeout`).
async fn analyze_one(
    shared: &Shared,
    incident: &Incident,
    received: Instant,
    admission: Option<OwnedSemaphorePermit>,
) -> Report {
    let template = template_report(incident);
    let (mut report, outcome) = match (&shared.llm, admission) {
        (None, _) => (template, Outcome::Ok),
        (Some(_), None) => {
            let note = format!(
                "{} analyses were already waiting for the LLM; template report used",
                shared.config.concurrency * (1 + WAITING_PER_SLOT)
            );
            (with_note(template, note), Outcome::FallbackBusy)
        }
        (Some(llm), Some(_admission)) => {
            let model = shared
                .config
                .model_for(incident.severity)
                .expect("validated: a model is set for LLM backends");
            let deadline = received + shared.config.timeout;
            let attempt = ask_llm(shared, llm.as_ref(), model, incident, template.clone());
            let who = format!("{} model {model:?}", llm.backend());
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(report)) => (report, Outcome::Ok),
                Ok(Err(Failure::Invalid(why))) => {
                    tracing::warn!(incident = %incident.id, rule = %incident.rule, %model, why = %why,
                        "llm output invalid twice, template report used");
                    let note = format!(
                        "{who} returned invalid output twice ({why}); template report used"
                    );
                    (with_note(template, note), Outcome::FallbackInvalid)
                }
                Ok(Err(Failure::Error(e))) if e.reason() != "timeout" => {
                    tracing::warn!(incident = %incident.id, rule = %incident.rule, %model,
                        reason = e.reason(), error = %e, "llm request failed, template report used");
                    let note = format!("{who} failed: {e}; template report used");
                    (with_note(template, note), Outcome::FallbackError)
                }
                Ok(Err(Failure::Internal(why))) => {
                    tracing::error!(incident = %incident.id, rule = %incident.rule, why = %why,
                        "llm analysis failed internally, template report used");
                    let note = format!("{why}; template report used");
                    (with_note(template, note), Outcome::FallbackError)
                }
                // The HTTP client's own timeout is a backstop just past the deadline.
                Ok(Err(Failure::Error(_))) | Err(_) => {
                    tracing::warn!(incident = %incident.id, rule = %incident.rule, %model,
                        timeout = ?shared.config.timeout, "llm analysis timed out, template report used");
                    let note = format!(
                        "{who} gave no valid answer within {}; template report used",
                        humantime::format_duration(shared.config.timeout)
                    );
                    (with_note(template, note), Outcome::FallbackTimeout)
                }
            }
        }
    };
    let elapsed = received.elapsed();
    report.latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let m = &shared.metrics;
    m.analyses
        .with_label_values(&[shared.analyzer, outcome.as_str()])
        .inc();
    m.analysis_duration.observe(elapsed.as_secs_f64());
    report
}

fn with_note(mut report: Report, note: String) -> Report {
    report.note = Some(note);
    report
}

/// Waits for an LLM slot, asks, validates, retries once on invalid output.
async fn ask_llm(
    shared: &Shared,
    llm: &dyn LlmClient,
    model: &str,
    incident: &Incident,
    template: Report,
) -> Result<Report, Failure> {
    let _slot = shared
        .llm_slots
        .acquire()
        .await
        .expect("the LLM semaphore is never closed");
    // Building the prompt walks every sample line a few times: measured 0.65 ms for 200 lines of
    // 170 characters optimized (15 ms in a debug build), over the ~0.5 ms an async task should
    // hold a runtime thread, so it runs on the blocking pool (the LLM request takes seconds).
    let prompt = {
        let incident = incident.clone();
        let knowledge = shared.knowledge.clone();
        let budget = shared.budget_tokens;
        // A bug here must cost the LLM report, never the alert.
        tokio::task::spawn_blocking(move || prompt::build(&incident, knowledge.as_deref(), budget))
            .await
            .map_err(|e| Failure::Internal(format!("building the prompt failed: {e}")))?
    };
    tracing::debug!(incident = %incident.id, %model, tokens = prompt.estimated_tokens(),
        lines = prompt.lines_included, omitted = prompt.lines_omitted, "asking llm");
    let first = ask_once(shared, llm, model, &prompt.system, &prompt.user).await?;
    let first_problem = match first {
        Ok(report) => return Ok(finish(report, incident, template, llm, model)),
        Err(problem) => problem,
    };
    tracing::info!(incident = %incident.id, %model, problem = %first_problem, "llm output invalid, retrying once");
    let retry_user = prompt.retry_user(first_problem.retry_hint());
    match ask_once(shared, llm, model, &prompt.system, &retry_user).await? {
        Ok(verdict) => Ok(finish(verdict, incident, template, llm, model)),
        Err(second) => Err(Failure::Invalid(format!(
            "first: {first_problem}; retry: {second}"
        ))),
    }
}

fn finish(
    verdict: verdict::Verdict,
    incident: &Incident,
    template: Report,
    llm: &dyn LlmClient,
    model: &str,
) -> Report {
    let mut report = verdict::into_report(verdict, incident, template);
    report.analyzer = llm.backend().to_owned();
    report.model = Some(model.to_owned());
    report
}

/// What was wrong with one answer.
#[derive(Debug)]
enum Problem {
    Truncated,
    Stopped(String),
    Invalid(VerdictError),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Truncated => f.write_str("output cut off at the token limit"),
            Problem::Stopped(r) => write!(f, "generation stopped for reason {r:?}"),
            Problem::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl Problem {
    /// A fixed hint for the retry prompt (never the model's own words).
    fn retry_hint(&self) -> &'static str {
        match self {
            Problem::Truncated => "it was cut off at the token limit; write shorter fields",
            Problem::Stopped(_) => "it was not a plain JSON answer; answer with text only",
            Problem::Invalid(VerdictError::Json(_) | VerdictError::NotObject) => {
                "it was not one valid JSON object"
            }
            Problem::Invalid(VerdictError::Missing(_)) => "a required field was missing",
            Problem::Invalid(VerdictError::Unexpected(_)) => "it had fields that are not allowed",
            Problem::Invalid(VerdictError::Invalid { .. }) => {
                "a field had the wrong type, value or length"
            }
        }
    }
}

/// One request: `Ok(Err(problem))` for an answer that is not a valid verdict.
async fn ask_once(
    shared: &Shared,
    llm: &dyn LlmClient,
    model: &str,
    system: &str,
    user: &str,
) -> Result<Result<verdict::Verdict, Problem>, Failure> {
    let backend = llm.backend();
    let started = Instant::now();
    let answer = llm
        .chat(ChatRequest {
            model,
            system,
            user,
        })
        .await;
    let m = &shared.metrics;
    m.llm_request_duration
        .with_label_values(&[backend])
        .observe(started.elapsed().as_secs_f64());
    let answer = answer.map_err(Failure::Error)?;
    if let Some(n) = answer.prompt_tokens {
        m.llm_tokens
            .with_label_values(&[backend, "prompt"])
            .inc_by(n);
        if n as usize > shared.budget_tokens {
            tracing::warn!(%model, prompt_tokens = n, budget = shared.budget_tokens,
                "prompt exceeded its token budget; the estimate is too low for this model");
        }
    }
    if let Some(n) = answer.completion_tokens {
        m.llm_tokens
            .with_label_values(&[backend, "completion"])
            .inc_by(n);
    }
    Ok(match answer.finish {
        Finish::Length => Err(Problem::Truncated),
        Finish::Other(reason) => Err(Problem::Stopped(reason)),
        Finish::Stop => verdict::parse(&answer.content).map_err(Problem::Invalid),
    })
}

#[cfg(test)]
mod tests;
