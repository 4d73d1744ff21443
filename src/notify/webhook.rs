//! Webhook: a JSON POST of the whole [`Alert`] (`{"incident": …, "report": …}`) to any URL.
//!
//! With a shared key (`secret_env`/`secret_file`) each request carries
//! `X-Logwarden-Signature: sha256=<lowercase hex of HMAC-SHA256(key, body)>` over the exact
//! bytes sent, so a receiver can verify the body before parsing it. Custom headers (e.g.
//! `Authorization`) are added as configured and marked sensitive. 2xx is success; 429, 5xx and
//! network errors are retried; delivery is at-least-once, so receivers deduplicate on
//! `incident.id` + `incident.sequence`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue};
use sha2::Sha256;

use super::config::{Channel, ChannelKind};
use super::{BoxFuture, Notifier, NotifyError, Retrier};
use crate::report::Alert;

/// Returns `sha256=<hex>`: the HMAC-SHA256 of `body` under `key`, as the signature header holds it.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts alerts as JSON to one URL.
pub struct WebhookNotifier {
    http: reqwest::Client,
    url: reqwest::Url,
    headers: Vec<(HeaderName, HeaderValue)>,
    secret: Option<Vec<u8>>,
    signature_header: HeaderName,
    timeout: Duration,
}

impl WebhookNotifier {
    pub(crate) fn new(channel: &Channel, http: reqwest::Client, timeout: Duration) -> Self {
        let ChannelKind::Webhook {
            url,
            headers,
            secret,
            signature_header,
        } = &channel.kind
        else {
            unreachable!("built for webhook channels only")
        };
        WebhookNotifier {
            http,
            url: url.clone(),
            headers: headers.clone(),
            secret: secret.clone(),
            signature_header: signature_header.clone(),
            timeout,
        }
    }

    async fn post(&self, body: &[u8]) -> Result<(), NotifyError> {
        let mut req = self
            .http
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        if let Some(key) = &self.secret {
            req = req.header(&self.signature_header, signature(key, body));
        }
        let resp = req
            .body(body.to_vec())
            .send()
            .await
            .map_err(NotifyError::from_reqwest)?;
        super::check_status(resp).await.map(drop)
    }
}

impl Notifier for WebhookNotifier {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        retrier: &'a Retrier,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(alert).expect("an alert always serializes");
            retrier.run(|| self.post(&body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
