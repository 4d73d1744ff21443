//! A real Alertmanager (Debian's `prometheus-alertmanager`) receives our alerts.

use std::process::Stdio;
use std::time::Duration;

use logwarden::incident::Severity;

use crate::support::*;

const BINARY: &str = "prometheus-alertmanager";

struct Alertmanager {
    url: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn start_alertmanager() -> Alertmanager {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: blackhole\n  group_wait: 1h\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(BINARY)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start alertmanager");
    let url = format!("http://127.0.0.1:{port}");
    let http = logwarden::http::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    for _ in 0..200 {
        if let Ok(resp) = http.get(format!("{url}/api/v2/status")).send().await {
            if resp.status().is_success() {
                return Alertmanager {
                    url,
                    _child: child,
                    _dir: dir,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("alertmanager did not become ready on {url}");
}

async fn alerts(url: &str) -> Vec<serde_json::Value> {
    let http = logwarden::http::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    http.get(format!("{url}/api/v2/alerts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn real_alertmanager_lists_the_alert_with_our_labels() {
    if !require_tool(BINARY) {
        return;
    }
    logwarden::notify::install_crypto_provider();
    let am = start_alertmanager().await;
    let yaml = format!(
        "- type: alertmanager\n  url: {}\n  ends_after: 20m\n",
        am.url
    );
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &no_env,
        Duration::from_secs(5),
    );
    let first = hostile_alert();
    run.send(first.clone()).await;
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"alertmanager\",outcome=\"sent\"} 1",
    )
    .await;
    let listed = alerts(&am.url).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let a = &listed[0];
    let labels = a["labels"].as_object().unwrap();
    let want = serde_json::json!({
        "alertname": "ssh_brute_force",
        "severity": "high",
        "key": "<b>k</b>",
        "instance": "vps1",
        "tenant": "acme",
    });
    assert_eq!(serde_json::Value::Object(labels.clone()), want);
    assert_eq!(a["status"]["state"], "active");
    assert_eq!(
        a["annotations"]["summary"],
        "<script>alert(1)</script> AT&T"
    );
    assert_eq!(a["annotations"]["count"], "12");
    assert_eq!(a["startsAt"], "2023-11-14T22:13:21.000Z");
    let ends = chrono::DateTime::parse_from_rfc3339(a["endsAt"].as_str().unwrap()).unwrap();
    let in_minutes = (ends.timestamp() - chrono::Utc::now().timestamp()) / 60;
    assert!(
        (18..=20).contains(&in_minutes),
        "endsAt in {in_minutes} min"
    );

    // A follow-up with new counts and wording updates the same alert.
    let mut follow = first;
    follow.incident.follow_up = true;
    follow.incident.sequence = 1;
    follow.incident.count = 57;
    follow.report.severity = Severity::Critical;
    run.send(follow).await;
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"alertmanager\",outcome=\"sent\"} 2",
    )
    .await;
    let listed = alerts(&am.url).await;
    assert_eq!(
        listed.len(),
        1,
        "a follow-up must not create a second alert: {listed:#?}"
    );
    assert_eq!(listed[0]["annotations"]["count"], "57");
    assert_eq!(listed[0]["annotations"]["assessed_severity"], "critical");
    assert_eq!(listed[0]["fingerprint"], a["fingerprint"]);
    run.close(Duration::from_secs(5)).await;
}
