//! Unit tests of the notify stage: config validation (one test per rejection rule), retry
//! classification, filtering and text layout.

use std::collections::BTreeMap;

use super::config::compile_all;
use super::*;
use crate::incident::{EventTime, Incident};
use crate::report::Report;

fn parse(yaml: &str) -> Vec<NotifierConfig> {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn env(name: &str) -> Option<String> {
    match name {
        "TG_TOKEN" => Some("123456:ABC-def_ghi".into()),
        "SLACK_URL" => Some("http://127.0.0.1:9/services/T/B/secret".into()),
        "BAD_URL" => Some("not a url secret-value".into()),
        "HMAC" => Some("k3y".into()),
        "SMTP_PASS" => Some("hunter2".into()),
        _ => None,
    }
}

fn check(yaml: &str) -> Result<(), ConfigError> {
    compile_all(&parse(yaml), &ReportsConfig::default(), &env, true).map(|_| ())
}

fn err(yaml: &str) -> String {
    check(yaml).unwrap_err().to_string()
}

#[test]
fn accepts_every_type() {
    check(
        r#"
- type: telegram
  chat_id: -1001234567890
  token_env: TG_TOKEN
  min_severity: high
  rules: [ssh_brute_force]
- type: telegram
  name: tg-ops
  chat_id: "@ops_channel"
  token_env: TG_TOKEN
  url: http://127.0.0.1:1
- type: slack
  url_env: SLACK_URL
- type: webhook
  url: https://hooks.example.org/logwarden
  headers: {Authorization: "Bearer x"}
  secret_env: HMAC
- type: alertmanager
  url: http://127.0.0.1:9093
  ends_after: 30m
- type: email
  host: smtp.example.org
  user: alerts
  password_env: SMTP_PASS
  from: "logwarden <alerts@example.org>"
  to: [ops@example.org]
  retry: {attempts: 3, backoff: 2s, max_backoff: 1m}
"#,
    )
    .unwrap();
}

#[test]
fn unknown_field_is_rejected_by_serde() {
    let e = serde_yaml_ng::from_str::<Vec<NotifierConfig>>("- type: slack\n  chanel: x\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `chanel`"), "{e}");
}

#[test]
fn telegram_needs_chat_id() {
    assert_eq!(
        err("- type: telegram\n  token_env: TG_TOKEN\n"),
        "notify[0].chat_id: required for type telegram"
    );
}

#[test]
fn telegram_chat_id_must_be_number_or_username() {
    let e = err("- type: webhook\n  url: http://x\n- type: telegram\n  chat_id: ops\n  token_env: TG_TOKEN\n");
    assert!(
        e.starts_with("notify[1].chat_id: \"ops\" must be a numeric chat id"),
        "{e}"
    );
}

#[test]
fn telegram_needs_a_token_and_reports_a_missing_variable_without_value() {
    assert_eq!(
        err("- type: telegram\n  chat_id: 1\n"),
        "notify[0].token_env: type telegram needs token_env or token_file"
    );
    let e = err("- type: telegram\n  chat_id: 1\n  token_env: NOPE\n");
    assert_eq!(
        e,
        "notify[0].token_env: environment variable NOPE (expected to hold the bot token) is not set or empty"
    );
}

#[test]
fn secret_env_and_file_are_exclusive() {
    let e = err("- type: telegram\n  chat_id: 1\n  token_env: TG_TOKEN\n  token_file: /x\n");
    assert_eq!(
        e,
        "notify[0].token_env: set either token_env or token_file, not both"
    );
}

#[test]
fn secret_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "42:tok\n").unwrap();
    let yaml = format!(
        "- type: telegram\n  chat_id: 1\n  token_file: {}\n",
        path.display()
    );
    let channels = compile_all(&parse(&yaml), &ReportsConfig::default(), &env, true).unwrap();
    match &channels[0].kind {
        config::ChannelKind::Telegram { token, .. } => assert_eq!(token, "42:tok"),
        _ => panic!("telegram expected"),
    }
    let missing = "- type: telegram\n  chat_id: 1\n  token_file: /nonexistent/token\n";
    assert!(err(missing).starts_with("notify[0].token_file: cannot read /nonexistent/token"));
}

#[test]
fn field_of_another_type_is_rejected() {
    assert_eq!(
        err("- type: slack\n  url_env: SLACK_URL\n  chat_id: 5\n"),
        "notify[0].chat_id: not used by type slack; only telegram notifiers take it"
    );
    assert_eq!(
        err("- type: slack\n  url: http://127.0.0.1/\n  url_env: SLACK_URL\n"),
        "notify[0].url: not used by type slack; only telegram, webhook, alertmanager notifiers take it"
    );
}

#[test]
fn slack_url_error_does_not_show_the_secret() {
    let e = err("- type: slack\n  url_env: BAD_URL\n");
    assert!(
        e.starts_with("notify[0].url_env: the value is not an http(s) URL"),
        "{e}"
    );
    assert!(!e.contains("secret-value"), "{e}");
}

#[test]
fn webhook_url_may_come_from_a_secret() {
    let channels = compile_all(
        &parse("- type: webhook\n  url_env: SLACK_URL\n"),
        &ReportsConfig::default(),
        &env,
        true,
    )
    .unwrap();
    match &channels[0].kind {
        config::ChannelKind::Webhook { url, .. } => {
            assert_eq!(url.as_str(), "http://127.0.0.1:9/services/T/B/secret");
        }
        _ => panic!("webhook expected"),
    }
    assert_eq!(
        err("- type: webhook\n  url: http://127.0.0.1/\n  url_env: SLACK_URL\n"),
        "notify[0].url: set either url or url_env/url_file, not both"
    );
    assert_eq!(
        err("- type: webhook\n"),
        "notify[0].url (or url_env/url_file): required for type webhook"
    );
    let e = err("- type: webhook\n  url_env: BAD_URL\n");
    assert!(
        e.starts_with("notify[0].url_env: the value is not an http(s) URL"),
        "{e}"
    );
    assert!(!e.contains("secret-value"), "{e}");
}

#[test]
fn urls_are_checked() {
    assert!(err("- type: webhook\n  url: ftp://x/\n")
        .starts_with("notify[0].url: \"ftp://x/\" must be an http:// or https:// URL"));
    assert!(
        err("- type: webhook\n  url: \"::\"\n").starts_with("notify[0].url: \"::\" is not a URL")
    );
    assert_eq!(
        err("- type: alertmanager\n"),
        "notify[0].url: required for type alertmanager"
    );
    let e = err("- type: webhook\n  url: http://user:pw@host/\n");
    assert!(
        e.starts_with("notify[0].url: must not carry credentials"),
        "{e}"
    );
    assert!(!e.contains("pw"), "{e}");
}

#[test]
fn webhook_header_checks_hide_values() {
    let e = err("- type: webhook\n  url: http://x/\n  headers: {\"Bad Name\": v}\n");
    assert_eq!(
        e,
        "notify[0].headers.Bad Name: is not a valid HTTP header name"
    );
    let e = err("- type: webhook\n  url: http://x/\n  headers: {X-Key: \"sec\\nret\"}\n");
    assert!(
        e.starts_with("notify[0].headers.X-Key: the value is not a valid"),
        "{e}"
    );
    assert!(!e.contains("sec"), "{e}");
    assert_eq!(
        err("- type: webhook\n  url: http://x/\n  signature_header: X-Sig\n"),
        "notify[0].signature_header: needs secret_env or secret_file (the key to sign with)"
    );
}

#[test]
fn names_must_be_unique_and_label_safe() {
    assert_eq!(
        err("- type: webhook\n  url: http://a/\n- type: webhook\n  url: http://b/\n"),
        "notify[1].name: \"webhook\" is already used by notify[0]; give each notifier a distinct `name`"
    );
    assert!(err("- type: webhook\n  name: \"a b\"\n  url: http://a/\n")
        .starts_with("notify[0].name: \"a b\" must be 1-64 characters"));
}

#[test]
fn numbers_are_bounded() {
    assert_eq!(
        err("- type: webhook\n  url: http://a/\n  queue_capacity: 0\n"),
        "notify[0].queue_capacity: 0 must be at least 1"
    );
    assert_eq!(
        err("- type: webhook\n  url: http://a/\n  timeout: 0s\n"),
        "notify[0].timeout: \"0s\" must be greater than zero"
    );
    assert_eq!(
        err("- type: webhook\n  url: http://a/\n  retry: {attempts: 0}\n"),
        "notify[0].retry.attempts: 0 must be between 1 and 20"
    );
    assert_eq!(
        err("- type: webhook\n  url: http://a/\n  retry: {backoff: 2m, max_backoff: 1m}\n"),
        "notify[0].retry.backoff: \"2m\" must not exceed retry.max_backoff (\"1m\")"
    );
    assert_eq!(
        err("- type: alertmanager\n  url: http://a/\n  ends_after: 0s\n"),
        "notify[0].ends_after: \"0s\" must be greater than zero (the alert would arrive resolved)"
    );
    assert_eq!(
        err("- type: webhook\n  url: http://a/\n  rules: [\"\"]\n"),
        "notify[0].rules[0]: an empty rule id matches nothing; remove it"
    );
}

#[test]
fn email_rules() {
    let base = "- type: email\n  from: a@example.org\n  to: [b@example.org]\n";
    assert_eq!(
        err("- type: email\n"),
        "notify[0].host: required for type email"
    );
    let e = err(&format!("{base}  host: smtp.example.org\n  tls: none\n"));
    assert!(
        e.starts_with("notify[0].tls: \"none\" is only allowed for a loopback host"),
        "{e}"
    );
    check(&format!(
        "{base}  host: 127.0.0.1\n  tls: none\n  port: 2525\n"
    ))
    .unwrap();
    assert_eq!(
        err(&format!("{base}  host: smtp.example.org\n  user: u\n")),
        "notify[0].password_env: type email needs password_env or password_file"
    );
    assert_eq!(
        err(&format!(
            "{base}  host: smtp.example.org\n  password_env: SMTP_PASS\n"
        )),
        "notify[0].user: required for type email"
    );
    let e = err("- type: email\n  host: h\n  from: nobody\n  to: [b@example.org]\n");
    assert!(
        e.starts_with("notify[0].from: \"nobody\" is not a mailbox"),
        "{e}"
    );
    let e =
        err("- type: email\n  host: h\n  from: a@example.org\n  to: [b@example.org, \"x y\"]\n");
    assert!(
        e.starts_with("notify[0].to[1]: \"x y\" is not a mailbox"),
        "{e}"
    );
    assert_eq!(
        err("- type: email\n  host: h\n  from: a@example.org\n"),
        "notify[0].to: required for type email"
    );
}

#[test]
fn reports_section_rules() {
    let reports: ReportsConfig = serde_yaml_ng::from_str("tenant: \"a|b\"\n").unwrap();
    let e = compile_all(&[], &reports, &env, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("reports.tenant: \"a|b\" is not a Loki tenant id"),
        "{e}"
    );
    let reports: ReportsConfig =
        serde_yaml_ng::from_str("file: /nonexistent/dir/r.jsonl\n").unwrap();
    let e = compile_all(&[], &reports, &env, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("reports.file: /nonexistent/dir/r.jsonl: directory"),
        "{e}"
    );
    let reports: ReportsConfig = serde_yaml_ng::from_str("queue_capacity: 0\n").unwrap();
    let e = compile_all(&[], &reports, &env, true)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "reports.queue_capacity: 0 must be at least 1");
    let d: ReportsConfig = serde_yaml_ng::from_str("{}").unwrap();
    assert!(d.loki && d.tenant.is_none() && d.file.is_none());
}

#[test]
fn validate_needs_no_secrets() {
    let list = parse("- type: telegram\n  chat_id: 1\n  token_env: UNSET_IN_CHECK_CONFIG\n");
    validate(&list, &ReportsConfig::default()).unwrap();
}

#[test]
fn retry_classification() {
    let status = |status| NotifyError::Status {
        status,
        retry_after: None,
        detail: String::new(),
    };
    assert!(status(429).is_retryable() && status(500).is_retryable() && status(503).is_retryable());
    for s in [400, 401, 403, 404, 410, 422] {
        assert!(!status(s).is_retryable(), "{s}");
    }
    assert!(NotifyError::Timeout.is_retryable());
    assert!(!NotifyError::Protocol("x".into()).is_retryable());
    assert_eq!(status(429).reason(), "rate_limited");
    assert_eq!(status(502).reason(), "server_error");
    assert_eq!(status(400).reason(), "rejected");
}

#[tokio::test(start_paused = true)]
async fn retrier_backs_off_exponentially_and_stops_at_the_bound() {
    let registry = Registry::new();
    let m = NotifyMetrics::register(&registry);
    let retrier = Retrier {
        policy: RetryConfig {
            attempts: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
        },
        retried: m.notifications.with_label_values(&["t", "retried"]),
        channel: Arc::from("t"),
    };
    let start = Instant::now();
    let times = std::sync::Mutex::new(Vec::new());
    let result = retrier
        .run(|| {
            times.lock().unwrap().push(start.elapsed().as_secs());
            async {
                Err(NotifyError::Status {
                    status: 500,
                    retry_after: None,
                    detail: String::new(),
                })
            }
        })
        .await;
    assert!(result.is_err());
    // Waits 1s, 2s, then 3s (capped): attempts at 0, 1, 3, 6.
    assert_eq!(*times.lock().unwrap(), vec![0, 1, 3, 6]);
    assert_eq!(
        m.notifications.with_label_values(&["t", "retried"]).get(),
        3
    );

    // A 4xx is not retried; a retry_after beyond max_backoff fails at once.
    let calls = std::sync::atomic::AtomicU32::new(0);
    let r = retrier
        .run(|| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async {
                Err(NotifyError::Status {
                    status: 403,
                    retry_after: None,
                    detail: String::new(),
                })
            }
        })
        .await;
    assert!(matches!(r, Err(NotifyError::Status { status: 403, .. })));
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    let r = retrier
        .run(|| async {
            Err(NotifyError::Status {
                status: 429,
                retry_after: Some(Duration::from_secs(3600)),
                detail: String::new(),
            })
        })
        .await;
    assert!(matches!(r, Err(NotifyError::RetryAfterTooLong(_))));
}

pub(crate) fn alert_for_test(severity: Severity, rule: &str) -> Alert {
    let incident = Incident {
        id: "inc-1".into(),
        rule: rule.into(),
        description: "d".into(),
        remediation: None,
        severity,
        key: "203.0.113.7".into(),
        key_kind: "ip".into(),
        count: 12,
        new_count: 12,
        distinct_field: None,
        distinct_count: 0,
        distinct_values: vec![],
        threshold: 10,
        window_start: EventTime(0),
        window_end: EventTime(60_000_000_000),
        first_seen: EventTime(1_000_000_000),
        last_seen: EventTime(59_000_000_000),
        tenant: "t".into(),
        labels: BTreeMap::new(),
        samples: vec![],
        logql: String::new(),
        follow_up: false,
        sequence: 0,
    };
    let report = Report {
        incident_id: "inc-1".into(),
        sequence: 0,
        rule: rule.into(),
        key: incident.key.clone(),
        tenant: "t".into(),
        severity,
        rule_severity: severity,
        category: "c".into(),
        summary: "s\u{1b}[31m\u{202e}x".into(),
        explanation: "line one\nline two\r".into(),
        affected_services: vec![],
        evidence: vec!["e".into()],
        recommended_actions: vec![],
        analyzer: "template".into(),
        model: None,
        latency_ms: 0,
        note: None,
    };
    Alert { incident, report }
}

#[test]
fn filters_by_severity_and_rule() {
    let registry = Registry::new();
    let m = NotifyMetrics::register(&registry);
    let target = Target {
        name: Arc::from("x"),
        role: Role::Channel,
        min_severity: Severity::High,
        rules: vec!["ssh".into()],
        queue_capacity: 1,
        retrier: Retrier {
            policy: RetryConfig::default(),
            retried: m.notifications.with_label_values(&["x", "retried"]),
            channel: Arc::from("x"),
        },
        notifier: Arc::new(loki::FileSink::new("/dev/null".into())),
    };
    assert!(target.wants(&alert_for_test(Severity::High, "ssh")));
    assert!(target.wants(&alert_for_test(Severity::Critical, "ssh")));
    assert!(!target.wants(&alert_for_test(Severity::Medium, "ssh")));
    assert!(!target.wants(&alert_for_test(Severity::Critical, "web")));
}

#[test]
fn layout_strips_control_and_bidi_characters() {
    let rows = text::layout(&alert_for_test(Severity::High, "ssh"));
    let all: String = rows.iter().map(|r| r.text() + "\n").collect();
    assert!(!all.contains('\u{1b}') && !all.contains('\u{202e}') && !all.contains('\r'));
    assert!(all.contains("s\u{FFFD}[31m\u{FFFD}x"), "{all}");
    assert!(all.contains("line one\nline two \n"), "{all}");
}

#[test]
fn alertmanager_labels_are_stable_across_follow_ups() {
    let now = chrono::DateTime::from_timestamp(1_000, 0).unwrap();
    let mut a = alert_for_test(Severity::High, "ssh");
    a.incident.labels.insert("host".into(), "vps1".into());
    let first = alertmanager::postable(&a, Duration::from_secs(900), now);
    a.incident.follow_up = true;
    a.incident.sequence = 1;
    a.incident.count = 40;
    a.report.severity = Severity::Critical;
    a.report.summary = "different words".into();
    let second = alertmanager::postable(&a, Duration::from_secs(900), now);
    assert_eq!(first.labels, second.labels);
    let want: BTreeMap<String, String> = [
        ("alertname", "ssh"),
        ("severity", "high"),
        ("key", "203.0.113.7"),
        ("tenant", "t"),
        ("instance", "vps1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(first.labels, want);
    assert_eq!(second.annotations["count"], "40");
    assert_eq!(second.annotations["assessed_severity"], "critical");
    assert_eq!(first.starts_at, "1970-01-01T00:00:01.000Z");
    assert_eq!(first.ends_at, "1970-01-01T00:31:40.000Z");
}
