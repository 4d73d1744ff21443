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
