//! The `openai` backend against a fake `/v1/chat/completions`.

use std::time::Duration;

use logwarden::analyze::{verdict, Backend};
use logwarden::incident::Severity;

use crate::fake_llm::{good_verdict, Api, FakeLlm, Reply};
use crate::{analyze, analyze_with_env, assert_metric, config, incident};

const KEY: &str = "sk-test-5f2c9e";

fn key_env(name: &str) -> Option<String> {
    (name == "LLM_API_KEY").then(|| KEY.to_owned())
}

#[tokio::test]
async fn request_uses_the_nested_json_schema_form_and_the_bearer_key() {
    let fake = FakeLlm::start().await;
    fake.require_key(KEY);
    let mut cfg = config(Backend::OpenAi, &fake.url());
    cfg.api_key_env = Some("LLM_API_KEY".into());
    cfg.max_tokens = 700;
    let (alert, _, metrics) = analyze_with_env(&cfg, incident(), &key_env).await;
    assert_eq!(fake.violations(), Vec::<String>::new());
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.api, r.path.as_str()),
        (Api::OpenAi, "/v1/chat/completions")
    );
    assert_eq!(r.headers["authorization"], format!("Bearer {KEY}").as_str());
    let b = &r.body;
    assert_eq!(b["model"], "llama-test:8b");
    assert_eq!(b["stream"], false);
    assert_eq!(b["temperature"], 0.0);
    assert_eq!(b["max_tokens"], 700);
    assert_eq!(b["response_format"]["type"], "json_schema");
    assert_eq!(
        b["response_format"]["json_schema"]["name"],
        verdict::SCHEMA_NAME
    );
    assert_eq!(
        &b["response_format"]["json_schema"]["schema"],
        verdict::schema()
    );
    assert!(b.get("tools").is_none() && b.get("options").is_none());

    let report = &alert.report;
    assert_eq!(
        (report.analyzer.as_str(), report.model.as_deref()),
        ("openai", Some("llama-test:8b"))
    );
    assert_eq!(report.severity, Severity::Critical);
    assert_eq!(report.category, good_verdict()["category"]);
    assert_metric(
        &metrics,
        r#"logwarden_analyses_total{analyzer="openai",outcome="ok"} 1"#,
    );
    assert_metric(
        &metrics,
        r#"logwarden_llm_tokens_total{backend="openai",kind="prompt"} 640"#,
    );
    assert_metric(
        &metrics,
        r#"logwarden_llm_tokens_total{backend="openai",kind="completion"} 80"#,
    );
    assert!(!metrics.contains(KEY));
}

#[tokio::test]
async fn a_key_file_is_read_and_a_wrong_key_falls_back_without_leaking_it() {
    let fake = FakeLlm::start().await;
    fake.require_key(KEY);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, format!("{KEY}\n")).unwrap();
    let mut cfg = config(Backend::OpenAi, &fake.url());
    cfg.api_key_file = Some(file.clone());
    let (alert, _, _) = analyze(&cfg, incident()).await;
    assert_eq!(alert.report.note, None);

    std::fs::write(&file, "sk-wrong-key-123").unwrap();
    let (alert, _, metrics) = analyze(&cfg, incident()).await;
    let note = alert.report.note.clone().unwrap();
    assert_eq!(
        note,
        "openai model \"llama-test:8b\" failed: server answered 401: Invalid API Key; template \
         report used"
    );
    assert!(!format!("{:?}", alert.report).contains("sk-wrong"));
    assert_metric(
        &metrics,
        r#"logwarden_analyses_total{analyzer="openai",outcome="fallback_error"} 1"#,
    );
}

#[tokio::test]
async fn finish_reason_length_is_retried_then_accepted() {
    let fake = FakeLlm::start().await;
    fake.script([Reply::Content(
        "{\"severity\":\"critical\",\"categ".into(),
        "length",
    )]);
    let (alert, _, _) = analyze(&config(Backend::OpenAi, &fake.url()), incident()).await;
    assert_eq!(
        (alert.report.analyzer.as_str(), alert.report.note.as_deref()),
        ("openai", None)
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let (_, retry) = reqs[1].messages();
    assert!(retry.contains("it was cut off at the token limit; write shorter fields"));
}

#[tokio::test]
async fn invalid_twice_and_server_errors_fall_back() {
    let fake = FakeLlm::start().await;
    fake.script([
        Reply::Content("```json\n{}\n```".into(), "stop"),
        Reply::Content("{}".into(), "stop"),
    ]);
    let (alert, _, metrics) = analyze(&config(Backend::OpenAi, &fake.url()), incident()).await;
    assert_eq!(
        alert.report.note.as_deref(),
        Some(
            "openai model \"llama-test:8b\" returned invalid output twice (first: not valid JSON: \
             expected value at line 1 column 1; retry: missing field \"severity\"); template \
             report used"
        )
    );
    assert_metric(
        &metrics,
        r#"logwarden_analyses_total{analyzer="openai",outcome="fallback_invalid"} 1"#,
    );

    let fake = FakeLlm::start().await;
    fake.script([Reply::Error(503, "Loading model")]);
    let (alert, _, _) = analyze(&config(Backend::OpenAi, &fake.url()), incident()).await;
    assert_eq!(
        alert.report.note.as_deref(),
        Some("openai model \"llama-test:8b\" failed: server answered 503: Loading model; template report used")
    );
}

#[tokio::test]
async fn a_stalled_server_costs_the_timeout_and_no_more() {
    let fake = FakeLlm::start().await;
    fake.script([Reply::Stall]);
    let mut cfg = config(Backend::OpenAi, &fake.url());
    cfg.timeout = Duration::from_millis(800);
    let (alert, elapsed, metrics) = analyze(&cfg, incident()).await;
    assert!(
        elapsed >= cfg.timeout && elapsed < cfg.timeout + Duration::from_millis(500),
        "{elapsed:?}"
    );
    assert_eq!(alert.report.analyzer, "template");
    assert!(alert
        .report
        .note
        .unwrap()
        .contains("gave no valid answer within 800ms"));
    assert_metric(
        &metrics,
        r#"logwarden_analyses_total{analyzer="openai",outcome="fallback_timeout"} 1"#,
    );
}
