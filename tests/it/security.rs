//! Optional client authentication: each credential maps to a tenant that logwarden sets as
//! `X-Scope-OrgID`; nothing unauthenticated reaches Loki; the credential is not passed on.

use std::sync::Arc;

use logwarden::inspect::CountOnly;
use sha2::Digest;

use crate::support::{client, promtail_fixture, FakeLoki, Proxy};

fn sha(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

async fn with_auth(loki: &FakeLoki, protect_metrics: bool) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.yml");
    std::fs::write(
        &file,
        format!(
            "tokens:\n  - sha256: {}\n    tenant: acme\nusers:\n  - name: promtail\n    password_sha256: {}\n    tenant: beta\n",
            sha("token-acme"),
            sha("pw-beta")
        ),
    )
    .unwrap();
    let yaml = format!(
        "auth:\n  file: {}\n  protect_metrics: {protect_metrics}\n",
        file.display()
    );
    (
        Proxy::start(&yaml, &loki.url(), Arc::new(CountOnly)).await,
        dir,
    )
}

#[tokio::test]
async fn unauthenticated_requests_get_401_and_never_reach_loki() {
    let loki = FakeLoki::start().await;
    let (proxy, _dir) = with_auth(&loki, false).await;
    let r = proxy.push_fixture().send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(
        proxy
            .push_fixture()
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        proxy
            .push_fixture()
            .basic_auth("promtail", Some("wrong"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let q = client()
        .get(proxy.url("/loki/api/v1/labels"))
        .send()
        .await
        .unwrap();
    assert_eq!(q.status(), 401);
    assert!(loki.requests().is_empty());
    assert_eq!(
        proxy
            .app
            .metrics()
            .push_rejected
            .with_label_values(&["unauthorized"])
            .get(),
        3
    );
    // Probes stay open.
    assert_eq!(
        client()
            .get(proxy.url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(proxy.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn credentials_set_the_tenant_and_are_not_forwarded() {
    let loki = FakeLoki::start().await;
    let (proxy, _dir) = with_auth(&loki, false).await;
    // A client that claims another tenant still writes only to its own.
    let r = proxy
        .push_fixture()
        .bearer_auth("token-acme")
        .header("x-scope-orgid", "victim")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = proxy
        .push_fixture()
        .basic_auth("promtail", Some("pw-beta"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let q = client()
        .get(proxy.url("/loki/api/v1/labels"))
        .bearer_auth("token-acme")
        .send()
        .await
        .unwrap();
    assert_eq!(q.status(), 204);
    let got = loki.requests();
    assert_eq!(got.len(), 3);
    let tenants: Vec<_> = got
        .iter()
        .map(|r| r.headers["x-scope-orgid"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(tenants, ["acme", "beta", "acme"]);
    assert!(got.iter().all(|r| !r.headers.contains_key("authorization")));
    // The body is still forwarded byte for byte.
    assert_eq!(got[0].body, promtail_fixture());
    // Metrics count the mapped tenant; no secret appears in them.
    let text = proxy.app.render_metrics();
    assert!(
        text.contains(r#"logwarden_push_bytes_total{tenant="acme"}"#),
        "{text}"
    );
    assert!(!text.contains("victim") && !text.contains("token-acme") && !text.contains("pw-beta"));
}

#[tokio::test]
async fn metrics_can_be_protected() {
    let loki = FakeLoki::start().await;
    let (proxy, _dir) = with_auth(&loki, true).await;
    assert_eq!(
        client()
            .get(proxy.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ok = client()
        .get(proxy.url("/metrics"))
        .bearer_auth("token-acme")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        client()
            .get(proxy.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Every secret a deployment holds, and an attempt to use a wrong one, never shows in logs (at
/// debug level), `/metrics`, error bodies or the reports written into Loki, with every backend
/// failing so every error path is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_metrics_error_bodies_or_reports() {
    use std::time::Duration;

    use crate::notify_support::{FakeHttp, Reply};
    use crate::support::{closed_port, metric_sum, ServeProcess, StoringLoki};

    const AUTH_TOKEN: &str = "tok-AUTH-SECRET-1";
    const WRONG_TOKEN: &str = "tok-WRONG-SECRET-2";
    const BASIC_PW: &str = "pw-BASIC-SECRET-3";
    const TG_TOKEN: &str = "999:TG-SECRET-4";
    const HOOK_KEY: &str = "HMAC-SECRET-5";
    const HOOK_HEADER: &str = "HOOKHDR-SECRET-6";
    const LLM_KEY: &str = "sk-LLM-SECRET-7";
    const REDIS_PW: &str = "REDIS-SECRET-8";
    const LOKI_PW: &str = "LOKI-SECRET-9";
    const SLACK_PATH: &str = "/services/T1/B1/SLACK-SECRET-10";
    let secrets = [
        AUTH_TOKEN,
        WRONG_TOKEN,
        BASIC_PW,
        TG_TOKEN,
        "TG-SECRET",
        HOOK_KEY,
        HOOK_HEADER,
        LLM_KEY,
        REDIS_PW,
        LOKI_PW,
        "SLACK-SECRET",
    ];

    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("auth.yml");
    std::fs::write(
        &auth_file,
        format!(
            "tokens:\n  - sha256: {}\n    tenant: acme\nusers:\n  - name: promtail\n    password_sha256: {}\n    tenant: beta\n",
            sha(AUTH_TOKEN),
            sha(BASIC_PW)
        ),
    )
    .unwrap();
    let loki = StoringLoki::start().await;
    // Every backend fails: Telegram refuses the token, the webhook's port is closed, Slack
    // answers 500, Redis is not there, and the LLM answers 401 quoting the key it was given
    // (as some OpenAI-compatible gateways do).
    let telegram = FakeHttp::start(
        Reply::json(
            401,
            serde_json::json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
        ),
        None,
    )
    .await;
    let slack = FakeHttp::start(Reply::text(500, "rollup_error"), None).await;
    let llm = FakeHttp::start(
        Reply::json(
            401,
            serde_json::json!({"error": {"message": format!("Incorrect API key provided: {LLM_KEY}"), "type": "invalid_request_error"}}),
        ),
        None,
    )
    .await;
    let yaml = format!(
        "upstream:\n  timeout: 2s\nauth:\n  file: {auth}\ninspect:\n  workers: 1\n\
         state:\n  backend: redis\n  redis_url: redis://default:{REDIS_PW}@127.0.0.1:{redis}\n\
         analyze:\n  backend: openai\n  url: {llm}\n  model: m\n  api_key_env: LLM_KEY\n  timeout: 3s\n\
         notify:\n\
         - type: telegram\n  url: {tg}\n  chat_id: 1\n  token_env: TG_TOKEN\n  min_severity: info\n  retry: {{attempts: 1}}\n\
         - type: webhook\n  url: http://127.0.0.1:{closed}/hook\n  secret_env: HOOK_KEY\n  \
           headers: {{Authorization: \"Bearer {HOOK_HEADER}\"}}\n  min_severity: info\n  retry: {{attempts: 2, backoff: 10ms}}\n\
         - type: slack\n  url_env: SLACK_URL\n  min_severity: info\n  retry: {{attempts: 1}}\n",
        auth = auth_file.display(),
        redis = closed_port(),
        llm = llm.url(),
        tg = telegram.url(),
        closed = closed_port(),
    );
    let upstream = format!("http://loki:{LOKI_PW}@{}", loki.addr);
    let slack_url = format!("{}{SLACK_PATH}", slack.url());
    let serve = ServeProcess::start_with_log_level(
        &yaml,
        &upstream,
        &[
            ("TG_TOKEN", TG_TOKEN),
            ("HOOK_KEY", HOOK_KEY),
            ("LLM_KEY", LLM_KEY),
            ("SLACK_URL", &slack_url),
        ],
        "debug",
    )
    .await;

    let mut bodies = Vec::new();
    let push = |token: Option<&str>| {
        let mut req = client()
            .post(serve.url("/loki/api/v1/push"))
            .header("content-type", "application/x-protobuf");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req
    };
    // A wrong token and a wrong password: 401, and the attempt is not echoed anywhere.
    for req in [
        push(Some(WRONG_TOKEN)).body(promtail_fixture()),
        push(None)
            .basic_auth("promtail", Some(WRONG_TOKEN))
            .body(promtail_fixture()),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        bodies.push(r.text().await.unwrap());
    }
    // A brute force with the right credentials raises an incident that every channel fails on.
    let lines: Vec<String> = (0..8)
        .map(|i| format!("Nov 26 01:00:0{i} vps1 sshd[5{i}]: Failed password for root from 203.0.113.90 port 4300{i} ssh2"))
        .collect();
    let body = crate::support::auth_push(&lines, chrono::Utc::now().timestamp());
    let r = push(Some(AUTH_TOKEN))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    bodies.push(r.text().await.unwrap());
    let r = push(None)
        .basic_auth("promtail", Some(BASIC_PW))
        .body(promtail_fixture())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Each channel failed, so their error paths ran.
    for _ in 0..200 {
        let m = serve.metrics().await;
        if ["telegram", "webhook", "slack"].iter().all(|c| {
            metric_sum(
                &m,
                "logwarden_notifications_total",
                &[&format!("channel=\"{c}\""), "outcome=\"failed\""],
            ) >= 1.0
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Loki down: the 502 body.
    loki.kill().await;
    let r = push(Some(AUTH_TOKEN)).body(body).send().await.unwrap();
    assert_eq!(r.status(), 502);
    bodies.push(r.text().await.unwrap());
    let r = client()
        .get(serve.url("/loki/api/v1/labels"))
        .bearer_auth(AUTH_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    bodies.push(r.text().await.unwrap());
    loki.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let metrics = serve.metrics().await;
    let logs = serve.output();
    let reports = loki.reports();
    // The checks below look at real output: the failures were logged, the report was written.
    assert!(logs.contains("alert delivery failed"), "{logs}");
    assert!(logs.contains("llm request failed"), "{logs}");
    assert!(!llm.requests().is_empty() && !telegram.requests().is_empty());
    assert!(!reports.is_empty(), "no report reached Loki");
    let report_text: String = reports
        .iter()
        .map(|r| format!("{} {}\n", r.labels, r.line))
        .collect();
    for secret in secrets {
        for (what, text) in [
            ("logs", &logs),
            ("/metrics", &metrics),
            ("error bodies", &bodies.join("\n")),
            ("reports in Loki", &report_text),
        ] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {what}:\n{}",
                text.lines()
                    .filter(|l| l.contains(secret))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
