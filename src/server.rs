//! Server: the HTTP surface. Routes only; the logic lives in the stages.
//!
//! - `POST /loki/api/v1/push`, `POST /api/prom/push`: [`crate::ingest::push`].
//! - Everything else under `/loki/`, `/api/prom/` and `/otlp/`: reverse-proxied to Loki unchanged
//!   (queries, labels, tail over WebSocket, OTLP ingest), responses streamed.
//! - `GET /metrics`, `GET /ready` (503 while shutting down), `GET /healthz`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use hyper_util::rt::TokioIo;

mod h1;

#[doc(hidden)]
pub use h1::{check_answer, check_head};

use crate::forward::Route;
use crate::ingest::{push, read_body_capped};
use crate::App;

/// Path prefixes reverse-proxied to Loki.
pub const PROXIED_PREFIXES: &[&str] = &["/loki/", "/api/prom/", "/otlp/"];

/// Builds the router for an application instance.
pub fn app(state: App) -> Router {
    Router::new()
        .route("/loki/api/v1/push", post(push))
        .route("/api/prom/push", post(push))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/healthz", get(healthz))
        .fallback(proxy)
        .with_state(state)
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if app.auth().protect_metrics && app.auth().check(&headers) == crate::auth::Verdict::Denied {
        return crate::ingest::unauthorized();
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::TEXT_CONTENT_TYPE)],
        app.render_metrics(),
    )
        .into_response()
}

async fn ready(State(app): State<App>) -> Response {
    if app.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Reverse-proxies a non-push request to Loki, unchanged.
async fn proxy(State(app): State<App>, mut request: Request) -> Response {
    let path = request.uri().path();
    if !PROXIED_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned());
    if !crate::ingest::authenticate(&app, request.headers_mut()) {
        return crate::ingest::unauthorized();
    }
    let method = request.method().clone();
    let wants_upgrade = is_upgrade(request.headers());
    let client_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>();
    let (parts, body) = request.into_parts();
    // Query and OTLP request bodies are small; buffering them (capped) lets the upstream request
    // carry an exact Content-Length like the client's.
    let body = match read_body_capped(
        crate::ingest::content_length(&parts.headers),
        body,
        app.config().max_body_bytes,
        app.config().raw.server.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let sent = app
        .forwarder()
        .send(
            Route::Proxy,
            method,
            &path_and_query,
            &parts.headers,
            body,
            wants_upgrade,
        )
        .await;
    let response = match sent {
        Ok(upstream) if wants_upgrade && upstream.status == StatusCode::SWITCHING_PROTOCOLS => {
            upgrade_response(upstream, client_upgrade)
        }
        Ok(upstream) => upstream.into_response(),
        Err(e) => {
            tracing::warn!(path = %parts.uri.path(), error = %e, "proxied request got no answer from Loki");
            e.into_response()
        }
    };
    app.metrics()
        .proxy_requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Completes a protocol upgrade (Loki's WebSocket tail): answers 101 with Loki's headers and
/// splices the two upgraded connections together.
fn upgrade_response(
    upstream: crate::forward::UpstreamResponse,
    client: Option<hyper::upgrade::OnUpgrade>,
) -> Response {
    let Some(client) = client else {
        return (
            StatusCode::BAD_GATEWAY,
            "upgrade not possible on this connection\n",
        )
            .into_response();
    };
    let (status, headers, upgraded) = upstream.into_upgrade();
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = (client.await, upgraded.await) else {
            tracing::debug!("upgrade handshake did not complete");
            return;
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection closed");
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response
}

/// What serving one accepted connection (plain or after its TLS handshake) needs.
struct ServeConnection {
    app: App,
    stop_seen: tokio::sync::watch::Receiver<bool>,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    service: hyper_util::service::TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
}

impl ServeConnection {
    /// Serves `io`: plain pushes with the push reader ([`h1`]), and from the first other
    /// request on, hyper with the router.
    async fn run<IO>(self, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let h1::Served::HandOff(io) = h1::serve(io, &self.app, self.stop_seen).await else {
            return;
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), self.service);
        if let Err(e) = self.watcher.watch(conn.into_owned()).await {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}

/// Keeps `logwarden_connections_open` true however a connection's task ends.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accepts connections until `shutdown` resolves, then lets in-flight requests finish for at
/// most `grace`. Each accepted connection is served wholly on one of `threads`. Applies `app`'s
/// `server:` limits: a connection cap (new connections wait in the kernel backlog), a header
/// read timeout and a request-head size cap, and TLS when configured.
///
/// # Errors
/// Never for a failed accept (logged and retried); only if the listener itself is unusable.
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    app: &App,
    threads: &crate::threads::ServingThreads,
    shutdown: impl std::future::Future<Output = ()>,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use std::sync::Arc;

    let settings = &app.config().raw.server;
    let tls = app.config().server_tls.as_ref();
    let connections = app.metrics().connections.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(usize::try_from(settings.max_header_bytes.0).unwrap_or(usize::MAX));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes.0).unwrap_or(u32::MAX));
    let limit = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    // Tells connections still served by `h1` (not yet handed to hyper) that shutdown began.
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    let service = TowerToHyperService::new(router);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => p.expect("the connection semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The socket leaves this runtime's reactor here and joins the serving thread's there,
        // so its readiness wakes the thread that serves it, not this one.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "accepted connection unusable");
                continue;
            }
        };
        let gauge = connections.clone();
        gauge.inc();
        let serve = ServeConnection {
            app: app.clone(),
            stop_seen: stop_seen.clone(),
            builder: builder.clone(),
            service: service.clone(),
            watcher: graceful.watcher(),
            peer,
        };
        #[cfg(feature = "tls")]
        let tls = tls.map(|t| (t.acceptor(), settings.header_read_timeout));
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        threads.spawn(async move {
            let _permit = permit;
            let _open = OpenConnection(gauge);
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "accepted connection unusable");
                    return;
                }
            };
            #[cfg(feature = "tls")]
            if let Some((acceptor, handshake_timeout)) = tls {
                // The handshake runs in the connection's task (never in the accept loop) and
                // counts against the header read timeout, like a client slow to send its head.
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve.run(stream).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
                return;
            }
            serve.run(stream).await;
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    let max = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    let drained = async {
        graceful.shutdown().await;
        // Every connection holds a permit until it ends, whoever serves it.
        let _all = limit.acquire_many(max).await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            ?grace,
            "in-flight requests did not finish within the grace period"
        );
    }
    Ok(())
}
