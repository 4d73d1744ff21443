//! Black-box tests of the analysis stage against fake LLM servers on 127.0.0.1: request shape,
//! every answer path (valid, invalid, truncated, errors, stalls, down) and prompt injection.

mod fake_llm;

mod injection;
mod ollama;
mod openai;

use std::collections::BTreeMap;
use std::time::Duration;

use logwarden::analyze::{AnalyzeConfig, Analyzer, Backend};
use logwarden::incident::{EventTime, Incident, Sample, Severity};
use logwarden::report::Alert;
use tokio::sync::mpsc;
use tokio::time::Instant;

const T0: i64 = 1_714_564_800_000_000_000; // 2024-05-01T12:00:00Z

pub fn sample(line: &str) -> Sample {
    Sample {
        timestamp: EventTime(T0),
        line: line.to_owned(),
        labels: BTreeMap::from([("service_name".to_owned(), "sshd".to_owned())]),
    }
}

/// An SSH brute-force incident of rule severity high.
pub fn incident() -> Incident {
    let failed = "Failed password for root from 203.0.113.7 port 4242 ssh2";
    Incident {
        id: "inc-1".into(),
        rule: "ssh_brute_force".into(),
        description: "Many failed SSH logins from one address".into(),
        remediation: Some("Block the address in the perimeter firewall.".into()),
        severity: Severity::High,
        key: "203.0.113.7".into(),
        key_kind: "ip".into(),
        count: 42,
        new_count: 42,
        distinct_field: None,
        distinct_count: 0,
        distinct_values: vec![],
        threshold: 10,
        window_start: EventTime(T0),
        window_end: EventTime(T0 + 150_000_000_000),
        first_seen: EventTime(T0),
        last_seen: EventTime(T0 + 150_000_000_000),
        tenant: "acme".into(),
        labels: BTreeMap::from([
            ("host".to_owned(), "web1".to_owned()),
            ("service_name".to_owned(), "sshd".to_owned()),
        ]),
        samples: vec![
            sample("Invalid user admin from 203.0.113.7 port 4240"),
            sample(failed),
            sample(failed),
            sample("Connection closed by 203.0.113.7 port 4243 [preauth]"),
        ],
        logql: "{service_name=\"sshd\"} |= \"203.0.113.7\"".into(),
        follow_up: false,
        sequence: 0,
    }
}

/// An LLM config pointing at `url`, with a short timeout for stall tests.
pub fn config(backend: Backend, url: &str) -> AnalyzeConfig {
    AnalyzeConfig {
        backend,
        url: Some(url.to_owned()),
        model: Some("llama-test:8b".into()),
        timeout: Duration::from_millis(1500),
        ..AnalyzeConfig::default()
    }
}

pub fn no_env(_: &str) -> Option<String> {
    None
}

/// Runs a fresh analyzer over `incident` through its queue and returns the alert and the time
/// from hand-over to alert.
pub async fn analyze(cfg: &AnalyzeConfig, incident: Incident) -> (Alert, Duration, String) {
    analyze_with_env(cfg, incident, &no_env).await
}

pub async fn analyze_with_env(
    cfg: &AnalyzeConfig,
    incident: Incident,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Alert, Duration, String) {
    let registry = prometheus::Registry::new();
    let analyzer = Analyzer::try_new(cfg, env, &registry).expect("valid analyzer config");
    let (incidents_tx, incidents_rx) = mpsc::channel(8);
    let (alerts_tx, mut alerts_rx) = mpsc::channel(8);
    let worker = tokio::spawn(analyzer.run(incidents_rx, alerts_tx));
    let started = Instant::now();
    incidents_tx.send(incident).await.unwrap();
    let alert = tokio::time::timeout(Duration::from_secs(10), alerts_rx.recv())
        .await
        .expect("an alert within 10s")
        .expect("one alert");
    let elapsed = started.elapsed();
    drop(incidents_tx);
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker stops once the queue is closed")
        .unwrap();
    (alert, elapsed, logwarden::metrics::render(&registry))
}

/// Asserts that `text` has the exact metric line.
#[track_caller]
pub fn assert_metric(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing {line:?} in\n{text}"
    );
}

/// Asserts that the real `promtool check metrics` accepts `text` with no lint findings. Skips
/// loudly when promtool is missing, and fails under `CI=true` (`.ci/run` installs it).
pub fn assert_promtool_accepts(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("promtool is required under CI but could not be started: {e}");
            }
            eprintln!("\n!!! SKIPPED: promtool not found ({e}); install it (see .ci/run) !!!\n");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
