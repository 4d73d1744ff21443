//! Worker tests with an in-process fake LLM and paused time: outcomes, retry, deadline,
//! concurrency, shedding, two-stage model choice, metrics, secrets.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::analyze::template::tests::incident;
use crate::incident::Severity;

#[derive(Clone)]
enum Step {
    Answer(&'static str, Finish),
    Fail(u16),
    /// Answer validly after a delay.
    Slow(Duration),
    Stall,
}

#[derive(Default)]
struct FakeLlm {
    script: Mutex<VecDeque<Step>>,
    /// (model, system, user) of every call.
    calls: Mutex<Vec<(String, String, String)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

const VALID: &str = r#"{"severity":"critical","category":"ssh brute force",
  "summary":"An address is guessing root's SSH password.",
  "explanation":"203.0.113.7 failed 42 logins in 2m30s.",
  "affected_services":["sshd"],
  "evidence":["Failed password for root from 203.0.113.7 port 4242 ssh2"],
  "recommended_actions":["Block 203.0.113.7 now."]}"#;

impl FakeLlm {
    fn scripted(steps: impl IntoIterator<Item = Step>) -> Arc<FakeLlm> {
        let f = FakeLlm::default();
        f.script.lock().unwrap().extend(steps);
        Arc::new(f)
    }

    fn calls(&self) -> Vec<(String, String, String)> {
        self.calls.lock().unwrap().clone()
    }
}

impl LlmClient for FakeLlm {
    fn backend(&self) -> &'static str {
        "ollama"
    }

    fn chat<'a>(
        &'a self,
        request: ChatRequest<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push((
                request.model.to_owned(),
                request.system.to_owned(),
                request.user.to_owned(),
            ));
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let step = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Step::Answer(VALID, Finish::Stop));
            let answer = |content: &str, finish| ChatResponse {
                content: content.to_owned(),
                finish,
                prompt_tokens: Some(700),
                completion_tokens: Some(90),
            };
            let result = match step {
                Step::Answer(content, finish) => Ok(answer(content, finish)),
                Step::Fail(status) => Err(LlmError::Status {
                    status,
                    message: "model 'm' not found".into(),
                }),
                Step::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok(answer(VALID, Finish::Stop))
                }
                Step::Stall => {
                    tokio::time::sleep(Duration::from_secs(86_400)).await;
                    Ok(answer(VALID, Finish::Stop))
                }
            };
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }
}

fn llm_config() -> AnalyzeConfig {
    AnalyzeConfig {
        backend: Backend::Ollama,
        url: Some("http://127.0.0.1:9".into()),
        model: Some("small".into()),
        deep_model: Some("big".into()),
        ..AnalyzeConfig::default()
    }
}

fn analyzer(cfg: &AnalyzeConfig, llm: Arc<FakeLlm>) -> (Analyzer, Registry) {
    let registry = Registry::new();
    let a = Analyzer::with_llm(cfg, llm, &registry).unwrap();
    (a, registry)
}

/// Feeds `incidents` to a running analyzer, closes the queue and returns the alerts in arrival
/// order once the worker has returned.
async fn run_all(a: Analyzer, incidents: Vec<Incident>) -> Vec<Alert> {
    let (incidents_tx, incidents_rx) = mpsc::channel(64);
    let (alerts_tx, mut alerts_rx) = mpsc::channel(64);
    let worker = tokio::spawn(a.run(incidents_rx, alerts_tx));
    for i in incidents {
        incidents_tx.send(i).await.unwrap();
    }
    drop(incidents_tx);
    worker.await.unwrap();
    let mut out = Vec::new();
    while let Ok(a) = alerts_rx.try_recv() {
        out.push(a);
    }
    out
}

fn numbered(n: usize) -> Vec<Incident> {
    (0..n)
        .map(|k| {
            let mut i = incident();
            i.id = format!("inc-{k}");
            i
        })
        .collect()
}

fn metric(registry: &Registry, line: &str) -> bool {
    crate::metrics::render(registry).lines().any(|l| l == line)
}

#[tokio::test(start_paused = true)]
async fn template_backend_sends_one_template_alert_per_incident_and_stops_when_closed() {
    let registry = Registry::new();
    let a = Analyzer::try_new(&AnalyzeConfig::default(), &|_| None, &registry).unwrap();
    assert_eq!(a.analyzer(), "template");
    let alerts = run_all(a, numbered(3)).await;
    assert_eq!(alerts.len(), 3);
    for alert in &alerts {
        let mut want = template_report(&alert.incident);
        want.latency_ms = alert.report.latency_ms;
        assert_eq!(alert.report, want);
    }
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="template",outcome="ok"} 3"#
    ));
    assert!(metric(
        &registry,
        "logwarden_analysis_duration_seconds_count 3"
    ));
}

#[tokio::test(start_paused = true)]
async fn valid_answer_becomes_the_report_with_model_and_floor() {
    let llm = FakeLlm::scripted([]);
    let (a, registry) = analyzer(&llm_config(), llm.clone());
    let alerts = run_all(a, numbered(1)).await;
    let r = &alerts[0].report;
    assert_eq!(
        (r.analyzer.as_str(), r.model.as_deref()),
        ("ollama", Some("big"))
    );
    assert_eq!(
        (r.severity, r.rule_severity),
        (Severity::Critical, Severity::High)
    );
    assert_eq!(r.summary, "An address is guessing root's SSH password.");
    assert_eq!(r.note, None);
    assert_eq!(llm.calls().len(), 1);
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="ok"} 1"#
    ));
    assert!(metric(
        &registry,
        r#"logwarden_llm_tokens_total{backend="ollama",kind="prompt"} 700"#
    ));
    assert!(metric(
        &registry,
        r#"logwarden_llm_tokens_total{backend="ollama",kind="completion"} 90"#
    ));
    assert!(metric(
        &registry,
        r#"logwarden_llm_request_duration_seconds_count{backend="ollama"} 1"#
    ));
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="fallback_timeout"} 0"#
    ));
}

#[tokio::test(start_paused = true)]
async fn two_stage_models_follow_the_rule_severity() {
    let llm = FakeLlm::scripted([]);
    let (a, _r) = analyzer(&llm_config(), llm.clone());
    let mut low = incident();
    low.severity = Severity::Medium;
    let mut crit = incident();
    crit.severity = Severity::Critical;
    a.analyze(&low).await;
    a.analyze(&crit).await;
    let models: Vec<String> = llm.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(models, ["small", "big"]);
}

#[tokio::test(start_paused = true)]
async fn invalid_then_valid_answer_is_retried_once_with_a_fixed_hint() {
    let llm = FakeLlm::scripted([Step::Answer("{\"severity\": \"low\"", Finish::Stop)]);
    let (a, registry) = analyzer(&llm_config(), llm.clone());
    let r = a.analyze(&incident()).await;
    assert_eq!((r.analyzer.as_str(), r.note.as_deref()), ("ollama", None));
    let calls = llm.calls();
    assert_eq!(calls.len(), 2);
    assert!(!calls[0].2.contains("previous answer was rejected"));
    assert!(calls[1]
        .2
        .ends_with("Your previous answer was rejected: it was not one valid JSON object. Reply again with only the JSON object, every field present, and the explanation under 800 characters."));
    assert_eq!(calls[0].1, calls[1].1, "same system message");
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="ok"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn invalid_or_truncated_twice_falls_back_to_the_template_with_a_note() {
    let cases = [
        (
            [
                Step::Answer("I think this is bad", Finish::Stop),
                Step::Answer(r#"{"severity":"high"}"#, Finish::Stop),
            ],
            "ollama model \"big\" returned invalid output twice (first: not valid JSON: \
             expected value at line 1 column 1; retry: missing field \"category\"); template \
             report used",
        ),
        (
            [
                Step::Answer(r#"{"severity":"high","summ"#, Finish::Length),
                Step::Answer(r#"{"severity":"high","summary":"x","expl"#, Finish::Length),
            ],
            "ollama model \"big\" returned invalid output twice (first: output cut off at the \
             token limit; retry: output cut off at the token limit); template report used",
        ),
        (
            [
                Step::Answer("", Finish::Other("tool_calls".into())),
                Step::Answer("", Finish::Stop),
            ],
            "ollama model \"big\" returned invalid output twice (first: generation stopped for \
             reason \"tool_calls\"; retry: not valid JSON: the output ends before the JSON \
             object is complete); template report used",
        ),
    ];
    for (steps, note) in cases {
        let llm = FakeLlm::scripted(steps);
        let (a, registry) = analyzer(&llm_config(), llm.clone());
        let inc = incident();
        let r = a.analyze(&inc).await;
        assert_eq!(r.note.as_deref(), Some(note));
        let mut want = template_report(&inc);
        want.latency_ms = r.latency_ms;
        want.note = r.note.clone();
        assert_eq!(r, want);
        assert_eq!(llm.calls().len(), 2, "exactly one retry");
        assert!(metric(
            &registry,
            r#"logwarden_analyses_total{analyzer="ollama",outcome="fallback_invalid"} 1"#
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn server_errors_fall_back_at_once_without_retry() {
    let llm = FakeLlm::scripted([Step::Fail(404)]);
    let (a, registry) = analyzer(&llm_config(), llm.clone());
    let r = a.analyze(&incident()).await;
    assert_eq!(
        r.note.as_deref(),
        Some("ollama model \"big\" failed: server answered 404: model 'm' not found; template report used")
    );
    assert_eq!(r.analyzer, "template");
    assert_eq!(llm.calls().len(), 1);
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="fallback_error"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_llm_delays_the_alert_by_exactly_the_timeout() {
    let llm = FakeLlm::scripted([Step::Stall]);
    let cfg = AnalyzeConfig {
        timeout: Duration::from_secs(7),
        ..llm_config()
    };
    let (a, registry) = analyzer(&cfg, llm);
    let started = Instant::now();
    let r = a.analyze(&incident()).await;
    assert_eq!(started.elapsed(), Duration::from_secs(7));
    assert_eq!(r.latency_ms, 7000);
    assert_eq!(
        r.note.as_deref(),
        Some("ollama model \"big\" gave no valid answer within 7s; template report used")
    );
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="fallback_timeout"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn the_retry_shares_the_deadline() {
    // First answer invalid after 6s, the retry would take 6s more: past the 10s deadline.
    let llm = FakeLlm::scripted([
        Step::Slow(Duration::from_secs(6)),
        Step::Slow(Duration::ZERO),
    ]);
    let cfg = AnalyzeConfig {
        timeout: Duration::from_secs(10),
        ..llm_config()
    };
    let (a, _r) = analyzer(&cfg, llm.clone());
    let r = a.analyze(&incident()).await;
    assert_eq!(r.note, None, "valid after 6s is in time");

    let llm = FakeLlm::scripted([
        Step::Answer("nope", Finish::Stop),
        Step::Slow(Duration::from_secs(11)),
    ]);
    let (a, _r) = analyzer(&cfg, llm.clone());
    let started = Instant::now();
    let r = a.analyze(&incident()).await;
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(r.note.unwrap().contains("no valid answer within 10s"));
    assert_eq!(llm.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrency_bounds_llm_requests_and_waiting_counts_toward_the_deadline() {
    // One slot, each answer takes 8s, timeout 20s: the first two finish at 8s and 16s; the third
    // would get its slot at 16s and answer at 24s, so it falls back at 20s.
    let llm = FakeLlm::scripted(std::iter::repeat_n(Step::Slow(Duration::from_secs(8)), 3));
    let cfg = AnalyzeConfig {
        concurrency: 1,
        timeout: Duration::from_secs(20),
        ..llm_config()
    };
    let (a, registry) = analyzer(&cfg, llm.clone());
    let started = Instant::now();
    let alerts = run_all(a, numbered(3)).await;
    assert_eq!(llm.max_in_flight.load(Ordering::SeqCst), 1);
    let mut latencies: Vec<(String, u64, bool)> = alerts
        .iter()
        .map(|a| {
            (
                a.incident.id.clone(),
                a.report.latency_ms,
                a.report.note.is_none(),
            )
        })
        .collect();
    latencies.sort();
    assert_eq!(
        latencies,
        [
            ("inc-0".into(), 8000, true),
            ("inc-1".into(), 16000, true),
            ("inc-2".into(), 20000, false),
        ]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="ok"} 2"#
    ));
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="fallback_timeout"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn a_burst_beyond_the_waiting_bound_gets_template_reports_at_once() {
    let llm = FakeLlm::scripted(std::iter::repeat_n(Step::Stall, 10));
    let cfg = AnalyzeConfig {
        concurrency: 1,
        timeout: Duration::from_secs(30),
        ..llm_config()
    };
    let (a, registry) = analyzer(&cfg, llm.clone());
    let (incidents_tx, incidents_rx) = mpsc::channel(64);
    let (alerts_tx, mut alerts_rx) = mpsc::channel(64);
    let worker = tokio::spawn(a.run(incidents_rx, alerts_tx));
    for i in numbered(8) {
        incidents_tx.send(i).await.unwrap();
    }
    // 1 slot + 4 waiting are admitted; the other 3 are answered without waiting.
    for _ in 0..3 {
        let alert = alerts_rx.recv().await.unwrap();
        assert_eq!(alert.report.latency_ms, 0);
        assert_eq!(
            alert.report.note.as_deref(),
            Some("5 analyses were already waiting for the LLM; template report used")
        );
    }
    drop(incidents_tx);
    worker.await.unwrap();
    let mut rest = 0;
    while let Ok(alert) = alerts_rx.try_recv() {
        assert_eq!(alert.report.latency_ms, 30_000);
        rest += 1;
    }
    assert_eq!(rest, 5);
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="fallback_busy"} 3"#
    ));
    assert!(metric(
        &registry,
        r#"logwarden_analyses_total{analyzer="ollama",outcome="fallback_timeout"} 5"#
    ));
}

#[test]
fn api_key_comes_from_the_injected_env_or_a_file_and_is_never_echoed() {
    let cfg = AnalyzeConfig {
        backend: Backend::OpenAi,
        api_key_env: Some("LLM_KEY".into()),
        ..llm_config()
    };
    let env = |name: &str| (name == "LLM_KEY").then(|| "sk-very-secret".to_owned());
    Analyzer::try_new(&cfg, &env, &Registry::new()).unwrap();
    let e = Analyzer::try_new(&cfg, &|_| None, &Registry::new())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "analyze.api_key_env: environment variable \"LLM_KEY\" is not set (expected the API key)"
    );
    let bad = |_: &str| Some("sk-very-secret\u{1}".to_owned());
    let e = Analyzer::try_new(&cfg, &bad, &Registry::new())
        .err()
        .unwrap();
    assert!(!e.to_string().contains("very-secret"), "{e}");
    assert!(e.to_string().contains("not allowed in an HTTP header"));

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "sk-from-file").unwrap();
    let cfg = AnalyzeConfig {
        api_key_env: None,
        api_key_file: Some(file.path().into()),
        ..cfg
    };
    Analyzer::try_new(&cfg, &|_| None, &Registry::new()).unwrap();
    let cfg = AnalyzeConfig {
        api_key_file: Some("/nonexistent/key".into()),
        ..cfg
    };
    let e = Analyzer::try_new(&cfg, &|_| None, &Registry::new())
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .starts_with("analyze.api_key_file: \"/nonexistent/key\": cannot read:"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn knowledge_file_is_bounded_and_reaches_the_prompt() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(file, "web1 is the bastion; error E42 is harmless").unwrap();
    let cfg = AnalyzeConfig {
        knowledge: Some(file.path().into()),
        ..llm_config()
    };
    let llm = FakeLlm::scripted([]);
    let (a, _r) = analyzer(&cfg, llm.clone());
    a.analyze(&incident()).await;
    assert!(llm.calls()[0]
        .1
        .contains("web1 is the bastion; error E42 is harmless"));

    let big = tempfile::NamedTempFile::new().unwrap();
    big.as_file()
        .set_len(config::MAX_KNOWLEDGE_BYTES + 1)
        .unwrap();
    let cfg = AnalyzeConfig {
        knowledge: Some(big.path().into()),
        ..llm_config()
    };
    let e = Analyzer::with_llm(&cfg, FakeLlm::scripted([]), &Registry::new())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "analyze.knowledge: \"{}\" is 16385 bytes (expected at most 16384)",
            big.path().display()
        )
    );
}

#[test]
fn metrics_start_at_zero_for_every_outcome() {
    let registry = Registry::new();
    let _a = Analyzer::with_llm(&llm_config(), FakeLlm::scripted([]), &registry).unwrap();
    for outcome in Outcome::ALL {
        assert!(metric(
            &registry,
            &format!(
                "logwarden_analyses_total{{analyzer=\"ollama\",outcome=\"{}\"}} 0",
                outcome.as_str()
            )
        ));
    }
}
