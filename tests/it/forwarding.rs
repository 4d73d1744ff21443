//! The push path forwards the client's bytes and headers unchanged and returns Loki's answer
//! unchanged; logwarden answers itself only when Loki cannot (502, 504) or the body is too big.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use logwarden::inspect::CountOnly;

use crate::support::{client, promtail_fixture, FakeLoki, Proxy, Reply};

const PUSH: &str = "/loki/api/v1/push";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const JSON_PUSH: &str = r#"{"streams":[{"stream":{"job":"auth","host":"vps1"},"values":[["1795658417000000000","Failed password for root from 203.0.113.42 port 40000 ssh2"],["1795658418000000000","second \u00e9 line",{"trace_id":"abc"}]]}]}"#;

/// (name, body, content type, content encoding) for every body shape the issue lists.
fn bodies() -> Vec<(&'static str, Vec<u8>, &'static str, Option<&'static str>)> {
    let pb = promtail_fixture();
    // Valid snappy around bytes that are not a protobuf PushRequest.
    let not_protobuf = snap::raw::Encoder::new()
        .compress_vec(b"\xff\xff\xff\xff not protobuf")
        .unwrap();
    vec![
        ("promtail fixture", pb, "application/x-protobuf", None),
        (
            "json",
            JSON_PUSH.as_bytes().to_vec(),
            "application/json",
            None,
        ),
        (
            "gzip json",
            gzip(JSON_PUSH.as_bytes()),
            "application/json",
            Some("gzip"),
        ),
        (
            "invalid snappy",
            b"\x00\x01\x02 definitely not snappy".to_vec(),
            "application/x-protobuf",
            None,
        ),
        (
            "snappy of invalid protobuf",
            not_protobuf,
            "application/x-protobuf",
            Some("snappy"),
        ),
    ]
}

#[tokio::test]
async fn push_body_and_headers_reach_loki_byte_identical() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(CountOnly)).await;
    let http = client();
    for (name, body, ct, ce) in bodies() {
        let mut req = http
            .post(proxy.url(PUSH))
            .header("content-type", ct)
            .header("x-scope-orgid", "tenant-a")
            .header("authorization", "Basic dXNlcjpwYXNz")
            .header("user-agent", "promtail/2.8.0")
            .header("x-custom-header", "kept")
            .body(body.clone());
        if let Some(ce) = ce {
            req = req.header("content-encoding", ce);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 204, "{name}");
        let got = loki.requests().pop().unwrap();
        assert_eq!(got.method, "POST", "{name}");
        assert_eq!(got.uri.path(), PUSH, "{name}");
        assert!(
            got.body == body,
            "{name}: forwarded body differs ({} vs {} bytes)",
            got.body.len(),
            body.len()
        );
        assert_eq!(got.headers["content-type"], ct, "{name}");
        assert_eq!(
            got.headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            ce,
            "{name}"
        );
        assert_eq!(got.headers["x-scope-orgid"], "tenant-a", "{name}");
        assert_eq!(got.headers["authorization"], "Basic dXNlcjpwYXNz", "{name}");
        assert_eq!(got.headers["user-agent"], "promtail/2.8.0", "{name}");
        assert_eq!(got.headers["x-custom-header"], "kept", "{name}");
        assert_eq!(
            got.headers["content-length"],
            body.len().to_string().as_str(),
            "{name}"
        );
    }
    assert_eq!(loki.requests().len(), 5);
    proxy.stop().await;
}

#[tokio::test]
async fn legacy_push_path_and_query_string_are_kept() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(CountOnly)).await;
    let resp = client()
        .post(proxy.url("/api/prom/push?x=1"))
        .header("content-type", "application/x-protobuf")
        .body(promtail_fixture())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let got = loki.requests().pop().unwrap();
    assert_eq!(got.uri.path(), "/api/prom/push");
    assert_eq!(got.uri.query(), Some("x=1"));
    assert_eq!(got.body, promtail_fixture());
}

/// A hosted Loki is often given as `https://user:token@host/prefix`: the credentials go as Basic
/// auth (unless the agent sent its own), the prefix stays in front of the client's path.
#[tokio::test]
async fn upstream_userinfo_becomes_basic_auth_and_the_base_path_is_kept() {
    let loki = FakeLoki::start().await;
    let upstream = format!("http://tenant%2D7:s3cr%40t@{}/gateway/", loki.addr);
    let proxy = Proxy::start("", &upstream, Arc::new(CountOnly)).await;
    let push = |auth: Option<&'static str>| {
        let mut req = client()
            .post(proxy.url("/loki/api/v1/push?x=1"))
            .header("content-type", "application/x-protobuf")
            .body(promtail_fixture());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    assert_eq!(push(None).await.unwrap().status(), 204);
    assert_eq!(push(Some("Bearer agent-own")).await.unwrap().status(), 204);
    let got = loki.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].uri.path(), "/gateway/loki/api/v1/push");
    assert_eq!(got[0].uri.query(), Some("x=1"));
    // base64("tenant-7:s3cr@t")
    assert_eq!(
        got[0].headers["authorization"],
        "Basic dGVuYW50LTc6czNjckB0"
    );
    assert_eq!(got[1].headers["authorization"], "Bearer agent-own");
    assert_eq!(got[0].body, promtail_fixture());
    proxy.stop().await;
}

#[tokio::test]
async fn loki_status_body_and_content_type_pass_through() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(CountOnly)).await;
    let partial = "entry for stream '{job=\"auth\"}' has timestamp too old: 2020-01-01T00:00:00Z\n";
    loki.script([
        Reply::status(204),
        Reply::text(400, partial),
        Reply::text(
            413,
            "request body too large: message size too large than max (200 vs 100)\n",
        ),
        Reply::text(
            429,
            "ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec)\n",
        ),
        Reply::text(500, "internal server error\n"),
        Reply::Answer(
            503,
            "application/json",
            br#"{"error":"circuit open"}"#.to_vec(),
        ),
    ]);
    let http = client();
    let expected: [(u16, &str, &[u8]); 6] = [
        (204, "", b""),
        (400, "text/plain; charset=utf-8", partial.as_bytes()),
        (
            413,
            "text/plain; charset=utf-8",
            b"request body too large: message size too large than max (200 vs 100)\n",
        ),
        (
            429,
            "text/plain; charset=utf-8",
            b"ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec)\n",
        ),
        (500, "text/plain; charset=utf-8", b"internal server error\n"),
        (503, "application/json", br#"{"error":"circuit open"}"#),
    ];
    for (status, ct, body) in expected {
        let resp = http
            .post(proxy.url(PUSH))
            .header("content-type", "application/x-protobuf")
            .body(promtail_fixture())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        if !ct.is_empty() {
            assert_eq!(resp.headers()["content-type"], ct, "{status}");
        }
        assert_eq!(&resp.bytes().await.unwrap()[..], body, "{status}");
    }
}

#[tokio::test]
async fn unreachable_loki_is_502_and_stalled_loki_is_504() {
    // A port nothing listens on: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start("", &format!("http://{dead}"), Arc::new(CountOnly)).await;
    let resp = proxy.push_fixture().send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("unreachable"));

    let loki = FakeLoki::start().await;
    loki.script([Reply::Stall]);
    let proxy = Proxy::start(
        "upstream:\n  timeout: 300ms\n",
        &loki.url(),
        Arc::new(CountOnly),
    )
    .await;
    let started = std::time::Instant::now();
    let resp = proxy.push_fixture().send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "504 must come at the timeout, not later"
    );
}

/// A Loki that sends its headers and then stops mid-body does not hold the client forever: the
/// body fails after `upstream.timeout` without data, and the client sees an incomplete answer.
#[tokio::test]
async fn a_body_that_stalls_mid_way_is_cut_after_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let loki = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = conn.read(&mut buf).await.unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"status\":")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let proxy = Proxy::start(
        "upstream:\n  timeout: 300ms\n",
        &format!("http://{addr}"),
        Arc::new(CountOnly),
    )
    .await;
    let started = std::time::Instant::now();
    let resp = client()
        .get(proxy.url("/loki/api/v1/labels"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "Loki's status goes out as soon as it arrives"
    );
    assert!(
        resp.bytes().await.is_err(),
        "a cut body must not look complete"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut at the timeout, not later"
    );
    loki.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn body_over_the_cap_is_413_and_nothing_is_forwarded() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start(
        "limits:\n  max_body_bytes: 1KiB\n",
        &loki.url(),
        Arc::new(CountOnly),
    )
    .await;
    let http = client();
    // Declared too large by Content-Length.
    let resp = http
        .post(proxy.url(PUSH))
        .header("content-type", "application/x-protobuf")
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Chunked, with no Content-Length: the cap applies while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..8).map(|_| Ok(vec![1u8; 512])).collect();
    let resp = http
        .post(proxy.url(PUSH))
        .header("content-type", "application/x-protobuf")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Exactly at the cap is forwarded.
    let resp = http
        .post(proxy.url(PUSH))
        .header("content-type", "application/x-protobuf")
        .body(vec![0u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        loki.requests().len(),
        1,
        "only the push within the cap reaches Loki"
    );
}

#[tokio::test]
async fn queries_and_other_loki_apis_are_reverse_proxied() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(CountOnly)).await;
    let body = br#"{"status":"success","data":{"resultType":"streams","result":[]}}"#.to_vec();
    loki.script([
        Reply::Answer(200, "application/json", body.clone()),
        Reply::text(404, "not found\n"),
    ]);
    let http = client();
    let resp = http
        .get(proxy.url("/loki/api/v1/query_range?query=%7Bjob%3D%22auth%22%7D&limit=10"))
        .header("x-scope-orgid", "tenant-q")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
    let got = &loki.requests()[0];
    assert_eq!(got.method, "GET");
    assert_eq!(got.uri.path(), "/loki/api/v1/query_range");
    assert_eq!(
        got.uri.query(),
        Some("query=%7Bjob%3D%22auth%22%7D&limit=10")
    );
    assert_eq!(got.headers["x-scope-orgid"], "tenant-q");

    let resp = http
        .get(proxy.url("/loki/api/v1/labels"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "Loki's own 404 passes through");

    // OTLP ingest is forwarded with its body.
    let resp = http
        .post(proxy.url("/otlp/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(loki.requests()[2].body.to_vec(), vec![1u8, 2, 3]);

    // Paths outside Loki's API are logwarden's own 404 and never reach Loki.
    let resp = http.get(proxy.url("/etc/passwd")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(loki.requests().len(), 3);
}

#[tokio::test]
async fn h2c_upstream_works() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start(
        "upstream:\n  http2: true\n",
        &loki.url(),
        Arc::new(CountOnly),
    )
    .await;
    let resp = proxy.push_fixture().send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let got = loki.requests().pop().unwrap();
    assert_eq!(got.version, http::Version::HTTP_2);
    assert_eq!(got.body, promtail_fixture());
}

#[tokio::test]
async fn tail_websocket_upgrade_is_spliced_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(CountOnly)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /loki/api/v1/tail?query=%7Bjob%3D%22auth%22%7D HTTP/1.1\r\nHost: x\r\n\
Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("sec-websocket-accept: fake"), "{head}");
    // Bytes flow both ways through the spliced connection.
    s.write_all(b"frame-1").await.unwrap();
    let mut echoed = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"frame-1");
    let got = &loki.requests()[0];
    assert_eq!(got.uri.path(), "/loki/api/v1/tail");
    assert_eq!(got.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
}

/// One HTTP/1.1 answer read off a raw connection: status, headers (names lowercase), body.
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the next answer from `stream` (`buf` keeps bytes read past it); `None` when the
/// server closed the connection first.
async fn read_answer(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<RawAnswer> {
    use tokio::io::AsyncReadExt;
    async fn more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("no answer within 10 s")
            .unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        n > 0
    }
    let (status, headers, len) = loop {
        let mut lines = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut lines);
        if let httparse::Status::Complete(len) = answer.parse(buf).expect("a valid answer") {
            let headers: Vec<(String, String)> = answer
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (answer.code.unwrap(), headers, len);
        }
        if !more(stream, buf).await {
            assert!(buf.is_empty(), "connection closed mid-answer");
            return None;
        }
    };
    buf.drain(..len);
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
    assert!(
        !headers.iter().any(|(n, _)| n == "transfer-encoding"),
        "unexpected chunked answer"
    );
    while buf.len() < length {
        assert!(more(stream, buf).await, "connection closed mid-body");
    }
    let body = buf.drain(..length).collect();
    Some(RawAnswer {
        status,
        headers,
        body,
    })
}

fn raw_push(body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut request = format!(
        "POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Promtail keeps one connection for its pushes; each push on it, pipelined or not, is
/// forwarded and answered in order, and a request of another shape (a chunked body, then a
/// readiness probe) on the same connection is still served.
#[tokio::test]
async fn pushes_on_one_connection_are_each_forwarded_and_answered_in_order() {
    use tokio::io::AsyncWriteExt;
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(CountOnly)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    let fixture = promtail_fixture();
    let (a, b, c) = (
        fixture.clone(),
        b"second push".to_vec(),
        vec![0xffu8; 40_000],
    );

    s.write_all(&raw_push(&a, "X-Scope-OrgID: t1\r\n"))
        .await
        .unwrap();
    let first = read_answer(&mut s, &mut buf).await.expect("first answer");
    assert_eq!(first.status, 204);
    assert!(first.header("date").is_some(), "{:?}", first.headers);
    assert_eq!(first.header("connection"), None);

    // Two pushes in one write: two answers, in order.
    let mut both = raw_push(&b, "");
    both.extend_from_slice(&raw_push(&c, ""));
    s.write_all(&both).await.unwrap();
    for _ in 0..2 {
        assert_eq!(read_answer(&mut s, &mut buf).await.unwrap().status, 204);
    }

    // A chunked push, then a GET, on the same connection.
    s.write_all(
        b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.unwrap().status, 204);
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let ready = read_answer(&mut s, &mut buf).await.unwrap();
    assert_eq!(
        (ready.status, ready.body.as_slice()),
        (200, &b"ready\n"[..])
    );

    let got = loki.requests();
    let bodies: Vec<&[u8]> = got.iter().map(|r| &r.body[..]).collect();
    assert_eq!(
        bodies,
        vec![&a[..], &b[..], &c[..], &b"hello world"[..]],
        "Loki got other bodies, or in another order"
    );
    assert_eq!(got[0].headers["x-scope-orgid"], "t1");
    assert_eq!(got[2].headers["content-length"], "40000");
    assert_eq!(got[3].headers["content-length"], "11");
    proxy.stop().await;
}

/// Loki's refusal reaches the client with its status, content type and body, and the
/// connection stays usable; `Connection: close` from the client is answered and honoured.
#[tokio::test]
async fn a_refusal_keeps_the_connection_and_connection_close_ends_it() {
    use tokio::io::AsyncWriteExt;
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(CountOnly)).await;
    loki.script([Reply::text(400, "entry too far behind\n")]);
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&raw_push(b"one", "")).await.unwrap();
    let refused = read_answer(&mut s, &mut buf).await.unwrap();
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body, b"entry too far behind\n");
    assert_eq!(
        refused.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    s.write_all(&raw_push(b"two", "Connection: close\r\n"))
        .await
        .unwrap();
    let last = read_answer(&mut s, &mut buf).await.unwrap();
    assert_eq!(last.status, 204);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(
        read_answer(&mut s, &mut buf).await.is_none(),
        "the connection stayed open after Connection: close"
    );
    assert_eq!(loki.requests().len(), 2);
    proxy.stop().await;
}

/// Loki's answer head reaches the agent line for line as Loki wrote it (names in Loki's
/// spelling, in Loki's order, its `Date` kept), without the lines that only concern the
/// connection between logwarden and Loki, and with the body's exact length.
#[tokio::test]
async fn loki_answer_heads_reach_the_agent_as_loki_wrote_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\nVary: Origin\r\nX-Content-Type-Options: nosniff\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nDate: Sat, 28 Nov 2026 20:00:00 GMT\r\nContent-Length: 12\r\n\r\nentry too ol";
    const ACCEPTED: &[u8] = b"HTTP/1.1 204 No Content\r\nDate: Sat, 28 Nov 2026 20:00:01 GMT\r\nX-Loki-Ring: ingester-2\r\n\r\n";
    // A Loki that reads each request (head, then the body its Content-Length announces) and
    // answers it with the next of these bytes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let loki = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        for answer in [REFUSAL, ACCEPTED] {
            let end = loop {
                let mut lines = [httparse::EMPTY_HEADER; 32];
                let mut request = httparse::Request::new(&mut lines);
                if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                    let length: usize = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                        .unwrap();
                    if buf.len() >= head + length {
                        break head + length;
                    }
                }
                let mut chunk = [0u8; 8192];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "logwarden closed the connection to Loki");
                buf.extend_from_slice(&chunk[..n]);
            };
            buf.drain(..end);
            s.write_all(answer).await.unwrap();
        }
    });
    let proxy = Proxy::start("", &loki, Arc::new(CountOnly)).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let expected: [&[u8]; 2] = [
        b"HTTP/1.1 400 Bad Request\r\nVary: Origin\r\nX-Content-Type-Options: nosniff\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Sat, 28 Nov 2026 20:00:00 GMT\r\ncontent-length: 12\r\n\r\nentry too ol",
        b"HTTP/1.1 204 No Content\r\nDate: Sat, 28 Nov 2026 20:00:01 GMT\r\nX-Loki-Ring: ingester-2\r\n\r\n",
    ];
    for (push, want) in [&b"first"[..], b"second"].into_iter().zip(expected) {
        s.write_all(&raw_push(push, "")).await.unwrap();
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "the answer is not Loki's, line for line"
        );
    }
    proxy.stop().await;
}

/// Clients that wait for `100 Continue` (curl does for bodies over 1 KiB) and HTTP/1.0
/// clients are served too.
#[tokio::test]
async fn expect_continue_and_http_1_0_pushes_are_served() {
    use tokio::io::AsyncWriteExt;
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start("", &loki.url(), Arc::new(CountOnly)).await;
    let body = vec![b'x'; 2048];

    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    let head = format!(
        "POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let interim = read_answer(&mut s, &mut buf).await.unwrap();
    assert_eq!(interim.status, 100);
    s.write_all(&body).await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.unwrap().status, 204);

    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    let mut request = format!(
        "POST /loki/api/v1/push HTTP/1.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    s.write_all(&request).await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.unwrap().status, 204);

    let got = loki.requests();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.body == body));
    proxy.stop().await;
}
