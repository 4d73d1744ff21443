//! Pushes to a plain-HTTP Loki over HTTP/1.1, written for the one exchange a push is.
//!
//! hyper's pooled client runs every upstream connection as a task of its own, reached through a
//! channel, with a oneshot back for the answer, a pool keyed by a hashed URI and a streamed
//! answer body. Forwarding a 64 KiB push through it cost about 39,700 instructions on the
//! serving thread, two thirds of all the thread did per push; through this client it costs about
//! 17,000 (callgrind, docs/benchmarks.md, eighth session). A push needs much less: write the head and the body's chunks in vectored writes
//! on a connection the request itself holds, read Loki's answer (a status, a few headers, a
//! short body), and put the connection back into this serving thread's pool.
//!
//! What goes up is exactly what hyper sent: the client's method, path and query (behind the
//! upstream URL's base path), `Host` of the upstream, the end-to-end headers as they are, the
//! upstream URL's Basic credentials when the client sent none, and the body's bytes with their
//! exact `Content-Length`. Loki's answer comes back with its status, headers and body bytes
//! unchanged (the push reader writes the end-to-end header lines as Loki spelled them, in its
//! order); only its framing may change (a chunked answer is read whole and sent on with its
//! length). Queries, upgrades, `https://` and HTTP/2 upstreams keep hyper's client.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::Chunks;
use crate::http::{HeadLines, RequestHeaders};

/// Longest response head read from Loki.
const MAX_HEAD: usize = 64 << 10;
/// Most header lines in Loki's answer.
const MAX_HEADERS: usize = 100;
/// Largest answer body read from Loki for a push (its answers are empty or a line of text).
pub(super) const MAX_ANSWER: usize = 4 << 20;

/// Loki's answer, read whole.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: StatusCode,
    /// The end-to-end header lines, as Loki wrote them.
    pub head: HeadLines,
    pub body: Bytes,
}

/// A connection waiting in a pool.
struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// The lean push client: where to connect, and one pool of idle connections per serving
/// thread (plus one for requests from anywhere else), so a connection is only ever used by the
/// runtime that registered it.
pub(super) struct H1 {
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header: the upstream URL's authority.
    host: HeaderValue,
    /// The base path without its trailing `/`.
    prefix: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    pools: Box<[Mutex<Vec<Idle>>]>,
}

/// Why a push got no answer from Loki (becomes a 502).
#[derive(Debug, thiserror::Error)]
pub(super) enum H1Error {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("sending the request: {0}")]
    Write(io::Error),
    #[error("reading the answer: {0}")]
    Read(io::Error),
    #[error("connection closed before the answer was complete")]
    Closed,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer body larger than {MAX_ANSWER} bytes")]
    TooLarge,
}

impl H1 {
    /// A client connecting to `addr` (`host:port`), naming `authority` in `Host` (as the
    /// upstream URL spells it), behind the base path `prefix`.
    pub(super) fn new(
        addr: &str,
        authority: &str,
        prefix: &str,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
        pools: usize,
    ) -> anyhow::Result<H1> {
        Ok(H1 {
            addr: addr.to_owned(),
            host: HeaderValue::from_str(authority)?,
            prefix: prefix.to_owned(),
            connect_timeout,
            idle_timeout,
            max_idle,
            pools: (0..pools.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
        })
    }

    fn pool(&self) -> &Mutex<Vec<Idle>> {
        &self.pools[crate::threads::own_or_shared(self.pools.len())]
    }

    /// Sends one request with the end-to-end ones of the client's `headers` (and `auth` when
    /// the client sent no `Authorization`) and reads Loki's whole answer, whose headers are
    /// its end-to-end ones.
    pub(super) async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &RequestHeaders,
        auth: Option<&HeaderValue>,
        body: &Chunks,
    ) -> Result<Answer, H1Error> {
        let head = self.head(method, path_and_query, headers, auth, body.len());
        // A pooled connection Loki has closed since is seen here or fails the write; the
        // request then goes on a new connection (Loki cannot have acted on a request it did not
        // receive). A failure after the request was sent is not retried: the client retries.
        let (mut stream, mut reused) = match self.take_idle() {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        loop {
            match crate::http::write_head_and_body(&mut stream, &head, body.parts()).await {
                Ok(()) => break,
                Err(_) if reused => {
                    stream = self.connect().await?;
                    reused = false;
                }
                Err(e) => return Err(H1Error::Write(e)),
            }
        }
        let (answer, reusable) = read_answer(&mut stream, method).await?;
        if reusable {
            self.put_idle(stream);
        }
        Ok(answer)
    }

    fn head(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &RequestHeaders,
        auth: Option<&HeaderValue>,
        len: usize,
    ) -> Vec<u8> {
        let mut head = Vec::with_capacity(192 + path_and_query.len());
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(self.prefix.as_bytes());
        head.extend_from_slice(path_and_query.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(self.host.as_bytes());
        head.extend_from_slice(b"\r\n");
        // Header names and values cannot hold CR or LF (httparse and the http crate check both).
        let mut line = |name: &[u8], value: &[u8]| {
            head.extend_from_slice(name);
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        };
        let has_auth = match headers {
            // The agent's lines as it wrote them.
            RequestHeaders::Lines(lines) => {
                let named = super::connection_named(lines.get_all("connection"));
                for (name, value) in lines.lines() {
                    if super::is_end_to_end_name(name, &named) {
                        line(name, value);
                    }
                }
                lines.get("authorization").is_some()
            }
            RequestHeaders::Map(map) => {
                let named = super::connection_named(
                    map.get_all(header::CONNECTION)
                        .iter()
                        .map(HeaderValue::as_bytes),
                );
                for (name, value) in map {
                    if super::is_end_to_end(name, &named) {
                        line(name.as_str().as_bytes(), value.as_bytes());
                    }
                }
                map.contains_key(header::AUTHORIZATION)
            }
        };
        if let Some(auth) = auth.filter(|_| !has_auth) {
            line(b"authorization", auth.as_bytes());
        }
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
        head
    }

    async fn connect(&self) -> Result<TcpStream, H1Error> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| H1Error::ConnectTimeout(self.connect_timeout))?
            .map_err(H1Error::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The most recently used idle connection that is still open; expired ones are dropped.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut pool = self.pool().lock().unwrap_or_else(|e| e.into_inner());
        while let Some(idle) = pool.pop() {
            if idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            // An idle connection has nothing to read: a readable one was closed by Loki (or
            // holds bytes nobody asked for). Costs no system call unless the reactor saw it
            // become readable.
            match idle.stream.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(idle.stream),
                _ => continue,
            }
        }
        None
    }

    fn put_idle(&self, stream: TcpStream) {
        let mut pool = self.pool().lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < self.max_idle {
            pool.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }
}

/// How the answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// Reads one answer; returns it and whether the connection can carry another request.
pub(super) async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    method: &Method,
) -> Result<(Answer, bool), H1Error> {
    let mut buf = BytesMut::with_capacity(4096);
    let head = loop {
        if buf.is_empty() {
            fill(stream, &mut buf).await?;
        }
        if let Some(head) = parse_head(&mut buf, method)? {
            // Interim answers (100 Continue and the like) come before the final one.
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            break head;
        }
        if buf.len() >= MAX_HEAD {
            return Err(H1Error::Malformed(format!(
                "head longer than {MAX_HEAD} bytes"
            )));
        }
        fill(stream, &mut buf).await?;
    };
    let body = match head.framing {
        Framing::Empty => Bytes::new(),
        Framing::Length(n) => {
            if n > MAX_ANSWER {
                return Err(H1Error::TooLarge);
            }
            while buf.len() < n {
                fill(stream, &mut buf).await?;
            }
            buf.split_to(n).freeze()
        }
        Framing::Chunked => read_chunked(stream, &mut buf).await?,
        Framing::Close => {
            loop {
                if buf.len() > MAX_ANSWER {
                    return Err(H1Error::TooLarge);
                }
                buf.reserve(8192);
                if stream.read_buf(&mut buf).await.map_err(H1Error::Read)? == 0 {
                    break;
                }
            }
            buf.split().freeze()
        }
    };
    let reusable = head.keep_alive && head.framing != Framing::Close && buf.is_empty();
    Ok((
        Answer {
            status: head.status,
            head: head.lines,
            body,
        },
        reusable,
    ))
}

/// Reads more bytes into `buf`; the connection closing here is an error.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<(), H1Error> {
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(0) => Err(H1Error::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(H1Error::Read(e)),
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    /// The end-to-end header lines (hop-by-hop ones and those `Connection` names dropped).
    lines: HeadLines,
    /// HTTP/1.1 without `Connection: close`.
    keep_alive: bool,
    framing: Framing,
}

/// Parses a complete response head (the answer to a `method` request) at the start of `buf`
/// and takes it out of `buf` (the header lines are kept as ranges in it, not copies).
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, H1Error> {
    let mut lines = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut lines,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Malformed(e.to_string())),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| H1Error::Malformed("status code".to_owned()))?;
    let lines: &[httparse::Header<'_>] = response.headers;
    let named = |wanted: &'static str| {
        lines
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(wanted))
            .map(|h| h.value)
    };
    let keep_alive =
        response.version == Some(1) && !named("connection").any(crate::http::says_close);
    let framing = framing(
        status,
        method,
        named("transfer-encoding"),
        named("content-length"),
    )?;
    let connection_named = super::connection_named(named("connection"));
    let mut kept = crate::http::LineRanges::new();
    for h in lines {
        if super::is_end_to_end_name(h.name.as_bytes(), &connection_named) {
            kept.push(crate::http::line_range(buf, h));
        }
    }
    Ok(Some(Head {
        status,
        lines: HeadLines::new(buf.split_to(len).freeze(), kept),
        keep_alive,
        framing,
    }))
}

fn framing<'a>(
    status: StatusCode,
    method: &Method,
    transfer_encoding: impl Iterator<Item = &'a [u8]>,
    content_length: impl Iterator<Item = &'a [u8]>,
) -> Result<Framing, H1Error> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        return Ok(Framing::Empty);
    }
    if let Some(last) = transfer_encoding.last() {
        let chunked = last
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    let mut length = None;
    for value in content_length {
        let n = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or_else(|| H1Error::Malformed("content-length".to_owned()))?;
        if length.is_some_and(|l| l != n) {
            return Err(H1Error::Malformed("conflicting content-length".to_owned()));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;

/// Reads a chunked body (RFC 9112 §7.1) whole; trailers are read and dropped.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Bytes, H1Error> {
    let mut out = BytesMut::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size.trim_ascii())
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| H1Error::Malformed("chunk size".to_owned()))?;
        if size == 0 {
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(out.freeze());
        }
        if out.len().saturating_add(size) > MAX_ANSWER {
            return Err(H1Error::TooLarge);
        }
        while buf.len() < size + 2 {
            fill(stream, buf).await?;
        }
        out.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(H1Error::Malformed("chunk not followed by CRLF".to_owned()));
        }
        buf.advance(size + 2);
    }
}

/// Takes one CRLF-terminated line off `buf`, reading more as needed; returns it without CRLF.
async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Bytes, H1Error> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(end).freeze();
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_LINE {
            return Err(H1Error::Malformed("line too long".to_owned()));
        }
        fill(stream, buf).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Serves each accepted connection the given raw answers, one per request read, and
    /// returns the raw requests it read.
    async fn upstream(
        answers: Vec<&'static [u8]>,
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut req = Vec::new();
                let mut chunk = [0u8; 65536];
                // Read one request: head, then the body its content-length announces.
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed early");
                    req.extend_from_slice(&chunk[..n]);
                    if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.push(req);
                s.write_all(answer).await.unwrap();
            }
            seen
        });
        (addr, task)
    }

    fn client(addr: &str, prefix: &str) -> H1 {
        H1::new(
            addr,
            addr,
            prefix,
            Duration::from_secs(2),
            Duration::from_secs(60),
            4,
            1,
        )
        .unwrap()
    }

    fn body(parts: &[&'static [u8]]) -> Chunks {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    #[tokio::test]
    async fn request_carries_path_host_headers_and_exact_body_and_the_answer_comes_back() {
        let (addr, seen) = upstream(vec![
            &b"HTTP/1.1 204 No Content\r\nX-Loki: a\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nentry too ol",
            b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nslow \r\n4\r\ndown\r\n0\r\nX-Trailer: t\r\n\r\n",
        ])
        .await;
        let h1 = client(&addr, "/base");
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert("x-scope-orgid", HeaderValue::from_static("acme"));
        let pushed = body(&[b"\x00\x01snappy", b"", b"\xff\xfe tail"]);
        let a = h1
            .send(
                &Method::POST,
                "/loki/api/v1/push?x=%20",
                &RequestHeaders::Map(headers.clone()),
                None,
                &pushed,
            )
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert_eq!(a.head.get("x-loki"), Some(&b"a"[..]));
        assert!(a.body.is_empty());
        let a = h1
            .send(
                &Method::POST,
                "/p",
                &RequestHeaders::Map(headers.clone()),
                None,
                &pushed,
            )
            .await
            .unwrap();
        assert_eq!(
            (a.status.as_u16(), &a.body[..]),
            (400, &b"entry too ol"[..])
        );
        let a = h1
            .send(
                &Method::POST,
                "/p",
                &RequestHeaders::Map(headers.clone()),
                None,
                &pushed,
            )
            .await
            .unwrap();
        assert_eq!((a.status.as_u16(), &a.body[..]), (429, &b"slow down"[..]));
        let seen = seen.await.unwrap();
        assert_eq!(seen.len(), 3, "all three went over one connection");
        let expected_head = format!(
            "POST /base/loki/api/v1/push?x=%20 HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-protobuf\r\nx-scope-orgid: acme\r\ncontent-length: 15\r\n\r\n"
        );
        let mut expected = expected_head.into_bytes();
        expected.extend_from_slice(b"\x00\x01snappy\xff\xfe tail");
        assert_eq!(seen[0], expected);
    }

    #[tokio::test]
    async fn hop_by_hop_headers_stay_behind_both_ways_and_credentials_go_only_when_none_were_sent()
    {
        let (addr, seen) = upstream(vec![
            &b"HTTP/1.1 204 No Content\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Loki: a\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let h1 = client(&addr, "");
        let auth = HeaderValue::from_static("Basic dTpw");
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("host", "proxy:3101"),
            ("content-length", "999"),
            ("x-scope-orgid", "acme"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let a = h1
            .send(
                &Method::POST,
                "/p",
                &RequestHeaders::Map(headers.clone()),
                Some(&auth),
                &body(&[b"x"]),
            )
            .await
            .unwrap();
        let kept: Vec<_> = a.head.lines().collect();
        assert_eq!(
            kept,
            [(&b"X-Loki"[..], &b"a"[..])],
            "Loki's hop-by-hop headers are dropped, the rest kept as Loki wrote them"
        );
        headers.insert("authorization", HeaderValue::from_static("Bearer agent"));
        h1.send(
            &Method::POST,
            "/p",
            &RequestHeaders::Map(headers.clone()),
            Some(&auth),
            &body(&[b"x"]),
        )
        .await
        .unwrap();
        let seen = seen.await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&seen[0]),
            format!("POST /p HTTP/1.1\r\nhost: {addr}\r\nx-scope-orgid: acme\r\nauthorization: Basic dTpw\r\ncontent-length: 1\r\n\r\nx")
        );
        let second = String::from_utf8_lossy(&seen[1]).into_owned();
        assert!(
            second.contains("authorization: Bearer agent\r\n"),
            "{second}"
        );
        assert!(
            !second.contains("Basic"),
            "the agent's own credential wins: {second}"
        );
    }

    /// The header lines of `raw`, a request head, as the push reader keeps them.
    fn lines(raw: &'static [u8]) -> RequestHeaders {
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut parsed);
        let httparse::Status::Complete(len) = request.parse(raw).unwrap() else {
            panic!("not a whole head");
        };
        let ranges = request
            .headers
            .iter()
            .map(|h| crate::http::line_range(raw, h))
            .collect();
        RequestHeaders::Lines(HeadLines::new(Bytes::from_static(&raw[..len]), ranges))
    }

    #[tokio::test]
    async fn the_agents_lines_go_up_as_it_wrote_them_but_the_hop_by_hop_ones() {
        let (addr, seen) = upstream(vec![
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let h1 = client(&addr, "");
        let auth = HeaderValue::from_static("Basic dTpw");
        let headers = lines(b"POST /p HTTP/1.1\r\nHost: proxy:3101\r\nConnection: Keep-Alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nContent-Type: application/x-protobuf\r\nContent-Length: 999\r\nX-Scope-OrgID: acme\r\nUser-Agent: promtail/2.8.0\r\n\r\n");
        h1.send(&Method::POST, "/p", &headers, Some(&auth), &body(&[b"x"]))
            .await
            .unwrap();
        let own =
            lines(b"POST /p HTTP/1.1\r\nAuthorization: Bearer agent\r\nContent-Length: 1\r\n\r\n");
        h1.send(&Method::POST, "/p", &own, Some(&auth), &body(&[b"y"]))
            .await
            .unwrap();
        let seen = seen.await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&seen[0]),
            format!("POST /p HTTP/1.1\r\nhost: {addr}\r\nContent-Type: application/x-protobuf\r\nX-Scope-OrgID: acme\r\nUser-Agent: promtail/2.8.0\r\nauthorization: Basic dTpw\r\ncontent-length: 1\r\n\r\nx")
        );
        assert_eq!(
            String::from_utf8_lossy(&seen[1]),
            format!("POST /p HTTP/1.1\r\nhost: {addr}\r\nAuthorization: Bearer agent\r\ncontent-length: 1\r\n\r\ny"),
            "the agent's own credential goes up, and not ours"
        );
    }

    #[tokio::test]
    async fn an_answer_delimited_by_close_is_read_to_the_end_and_the_connection_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            for answer in [
                &b"HTTP/1.0 500 Internal Server Error\r\n\r\nboom"[..],
                b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await.unwrap();
                s.write_all(answer).await.unwrap();
            }
        });
        let h1 = client(&addr, "");
        let one = body(&[b"x"]);
        let a = h1
            .send(
                &Method::POST,
                "/p",
                &RequestHeaders::Map(HeaderMap::new()),
                None,
                &one,
            )
            .await
            .unwrap();
        assert_eq!((a.status.as_u16(), &a.body[..]), (500, &b"boom"[..]));
        // Each answer needed a new connection (the server accepts once per answer).
        let a = h1
            .send(
                &Method::POST,
                "/p",
                &RequestHeaders::Map(HeaderMap::new()),
                None,
                &one,
            )
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        let a = h1
            .send(
                &Method::POST,
                "/p",
                &RequestHeaders::Map(HeaderMap::new()),
                None,
                &one,
            )
            .await
            .unwrap();
        assert_eq!(&a.body[..], b"ok");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_pooled_connection_loki_closed_is_replaced_without_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            // First connection: one answer, then Loki closes it (idle timeout on its side).
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            drop(s);
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
        });
        let h1 = client(&addr, "");
        let one = body(&[b"x"]);
        h1.send(
            &Method::POST,
            "/p",
            &RequestHeaders::Map(HeaderMap::new()),
            None,
            &one,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a = h1
            .send(
                &Method::POST,
                "/p",
                &RequestHeaders::Map(HeaderMap::new()),
                None,
                &one,
            )
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn malformed_truncated_and_oversized_answers_are_errors() {
        for (answer, expect) in [
            (&b"HTTP/1.1 2x4 Nope\r\n\r\n"[..], "malformed"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "closed",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n",
                "larger",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
        ] {
            let (addr, _seen) = upstream(vec![answer]).await;
            let h1 = client(&addr, "");
            let e = h1
                .send(
                    &Method::POST,
                    "/p",
                    &RequestHeaders::Map(HeaderMap::new()),
                    None,
                    &body(&[b"x"]),
                )
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{answer:?}: {e}");
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = client(&addr, "")
            .send(
                &Method::POST,
                "/p",
                &RequestHeaders::Map(HeaderMap::new()),
                None,
                &body(&[b"x"]),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, H1Error::Connect(_)), "{e}");
    }
}
