//! End to end through `serve`: pushes in, incidents detected once per attack (retries
//! included), analysed, delivered to Telegram and a webhook, and reported back into Loki.

use std::time::{Duration, Instant};

use logwarden::decode::{with_decoded, PushApi, PushMeta};

use crate::support::{auth_push, FakeLoki, Reply, Service};

use crate::notify_support;

#[path = "../analyze/fake_llm.rs"]
mod fake_llm;

use notify_support::FakeHttp;

const ATTACKER: &str = "203.0.113.42";

/// Ten failed root logins from one address, then split into pushes of 4, 4 and 2 lines.
fn brute_force_pushes(start_s: i64) -> Vec<Vec<u8>> {
    let lines: Vec<String> = (0..10)
        .map(|i| format!("Nov 26 01:00:{i:02} vps1 sshd[{}]: Failed password for root from {ATTACKER} port {} ssh2", 2000 + i, 40000 + i))
        .collect();
    vec![
        auth_push(&lines[0..4], start_s),
        auth_push(&lines[4..8], start_s + 4),
        auth_push(&lines[8..10], start_s + 8),
    ]
}

async fn push(svc: &Service, body: &[u8]) -> u16 {
    crate::support::push_as_acme(&svc.url("/loki/api/v1/push"), body).await
}

fn webhook_only(hook: &FakeHttp) -> String {
    format!(
        "inspect:\n  workers: 1\nreports:\n  loki: false\nnotify:\n  - type: webhook\n    url: {}/hook\n    min_severity: info\n",
        hook.url()
    )
}

/// Waits for `n` webhook calls, then a little longer to see that no more arrive.
async fn alerts(hook: &FakeHttp, n: usize) -> Vec<serde_json::Value> {
    hook.wait_for(n, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    hook.requests().iter().map(|r| r.json()).collect()
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn brute_force_through_serve_is_one_incident_with_the_right_count() {
    let loki = FakeLoki::start().await;
    let hook = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let svc = Service::start(&webhook_only(&hook), &loki.url(), &[]).await;
    for body in brute_force_pushes(now_s()) {
        assert_eq!(push(&svc, &body).await, 204);
    }
    let got = alerts(&hook, 1).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let incident = &got[0]["incident"];
    assert_eq!(incident["rule"], "ssh-brute-force");
    assert_eq!(incident["key"], ATTACKER);
    assert_eq!(incident["tenant"], "acme");
    // Fires on the 6th line (in the second push); the rest of that push is counted in.
    assert_eq!(incident["count"], 8);
    svc.stop().await;
}

#[tokio::test]
async fn retried_batches_still_make_one_incident_with_the_same_count() {
    let loki = FakeLoki::start().await;
    let hook = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let svc = Service::start(&webhook_only(&hook), &loki.url(), &[]).await;
    // Every batch is first refused with 500 (Promtail resends it), then accepted.
    for body in brute_force_pushes(now_s()) {
        loki.script([Reply::status(500)]);
        assert_eq!(push(&svc, &body).await, 500);
        assert_eq!(push(&svc, &body).await, 204);
    }
    let got = alerts(&hook, 1).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["incident"]["key"], ATTACKER);
    assert_eq!(got[0]["incident"]["count"], 8);
    assert_eq!(loki.requests().len(), 6, "every attempt was forwarded");
    svc.stop().await;
}

#[tokio::test]
async fn incident_reaches_telegram_webhook_and_the_loki_report_stream_within_a_second() {
    let loki = FakeLoki::start().await;
    let hook = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let telegram = FakeHttp::telegram().await;
    let yaml = format!(
        "inspect:\n  workers: 1\nnotify:\n  - type: telegram\n    url: {}\n    chat_id: 42\n    token_env: TG_TOKEN\n  - type: webhook\n    url: {}/hook\n",
        telegram.url(),
        hook.url()
    );
    let svc = Service::start(&yaml, &loki.url(), &[("TG_TOKEN", "123:secret-token")]).await;
    let pushes = brute_force_pushes(now_s());
    assert_eq!(push(&svc, &pushes[0]).await, 204);
    // The push that completes the window: time to alert is measured from its answer.
    assert_eq!(push(&svc, &pushes[1]).await, 204);
    let answered = Instant::now();
    let tg = telegram.wait_for(1, Duration::from_secs(10)).await;
    let wh = hook.wait_for(1, Duration::from_secs(10)).await;
    let to_alert = tg[0]
        .at
        .into_std()
        .max(wh[0].at.into_std())
        .saturating_duration_since(answered);
    eprintln!("time to alert (template analyzer): {to_alert:?}");
    assert!(
        to_alert < Duration::from_secs(1),
        "time to alert {to_alert:?}"
    );
    assert_eq!(push(&svc, &pushes[2]).await, 204);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // One Telegram message to the bot's chat, escaped HTML, with the token only in the path.
    let tg = telegram.requests();
    assert_eq!(tg.len(), 1);
    assert!(
        tg[0].path.contains("/bot123:secret-token/sendMessage"),
        "{}",
        tg[0].path
    );
    let msg = tg[0].json();
    assert_eq!(msg["chat_id"], 42);
    assert!(msg["text"].as_str().unwrap().contains(ATTACKER));
    // One webhook call with the report.
    let wh = hook.requests();
    assert_eq!(wh.len(), 1);
    let alert = wh[0].json();
    assert_eq!(alert["report"]["analyzer"], "template");
    assert_eq!(alert["report"]["severity"], "high");
    assert_eq!(alert["report"]["key"], ATTACKER);
    // One report line in Loki, in its own stream, for the incident's tenant.
    let reports: Vec<_> = loki
        .requests()
        .into_iter()
        .filter_map(|r| {
            let meta = PushMeta {
                content_type: r.headers.get("content-type").and_then(|v| v.to_str().ok()),
                content_encoding: None,
                api: PushApi::V1,
            };
            let tenant = r
                .headers
                .get("x-scope-orgid")
                .map(|v| v.to_str().unwrap().to_owned());
            with_decoded(&r.body, meta, Default::default(), |v| {
                v.streams
                    .iter()
                    .filter(|s| s.labels.get("job") == Some("logwarden"))
                    .flat_map(|s| {
                        s.entries.iter().map(move |e| {
                            (
                                s.labels.to_string(),
                                String::from_utf8_lossy(&e.line).into_owned(),
                            )
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .ok()
            .map(|lines| (tenant, lines))
        })
        .filter(|(_, lines)| !lines.is_empty())
        .collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let (tenant, lines) = &reports[0];
    assert_eq!(tenant.as_deref(), Some("acme"));
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].0.contains(r#"rule="ssh-brute-force""#),
        "{}",
        lines[0].0
    );
    let report: serde_json::Value = serde_json::from_str(&lines[0].1).unwrap();
    assert!(report.to_string().contains(ATTACKER));
    svc.stop().await;
}

#[tokio::test]
async fn stalled_llm_still_alerts_within_the_timeout_with_the_template_report() {
    let loki = FakeLoki::start().await;
    let hook = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let llm = fake_llm::FakeLlm::start().await;
    llm.script([fake_llm::Reply::Stall, fake_llm::Reply::Stall]);
    let yaml = format!(
        "inspect:\n  workers: 1\nreports:\n  loki: false\nanalyze:\n  backend: ollama\n  url: {}\n  model: qwen2.5:3b\n  timeout: 1s\nnotify:\n  - type: webhook\n    url: {}/hook\n",
        llm.url(),
        hook.url()
    );
    let svc = Service::start(&yaml, &loki.url(), &[]).await;
    let pushes = brute_force_pushes(now_s());
    assert_eq!(push(&svc, &pushes[0]).await, 204);
    assert_eq!(push(&svc, &pushes[1]).await, 204);
    let answered = Instant::now();
    let wh = hook.wait_for(1, Duration::from_secs(10)).await;
    let waited = wh[0].at.into_std().saturating_duration_since(answered);
    assert!(
        waited < Duration::from_millis(1800),
        "alert took {waited:?} with a 1s analysis timeout"
    );
    let alert = wh[0].json();
    assert_eq!(alert["report"]["analyzer"], "template");
    assert!(
        alert["report"]["note"]
            .as_str()
            .unwrap_or_default()
            .contains("within 1s"),
        "{alert}"
    );
    assert_eq!(alert["report"]["severity"], "high");
    assert!(!llm.requests().is_empty(), "the LLM was asked");
    svc.stop().await;
}
