//! Slack, webhook, e-mail, filtering, and isolation between channels.

use std::time::Duration;

use hmac::{Hmac, Mac};
use logwarden::incident::Severity;
use sha2::Sha256;
use tokio::time::Instant;

use crate::support::*;

fn env(name: &str) -> Option<String> {
    match name {
        "TG_TOKEN" => Some("4242:test-token".into()),
        "HMAC_KEY" => Some("shared-key".into()),
        _ => None,
    }
}

#[tokio::test]
async fn slack_gets_escaped_text_and_honours_retry_after() {
    let slack = FakeHttp::start(Reply::text(200, "ok"), None).await;
    slack.script([Reply::Answer(
        429,
        vec![
            ("retry-after", "1".into()),
            ("content-type", "text/plain".into()),
        ],
        "rate_limited".into(),
    )]);
    let url = format!("{}/services/T000/B000/XXXX", slack.url());
    let slack_env = move |name: &str| (name == "SLACK_URL").then(|| url.clone());
    let run = start(
        "- type: slack\n  url_env: SLACK_URL\n  retry: {backoff: 10ms}\n",
        NO_REPORTS,
        "http://127.0.0.1:9",
        &slack_env,
        Duration::from_secs(5),
    );
    run.send(hostile_alert()).await;
    let got = slack.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].path, "/services/T000/B000/XXXX");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "Retry-After ignored: retried after {gap:?}"
    );
    let text = got[1].json()["text"].as_str().unwrap().to_owned();
    assert!(text.contains("&lt;!channel&gt;"), "{text}");
    assert!(
        text.contains("&lt;script&gt;alert(1)&lt;/script&gt; AT&amp;T"),
        "{text}"
    );
    assert!(
        !text.contains("<!channel>") && !text.contains("<a href"),
        "{text}"
    );
    // Nothing else is entity-encoded: quotes stay quotes.
    assert!(text.contains("a=\"1\""), "{text}");
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"slack\",outcome=\"sent\"} 1",
    )
    .await;
    assert!(run
        .metrics()
        .contains("logwarden_notifications_total{channel=\"slack\",outcome=\"retried\"} 1"));
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn slack_200_without_ok_is_a_failure_not_retried() {
    let slack = FakeHttp::start(Reply::text(200, "invalid_payload_but_200"), None).await;
    let url = format!("{}/hook", slack.url());
    let slack_env = move |name: &str| (name == "SLACK_URL").then(|| url.clone());
    let run = start(
        "- type: slack\n  url_env: SLACK_URL\n  retry: {backoff: 10ms}\n",
        NO_REPORTS,
        "http://127.0.0.1:9",
        &slack_env,
        Duration::from_secs(5),
    );
    run.send(alert("r", Severity::High)).await;
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"slack\",outcome=\"failed\"} 1",
    )
    .await;
    assert_eq!(slack.requests().len(), 1);
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn webhook_body_is_signed_and_carries_headers() {
    let hook = FakeHttp::start(Reply::text(204, ""), None).await;
    let yaml = format!(
        "- type: webhook\n  url: {}/alerts\n  secret_env: HMAC_KEY\n  \
         headers: {{Authorization: \"Bearer abc\", X-Team: sec}}\n",
        hook.url()
    );
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    run.send(hostile_alert()).await;
    let got = hook.wait_for(1, Duration::from_secs(5)).await;
    let req = &got[0];
    assert_eq!(req.path, "/alerts");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("authorization"), Some("Bearer abc"));
    assert_eq!(req.header("x-team"), Some("sec"));
    let sig = req
        .header("x-logwarden-signature")
        .expect("signature header");
    let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"shared-key").unwrap();
    mac.update(&req.body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap())
        .expect("signature verifies over the exact body");
    // A different key does not verify: the check above can fail.
    let mut other = Hmac::<Sha256>::new_from_slice(b"other-key").unwrap();
    other.update(&req.body);
    assert!(other.verify_slice(&hex::decode(hex_sig).unwrap()).is_err());
    let body = req.json();
    assert_eq!(body["incident"]["id"], "a1b2c3");
    assert_eq!(body["report"]["summary"], "<script>alert(1)</script> AT&T");
    assert_eq!(body["report"]["severity"], "high");
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn webhook_retries_5xx_but_not_4xx() {
    let hook = FakeHttp::start(Reply::text(200, ""), None).await;
    hook.script([
        Reply::text(503, "busy"),
        Reply::text(502, "busy"),
        Reply::text(200, ""),
        Reply::text(404, "gone"),
    ]);
    let yaml = format!(
        "- type: webhook\n  url: {}/a\n  retry: {{backoff: 10ms}}\n",
        hook.url()
    );
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &no_env,
        Duration::from_secs(5),
    );
    run.send(alert("r", Severity::High)).await;
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"webhook\",outcome=\"sent\"} 1",
    )
    .await;
    run.send(alert("r", Severity::High)).await;
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"webhook\",outcome=\"failed\"} 1",
    )
    .await;
    assert_eq!(hook.requests().len(), 4);
    assert!(run
        .metrics()
        .contains("logwarden_notifications_total{channel=\"webhook\",outcome=\"retried\"} 2"));
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn filters_apply_per_notifier() {
    let tg = FakeHttp::telegram().await;
    let hook = FakeHttp::start(Reply::text(200, ""), None).await;
    let yaml = format!(
        "- type: telegram\n  url: {}\n  chat_id: 1\n  token_env: TG_TOKEN\n  min_severity: high\n\
         - type: webhook\n  url: {}/a\n  rules: [web_scan]\n",
        tg.url(),
        hook.url()
    );
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    run.send(alert("ssh_brute_force", Severity::Medium)).await; // neither
    run.send(alert("ssh_brute_force", Severity::Critical)).await; // telegram only
    run.send(alert("web_scan", Severity::Low)).await; // webhook only
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"webhook\",outcome=\"sent\"} 1",
    )
    .await;
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"telegram\",outcome=\"sent\"} 1",
    )
    .await;
    let m = run.metrics();
    assert!(
        m.contains("logwarden_notifications_total{channel=\"telegram\",outcome=\"filtered\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("logwarden_notifications_total{channel=\"webhook\",outcome=\"filtered\"} 2"),
        "{m}"
    );
    assert_eq!(tg.requests().len(), 1);
    assert_eq!(hook.requests()[0].json()["report"]["rule"], "web_scan");
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn stalled_channel_delays_neither_others_nor_the_intake() {
    let stalled = FakeHttp::start(Reply::Stall, None).await;
    let tg = FakeHttp::telegram().await;
    let yaml = format!(
        "- type: webhook\n  name: stuck\n  url: {}/a\n  timeout: 30s\n  queue_capacity: 1\n\
         - type: telegram\n  url: {}\n  chat_id: 1\n  token_env: TG_TOKEN\n",
        stalled.url(),
        tg.url()
    );
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_millis(300),
    );
    let started = Instant::now();
    for _ in 0..5 {
        run.send(alert("ssh_brute_force", Severity::High)).await;
    }
    let intake = started.elapsed();
    let got = tg.wait_for(5, Duration::from_secs(5)).await;
    let all_sent = got.last().unwrap().at - started;
    eprintln!("intake of 5 alerts took {intake:?}; 5th telegram message after {all_sent:?}");
    assert_eq!(got.len(), 5);
    assert!(
        intake < Duration::from_millis(200),
        "intake blocked: {intake:?}"
    );
    assert!(
        all_sent < Duration::from_secs(2),
        "telegram held up: {all_sent:?}"
    );
    // The stuck webhook holds one queued and at most one in flight: three or four are dropped
    // (four when the fan-out ran ahead of the worker's first receive).
    let dropped = metric_value(
        &run.metrics(),
        "logwarden_notifications_total{channel=\"stuck\",outcome=\"dropped\"}",
    );
    assert!((3.0..=4.0).contains(&dropped), "dropped {dropped}");
    // Shutdown is bounded although the webhook never answers.
    let took = run.close(Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "drain took {took:?}");
}

#[tokio::test]
async fn time_to_alert_is_well_under_a_second() {
    let tg = FakeHttp::telegram().await;
    let yaml = format!(
        "- type: telegram\n  url: {}\n  chat_id: 1\n  token_env: TG_TOKEN\n",
        tg.url()
    );
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    let mut worst = Duration::ZERO;
    for n in 0..20 {
        let sent = Instant::now();
        run.send(alert("ssh_brute_force", Severity::High)).await;
        let got = tg.wait_for(n + 1, Duration::from_secs(5)).await;
        worst = worst.max(got[n].at - sent);
    }
    eprintln!(
        "dispatch latency (alert handed over -> Telegram request received), worst of 20: {worst:?}"
    );
    assert!(worst < Duration::from_millis(250), "{worst:?}");
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn email_is_delivered_as_plain_text() {
    let smtp = FakeSmtp::start().await;
    let yaml = format!(
        "- type: email\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  \
         from: \"logwarden <alerts@example.org>\"\n  to: [ops@example.org, sec@example.org]\n",
        smtp.addr.port()
    );
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &no_env,
        Duration::from_secs(5),
    );
    run.send(hostile_alert()).await;
    let mails = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1, "no mail arrived");
    let mail = &mails[0];
    assert_eq!(mail.from, "<alerts@example.org>");
    assert_eq!(mail.to, vec!["<ops@example.org>", "<sec@example.org>"]);
    let data = &decode_body(&mail.data);
    assert!(
        data.contains("Subject: logwarden [HIGH] ssh_brute_force:"),
        "{data}"
    );
    assert!(data.contains("Content-Type: text/plain"), "{data}");
    assert!(
        data.contains("To: ops@example.org, sec@example.org"),
        "{data}"
    );
    // Plain text: the hostile lines are there as they were, nothing interprets them.
    assert!(data.contains("</pre><b>forged</b> & <i>"), "{data}");
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"email\",outcome=\"sent\"} 1",
    )
    .await;
    run.close(Duration::from_secs(5)).await;
}

/// Undoes quoted-printable in the body when the message says it used it (lettre picks it for
/// mostly-ASCII text with a few non-ASCII characters, such as the severity icon).
fn decode_body(data: &str) -> String {
    if !data.contains("Content-Transfer-Encoding: quoted-printable") {
        return data.to_owned();
    }
    let joined = data.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn https_urls_speak_tls() {
    // A raw listener: the first bytes of an https request are a TLS ClientHello (record type
    // 0x16, version 3.x), which shows the rustls + ring stack is built in and installed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let yaml =
        format!("- type: webhook\n  url: https://127.0.0.1:{port}/\n  retry: {{attempts: 1}}\n");
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &no_env,
        Duration::from_secs(5),
    );
    run.send(alert("r", Severity::High)).await;
    let (mut sock, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut head = [0u8; 3];
    tokio::io::AsyncReadExt::read_exact(&mut sock, &mut head)
        .await
        .unwrap();
    assert_eq!(head[0], 0x16, "not a TLS handshake record: {head:?}");
    assert_eq!(head[1], 0x03);
    drop(sock);
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"webhook\",outcome=\"failed\"} 1",
    )
    .await;
    run.close(Duration::from_secs(5)).await;
}
