//! Test fakes and harness: a fake Loki that records every request and answers from a script,
//! an in-process logwarden bound to 127.0.0.1:0, and a recording push inspector.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use logwarden::config::{parse_yaml, Config, Overrides};
use logwarden::decode::PushView;
use logwarden::inspect::PushInspector;
use logwarden::{App, ShutdownTimings};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One request as the fake Loki received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, content type and body.
    Answer(u16, &'static str, Vec<u8>),
    /// Never answer (the connection stays open).
    Stall,
    /// Answer after a delay.
    Delayed(Duration, u16),
}

impl Reply {
    pub fn status(code: u16) -> Reply {
        Reply::Answer(code, "text/plain; charset=utf-8", Vec::new())
    }
    pub fn text(code: u16, body: &str) -> Reply {
        Reply::Answer(code, "text/plain; charset=utf-8", body.as_bytes().to_vec())
    }
}

#[derive(Clone, Default)]
struct FakeState {
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

/// A fake Loki on 127.0.0.1:0: records each request; answers with the next scripted reply, or
/// 204 (Loki's success) when the script is empty.
pub struct FakeLoki {
    pub addr: SocketAddr,
    state: FakeState,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLoki {
    pub async fn start() -> FakeLoki {
        let state = FakeState::default();
        let router = axum::Router::new()
            .fallback(record)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeLoki { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues replies for the next requests.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeLoki {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(state): State<FakeState>, mut request: Request) -> Response {
    // A WebSocket-style upgrade (Loki's /tail): answer 101 and echo bytes back.
    if request.headers().contains_key(http::header::UPGRADE) {
        state.requests.lock().unwrap().push(Recorded {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            body: Bytes::new(),
        });
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header("sec-websocket-accept", "fake")
            .body(axum::body::Body::empty())
            .unwrap();
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
    });
    let reply = state.script.lock().unwrap().pop_front();
    match reply {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(Reply::Answer(code, ct, body)) => (
            StatusCode::from_u16(code).unwrap(),
            [(http::header::CONTENT_TYPE, ct)],
            body,
        )
            .into_response(),
        Some(Reply::Stall) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Some(Reply::Delayed(d, code)) => {
            tokio::time::sleep(d).await;
            StatusCode::from_u16(code).unwrap().into_response()
        }
    }
}

/// Records what inspection saw: (tenant, streams, lines) per push.
#[derive(Default)]
pub struct Recorder {
    pub pushes: Mutex<Vec<(String, usize, usize)>>,
}

impl PushInspector for Recorder {
    fn inspect(&self, tenant: &str, push: &PushView<'_>) {
        self.pushes.lock().unwrap().push((
            tenant.to_owned(),
            push.streams.len(),
            push.entry_count(),
        ));
    }
}

impl Recorder {
    pub fn count(&self) -> usize {
        self.pushes.lock().unwrap().len()
    }

    /// Waits until at least `n` pushes were inspected (or 5 s passed), then returns the count.
    pub async fn wait_for(&self, n: usize) -> usize {
        for _ in 0..500 {
            if self.count() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.count()
    }
}

/// A logwarden running in this process on 127.0.0.1:0.
pub struct Proxy {
    pub addr: SocketAddr,
    pub app: App,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Proxy {
    /// Starts logwarden with `yaml` as its config file and `upstream` as Loki.
    pub async fn start(yaml: &str, upstream: &str, inspector: Arc<dyn PushInspector>) -> Proxy {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some(upstream.into()),
        };
        let config = Config::from_raw(parse_yaml(yaml).unwrap(), &overrides).unwrap();
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::try_new(config, inspector).unwrap();
        let (tx, rx) = oneshot::channel();
        let timings = ShutdownTimings {
            grace: Duration::from_secs(5),
            drain: Duration::from_secs(5),
        };
        let task = tokio::spawn(logwarden::serve(
            app.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
            timings,
        ));
        Proxy {
            addr,
            app,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A push of the Promtail fixture, as Promtail sends it, ready to send or extend.
    pub fn push_fixture(&self) -> reqwest::RequestBuilder {
        client()
            .post(self.url("/loki/api/v1/push"))
            .header("content-type", "application/x-protobuf")
            .body(promtail_fixture())
    }

    /// Signals shutdown without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The push body Promtail 2.8.0 sent (snappy-block protobuf, 3 streams, 220 entries).
pub fn promtail_fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/promtail-2.8.0-push.bin"
    ))
    .unwrap()
}

/// A plain HTTP client that never pools (each request is independent).
pub fn client() -> reqwest::Client {
    logwarden::http::client_builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Says loudly why a test that needs an external tool is skipped; under CI (`CI=true`) a missing
/// tool is a failure instead.
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
        eprintln!("\n!!! SKIPPED: {name} not found on PATH; install it (see .ci/run) to run this test !!!\n");
    }
    found
}

/// The whole service (proxy + detection + analysis + delivery) in this process on 127.0.0.1:0.
pub struct Service {
    pub addr: SocketAddr,
    pub app: App,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    /// Starts `serve` with `yaml` as its config, `upstream` as Loki and `env` for secrets.
    pub async fn start(yaml: &str, upstream: &str, env: &[(&str, &str)]) -> Service {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some(upstream.into()),
        };
        let config = Config::from_raw(parse_yaml(yaml).unwrap(), &overrides).unwrap();
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let service = logwarden::Service::build(config, &|k: &str| env.get(k).cloned()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = service.app.clone();
        let (tx, rx) = oneshot::channel();
        let timings = ShutdownTimings {
            grace: Duration::from_secs(5),
            drain: Duration::from_secs(5),
        };
        let task = tokio::spawn(service.run(
            listener,
            async move {
                let _ = rx.await;
            },
            timings,
        ));
        Service {
            addr,
            app,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Shuts down gracefully (draining the pipeline) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A snappy protobuf push of `lines` in one `{job="auth", host="vps1"}` stream, one second
/// apart from `start_s` (Unix seconds).
pub fn auth_push(lines: &[String], start_s: i64) -> Vec<u8> {
    use logwarden::decode::wire::{
        encode_snappy, timestamp_from_nanos, EntryAdapter, PushRequest, StreamAdapter,
    };
    let entries = lines
        .iter()
        .enumerate()
        .map(|(i, l)| EntryAdapter {
            timestamp: Some(timestamp_from_nanos((start_s + i as i64) * 1_000_000_000)),
            line: bytes::Bytes::from(l.clone()),
            structured_metadata: vec![],
            parsed: vec![],
        })
        .collect();
    encode_snappy(&PushRequest {
        streams: vec![StreamAdapter {
            labels: r#"{host="vps1", job="auth"}"#.into(),
            entries,
            hash: 0,
        }],
        format: String::new(),
    })
}

// === fault-suite harness: a storing fake Loki that can misbehave, and `serve` as a process ===

/// How [`StoringLoki`] answers pushes right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Store the push and answer 204.
    None,
    /// Answer `status`; store the push first when `store` (a partial write, as a Loki whose
    /// ingesters wrote some replicas can answer 5xx), so the client's retry is a duplicate.
    Refuse { status: u16, store: bool },
    /// Store the push, then answer 204 only after `delay` (an overloaded Loki).
    Stall { delay: Duration },
}

/// One report line (`{job="logwarden"}`) as the fake Loki stored it.
#[derive(Debug, Clone)]
pub struct StoredReport {
    pub tenant: Option<String>,
    pub labels: String,
    pub line: String,
}

/// A push as stored, decoded only when asked (so the fake costs little CPU under load).
struct RawPush {
    content_type: Option<String>,
    content_encoding: Option<String>,
    api: logwarden::decode::PushApi,
    tenant: Option<String>,
    body: Bytes,
}

#[derive(Default)]
struct Store {
    /// Pushes stored and not yet decoded.
    raw: Vec<RawPush>,
    /// Every stored line of every other stream, with how many times it was stored.
    lines: std::collections::HashMap<Bytes, u32>,
    reports: Vec<StoredReport>,
    pushes: u64,
    refused: u64,
    stalled: u64,
}

struct LokiShared {
    store: Mutex<Store>,
    fault: Mutex<Fault>,
}

/// A fake Loki on 127.0.0.1 that decodes every push it accepts and stores its lines, answers
/// according to the current [`Fault`], and can be killed (listener and every open connection
/// closed at once, like a crashed process) and restarted on the same port.
pub struct StoringLoki {
    pub addr: SocketAddr,
    shared: Arc<LokiShared>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StoringLoki {
    pub async fn start() -> StoringLoki {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(LokiShared {
            store: Mutex::default(),
            fault: Mutex::new(Fault::None),
        });
        let loki = StoringLoki {
            addr,
            shared,
            server: Mutex::new(None),
        };
        loki.serve(listener);
        loki
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task drops it and closes them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(a) => a,
                    Err(_) => continue,
                };
                let shared = Arc::clone(&shared);
                let service = hyper::service::service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, std::convert::Infallible>(loki_answer(shared, req).await) }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Closes the listener and every connection at once, in-flight requests included.
    pub async fn kill(&self) {
        let task = self.server.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        self.serve(socket.listen(1024).unwrap());
    }

    /// The store with every push decoded so far.
    fn decoded(&self) -> std::sync::MutexGuard<'_, Store> {
        let mut s = self.shared.store.lock().unwrap();
        for push in std::mem::take(&mut s.raw) {
            let meta = logwarden::decode::PushMeta {
                content_type: push.content_type.as_deref(),
                content_encoding: push.content_encoding.as_deref(),
                api: push.api,
            };
            let mut lines = Vec::new();
            let mut reports = Vec::new();
            logwarden::decode::with_decoded(&push.body, meta, Default::default(), |v| {
                for st in &v.streams {
                    let is_report = st.labels.get("job") == Some("logwarden");
                    for e in &st.entries {
                        if is_report {
                            reports.push(StoredReport {
                                tenant: push.tenant.clone(),
                                labels: st.labels.to_string(),
                                line: String::from_utf8_lossy(&e.line).into_owned(),
                            });
                        } else {
                            lines.push(Bytes::copy_from_slice(&e.line));
                        }
                    }
                }
            })
            .expect("the fake Loki stored only pushes that decode");
            for l in lines {
                *s.lines.entry(l).or_insert(0) += 1;
            }
            s.reports.extend(reports);
        }
        s
    }

    /// How many times `line` was stored (0: never).
    pub fn stored(&self, line: &[u8]) -> u32 {
        self.decoded().lines.get(line).copied().unwrap_or(0)
    }

    /// Lines stored more than once, counted once per extra copy.
    pub fn duplicates(&self) -> u64 {
        let store = self.decoded();
        store.lines.values().map(|&n| u64::from(n - 1)).sum()
    }

    /// Distinct lines stored.
    pub fn distinct_lines(&self) -> usize {
        self.decoded().lines.len()
    }

    pub fn reports(&self) -> Vec<StoredReport> {
        self.decoded().reports.clone()
    }

    /// (pushes stored, pushes refused, pushes stalled).
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = self.shared.store.lock().unwrap();
        (s.pushes, s.refused, s.stalled)
    }
}

impl Drop for StoringLoki {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn loki_answer(
    shared: Arc<LokiShared>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<http_body_util::Full<Bytes>> {
    let answer = |status: u16| {
        http::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST || !parts.uri.path().ends_with("/push") {
        return answer(404);
    }
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(400);
    };
    let fault = *shared.fault.lock().unwrap();
    let store = match fault {
        Fault::None | Fault::Stall { .. } => true,
        Fault::Refuse { store, .. } => store,
    };
    if store {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut s = shared.store.lock().unwrap();
        s.pushes += 1;
        s.raw.push(RawPush {
            content_type: header("content-type"),
            content_encoding: header("content-encoding"),
            api: logwarden::decode::PushApi::from_path(parts.uri.path()),
            tenant: header("x-scope-orgid"),
            body,
        });
    }
    match fault {
        Fault::None => answer(204),
        Fault::Refuse { status, .. } => {
            shared.store.lock().unwrap().refused += 1;
            answer(status)
        }
        Fault::Stall { delay } => {
            shared.store.lock().unwrap().stalled += 1;
            tokio::time::sleep(delay).await;
            answer(204)
        }
    }
}

/// `logwarden serve` as a child process (the real binary), with its stdout and stderr
/// captured; killed when dropped.
pub struct ServeProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    config: std::path::PathBuf,
    upstream: String,
    envs: Vec<(String, String)>,
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `serve` on 127.0.0.1:0 with `yaml` as its config file and `envs` for secrets.
    pub async fn start(yaml: &str, upstream: &str, envs: &[(&str, &str)]) -> ServeProcess {
        Self::start_with_log_level(yaml, upstream, envs, "info").await
    }

    /// Like [`ServeProcess::start`], logging at `level` (`RUST_LOG`).
    pub async fn start_with_log_level(
        yaml: &str,
        upstream: &str,
        envs: &[(&str, &str)],
        level: &str,
    ) -> ServeProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("logwarden.yml");
        std::fs::write(&config, yaml).unwrap();
        let mut envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        envs.push(("RUST_LOG".into(), level.into()));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (child, addr) = spawn_serve(&config, upstream, &envs, "127.0.0.1:0", &output).await;
        ServeProcess {
            child,
            addr,
            config,
            upstream: upstream.to_owned(),
            envs,
            output,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces the config file (read at the next start).
    pub fn rewrite_config(&self, yaml: &str) {
        std::fs::write(&self.config, yaml).unwrap();
    }

    /// SIGKILL: no shutdown, no drain; whatever was queued inside is lost.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the binary again on the same address.
    pub async fn restart(&mut self) {
        let listen = self.addr.to_string();
        let (child, addr) = spawn_serve(
            &self.config,
            &self.upstream,
            &self.envs,
            &listen,
            &self.output,
        )
        .await;
        assert_eq!(addr, self.addr);
        self.child = child;
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`: resident now, and at peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn spawn_serve(
    config: &std::path::Path,
    upstream: &str,
    envs: &[(String, String)],
    listen: &str,
    output: &Arc<Mutex<Vec<String>>>,
) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_logwarden"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", listen, "--upstream", upstream])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    for pipe in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let (sink, tx) = (Arc::clone(output), tx.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(addr) = v.pointer("/fields/listen").or_else(|| v.get("listen")) {
                        if let Some(a) = addr.as_str().and_then(|a| a.parse::<SocketAddr>().ok()) {
                            let _ = tx.send(a);
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
    }
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    let Ok(addr) = addr else {
        let _ = child.kill();
        panic!(
            "logwarden serve did not report its address; output:\n{}",
            output.lock().unwrap().join("\n")
        );
    };
    (child, addr)
}

/// Sums every series of metric `name` in a `/metrics` text whose labels contain each of
/// `labels` (e.g. `rule="ssh-brute-force"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|want| rest.contains(want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A server on 127.0.0.1:0 that accepts connections and never answers (a stalled backend):
/// it holds every connection open and counts them.
pub struct Blackhole {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                held.push(stream);
            }
        });
        Blackhole {
            addr,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port with nothing listening on it (connections are refused).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Posts a snappy protobuf push body to `url` as tenant `acme`; returns the status.
pub async fn push_as_acme(url: &str, body: &[u8]) -> u16 {
    client()
        .post(url)
        .header("content-type", "application/x-protobuf")
        .header("x-scope-orgid", "acme")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
