//! Hostile clients get a clear answer or a closed connection, and nothing reaches Loki.

use std::sync::Arc;
use std::time::Duration;

use logwarden::inspect::CountOnly;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{client, promtail_fixture, FakeLoki, Proxy};

const PUSH: &str = "/loki/api/v1/push";

/// Reads until the server closes the connection or `limit` passes; returns what was read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start(
        "server:\n  header_read_timeout: 300ms\n",
        &loki.url(),
        Arc::new(CountOnly),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the head: the server must close the connection soon after the timeout.
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        got.is_some(),
        "connection with an unfinished head was kept open"
    );
    assert!(loki.requests().is_empty());
}

#[tokio::test]
async fn slow_body_is_408_and_not_forwarded() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start(
        "server:\n  body_read_timeout: 300ms\n",
        &loki.url(),
        Arc::new(CountOnly),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\npartial",
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("no answer");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(loki.requests().is_empty());
    assert_eq!(
        proxy
            .app
            .metrics()
            .push_rejected
            .with_label_values(&["body_timeout"])
            .get(),
        1
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start(
        "server:\n  max_header_bytes: 8KiB\n",
        &loki.url(),
        Arc::new(CountOnly),
    )
    .await;
    let resp = client()
        .post(proxy.url(PUSH))
        .header("content-type", "application/x-protobuf")
        .header("x-padding", "a".repeat(16 << 10))
        .body(promtail_fixture())
        .send()
        .await;
    match resp {
        Ok(r) => assert_eq!(r.status(), 431),
        // hyper may also just close the connection; either way nothing is forwarded.
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    assert!(loki.requests().is_empty());
}

#[tokio::test]
async fn connection_limit_holds_extra_connections_until_one_closes() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start(
        "server:\n  max_connections: 2\n",
        &loki.url(),
        Arc::new(CountOnly),
    )
    .await;
    // Two idle connections take both slots.
    let a = TcpStream::connect(proxy.addr).await.unwrap();
    let b = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.app.metrics().connections.get(), 2);
    // A third client connects (kernel backlog) but is not served while both are open.
    let url = proxy.url("/healthz");
    let third = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "served past the connection limit");
    drop(a);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    drop(b);
}
