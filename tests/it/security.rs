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
