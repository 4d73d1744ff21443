//! Fakes and harness for the delivery tests: a scripted HTTP capture server (Telegram, Slack,
//! webhook, Loki flavours), a Telegram HTML checker faithful to the Bot API's rules, a tiny
//! SMTP responder, a log capture, and a dispatcher started from inline YAML.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use logwarden::incident::{EventTime, Incident, Sample, Severity};
use logwarden::notify::{Dispatcher, NotifierConfig, ReportsConfig};
use logwarden::report::{Alert, Report};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

// === HTTP capture fake ===

/// One request as a fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, extra headers, body.
    Answer(u16, Vec<(&'static str, String)>, String),
    /// Never answer.
    Stall,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::Answer(
            status,
            vec![("content-type", "application/json".into())],
            body.to_string(),
        )
    }
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::Answer(
            status,
            vec![("content-type", "text/plain".into())],
            body.into(),
        )
    }
}

/// Inspects each request and may answer in place of the script (e.g. 400 for bad HTML).
pub type Check = Arc<dyn Fn(&Recorded) -> Option<Reply> + Send + Sync>;

#[derive(Clone)]
struct FakeState {
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Reply,
    check: Option<Check>,
    notify: Arc<tokio::sync::Notify>,
}

/// A fake HTTP service on 127.0.0.1:0 that records requests and answers from a script, then
/// with its default reply.
pub struct FakeHttp {
    pub addr: SocketAddr,
    state: FakeState,
    task: tokio::task::JoinHandle<()>,
}

impl FakeHttp {
    pub async fn start(default: Reply, check: Option<Check>) -> FakeHttp {
        let state = FakeState {
            requests: Arc::default(),
            script: Arc::default(),
            default,
            check,
            notify: Arc::default(),
        };
        let router = axum::Router::new()
            .fallback(record)
            .layer(DefaultBodyLimit::max(16 << 20))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeHttp { addr, state, task }
    }

    /// A fake Telegram Bot API: `{"ok":true,…}`, rejecting invalid HTML or over-long text
    /// with 400 the way the Bot API does.
    pub async fn telegram() -> FakeHttp {
        let check: Check = Arc::new(|r: &Recorded| {
            let body = r.json();
            let text = body["text"].as_str().unwrap_or_default();
            let verdict = match body["parse_mode"].as_str() {
                Some("HTML") => parse_telegram_html(text).map(|p| p.visible),
                _ => Ok(text.to_owned()),
            };
            let bad = match verdict {
                Err(e) => Some(format!("Bad Request: can't parse entities: {e}")),
                Ok(v) if v.is_empty() => Some("Bad Request: message text is empty".into()),
                Ok(v) if v.encode_utf16().count() > 4096 => {
                    Some("Bad Request: message is too long".into())
                }
                Ok(_) => None,
            };
            bad.map(|d| {
                Reply::json(
                    400,
                    serde_json::json!({"ok": false, "error_code": 400, "description": d}),
                )
            })
        });
        let ok = Reply::json(
            200,
            serde_json::json!({"ok": true, "result": {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}}}),
        );
        FakeHttp::start(ok, Some(check)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (at most `limit`), then returns them.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.state.notify.notified();
            let got = self.requests();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(state): State<FakeState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let rec = Recorded {
        at: Instant::now(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    };
    let verdict = state.check.as_ref().and_then(|c| c(&rec));
    state.requests.lock().unwrap().push(rec);
    state.notify.notify_waiters();
    let scripted = state.script.lock().unwrap().pop_front();
    let reply = verdict
        .or(scripted)
        .unwrap_or_else(|| state.default.clone());
    match reply {
        Reply::Answer(code, headers, body) => {
            let mut resp = (StatusCode::from_u16(code).unwrap(), body).into_response();
            for (name, value) in headers {
                resp.headers_mut().insert(name, value.parse().unwrap());
            }
            resp
        }
        Reply::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

// === Telegram HTML, as the Bot API reads it ===

/// What a Telegram HTML text parses to.
#[derive(Debug)]
pub struct ParsedHtml {
    /// The text a user sees: tags removed, entities decoded.
    pub visible: String,
    /// Every opening tag's name, in order.
    pub tags: Vec<String>,
}

/// Parses `text` like the Bot API's HTML mode: only its tags, balanced and properly nested;
/// only `&lt; &gt; &amp; &quot;` and numeric entities; a bare `<`, `>` or `&` is an error.
pub fn parse_telegram_html(text: &str) -> Result<ParsedHtml, String> {
    const ALLOWED: &[&str] = &[
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    ];
    let mut visible = String::new();
    let mut tags = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match c {
            '<' => {
                let end = rest.find('>').ok_or("unclosed start tag")?;
                let inner = &rest[1..end];
                if let Some(name) = inner.strip_prefix('/') {
                    let open = stack.pop().ok_or(format!("unmatched end tag </{name}>"))?;
                    if open != name {
                        return Err(format!("end tag </{name}> does not close <{open}>"));
                    }
                } else {
                    let name = inner.split([' ', '=']).next().unwrap_or("").to_owned();
                    if !ALLOWED.contains(&name.as_str()) {
                        return Err(format!("unsupported start tag \"{name}\""));
                    }
                    if stack.iter().any(|t| t == "pre" || t == "code") && name != "code" {
                        return Err(format!("<{name}> inside pre/code"));
                    }
                    tags.push(name.clone());
                    stack.push(name);
                }
                rest = &rest[end + 1..];
            }
            '>' => return Err("bare '>' in text".into()),
            '&' => {
                let end = rest.find(';').ok_or("bare '&' in text")?;
                let entity = &rest[1..end];
                let decoded = match entity {
                    "lt" => '<',
                    "gt" => '>',
                    "amp" => '&',
                    "quot" => '"',
                    e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or("bad numeric entity")?,
                    e if e.starts_with('#') => e[1..]
                        .parse::<u32>()
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or("bad numeric entity")?,
                    e => return Err(format!("unsupported entity &{e};")),
                };
                visible.push(decoded);
                rest = &rest[end + 1..];
            }
            c => {
                visible.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if let Some(open) = stack.pop() {
        return Err(format!("unclosed <{open}>"));
    }
    Ok(ParsedHtml { visible, tags })
}

// === SMTP fake ===

/// One message the fake SMTP server accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A loopback SMTP responder: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS, no AUTH.
pub struct FakeSmtp {
    pub addr: SocketAddr,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSmtp {
    pub async fn start() -> FakeSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let store = mails.clone();
        let task = tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                tokio::spawn(smtp_session(sock, store.clone()));
            }
        });
        FakeSmtp { addr, mails, task }
    }

    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.mails.lock().unwrap().clone();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn smtp_session(sock: tokio::net::TcpStream, store: Arc<Mutex<Vec<Mail>>>) {
    let (read, mut write) = sock.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 fake.test ESMTP\r\n").await.unwrap();
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250-fake.test\r\n250 8BITMIME\r\n"
        } else if let Some(addr) = upper.strip_prefix("MAIL FROM:") {
            from = cmd[cmd.len() - addr.len()..].trim().to_owned();
            to.clear();
            b"250 OK\r\n"
        } else if let Some(addr) = upper.strip_prefix("RCPT TO:") {
            to.push(cmd[cmd.len() - addr.len()..].trim().to_owned());
            b"250 OK\r\n"
        } else if upper == "DATA" {
            write
                .write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                .await
                .unwrap();
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            store.lock().unwrap().push(Mail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            b"250 OK queued\r\n"
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 OK\r\n"
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await.unwrap();
    }
}

// === log capture ===

/// Everything logged through `tracing` while the guard lives, on this thread (the tests run on
/// tokio's current-thread runtime, so spawned workers log here too).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// === harness ===

/// A running dispatcher fed through `alerts_tx`.
pub struct Running {
    pub alerts_tx: Option<mpsc::Sender<Alert>>,
    pub registry: prometheus::Registry,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn send(&self, alert: Alert) {
        self.alerts_tx.as_ref().unwrap().send(alert).await.unwrap();
    }

    pub fn metrics(&self) -> String {
        logwarden::metrics::render(&self.registry)
    }

    /// Closes the intake and waits for the dispatcher to return (at most `limit`).
    pub async fn close(mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        drop(self.alerts_tx.take());
        tokio::time::timeout(limit, &mut self.task)
            .await
            .expect("dispatcher returned in time")
            .unwrap();
        started.elapsed()
    }
}

/// Builds a dispatcher from inline YAML (`notify:` list and `reports:` section) and starts it.
pub fn start(
    notify_yaml: &str,
    reports_yaml: &str,
    loki_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
    drain: Duration,
) -> Running {
    let notifiers: Vec<NotifierConfig> = serde_yaml_ng::from_str(notify_yaml).unwrap();
    let reports: ReportsConfig = serde_yaml_ng::from_str(reports_yaml).unwrap();
    let registry = prometheus::Registry::new();
    let dispatcher = Dispatcher::try_new(
        &notifiers,
        &reports,
        &loki_url.parse().unwrap(),
        env,
        &registry,
    )
    .unwrap()
    .with_drain_timeout(drain);
    let (alerts_tx, alerts_rx) = mpsc::channel(64);
    let task = tokio::spawn(dispatcher.run(alerts_rx));
    Running {
        alerts_tx: Some(alerts_tx),
        registry,
        task,
    }
}

/// No reports written anywhere: for tests about channels only.
pub const NO_REPORTS: &str = "loki: false";

/// An environment with nothing in it.
pub fn no_env(_: &str) -> Option<String> {
    None
}

/// An alert as the analysis stage hands it over.
pub fn alert(rule: &str, severity: Severity) -> Alert {
    let mut labels = BTreeMap::new();
    labels.insert("host".to_owned(), "vps1".to_owned());
    labels.insert("job".to_owned(), "auth".to_owned());
    let line = "sshd[811]: Failed password for root from 203.0.113.7 port 52211 ssh2".to_owned();
    let incident = Incident {
        id: "a1b2c3".into(),
        rule: rule.into(),
        description: "Repeated failed SSH logins from one address".into(),
        remediation: Some("Block the address".into()),
        severity,
        key: "203.0.113.7".into(),
        key_kind: "ip".into(),
        count: 12,
        new_count: 12,
        distinct_field: None,
        distinct_count: 0,
        distinct_values: vec![],
        threshold: 10,
        window_start: EventTime(1_700_000_000_000_000_000),
        window_end: EventTime(1_700_000_060_000_000_000),
        first_seen: EventTime(1_700_000_001_000_000_000),
        last_seen: EventTime(1_700_000_059_000_000_000),
        tenant: "acme".into(),
        labels: labels.clone(),
        samples: vec![Sample {
            timestamp: EventTime(1_700_000_059_000_000_000),
            line: line.clone(),
            labels,
        }],
        logql: "{job=\"auth\"} |= \"203.0.113.7\"".into(),
        follow_up: false,
        sequence: 0,
    };
    let report = Report {
        incident_id: incident.id.clone(),
        sequence: 0,
        rule: rule.into(),
        key: incident.key.clone(),
        tenant: incident.tenant.clone(),
        severity,
        rule_severity: severity,
        category: "ssh brute force".into(),
        summary: "12 failed SSH logins from 203.0.113.7 in 1 minute".into(),
        explanation: "One address tried root and admin passwords against sshd on vps1.".into(),
        affected_services: vec!["sshd".into()],
        evidence: vec![line],
        recommended_actions: vec!["Block 203.0.113.7 at the firewall".into()],
        analyzer: "template".into(),
        model: None,
        latency_ms: 0,
        note: None,
    };
    Alert { incident, report }
}

/// An alert whose every free-text field carries markup an attacker would try.
pub fn hostile_alert() -> Alert {
    let mut a = alert("ssh_brute_force", Severity::High);
    a.report.summary = "<script>alert(1)</script> AT&T".into();
    a.report.explanation =
        "</b><a href=\"https://evil.example/\">click</a> &amp; <!channel>".into();
    a.report.evidence = vec![
        "</pre><b>forged</b> & <i>".into(),
        "GET /?q=<script>x</script>&a=\"1\" HTTP/1.1".into(),
    ];
    a.report.recommended_actions = vec!["<a href=\"tg://user?id=1\">me</a>".into()];
    a.incident.key = "<b>k</b>".into();
    a
}

/// Says loudly why a test that needs an external tool is skipped; under CI (`CI=true`) a
/// missing tool is a failure instead.
pub fn require_tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name} is required under CI but was not found on PATH (.ci/run installs it)");
        }
        eprintln!(
            "\n!!! SKIPPED: {name} not found on PATH, so this test cannot run; install it \
             (Debian package prometheus-alertmanager, see .ci/run) !!!\n"
        );
    }
    found
}

/// Waits (at most 10 s) until the rendered metrics contain `line`.
pub async fn wait_metric(run: &Running, line: &str) {
    for _ in 0..1000 {
        if run.metrics().contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("metric line {line:?} never appeared:\n{}", run.metrics());
}

/// Returns the value of the series `name_and_labels` in rendered metrics (panics if absent).
pub fn metric_value(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {name_and_labels} in:\n{metrics}"))
}
