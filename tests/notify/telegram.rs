//! Telegram: escaping, splitting, 429 `retry_after`, no retry on 400.

use std::time::Duration;

use logwarden::incident::Severity;

use crate::support::*;

fn config(url: &str) -> String {
    format!(
        "- type: telegram\n  url: {url}\n  chat_id: -100123\n  token_env: TG_TOKEN\n  \
         retry: {{attempts: 3, backoff: 10ms}}\n"
    )
}

fn env(name: &str) -> Option<String> {
    (name == "TG_TOKEN").then(|| "4242:test-token".to_owned())
}

#[tokio::test]
async fn hostile_text_arrives_as_visible_text() {
    let tg = FakeHttp::telegram().await;
    let run = start(
        &config(&tg.url()),
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    run.send(hostile_alert()).await;
    let got = tg.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "one message expected");
    let req = &got[0];
    assert_eq!(req.path, "/bot4242:test-token/sendMessage");
    let body = req.json();
    assert_eq!(body["parse_mode"], "HTML");
    assert_eq!(body["chat_id"], -100123);
    assert_eq!(body["link_preview_options"]["is_disabled"], true);
    let text = body["text"].as_str().unwrap();
    let parsed = parse_telegram_html(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    // Only our own markup became tags: no link, no script, nothing forged.
    assert!(
        parsed
            .tags
            .iter()
            .all(|t| ["b", "i", "code", "pre"].contains(&t.as_str())),
        "{:?}",
        parsed.tags
    );
    for raw in [
        "<script>alert(1)</script> AT&T",
        "</b><a href=\"https://evil.example/\">click</a> &amp; <!channel>",
        "</pre><b>forged</b> & <i>",
        "GET /?q=<script>x</script>&a=\"1\" HTTP/1.1",
        "<a href=\"tg://user?id=1\">me</a>",
        "<b>k</b>",
    ] {
        assert!(
            parsed.visible.contains(raw),
            "{raw:?} not visible in {:?}",
            parsed.visible
        );
    }
    assert!(
        text.contains("&lt;script&gt;") && text.contains("AT&amp;T"),
        "{text}"
    );
    assert!(
        !text.contains("&apos;") && !text.contains("&#39;"),
        "{text}"
    );
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn long_report_is_split_into_valid_chunks() {
    let tg = FakeHttp::telegram().await;
    let run = start(
        &config(&tg.url()),
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    let mut alert = hostile_alert();
    alert.report.evidence = (0..400)
        .map(|i| format!("{i:04} <tag> & {} 😀 end", "x".repeat(60 + i % 40)))
        .collect();
    // One line longer than a whole message must be cut, not dropped.
    alert
        .report
        .evidence
        .push(format!("LONG{}END", "y".repeat(9000)));
    let expected = alert.report.evidence.clone();
    run.send(alert).await;
    wait_metric(
        &run,
        "logwarden_notifications_total{channel=\"telegram\",outcome=\"sent\"} 1",
    )
    .await;
    let got = tg.requests();
    assert!(got.len() >= 8, "expected many chunks, got {}", got.len());
    let mut all_visible = String::new();
    for (n, req) in got.iter().enumerate() {
        let text = req.json()["text"].as_str().unwrap().to_owned();
        let parsed = parse_telegram_html(&text).unwrap_or_else(|e| panic!("chunk {n}: {e}"));
        let chars = parsed.visible.chars().count();
        let units = parsed.visible.encode_utf16().count();
        assert!(
            chars <= 4096 && units <= 4096,
            "chunk {n}: {chars} chars, {units} UTF-16 units"
        );
        assert_eq!(part(&parsed.visible), (n + 1, got.len()), "chunk {n} label");
        // Each chunk that holds evidence opens and closes its own <pre>.
        assert_eq!(
            text.matches("<pre>").count(),
            text.matches("</pre>").count()
        );
        let body = parsed.visible.rsplit_once('\n').unwrap().0;
        all_visible.push_str(body);
        all_visible.push('\n');
    }
    // Every evidence line arrived, in order (the cut one in pieces).
    let mut from = 0;
    for line in &expected[..expected.len() - 1] {
        let at = all_visible[from..]
            .find(line.as_str())
            .unwrap_or_else(|| panic!("missing {line}"));
        from += at + line.len();
    }
    let ys = all_visible.matches('y').count();
    assert!(ys >= 9000, "the over-long line lost characters: {ys}");
    assert!(tg
        .requests()
        .iter()
        .all(|r| r.json()["text"].as_str().unwrap().len() > 10));
    let metrics = run.metrics();
    assert!(
        metrics.contains("logwarden_notifications_total{channel=\"telegram\",outcome=\"sent\"} 1"),
        "{metrics}"
    );
    run.close(Duration::from_secs(5)).await;
}

fn part(visible: &str) -> (usize, usize) {
    let last = visible.lines().last().unwrap();
    let (i, n) = last
        .trim()
        .strip_prefix("part ")
        .unwrap()
        .split_once('/')
        .unwrap();
    (i.parse().unwrap(), n.parse().unwrap())
}

#[tokio::test]
async fn rate_limit_waits_retry_after_then_succeeds() {
    let tg = FakeHttp::telegram().await;
    tg.script([Reply::json(
        429,
        serde_json::json!({"ok": false, "error_code": 429,
            "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}),
    )]);
    let run = start(
        &config(&tg.url()),
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    run.send(alert("ssh_brute_force", Severity::High)).await;
    let got = tg.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    // The backoff is 10ms: only retry_after explains a wait of a second.
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(gap < Duration::from_millis(1900), "retried after {gap:?}");
    assert_eq!(got[0].body, got[1].body, "the same message is resent");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let m = run.metrics();
    assert!(
        m.contains("logwarden_notifications_total{channel=\"telegram\",outcome=\"retried\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("logwarden_notifications_total{channel=\"telegram\",outcome=\"sent\"} 1"),
        "{m}"
    );
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_request_is_not_retried() {
    let tg = FakeHttp::telegram().await;
    tg.script([Reply::json(
        400,
        serde_json::json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
    )]);
    let run = start(
        &config(&tg.url()),
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    run.send(alert("ssh_brute_force", Severity::High)).await;
    tg.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tg.requests().len(), 1);
    let m = run.metrics();
    assert!(
        m.contains("logwarden_notifications_total{channel=\"telegram\",outcome=\"failed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("logwarden_notifications_total{channel=\"telegram\",outcome=\"retried\"} 0"),
        "{m}"
    );
    run.close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn migrated_group_is_resent_to_the_new_chat() {
    let tg = FakeHttp::telegram().await;
    tg.script([Reply::json(
        400,
        serde_json::json!({"ok": false, "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a supergroup chat",
            "parameters": {"migrate_to_chat_id": -1009999}}),
    )]);
    let run = start(
        &config(&tg.url()),
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    run.send(alert("ssh_brute_force", Severity::High)).await;
    let got = tg.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[0].json()["chat_id"], -100123);
    assert_eq!(got[1].json()["chat_id"], -1009999);
    run.close(Duration::from_secs(5)).await;
}
