//! Forward: sends requests to Loki unchanged and turns Loki's answer into ours, unchanged.
//!
//! Receives the client's method, path, end-to-end headers and body (the original bytes for a
//! push, a stream for everything else). Emits Loki's status, headers and body, streamed back.
//! Owns the pooled upstream client. Hop-by-hop headers are dropped in both directions
//! (RFC 9110 §7.6.1); nothing else is added or changed. When Loki does not answer, the error
//! becomes 502 (unreachable) or 504 (too slow): both make Promtail and Alloy retry, so nothing
//! is lost.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::ProxyMetrics;

/// Which kind of request is forwarded; a metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A push (`/loki/api/v1/push`, `/api/prom/push`).
    Push,
    /// Anything else reverse-proxied (queries, labels, tail, OTLP).
    Proxy,
}

impl Route {
    /// Returns the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Push => "push",
            Route::Proxy => "proxy",
        }
    }
}

/// Why Loki gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Loki could not be reached (connection refused, reset, DNS).
    #[error("upstream unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// Loki did not answer within `upstream.timeout`.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
}

impl ForwardError {
    /// Returns the bounded reason label value.
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::Unreachable(_) => "unreachable",
            ForwardError::Timeout(_) => "timeout",
        }
    }

    /// Returns the status sent to the client: 502 or 504, both retried by Promtail and Alloy.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::Unreachable(_) => StatusCode::BAD_GATEWAY,
            ForwardError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl IntoResponse for ForwardError {
    fn into_response(self) -> Response {
        let body = match &self {
            ForwardError::Unreachable(_) => "logwarden: upstream Loki unreachable\n".to_owned(),
            ForwardError::Timeout(d) => {
                format!(
                    "logwarden: upstream Loki did not answer within {}\n",
                    humantime::format_duration(*d)
                )
            }
        };
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

/// The headers that describe a single connection, never forwarded (RFC 9110 §7.6.1), plus the
/// ones the HTTP client sets itself for the new connection.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Copies the end-to-end headers: drops hop-by-hop ones and any named in `Connection`.
pub fn end_to_end_headers(headers: &HeaderMap) -> HeaderMap {
    let named_in_connection: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) || named_in_connection.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The upstream's answer: status and headers now, body streamed.
pub struct UpstreamResponse {
    /// Loki's status code.
    pub status: StatusCode,
    inner: reqwest::Response,
}

impl UpstreamResponse {
    /// Returns true when Promtail and Alloy will resend the batch (429 and any 5xx), so the push
    /// must not be inspected now: it will be inspected when it is finally accepted.
    pub fn client_will_retry(&self) -> bool {
        client_will_retry(self.status)
    }

    /// Converts Loki's answer into ours: same status, end-to-end headers and body bytes.
    pub fn into_response(self) -> Response {
        let mut builder = Response::builder().status(self.status);
        if let Some(h) = builder.headers_mut() {
            *h = end_to_end_headers(self.inner.headers());
            // Keep Loki's declared length so the client sees exactly what Loki sent.
            if let Some(len) = self.inner.headers().get(header::CONTENT_LENGTH) {
                h.insert(header::CONTENT_LENGTH, len.clone());
            }
        }
        builder
            .body(Body::from_stream(self.inner.bytes_stream()))
            .expect("status and headers were copied from a valid response")
    }
}

impl UpstreamResponse {
    /// Splits a `101 Switching Protocols` answer into its status, the headers to send the client
    /// (including `Upgrade`) and the upgraded upstream connection.
    pub fn into_upgrade(
        self,
    ) -> (
        StatusCode,
        HeaderMap,
        impl std::future::Future<Output = reqwest::Result<reqwest::Upgraded>>,
    ) {
        let mut headers = end_to_end_headers(self.inner.headers());
        if let Some(u) = self.inner.headers().get(header::UPGRADE) {
            headers.insert(header::UPGRADE, u.clone());
        }
        (self.status, headers, self.inner.upgrade())
    }
}

/// Returns true for statuses after which Promtail and Alloy resend the batch: 429 and 5xx.
pub fn client_will_retry(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Sends requests to Loki over pooled connections.
#[derive(Clone)]
pub struct Forwarder {
    /// One pool per serving thread ([`crate::threads`]), so a pooled connection is driven by
    /// the thread that uses it, plus one for requests from anywhere else.
    clients: std::sync::Arc<[reqwest::Client]>,
    base: reqwest::Url,
    timeout: Duration,
    metrics: ProxyMetrics,
}

impl Forwarder {
    /// Builds the pooled client from the upstream settings.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS or resolver initialisation).
    pub fn try_new(config: &Config, metrics: ProxyMetrics) -> anyhow::Result<Self> {
        let up = &config.upstream;
        let build = || {
            let mut builder = crate::http::client_builder()
                .connect_timeout(up.connect_timeout)
                // Inactivity bound while streaming a body; the answer itself is bounded below.
                .read_timeout(up.timeout)
                .pool_max_idle_per_host(up.pool_max_idle_per_host)
                .pool_idle_timeout(up.pool_idle_timeout)
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy();
            if up.http2 {
                builder = builder.http2_prior_knowledge();
            }
            config.upstream_tls.apply(builder).build()
        };
        let pools = crate::threads::resolve(config.raw.server.threads) + 1;
        let clients = (0..pools).map(|_| build()).collect::<Result<Vec<_>, _>>()?;
        Ok(Forwarder {
            clients: clients.into(),
            base: config.upstream_url.clone(),
            timeout: up.timeout,
            metrics,
        })
    }

    /// Returns the pool of the serving thread this runs on (the shared one elsewhere).
    fn client(&self) -> &reqwest::Client {
        let shared = self.clients.len() - 1;
        &self.clients[crate::threads::current().map_or(shared, |i| i.min(shared))]
    }

    /// Builds the upstream URL for a client path and query, keeping any base path prefix. The
    /// base is parsed once at start-up; per request only the path and query are set.
    fn url_for(&self, path_and_query: &str) -> reqwest::Url {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut url = self.base.clone();
        let prefix = self.base.path().trim_end_matches('/');
        if prefix.is_empty() {
            url.set_path(path);
        } else {
            url.set_path(&format!("{prefix}{path}"));
        }
        url.set_query(query);
        url
    }

    /// Sends one request and waits for Loki's response headers, at most `upstream.timeout`.
    ///
    /// # Errors
    /// [`ForwardError`] when Loki is unreachable or too slow.
    pub async fn send(
        &self,
        route: Route,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: reqwest::Body,
        upgrade: bool,
    ) -> Result<UpstreamResponse, ForwardError> {
        let mut out_headers = end_to_end_headers(headers);
        if upgrade {
            // Connection and Upgrade are hop-by-hop, but an upgrade must name them to the next hop.
            if let Some(u) = headers.get(header::UPGRADE) {
                out_headers.insert(header::UPGRADE, u.clone());
                out_headers.insert(
                    header::CONNECTION,
                    http::HeaderValue::from_static("upgrade"),
                );
            }
        }
        let request = self
            .client()
            .request(method, self.url_for(path_and_query))
            .headers(out_headers)
            .body(body);
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, request.send()).await;
        let elapsed = started.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(Ok(inner)) => {
                self.metrics
                    .upstream_duration
                    .with_label_values(&[route.as_str()])
                    .observe(elapsed);
                return Ok(UpstreamResponse {
                    status: inner.status(),
                    inner,
                });
            }
            Ok(Err(e)) if e.is_timeout() => ForwardError::Timeout(self.timeout),
            // The error's URL may carry the upstream's credentials; it is logged.
            Ok(Err(e)) => ForwardError::Unreachable(e.without_url()),
            Err(_) => ForwardError::Timeout(self.timeout),
        };
        self.metrics
            .upstream_errors
            .with_label_values(&[outcome.reason()])
            .inc();
        Err(outcome)
    }

    /// Forwards a push: the exact bytes the client sent.
    ///
    /// # Errors
    /// [`ForwardError`] when Loki is unreachable or too slow.
    pub async fn push(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, ForwardError> {
        self.send(
            Route::Push,
            Method::POST,
            path_and_query,
            headers,
            reqwest::Body::from(body),
            false,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-protobuf"),
        );
        h.insert("x-scope-orgid", HeaderValue::from_static("acme"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("host", HeaderValue::from_static("proxy:3101"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        let out = end_to_end_headers(&h);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for kept in ["content-type", "x-scope-orgid", "authorization"] {
            assert_eq!(out.get(kept), h.get(kept));
        }
    }

    #[test]
    fn upstream_url_keeps_the_base_prefix_and_the_query_as_sent() {
        let forwarder = |base: &str| {
            let mut config = crate::config::Config::default_config();
            config.upstream_url = reqwest::Url::parse(base).unwrap();
            Forwarder::try_new(
                &config,
                ProxyMetrics::register(&prometheus::Registry::new(), 1),
            )
            .unwrap()
        };
        let plain = forwarder("http://127.0.0.1:3100");
        assert_eq!(
            plain.url_for("/loki/api/v1/push").as_str(),
            "http://127.0.0.1:3100/loki/api/v1/push"
        );
        let q = "/loki/api/v1/query_range?query=%7Bjob%3D%22a%22%7D%20%7C%3D%20%22x%22&limit=5";
        assert_eq!(
            plain.url_for(q).as_str(),
            format!("http://127.0.0.1:3100{q}")
        );
        let prefixed = forwarder("https://user:pw@loki.example:8443/tenant-a/");
        assert_eq!(
            prefixed.url_for("/loki/api/v1/push?x=1").as_str(),
            "https://user:pw@loki.example:8443/tenant-a/loki/api/v1/push?x=1"
        );
    }

    #[test]
    fn retry_classification_matches_promtail() {
        for s in [429u16, 500, 502, 503, 504] {
            assert!(client_will_retry(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200u16, 204, 400, 401, 404, 413, 422] {
            assert!(!client_will_retry(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
