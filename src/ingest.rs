//! Ingest: the push handler. Caps the body, forwards it, answers with Loki's verdict, then hands
//! a copy to inspection — the whole policy in one visible function, [`push`].
//!
//! Never awaits decoding, detection, analysis or alerting: the hand-off is a non-blocking offer
//! on a bounded queue. A batch the client will resend (429, 5xx, our own 502/504) is not
//! inspected, so a retried batch is inspected exactly once, when it is finally accepted.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap};
use http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tracing::Instrument;

use crate::body::Chunks;
use crate::decode::PushApi;
use crate::http::RequestHeaders;
use crate::inspect::Inspection;
use crate::App;

/// Loki's tenant header.
pub const TENANT_HEADER: &str = "x-scope-orgid";

/// Returns the push's tenant: `X-Scope-OrgID`, or `default` when absent or empty.
pub fn tenant_of(headers: &RequestHeaders, default: &str) -> String {
    headers
        .get(TENANT_HEADER)
        .and_then(crate::http::visible_ascii)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(default)
        .to_owned()
}

/// A push request as the push policy needs it: its target and its headers.
pub struct PushRequest {
    /// Path and query, as sent.
    pub target: http::uri::PathAndQuery,
    /// The headers, as the push reader or hyper read them.
    pub headers: RequestHeaders,
}

impl PushRequest {
    /// A push as hyper read it.
    pub fn from_parts(parts: http::request::Parts) -> PushRequest {
        PushRequest {
            target: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            headers: RequestHeaders::Map(parts.headers),
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the cap: 413, as Loki answers.
    TooLarge { limit: usize },
    /// The client went away or sent a malformed body.
    Read(String),
    /// The client took longer than `server.body_read_timeout` to send the body.
    Timeout,
}

impl BodyError {
    /// Returns the bounded reason label value.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::Read(_) => "body_read",
            BodyError::Timeout => "body_timeout",
        }
    }
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            BodyError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body too large: limit is {limit} bytes\n"),
            ),
            BodyError::Read(e) => (
                StatusCode::BAD_REQUEST,
                format!("failed to read request body: {e}\n"),
            ),
            BodyError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time\n".to_owned(),
            ),
        };
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            msg,
        )
            .into_response()
    }
}

/// Reads a whole request body, refusing more than `limit` bytes (checked against the
/// `declared` length, [`content_length`], first, so an oversized push is refused before it is
/// read). The chunks are
/// kept as read (see [`crate::body`]); trailers are dropped.
///
/// # Errors
/// [`BodyError::TooLarge`] over the cap, [`BodyError::Timeout`] when the client is too slow,
/// [`BodyError::Read`] when the body stream fails.
pub async fn read_body_capped(
    declared: Option<u64>,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Chunks, BodyError> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let read = async {
        let mut body = Limited::new(body, limit);
        let mut chunks = Chunks::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                chunks.push(data);
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(chunks)
    };
    let Ok(read) = tokio::time::timeout(timeout, read).await else {
        return Err(BodyError::Timeout);
    };
    match read {
        Ok(chunks) => Ok(chunks),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(BodyError::TooLarge { limit })
        }
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// The request's `Content-Length`, when it is one valid number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Handles `POST /loki/api/v1/push` and `POST /api/prom/push` (the router's handler; plain
/// HTTP/1.1 pushes with a length usually arrive through [`crate::server`]'s own reader, which
/// calls [`push_with`] directly).
pub async fn push(State(app): State<App>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let limit = app.config().max_body_bytes;
    let timeout = app.config().raw.server.body_read_timeout;
    let declared = content_length(&parts.headers);
    let (response, inspection) = push_with(&app, PushRequest::from_parts(parts), move || {
        read_body_capped(declared, body, limit, timeout)
    })
    .await;
    if let Some(inspection) = inspection {
        // Hand the push over once this connection's task has written the answer (the spawned
        // task runs after the current poll): an inspection thread woken first takes the idle
        // core the agent's wake-up would have used, and the agent then waits for it to yield
        // that core. A serving thread that is stopped runs its ready tasks once more first
        // (`threads`).
        let app = app.clone();
        tokio::spawn(async move { app.inspector().offer(inspection) });
    }
    response.into_response()
}

/// The answer to a push: Loki's, or logwarden's own (a refusal, or Loki unreachable).
pub enum PushAnswer {
    /// Loki's answer, to send on as it came.
    Loki(crate::forward::UpstreamResponse),
    /// Ours.
    Ours(Response),
}

impl PushAnswer {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            PushAnswer::Loki(upstream) => upstream.status,
            PushAnswer::Ours(response) => response.status(),
        }
    }
}

impl IntoResponse for PushAnswer {
    fn into_response(self) -> Response {
        match self {
            PushAnswer::Loki(upstream) => upstream.into_response(),
            PushAnswer::Ours(response) => response,
        }
    }
}

/// The push policy, whoever read the request: authenticate, read the body with `read_body`
/// (called at most once, after authentication), forward it, and answer with Loki's verdict.
/// Returns the answer and, for a push Loki accepted for good, its inspection: the caller
/// offers it to [`crate::inspect::Inspector::offer`] once the answer is written.
pub async fn push_with<F, Fut>(
    app: &App,
    mut request: PushRequest,
    read_body: F,
) -> (PushAnswer, Option<Inspection>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Chunks, BodyError>>,
{
    if !authenticate_push(app, &mut request.headers) {
        app.metrics()
            .push_rejected
            .with_label_values(&["unauthorized"])
            .inc();
        let denied = unauthorized();
        record_status(app, denied.status(), &tracing::Span::none());
        return (PushAnswer::Ours(denied), None);
    }
    let tenant = tenant_of(&request.headers, &app.config().inspect.default_tenant);
    // Debug level, like `forward` and `inspect`: the log layer's default `info` leaves them
    // unbuilt (building them formats their fields: about 17,000 instructions per push, 1.6
    // times the rest of the serving thread's work); a trace exporter still takes them
    // (`telemetry::init`).
    let span = tracing::debug_span!(
        "push",
        tenant = %tenant,
        bytes = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let metrics = app.metrics();
    // This span's handle, not `Span::current()`: each of those asks the subscriber which span
    // the thread is in.
    let this = span.clone();
    async {
        let body = match read_body().await {
            Ok(b) => b,
            Err(e) => {
                metrics.push_rejected.with_label_values(&[e.reason()]).inc();
                let response = e.into_response();
                record_status(app, response.status(), &this);
                tracing::warn!(%tenant, reason = "body", status = response.status().as_u16(), "push rejected before forwarding");
                return (PushAnswer::Ours(response), None);
            }
        };
        this.record("bytes", body.len());
        let tenant_label = metrics.tenants.label(&tenant);
        metrics.push_bytes.with_label_values(&[tenant_label]).inc_by(body.len() as u64);

        let forwarded = app
            .forwarder()
            .push(request.target.as_str(), &request.headers, body.clone()) // shares the chunks
            .instrument(tracing::debug_span!("forward"))
            .await;
        let mut inspection = None;
        let response = match forwarded {
            Ok(upstream) => {
                if !upstream.client_will_retry() {
                    inspection = Some(Inspection {
                        tenant,
                        content_type: request.headers.value("content-type"),
                        content_encoding: request.headers.value("content-encoding"),
                        api: PushApi::from_path(request.target.path()),
                        body,
                        span: this.clone(),
                    });
                }
                PushAnswer::Loki(upstream)
            }
            Err(e) => {
                metrics.push_rejected.with_label_values(&[e.reason()]).inc();
                tracing::warn!(%tenant, error = %e, "push not forwarded, client will retry");
                PushAnswer::Ours(e.into_response())
            }
        };
        record_status(app, response.status(), &this);
        (response, inspection)
    }
    .instrument(span)
    .await
}

/// Checks the request's credential when auth is on; on success the headers carry the
/// credential's tenant and no longer the credential. Returns false for a missing or unknown
/// credential (answer [`unauthorized`]).
pub fn authenticate(app: &App, headers: &mut HeaderMap) -> bool {
    use crate::auth::{Authenticator, Verdict};
    match app.auth().check(headers) {
        Verdict::Open => true,
        Verdict::Tenant(tenant) => {
            Authenticator::rewrite(headers, &tenant);
            true
        }
        Verdict::Denied => false,
    }
}

/// [`authenticate`] for a push's headers: they become a map only when a credential's tenant
/// is set in them.
fn authenticate_push(app: &App, headers: &mut RequestHeaders) -> bool {
    use crate::auth::{Authenticator, Verdict};
    match app.auth().check_authorization(headers.get("authorization")) {
        Verdict::Open => true,
        Verdict::Tenant(tenant) => {
            Authenticator::rewrite(headers.map_mut(), &tenant);
            true
        }
        Verdict::Denied => false,
    }
}

/// The answer to a missing or unknown credential.
pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::WWW_AUTHENTICATE, "Basic realm=\"logwarden\""),
        ],
        "unauthorized\n",
    )
        .into_response()
}

fn record_status(app: &App, status: StatusCode, span: &tracing::Span) {
    span.record("status", status.as_u16());
    app.metrics()
        .push_requests
        .with_label_values(&[status.as_str()])
        .inc();
}
