//! Reports into Loki (snappy protobuf push, decoded here with the crate's own decoder) and into
//! a JSON-lines file.

use std::time::Duration;

use logwarden::decode::{with_decoded, DecodeLimits, PushApi, PushMeta};
use logwarden::incident::Severity;

use crate::support::*;

/// (labels, line) of every entry of a push body.
fn entries(body: &[u8], content_type: Option<&str>) -> Vec<(Vec<(String, String)>, String)> {
    let meta = PushMeta {
        content_type,
        content_encoding: None,
        api: PushApi::V1,
    };
    with_decoded(body, meta, DecodeLimits::default(), |view| {
        let mut out = Vec::new();
        for stream in &view.streams {
            let labels: Vec<(String, String)> = stream
                .labels
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            for entry in &stream.entries {
                assert!(
                    entry.timestamp_ns > 1_600_000_000_000_000_000,
                    "timestamp is now-ish"
                );
                out.push((
                    labels.clone(),
                    String::from_utf8(entry.line.to_vec()).unwrap(),
                ));
            }
        }
        out
    })
    .expect("the report push decodes")
}

#[tokio::test]
async fn report_is_pushed_to_loki_in_its_own_stream() {
    let loki = FakeHttp::start(Reply::text(204, ""), None).await;
    let run = start(
        "[]",
        "loki: true",
        &loki.url(),
        &no_env,
        Duration::from_secs(5),
    );
    let mut a = hostile_alert();
    a.report.severity = Severity::Critical;
    run.send(a).await;
    let got = loki.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.path, "/loki/api/v1/push");
    assert_eq!(
        req.header("x-scope-orgid"),
        Some("acme"),
        "the incident's tenant"
    );
    assert_eq!(req.header("content-type"), Some("application/x-protobuf"));
    let entries = entries(&req.body, req.header("content-type"));
    assert_eq!(entries.len(), 1);
    let (labels, line) = &entries[0];
    let want: Vec<(String, String)> = [
        ("job", "logwarden"),
        ("rule", "ssh_brute_force"),
        ("severity", "critical"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(labels, &want);
    assert!(!line.contains('\n'), "one line");
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(json["incident_id"], "a1b2c3");
    assert_eq!(json["severity"], "critical");
    assert_eq!(json["summary"], "<script>alert(1)</script> AT&T");
    assert_eq!(json["count"], 12);
    assert_eq!(json["first_seen"], "2023-11-14T22:13:21.000Z");
    assert_eq!(json["labels"]["host"], "vps1");
    wait_metric(
        &run,
        "logwarden_reports_written_total{outcome=\"written\",sink=\"loki\"} 1",
    )
    .await;
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn report_push_uses_configured_tenant_and_retries_429() {
    let loki = FakeHttp::start(Reply::text(204, ""), None).await;
    loki.script([Reply::Answer(
        429,
        vec![("retry-after", "0".into())],
        "slow down".into(),
    )]);
    let run = start(
        "[]",
        "tenant: reports",
        &loki.url(),
        &no_env,
        Duration::from_secs(5),
    );
    run.send(alert("ssh_brute_force", Severity::High)).await;
    let got = loki.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .all(|r| r.header("x-scope-orgid") == Some("reports")));
    assert_eq!(
        got[0].body, got[1].body,
        "a retry is an exact duplicate, which Loki drops"
    );
    wait_metric(
        &run,
        "logwarden_reports_written_total{outcome=\"written\",sink=\"loki\"} 1",
    )
    .await;
    assert!(run
        .metrics()
        .contains("logwarden_reports_written_total{outcome=\"retried\",sink=\"loki\"} 1"));
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn reports_are_appended_to_the_jsonl_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.jsonl");
    let yaml = format!("loki: false\nfile: {}\n", path.display());
    let run = start(
        "[]",
        &yaml,
        "http://127.0.0.1:9",
        &no_env,
        Duration::from_secs(5),
    );
    run.send(hostile_alert()).await;
    let mut second = alert("web_scan", Severity::Low);
    second.report.explanation = "line one\nline two".into();
    run.send(second).await;
    run.close(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(first["rule"], "ssh_brute_force");
    assert_eq!(second["rule"], "web_scan");
    assert_eq!(second["explanation"], "line one\nline two");
}
