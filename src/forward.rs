//! Forward: sends requests to Loki unchanged and turns Loki's answer into ours, unchanged.
//!
//! Receives the client's method, path, end-to-end headers and body (the bytes as read, in the
//! chunks they were read in). Emits Loki's status, headers and body, streamed back. Owns the
//! pooled upstream clients, one pool per serving thread: hyper's, and for pushes to a
//! plain-HTTP/1.1 Loki a lean client of our own ([`h1`]). Hop-by-hop headers are dropped in
//! both directions (RFC 9110 §7.6.1); nothing else is added or changed. When Loki does not
//! answer, the error becomes 502 (unreachable) or 504 (too slow): both make Promtail and Alloy
//! retry, so nothing is lost.

use std::future::Future as _;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::{Chunks, ChunksBody};
use crate::config::Config;
use crate::metrics::ProxyMetrics;

mod h1;

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
    /// Loki could not be reached (connection refused, reset, DNS), with the cause.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
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

/// Returns true for the headers that describe a single connection, never forwarded (RFC 9110
/// §7.6.1), and the ones the HTTP client sets itself for the new connection (`Host`,
/// `Content-Length`). Standard names compare as constants, not as strings: this runs for every
/// header of every request and response.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HOST,
        header::CONTENT_LENGTH,
    ]
    .contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Copies the end-to-end headers: drops hop-by-hop ones and any named in `Connection`.
pub fn end_to_end_headers(headers: &HeaderMap) -> HeaderMap {
    let named = connection_named(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(http::HeaderValue::as_bytes),
    );
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_end_to_end(name, &named) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The header names listed in `Connection` header values: hop-by-hop too (rare: agents and
/// Loki seldom send one, and then mostly `keep-alive` or `close`). Empty without allocating
/// when there are none.
fn connection_named<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for value in values {
        for token in value.split(|&b| b == b',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) {
                if !is_hop_by_hop(&name) {
                    named.push(name);
                }
            }
        }
    }
    named
}

/// Whether a header goes on to the next hop: not hop-by-hop, not named in `Connection`.
fn is_end_to_end(name: &HeaderName, connection_named: &[HeaderName]) -> bool {
    !is_hop_by_hop(name) && !connection_named.contains(name)
}

/// [`is_end_to_end`] for a header name as it came on the wire, in any case.
fn is_end_to_end_name(name: &[u8], connection_named: &[HeaderName]) -> bool {
    !HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        && !connection_named
            .iter()
            .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// The names [`is_hop_by_hop`] is true for, as strings.
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "keep-alive",
    "proxy-connection",
];

/// Loki's answer: from hyper's client with its body streamed, or read whole by the push client
/// ([`h1`]) with its head as it came.
enum Answer {
    Streamed(http::Response<Incoming>),
    Whole { head: HeadLines, body: Bytes },
}

/// The upstream's answer: status and headers now, body streamed or already read.
pub struct UpstreamResponse {
    /// Loki's status code.
    pub status: StatusCode,
    inner: Answer,
    /// Longest wait for the next piece of the body (`upstream.timeout`).
    idle: Duration,
}

pub use crate::http::HeadLines;

impl UpstreamResponse {
    /// An answer the push client read whole.
    fn whole(answer: h1::Answer, idle: Duration) -> UpstreamResponse {
        UpstreamResponse {
            status: answer.status,
            inner: Answer::Whole {
                head: answer.head,
                body: answer.body,
            },
            idle,
        }
    }

    /// Returns true when Promtail and Alloy will resend the batch (429 and any 5xx), so the push
    /// must not be inspected now: it will be inspected when it is finally accepted.
    pub fn client_will_retry(&self) -> bool {
        client_will_retry(self.status)
    }

    /// Converts Loki's answer into ours: same status, end-to-end headers and body bytes.
    pub fn into_response(self) -> Response {
        let (body, headers) = match self.inner {
            Answer::Streamed(inner) => {
                let (parts, body) = inner.into_parts();
                let mut headers = end_to_end_headers(&parts.headers);
                // Keep Loki's declared length so the client sees exactly what Loki sent.
                if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
                    headers.insert(header::CONTENT_LENGTH, len.clone());
                }
                (Body::new(IdleTimeout::new(body, self.idle)), headers)
            }
            // The push client kept only the end-to-end headers; the body's exact length
            // (Loki's `Content-Length`, or what a chunked answer added up to) is sent with it.
            Answer::Whole { head, body } => (Body::from(body), head.to_header_map()),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }

    /// An answer the push client read whole: its head's end-to-end lines as Loki wrote them
    /// and its body, for the push reader to write on without building a `HeaderMap`; any other
    /// answer back as it was.
    ///
    /// # Errors
    /// `self`, when the answer came through hyper's client (its body is streamed).
    #[allow(clippy::result_large_err)] // handed back as it came, by value, not an error
    pub fn into_whole(self) -> Result<(StatusCode, HeadLines, Bytes), Self> {
        match self.inner {
            Answer::Whole { head, body } => Ok((self.status, head, body)),
            Answer::Streamed(_) => Err(self),
        }
    }

    /// Splits a `101 Switching Protocols` answer into its status, the headers to send the client
    /// (including `Upgrade`) and the upgraded upstream connection.
    pub fn into_upgrade(
        self,
    ) -> (
        StatusCode,
        HeaderMap,
        impl std::future::Future<Output = hyper::Result<hyper::upgrade::Upgraded>>,
    ) {
        match self.inner {
            Answer::Streamed(inner) => {
                let mut headers = end_to_end_headers(inner.headers());
                if let Some(u) = inner.headers().get(header::UPGRADE) {
                    headers.insert(header::UPGRADE, u.clone());
                }
                (self.status, headers, hyper::upgrade::on(inner))
            }
            // The push client never asks for an upgrade: this one fails when awaited.
            Answer::Whole { head, .. } => (
                self.status,
                head.to_header_map(),
                hyper::upgrade::on(http::Response::new(())),
            ),
        }
    }
}

/// Returns true for statuses after which Promtail and Alloy resend the batch: 429 and 5xx.
pub fn client_will_retry(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// How the forwarder connects: plain TCP, or rustls for `https://` upstreams.
#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;

/// A pooled HTTP/1.1 (or h2) client to Loki.
type Pool = Client<Connector, ChunksBody>;

/// Sends requests to Loki over pooled connections, with hyper's client directly: per request
/// it only builds the URI and copies the end-to-end headers (no URL parsing, no header-map
/// merging, no redirect or proxy machinery).
#[derive(Clone)]
pub struct Forwarder {
    /// One pool per serving thread ([`crate::threads`]), so a pooled connection is driven by
    /// the thread that uses it, plus one for requests from anywhere else.
    pools: std::sync::Arc<[Pool]>,
    /// The push client for a plain-HTTP/1.1 upstream (`None` for https or HTTP/2).
    h1: Option<std::sync::Arc<h1::H1>>,
    target: std::sync::Arc<Target>,
    timeout: Duration,
    metrics: ProxyMetrics,
}

/// Where requests go: the parts of `upstream.url` each request's URI is built from.
struct Target {
    scheme: http::uri::Scheme,
    /// Host and port, without the userinfo.
    authority: http::uri::Authority,
    /// The base path without its trailing `/` (`""` for a bare host).
    prefix: String,
    /// `Authorization: Basic …` from the URL's userinfo, sent when the client sent none.
    basic_auth: Option<http::HeaderValue>,
}

impl Target {
    fn new(url: &reqwest::Url) -> anyhow::Result<Target> {
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("upstream.url has no host"))?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let basic_auth = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            use base64::Engine as _;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let pair = format!(
                "{}:{}",
                decode(url.username()),
                decode(url.password().unwrap_or(""))
            );
            let mut value = http::HeaderValue::try_from(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))?;
            value.set_sensitive(true);
            Some(value)
        };
        Ok(Target {
            scheme: url.scheme().parse()?,
            authority: authority.parse()?,
            prefix: url.path().trim_end_matches('/').to_owned(),
            basic_auth,
        })
    }

    /// Builds the upstream URI for a client path and query, keeping the base path prefix; the
    /// path and query go on exactly as the client sent them.
    fn uri_for(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        let builder = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if self.prefix.is_empty() {
            builder.path_and_query(path_and_query).build()
        } else {
            builder
                .path_and_query(format!("{}{path_and_query}", self.prefix))
                .build()
        }
    }
}

impl Forwarder {
    /// Builds the pooled clients from the upstream settings.
    ///
    /// # Errors
    /// When the upstream URL cannot be turned into request URIs or TLS cannot be initialised.
    pub fn try_new(config: &Config, metrics: ProxyMetrics) -> anyhow::Result<Self> {
        let up = &config.upstream;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(up.connect_timeout));
        http.set_nodelay(true);
        #[cfg(feature = "tls")]
        let connector = {
            // The TLS layer in front of it decides by scheme.
            http.enforce_http(false);
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config.upstream_tls.rustls_config()?)
                .https_or_http();
            if up.http2 {
                builder.enable_http2().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            }
        };
        #[cfg(not(feature = "tls"))]
        let connector = http;
        let build = || {
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(up.pool_max_idle_per_host)
                .pool_idle_timeout(up.pool_idle_timeout)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(up.http2)
                .build(connector.clone())
        };
        let pools = crate::threads::resolve(config.raw.server.threads) + 1;
        let url = &config.upstream_url;
        let target = Target::new(url)?;
        let h1 = if url.scheme() == "http" && !up.http2 {
            let host = url
                .host_str()
                .ok_or_else(|| anyhow::anyhow!("upstream.url has no host"))?;
            let port = url.port_or_known_default().unwrap_or(80);
            Some(std::sync::Arc::new(h1::H1::new(
                &format!("{host}:{port}"),
                target.authority.as_str(),
                &target.prefix,
                up.connect_timeout,
                up.pool_idle_timeout,
                up.pool_max_idle_per_host,
                pools,
            )?))
        } else {
            None
        };
        Ok(Forwarder {
            pools: (0..pools).map(|_| build()).collect(),
            h1,
            target: std::sync::Arc::new(target),
            timeout: up.timeout,
            metrics,
        })
    }

    /// Returns the pool of the serving thread this runs on (the shared one elsewhere).
    fn pool(&self) -> &Pool {
        &self.pools[crate::threads::own_or_shared(self.pools.len())]
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
        body: Chunks,
        upgrade: bool,
    ) -> Result<UpstreamResponse, ForwardError> {
        let mut request = http::Request::new(body.into_body());
        *request.method_mut() = method;
        *request.uri_mut() = match self.target.uri_for(path_and_query) {
            Ok(uri) => uri,
            // The client's request line parsed, so this only happens for a path the base
            // prefix makes invalid; Loki cannot be asked.
            Err(e) => return Err(self.failed(ForwardError::Unreachable(e.to_string()))),
        };
        let out_headers = request.headers_mut();
        *out_headers = end_to_end_headers(headers);
        if let Some(auth) = &self.target.basic_auth {
            out_headers
                .entry(header::AUTHORIZATION)
                .or_insert_with(|| auth.clone());
        }
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
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.pool().request(request)).await;
        match result {
            Ok(Ok(inner)) => {
                self.observe(route, started);
                Ok(UpstreamResponse {
                    status: inner.status(),
                    inner: Answer::Streamed(inner),
                    idle: self.timeout,
                })
            }
            // hyper's errors name no URL, so the upstream's credentials cannot reach the log.
            Ok(Err(e)) => Err(self.failed(ForwardError::Unreachable(crate::error_chain(&e)))),
            Err(_) => Err(self.failed(ForwardError::Timeout(self.timeout))),
        }
    }

    fn observe(&self, route: Route, started: Instant) {
        self.metrics
            .upstream_duration
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }

    fn failed(&self, error: ForwardError) -> ForwardError {
        self.metrics
            .upstream_errors
            .with_label_values(&[error.reason()])
            .inc();
        error
    }

    /// Forwards a push: the exact bytes the client sent.
    ///
    /// # Errors
    /// [`ForwardError`] when Loki is unreachable or too slow.
    pub async fn push(
        &self,
        path_and_query: &str,
        headers: &crate::http::RequestHeaders,
        body: Chunks,
    ) -> Result<UpstreamResponse, ForwardError> {
        let Some(h1) = &self.h1 else {
            // An `https://` or HTTP/2 Loki: hyper's client, which takes a map.
            return self
                .send(
                    Route::Push,
                    Method::POST,
                    path_and_query,
                    &headers.to_map(),
                    body,
                    false,
                )
                .await;
        };
        let started = Instant::now();
        let auth = self.target.basic_auth.as_ref();
        let sent = h1.send(&Method::POST, path_and_query, headers, auth, &body);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(answer)) => {
                self.observe(Route::Push, started);
                Ok(UpstreamResponse::whole(answer, self.timeout))
            }
            // The error names the upstream's host and port at most, never its credentials.
            Ok(Err(e)) => Err(self.failed(ForwardError::Unreachable(e.to_string()))),
            Err(_) => Err(self.failed(ForwardError::Timeout(self.timeout))),
        }
    }
}

/// Reads Loki's answer to a push from `stream` as the push client does (interim answers
/// skipped, the body read whole), for [`crate::server::check_answer`] and its fuzz target.
///
/// # Errors
/// What the push client would answer 502 for, as text.
#[doc(hidden)]
pub async fn read_push_answer<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<UpstreamResponse, String> {
    let (answer, _) = h1::read_answer(stream, &Method::POST)
        .await
        .map_err(|e| e.to_string())?;
    Ok(UpstreamResponse::whole(answer, Duration::from_secs(1)))
}

pin_project_lite::pin_project! {
    /// A response body that fails when the next piece takes longer than `idle` to arrive (the
    /// bound reqwest's `read_timeout` gave). The timer is only armed while a read is pending,
    /// so an empty or already-received body costs nothing.
    struct IdleTimeout {
        #[pin]
        inner: Incoming,
        idle: Duration,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl IdleTimeout {
    fn new(inner: Incoming, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: None,
        }
    }
}

impl http_body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep.set(None);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.sleep.is_none() {
                    this.sleep.set(Some(tokio::time::sleep(*this.idle)));
                }
                let sleep = this.sleep.as_pin_mut().expect("armed above");
                match sleep.poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "upstream sent no body data for {}",
                        humantime::format_duration(*this.idle)
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_name_as_sent_is_hop_by_hop_exactly_when_its_header_name_is() {
        let named = [HeaderName::from_static("x-secret-hop")];
        for name in HOP_BY_HOP.into_iter().chain([
            "content-type",
            "x-scope-orgid",
            "authorization",
            "x-secret-hop",
            "user-agent",
            "tee",
            "keep-alives",
        ]) {
            let header = HeaderName::from_static(name);
            let expected = is_end_to_end(&header, &named);
            for spelled in [name.to_owned(), name.to_ascii_uppercase()] {
                assert_eq!(
                    is_end_to_end_name(spelled.as_bytes(), &named),
                    expected,
                    "{spelled}"
                );
            }
        }
    }

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
    fn upstream_uri_keeps_the_base_prefix_and_the_query_as_sent() {
        let target = |base: &str| Target::new(&reqwest::Url::parse(base).unwrap()).unwrap();
        let plain = target("http://127.0.0.1:3100");
        assert_eq!(
            plain.uri_for("/loki/api/v1/push").unwrap().to_string(),
            "http://127.0.0.1:3100/loki/api/v1/push"
        );
        assert!(plain.basic_auth.is_none());
        let q = "/loki/api/v1/query_range?query=%7Bjob%3D%22a%22%7D%20%7C%3D%20%22x%22&limit=5";
        assert_eq!(
            plain.uri_for(q).unwrap().to_string(),
            format!("http://127.0.0.1:3100{q}")
        );
        // Userinfo leaves the URI and becomes Basic credentials (percent-decoded).
        let prefixed = target("https://us%40er:p%3Aw@loki.example:8443/tenant-a/");
        assert_eq!(
            prefixed
                .uri_for("/loki/api/v1/push?x=1")
                .unwrap()
                .to_string(),
            "https://loki.example:8443/tenant-a/loki/api/v1/push?x=1"
        );
        use base64::Engine as _;
        let auth = prefixed.basic_auth.as_ref().unwrap().to_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"us@er:p:w");
        assert!(prefixed.basic_auth.as_ref().unwrap().is_sensitive());
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
