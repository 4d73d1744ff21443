//! Secrets never reach logs or metrics, even when every channel fails.

use std::time::Duration;

use logwarden::incident::Severity;

use crate::support::*;

const TOKEN: &str = "777:TOKEN-SECRET-tg";
const SLACK_PATH: &str = "/services/T1/B1/SLACKSECRET";
const HMAC: &str = "HMAC-SECRET-key";
const HEADER: &str = "Bearer HEADER-SECRET";

#[tokio::test]
async fn secrets_stay_out_of_logs_and_metrics() {
    let (logs, _guard) = Logs::capture();
    let tg = FakeHttp::telegram().await;
    // Unauthorized, then server errors: every path that logs an error is taken.
    tg.script([Reply::json(
        401,
        serde_json::json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
    )]);
    let slack = FakeHttp::start(Reply::text(500, "rollup_error"), None).await;
    // A closed port: connection refused, the error reqwest would print with its URL.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let slack_url = format!("{}{SLACK_PATH}", slack.url());
    let env = move |name: &str| match name {
        "TG" => Some(TOKEN.to_owned()),
        "SLACK" => Some(slack_url.clone()),
        "HMAC" => Some(HMAC.to_owned()),
        _ => None,
    };
    let yaml = format!(
        "- type: telegram\n  url: {tg}\n  chat_id: 1\n  token_env: TG\n  retry: {{attempts: 1}}\n\
         - type: telegram\n  name: tg-down\n  url: http://127.0.0.1:{closed}\n  chat_id: 1\n  token_env: TG\n  \
           retry: {{attempts: 2, backoff: 10ms}}\n\
         - type: slack\n  url_env: SLACK\n  retry: {{attempts: 2, backoff: 10ms}}\n\
         - type: webhook\n  url: http://127.0.0.1:{closed}/hook\n  secret_env: HMAC\n  \
           headers: {{Authorization: \"{HEADER}\"}}\n  retry: {{attempts: 2, backoff: 10ms}}\n",
        tg = tg.url(),
    );
    let run = start(
        &yaml,
        NO_REPORTS,
        "http://127.0.0.1:9",
        &env,
        Duration::from_secs(5),
    );
    run.send(alert("ssh_brute_force", Severity::High)).await;
    for channel in ["telegram", "tg-down", "slack", "webhook"] {
        wait_metric(
            &run,
            &format!("logwarden_notifications_total{{channel=\"{channel}\",outcome=\"failed\"}} 1"),
        )
        .await;
    }
    let metrics = run.metrics();
    run.close(Duration::from_secs(5)).await;
    let text = logs.text();
    // The failures were logged (so the check below looks at real error output)...
    assert!(text.contains("alert delivery failed"), "{text}");
    assert!(
        text.contains("reason=\"network\"") || text.contains("reason=network"),
        "{text}"
    );
    assert!(text.contains("HTTP 401"), "{text}");
    // ...without any secret in them.
    for secret in [TOKEN, "TOKEN-SECRET", "SLACKSECRET", HMAC, "HEADER-SECRET"] {
        assert!(!text.contains(secret), "{secret} leaked into logs:\n{text}");
        assert!(!metrics.contains(secret), "{secret} leaked into metrics");
    }
}
