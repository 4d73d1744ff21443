//! `/metrics` is valid Prometheus text (checked by the real promtool) and its counters match the
//! traffic sent.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::support::{client, promtail_fixture, require_tool, FakeLoki, Proxy, Recorder, Reply};

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn counters_match_traffic_and_promtool_accepts_the_output() {
    let loki = FakeLoki::start().await;
    let recorder = Arc::new(Recorder::default());
    let proxy = Proxy::start("inspect:\n  workers: 1\n", &loki.url(), recorder.clone()).await;
    loki.script([
        Reply::status(204),
        Reply::status(204),
        Reply::status(429),
        Reply::status(204),
    ]);
    let http = client();
    let fixture = promtail_fixture();
    for tenant in ["acme", "acme", "acme", "beta"] {
        http.post(proxy.url("/loki/api/v1/push"))
            .header("content-type", "application/x-protobuf")
            .header("x-scope-orgid", tenant)
            .body(fixture.clone())
            .send()
            .await
            .unwrap();
    }
    // A push that Loki accepts but we cannot decode.
    http.post(proxy.url("/loki/api/v1/push"))
        .header("content-type", "application/x-protobuf")
        .header("x-scope-orgid", "beta")
        .body(b"not snappy".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(recorder.wait_for(3).await, 3);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let text = http
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let n = fixture.len() as f64;
    assert_eq!(
        metric_value(&text, r#"logwarden_push_requests_total{status="204"}"#),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, r#"logwarden_push_requests_total{status="429"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, r#"logwarden_push_bytes_total{tenant="acme"}"#),
        Some(3.0 * n)
    );
    assert_eq!(
        metric_value(&text, r#"logwarden_push_bytes_total{tenant="beta"}"#),
        Some(n + 10.0)
    );
    // The 429'd push is not inspected: 2 accepted acme pushes of 220 lines, 1 beta.
    assert_eq!(
        metric_value(&text, r#"logwarden_push_lines_total{tenant="acme"}"#),
        Some(440.0)
    );
    assert_eq!(
        metric_value(&text, r#"logwarden_push_lines_total{tenant="beta"}"#),
        Some(220.0)
    );
    assert_eq!(
        metric_value(&text, r#"logwarden_push_streams_total{tenant="acme"}"#),
        Some(6.0)
    );
    assert_eq!(
        metric_value(&text, r#"logwarden_decode_errors_total{reason="snappy"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            r#"logwarden_upstream_request_duration_seconds_count{route="push"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        metric_value(&text, "logwarden_inspect_queue_dropped_total"),
        Some(0.0)
    );

    if !require_tool("promtool") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool also reports lint problems (naming conventions) on stdout with exit status 0 on
    // older versions: there must be none.
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn ready_and_healthz() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(logwarden::inspect::CountOnly)).await;
    let http = client();
    assert_eq!(
        http.get(proxy.url("/ready")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        http.get(proxy.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(loki.requests().is_empty());
}

#[tokio::test]
async fn ready_turns_503_when_shutdown_begins_while_pushes_finish() {
    let loki = FakeLoki::start().await;
    loki.script([Reply::Delayed(std::time::Duration::from_millis(500), 204)]);
    let mut proxy = Proxy::start("", &loki.url(), Arc::new(logwarden::inspect::CountOnly)).await;
    let url = proxy.url("/loki/api/v1/push");
    let in_flight = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(promtail_fixture())
            .send()
            .await
            .unwrap()
            .status()
    });
    while loki.requests().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(proxy.app.is_ready());
    proxy.begin_stop();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !proxy.app.is_ready(),
        "/ready must answer 503 once shutdown begins"
    );
    assert_eq!(in_flight.await.unwrap(), 204);
}
