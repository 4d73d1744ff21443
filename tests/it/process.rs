//! The real binary: graceful shutdown on SIGTERM, OpenTelemetry export, config errors at start.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;

use crate::support::{client, promtail_fixture, FakeLoki, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_logwarden");

/// A `logwarden serve` child process; killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Served {
    fn start(upstream: &str, envs: &[(&str, String)]) -> Served {
        Self::start_with(upstream, envs, &[])
    }

    fn start_with(upstream: &str, envs: &[(&str, String)], extra: &[&str]) -> Served {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                upstream,
                "--log-format",
                "json",
            ])
            .args(extra)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(addr) = v.get("listen").and_then(|a| a.as_str()) {
                        let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("logwarden did not report its address");
        Served {
            child,
            addr,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit and returns its status code.
    async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "logwarden did not exit; stderr:\n{}",
            self.stderr.lock().unwrap().join("\n")
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn push_in_flight_at_sigterm_completes() {
    let loki = FakeLoki::start().await;
    loki.script([Reply::Delayed(Duration::from_millis(800), 204)]);
    let mut served = Served::start(&loki.url(), &[]);
    let url = served.url("/loki/api/v1/push");
    let in_flight = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(promtail_fixture())
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Let the push reach Loki, then ask logwarden to stop while Loki is still thinking.
    for _ in 0..100 {
        if !loki.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(loki.requests().len(), 1);
    served.signal("-TERM");
    assert_eq!(
        in_flight.await.unwrap().expect("in-flight push failed"),
        204
    );
    assert_eq!(served.wait(Duration::from_secs(10)).await, Some(0));
    // After shutdown nothing listens any more.
    assert!(client().get(served.url("/ready")).send().await.is_err());
}

#[tokio::test]
async fn a_push_produces_an_exported_otlp_span() {
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let sink = received.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let loki = FakeLoki::start().await;
    let mut served = Served::start(
        &loki.url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
    );
    let status = client()
        .post(served.url("/loki/api/v1/push"))
        .header("content-type", "application/x-protobuf")
        .body(promtail_fixture())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    served.signal("-TERM"); // shutdown flushes the batch exporter
    assert_eq!(served.wait(Duration::from_secs(15)).await, Some(0));
    let bodies = received.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "no OTLP export received");
    let all: Vec<u8> = bodies.iter().flat_map(|b| b.iter().copied()).collect();
    let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"push"), "no push span exported");
    assert!(has(b"forward"), "no forward child span exported");
    assert!(has(b"inspect"), "no inspect child span exported");
    assert!(has(b"logwarden"), "service name missing");
}

impl Served {
    /// Waits until a stderr line contains `needle`.
    async fn wait_for_log(&self, needle: &str) {
        for _ in 0..500 {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no log line with {needle:?}; stderr:\n{}",
            self.stderr.lock().unwrap().join("\n")
        );
    }
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_file_keeps_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lw.yml");
    std::fs::write(&path, "inspect:\n  workers: 1\n").unwrap();
    let loki = FakeLoki::start().await;
    let served = Served::start_with(&loki.url(), &[], &["--config", path.to_str().unwrap()]);
    served.signal("-HUP");
    served.wait_for_log("configuration reloaded").await;
    std::fs::write(&path, "inspect:\n  workers: many\n").unwrap();
    served.signal("-HUP");
    served.wait_for_log("configuration reload rejected").await;
    // Still serving after both.
    let status = client()
        .post(served.url("/loki/api/v1/push"))
        .header("content-type", "application/x-protobuf")
        .body(promtail_fixture())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
}

#[test]
fn bad_config_exits_64_before_binding_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yml");
    std::fs::write(&path, "upstream:\n  timeout: 0s\n").unwrap();
    // check-config
    let out = Command::new(BIN)
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstream.timeout: \"0s\" must be greater than zero"),
        "{err}"
    );
    // serve: fails before binding its (fixed, free) port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream.timeout"));
    // A good file passes.
    std::fs::write(
        &path,
        "listen: 127.0.0.1:3101\nupstream:\n  url: http://loki:3100\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys are rejected by name.
    std::fs::write(&path, "upstreams: {}\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `upstreams`"));
}
