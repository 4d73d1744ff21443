//! Plain HTTP/1.1 pushes, read and answered without hyper's server.
//!
//! Almost every request logwarden serves is a push from Promtail or Alloy: `POST` to a push
//! path, HTTP/1.1 with keep-alive, a `Content-Length` and a body of a few KiB to a few MiB. For
//! those, hyper's connection state machine, axum's router and the tower service around them
//! cost the serving thread more than the push itself needs, and on a two-core host every
//! microsecond the proxy spends is one the agent, Loki or inspection does not get
//! (docs/benchmarks.md, tenth session). This reader parses the head with `httparse`, reads the
//! body into one buffer of its exact length, runs the same push policy as the router
//! ([`crate::ingest::push_with`]) and writes the answer with one vectored write.
//!
//! Anything else — another path or method, HTTP/1.0, a chunked body, `Expect`, `Upgrade`, a
//! head that does not parse or is too large, the HTTP/2 preface — is handed to hyper together
//! with the bytes already read ([`Served::HandOff`]), and hyper serves the connection from
//! there on: the answers to unusual requests are hyper's and axum's, as before.
//!
//! The limits are the router's: `server.header_read_timeout` runs from when the connection
//! waits for a head (an idle keep-alive connection included) and closes it, the body must
//! arrive within `server.body_read_timeout` (408), a declared length over
//! `limits.max_body_bytes` is refused before anything is read (413), and shutdown closes an
//! idle connection at once and a busy one after its answer.

use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header;
use http::StatusCode;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::Chunks;
use crate::http::{HeadLines, LineRanges, RequestHeaders};
use crate::ingest::{push_with, BodyError, PushAnswer, PushRequest};
use crate::App;

/// A connection's first read buffer: room for a push's head and, for ordinary batches, its body.
const READ_BUF: usize = 16 << 10;
/// Smallest and largest read buffer given to a connection for its next request (see
/// [`next_buffer`]).
const MIN_READ_BUF: usize = 4 << 10;
const MAX_READ_BUF: usize = 64 << 10;
/// Most request header lines read here (hyper's default); a longer head goes to hyper.
const MAX_HEADERS: usize = 100;
/// The push paths this reader serves; every other path goes to the router.
const PUSH_PATHS: [&str; 2] = ["/loki/api/v1/push", "/api/prom/push"];

/// How a connection left this reader.
pub(super) enum Served<IO> {
    /// Closed: by the client, a timeout, a write error or shutdown.
    Closed,
    /// A request this reader does not serve arrived: hyper serves the connection from here on,
    /// starting with the bytes already read.
    HandOff(Rewound<IO>),
}

/// A push's request head, as the push policy needs it.
struct PushHead {
    request: PushRequest,
    /// The declared body length.
    content_length: u64,
    /// False when the client sent `Connection: close`.
    keep_alive: bool,
}

/// What the read buffer holds so far (one lives at a time, on the stack: boxing the large
/// variant would cost an allocation per push).
#[allow(clippy::large_enum_variant)]
enum Head {
    /// A push this reader serves.
    Push(PushHead),
    /// Not a whole head yet.
    Partial,
    /// Something else: hyper's to answer.
    Other,
    /// Something else, found after the head was taken out of the buffer: hyper's to answer,
    /// with these bytes first.
    Taken(Bytes),
}

/// Serves `io` while its requests are plain pushes; see the module documentation.
pub(super) async fn serve<IO>(
    mut io: IO,
    app: &App,
    mut shutdown: watch::Receiver<bool>,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &app.config().raw.server;
    let max_head = usize::try_from(settings.max_header_bytes.0).unwrap_or(usize::MAX);
    let mut buf = BytesMut::with_capacity(READ_BUF);
    // Size of this connection's last request (head and body), for the next read buffer.
    let mut last_request = READ_BUF;
    loop {
        if buf.is_empty() && *shutdown.borrow() {
            return Served::Closed;
        }
        if let Some(fresh) = next_buffer(&mut buf, last_request) {
            buf = fresh;
        }
        // hyper's rule: the timer runs from when the connection starts waiting for a head.
        let deadline = Instant::now() + settings.header_read_timeout;
        let head = loop {
            let unparsed = buf.len();
            match parse_head(&mut buf) {
                Head::Push(head) => {
                    let head_len = unparsed - buf.len();
                    last_request = usize::try_from(head.content_length)
                        .unwrap_or(usize::MAX)
                        .saturating_add(head_len);
                    break head;
                }
                Head::Partial if buf.len() < max_head => {}
                Head::Partial | Head::Other => {
                    return Served::HandOff(Rewound {
                        prefix: buf.freeze(),
                        io,
                    })
                }
                Head::Taken(head) => {
                    let mut prefix = BytesMut::from(&head[..]);
                    prefix.extend_from_slice(&buf);
                    return Served::HandOff(Rewound {
                        prefix: prefix.freeze(),
                        io,
                    });
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUF);
            }
            let idle = buf.is_empty();
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Served::Closed,
                    Ok(_) => {}
                },
                () = tokio::time::sleep_until(deadline) => return Served::Closed,
                _ = shutdown.changed(), if idle => return Served::Closed,
            }
        };
        let mut keep_alive = head.keep_alive;
        let mut body_read = false;
        let limit = app.config().max_body_bytes;
        let (response, inspection) = if head.content_length > limit as u64 {
            // Refused before reading: the unread body ends the connection after the answer.
            push_with(app, head.request, || async move {
                Err(BodyError::TooLarge { limit })
            })
            .await
        } else {
            #[allow(clippy::cast_possible_truncation)] // at most `limit`, a usize
            let len = head.content_length as usize;
            let timeout = settings.body_read_timeout;
            let (io, buf, body_read) = (&mut io, &mut buf, &mut body_read);
            push_with(app, head.request, move || async move {
                let body = read_body(io, buf, len, timeout).await;
                *body_read = body.is_ok();
                body
            })
            .await
        };
        // A body left unread (refused, or the push denied before reading) is not skipped.
        keep_alive &= body_read && !*shutdown.borrow();
        let written = write_answer(&mut io, response, keep_alive).await;
        // Only now, with the answer on its way: an inspection thread woken before it would take
        // the core the agent's wake-up needs, and the agent would wait for it to yield.
        if let Some(inspection) = inspection {
            app.inspector().offer(inspection);
        }
        if written.is_err() || !keep_alive {
            let _ = io.shutdown().await;
            return Served::Closed;
        }
    }
}

/// A fresh read buffer for the next request, when `buf` is empty and has less room than the
/// connection's last request took (`last_request` bytes, head and body, up to
/// [`MAX_READ_BUF`]) and cannot get it back in place: a quarter larger than that request, from
/// [`MIN_READ_BUF`] to [`MAX_READ_BUF`].
///
/// A request's body is split off the buffer it was read into and handed on (to the upstream
/// write, then the inspection queue), so the buffer left behind only has the rest of its
/// allocation; reading the next push into that rest would cut it into two reads and copy its
/// start. With a buffer as large as the last request, a client that sends batches of one size
/// gets each request, head and body, in one read, and its body is a slice of it, not a copy.
/// The body keeps the whole buffer alive while it waits for inspection, so the buffer is not
/// much larger than the request. A buffer nothing else holds any more is reused where it is.
fn next_buffer(buf: &mut BytesMut, last_request: usize) -> Option<BytesMut> {
    let need = last_request.min(MAX_READ_BUF);
    if !buf.is_empty() || buf.capacity() >= need || buf.try_reclaim(need) {
        return None;
    }
    let want = last_request.saturating_add(last_request / 4);
    Some(BytesMut::with_capacity(
        want.clamp(MIN_READ_BUF, MAX_READ_BUF),
    ))
}

/// Parses the head at the start of `buf`, and says whether it is a push this reader serves; a
/// push's head is taken out of `buf` and kept as it came, its header lines as ranges in it
/// ([`HeadLines`]), not copies and not an `http::HeaderMap`.
fn parse_head(buf: &mut BytesMut) -> Head {
    if buf.is_empty() {
        return Head::Partial;
    }
    // Checked on the parsed slices, before anything is taken out of `buf`.
    let (len, target, lines, content_length, keep_alive) = {
        let mut lines = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(buf, &mut lines) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Head::Partial,
            Err(_) => return Head::Other,
        };
        let (Some("POST"), Some(target), Some(1)) = (request.method, request.path, request.version)
        else {
            return Head::Other;
        };
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        // A fragment is no part of a request target; `PathAndQuery` would drop it, so a target
        // carrying one goes to hyper as sent rather than up changed.
        if !PUSH_PATHS.contains(&path) || target.contains('#') {
            return Head::Other;
        }
        let mut kept = LineRanges::new();
        let mut content_length = None;
        let mut keep_alive = true;
        for h in request.headers.iter() {
            let name = h.name.as_bytes();
            // What `HeaderValue` refuses (a control character but tab) goes to hyper, bytes as
            // they came.
            if !h.value.iter().all(|&b| b == b'\t' || (b >= 32 && b != 127)) {
                return Head::Other;
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
                match (content_length, n) {
                    (None, Some(n)) => content_length = Some(n),
                    // Repeated or malformed: hyper's rules apply.
                    _ => return Head::Other,
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"upgrade")
            {
                return Head::Other;
            } else if name.eq_ignore_ascii_case(b"connection") && crate::http::says_close(h.value) {
                keep_alive = false;
            }
            kept.push(crate::http::line_range(buf, h));
        }
        let Some(content_length) = content_length else {
            return Head::Other;
        };
        let target = crate::http::range_in(buf, target.as_bytes());
        (len, target, kept, content_length, keep_alive)
    };
    let head = buf.split_to(len).freeze();
    // Forwarded only as sent: a target `PathAndQuery` refuses or would spell otherwise (it drops
    // a fragment, for one) goes to hyper with the head.
    let target = match http::uri::PathAndQuery::from_maybe_shared(head.slice(target.clone())) {
        Ok(parsed) if parsed.as_str().as_bytes() == &head[target] => parsed,
        _ => return Head::Taken(head),
    };
    Head::Push(PushHead {
        request: PushRequest {
            target,
            headers: RequestHeaders::Lines(HeadLines::new(head, lines)),
        },
        content_length,
        keep_alive,
    })
}

/// Runs [`parse_head`] on `input` and panics when one of the reader's promises breaks (for the
/// fuzz target `request_head`): a request it does not serve leaves the buffer as it was, and a
/// push's head is taken out whole, with every header line's value as sent and its length as
/// declared.
#[doc(hidden)]
pub fn check_head(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    match parse_head(&mut buf) {
        Head::Partial | Head::Other => {
            assert_eq!(&buf[..], input, "bytes taken from a request not served")
        }
        Head::Taken(head) => {
            let mut whole = head.to_vec();
            whole.extend_from_slice(&buf);
            assert_eq!(whole, input, "a handed-off request lost bytes");
        }
        Head::Push(push) => {
            let consumed = input.len() - buf.len();
            assert_eq!(
                &input[consumed..],
                &buf[..],
                "the rest is not what followed the head"
            );
            let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut lines);
            assert_eq!(
                request.parse(&input[..consumed]),
                Ok(httparse::Status::Complete(consumed)),
                "the head taken is not one whole head"
            );
            let RequestHeaders::Lines(lines) = &push.request.headers else {
                panic!("the push reader's headers are not its lines");
            };
            let sent: Vec<(&[u8], &[u8])> = request
                .headers
                .iter()
                .map(|h| (h.name.as_bytes(), h.value))
                .collect();
            let kept: Vec<(&[u8], &[u8])> = lines.lines().collect();
            assert_eq!(kept, sent, "the header lines are not the ones sent");
            assert_eq!(
                request.path,
                Some(push.request.target.as_str()),
                "the target changed"
            );
            let declared = lines
                .get("content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok());
            assert_eq!(
                declared,
                Some(push.content_length),
                "the length read is not the one declared"
            );
        }
    }
}

/// Reads a body of exactly `len` bytes within `timeout`: one chunk when `buf` already holds it
/// whole, else two (what `buf` holds, then the rest, read into a buffer of its own). Bytes
/// after the body stay in `buf`: the next request's.
async fn read_body<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    len: usize,
    timeout: std::time::Duration,
) -> Result<Chunks, BodyError> {
    let mut chunks = Chunks::new();
    if buf.len() >= len {
        chunks.push(buf.split_to(len).freeze());
        return Ok(chunks);
    }
    // The start of the body stays in the buffer it was read into, and the rest is read into a
    // buffer of its own: the two go upstream as they are (one vectored write), and only an
    // inspection that runs joins them, on an inspection thread. Copying the start into one
    // buffer for the whole body cost the serving thread up to a read buffer's worth of copying
    // (64 KiB) per large push.
    let arrived = buf.len();
    chunks.push(buf.split().freeze());
    let mut body = BytesMut::with_capacity(len - arrived);
    let read = async {
        while arrived + body.len() < len {
            let want = len - arrived - body.len();
            if io.read_buf(&mut (&mut body).limit(want)).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before the body was complete",
                ));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
        Ok(Ok(())) => {
            chunks.push(body.freeze());
            Ok(chunks)
        }
    }
}

/// Reads `input` as Loki's answer to a push, writes it to an agent as the push reader does,
/// and panics when what the agent would read is not Loki's answer (for the fuzz target
/// `answer`): the final status as Loki sent it, Loki's end-to-end header lines as it wrote them
/// and in its order, then `date` (only when Loki sent none) and `content-length`, and exactly
/// the body read, which for an answer with a `Content-Length` is the bytes that followed its
/// head. An answer the push client refuses is a 502 and is not checked further: returns
/// whether the answer was written and checked.
#[doc(hidden)]
pub fn check_answer(input: &[u8]) -> bool {
    let Ok(upstream) = at_once(crate::forward::read_push_answer(&mut &input[..])) else {
        return false;
    };
    let mut out = Vec::new();
    at_once(write_answer(&mut out, PushAnswer::Loki(upstream), true)).expect("written to memory");

    // Loki's final head, read apart from the push client: interim (1xx but 101) heads skipped.
    let mut at = 0;
    let (status, sent, declared, head_end) = loop {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut lines);
        let Ok(httparse::Status::Complete(len)) = response.parse(&input[at..]) else {
            panic!("an answer was read from bytes without a whole head");
        };
        let code = response.code.expect("a whole head has a status");
        if (100..200).contains(&code) && code != 101 {
            at += len;
            continue;
        }
        let named = |wanted: &str| {
            response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(wanted))
                .map(|h| h.value.to_vec())
                .collect::<Vec<_>>()
        };
        let listed: Vec<String> = named("connection")
            .iter()
            .flat_map(|v| {
                v.split(|&b| b == b',')
                    .map(|t| t.trim_ascii().to_ascii_lowercase())
            })
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .collect();
        // Written out here rather than taken from `forward`: the check must not share the list
        // it checks (RFC 9110 §7.6.1's hop-by-hop fields, plus the framing and `host`).
        let hop = [
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
        let sent: Vec<(Vec<u8>, Vec<u8>)> = response
            .headers
            .iter()
            .filter(|h| {
                let name = h.name.to_ascii_lowercase();
                !hop.contains(&name.as_str()) && !listed.contains(&name)
            })
            .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
            .collect();
        let declared = match (
            named("transfer-encoding").is_empty(),
            named("content-length").first(),
        ) {
            (true, Some(v)) => std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok()),
            _ => None,
        };
        break (code, sent, declared, at + len);
    };

    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS + 2];
    let mut written = httparse::Response::new(&mut lines);
    let Ok(httparse::Status::Complete(len)) = written.parse(&out) else {
        panic!(
            "the agent cannot read the head written: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(written.code, Some(status), "the status changed");
    let got: Vec<(Vec<u8>, Vec<u8>)> = written
        .headers
        .iter()
        .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
        .collect();
    let body = &out[len..];
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    let mut expected = sent.clone();
    if !sent.iter().any(|(n, _)| n.eq_ignore_ascii_case(b"date")) {
        let date = got
            .iter()
            .find(|(n, _)| n == b"date")
            .expect("a date added");
        expected.push(date.clone());
    }
    if !bodiless {
        expected.push((
            b"content-length".to_vec(),
            body.len().to_string().into_bytes(),
        ));
    } else {
        assert!(body.is_empty(), "a body written after a {status}");
    }
    assert_eq!(got, expected, "the header lines are not Loki's");
    if let (Some(n), false) = (declared, bodiless) {
        assert_eq!(
            body,
            &input[head_end..head_end + n],
            "the body is not the bytes Loki sent"
        );
    }
    true
}

/// Runs a future that never waits (it reads and writes memory) to its end.
fn at_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading and writing memory waited"),
    }
}

/// Writes a push's answer. Loki's, when the push client read it whole (the usual case), goes
/// line for line as Loki wrote its head (only the hop-by-hop lines left out) with its body's
/// exact length, without building a `HeaderMap`; any other through [`write_response`].
async fn write_answer<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    answer: PushAnswer,
    keep_alive: bool,
) -> io::Result<()> {
    let upstream = match answer {
        PushAnswer::Loki(upstream) => upstream,
        PushAnswer::Ours(response) => return write_response(io, response, keep_alive).await,
    };
    let (status, lines, body) = match upstream.into_whole() {
        Ok(whole) => whole,
        Err(streamed) => return write_response(io, streamed.into_response(), keep_alive).await,
    };
    let mut head = status_line(status);
    for (name, value) in lines.lines() {
        header_line(&mut head, name, value);
    }
    end_head(&mut head, lines.get("date").is_some(), keep_alive);
    write_whole(io, head, status, &body).await
}

/// Writes `response` as HTTP/1.1: its status, headers (a `Date` added when it has none) and
/// body, with its exact length when known and chunked otherwise. Statuses that carry no body
/// (1xx, 204, 304) are written without one.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    response: axum::response::Response,
    keep_alive: bool,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut head = status_line(status);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        header_line(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    end_head(
        &mut head,
        parts.headers.contains_key(header::DATE),
        keep_alive,
    );
    if bodiless(status) {
        return write_whole(io, head, status, &Bytes::new()).await;
    }
    if body.size_hint().exact().is_some() {
        let bytes = body
            .collect()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
            .to_bytes();
        return write_whole(io, head, status, &bytes).await;
    }
    // A streamed answer of unknown length (Loki over HTTP/2 or TLS): chunked, as it comes.
    head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    io.write_all(&head).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| io::Error::other(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if data.is_empty() {
                continue;
            }
            let mut size = Vec::with_capacity(12);
            write!(size, "{:x}\r\n", data.len())?;
            io.write_all(&size).await?;
            io.write_all(&data).await?;
            io.write_all(b"\r\n").await?;
        }
    }
    io.write_all(b"0\r\n\r\n").await
}

/// An answer head's first line.
fn status_line(status: StatusCode) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        status
            .canonical_reason()
            .unwrap_or("<unknown status code>")
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    head
}

fn header_line(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Adds the lines every answer head ends with: `Date` when the answer has none, and
/// `Connection: close` when the connection ends after it.
fn end_head(head: &mut Vec<u8>, has_date: bool, keep_alive: bool) {
    if !has_date {
        head.extend_from_slice(b"date: ");
        with_date(|d| head.extend_from_slice(d));
        head.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    }
}

/// Statuses whose answers carry no body (RFC 9110 §6.4.1).
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Ends `head` and writes it with `body` and its exact length (without a body for a status
/// that carries none), in one vectored write.
async fn write_whole<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    mut head: Vec<u8>,
    status: StatusCode,
    body: &Bytes,
) -> io::Result<()> {
    if bodiless(status) {
        head.extend_from_slice(b"\r\n");
        return io.write_all(&head).await;
    }
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    crate::http::write_head_and_body(io, &head, std::slice::from_ref(body)).await
}

/// Calls `f` with the current `Date` header value, formatted once per second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut date = cell.borrow_mut();
        if date.0 != second {
            *date = (second, httpdate::fmt_http_date(now));
        }
        f(date.1.as_bytes());
    });
}

/// A connection handed to hyper: the bytes this reader already read come first.
pub(super) struct Rewound<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewound<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewound<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const PUSH: &[u8] = b"POST /loki/api/v1/push?x=1 HTTP/1.1\r\nHost: loki\r\nContent-Type: application/x-protobuf\r\nX-Scope-OrgID: t1\r\nX-Odd: caf\xe9\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn a_push_head_is_taken_out_with_its_headers_and_the_body_stays() {
        let head_len = PUSH.len() - 4;
        for cut in 0..head_len {
            let mut buf = BytesMut::from(&PUSH[..cut]);
            assert!(
                matches!(parse_head(&mut buf), Head::Partial),
                "cut at {cut}"
            );
            assert_eq!(buf.len(), cut, "a partial head was consumed");
        }
        let mut buf = BytesMut::from(PUSH);
        let Head::Push(head) = parse_head(&mut buf) else {
            panic!("a plain push was not served here");
        };
        assert_eq!(&buf[..], b"body");
        assert_eq!(head.content_length, 4);
        assert!(head.keep_alive);
        assert_eq!(head.request.target, "/loki/api/v1/push?x=1");
        let RequestHeaders::Lines(lines) = &head.request.headers else {
            panic!("not the lines as sent");
        };
        let lines: Vec<(&[u8], &[u8])> = lines.lines().collect();
        assert_eq!(
            lines,
            [
                (&b"Host"[..], &b"loki"[..]),
                (b"Content-Type", b"application/x-protobuf"),
                (b"X-Scope-OrgID", b"t1"),
                (b"X-Odd", b"caf\xe9"),
                (b"Content-Length", b"4"),
            ]
        );
    }

    #[test]
    fn the_next_push_gets_a_buffer_it_fits_in_whole() {
        // A 10 KiB push read into the first buffer, then split off it (head, then body).
        let mut buf = BytesMut::with_capacity(READ_BUF);
        buf.extend_from_slice(&[b'x'; 10 << 10]);
        let _head = buf.split_to(200);
        let _body = buf.split_to(buf.len()).freeze();
        assert!(
            buf.capacity() < 10 << 10,
            "what is left cannot hold the next push"
        );
        let mut fresh = next_buffer(&mut buf, 10 << 10).expect("a fresh buffer");
        assert!(fresh.is_empty() && fresh.capacity() >= 10 << 10);
        assert!(
            next_buffer(&mut fresh, 10 << 10).is_none(),
            "a buffer with room is kept"
        );
        // Room to grow a little, not much: the buffer lives as long as the body is queued.
        assert!(
            (10 << 10..14 << 10).contains(&fresh.capacity()),
            "{}",
            fresh.capacity()
        );
        // Small pushes get a small buffer; large ones are capped (the rest of their body is read
        // into a buffer of its own).
        let small = next_buffer(&mut BytesMut::new(), 100).unwrap().capacity();
        assert!((MIN_READ_BUF..2 * MIN_READ_BUF).contains(&small), "{small}");
        let mut capped = next_buffer(&mut buf, 4 << 20).unwrap();
        assert!(
            (MAX_READ_BUF..2 * MAX_READ_BUF).contains(&capped.capacity()),
            "{}",
            capped.capacity()
        );
        // A large push's head (and its body's start) read into the capped buffer and dropped
        // after the request and its inspection: the buffer is taken back, not replaced.
        capped.extend_from_slice(&[b'h'; 300]);
        drop(capped.split_to(300).freeze());
        assert!(capped.capacity() < MAX_READ_BUF);
        assert!(next_buffer(&mut capped, 4 << 20).is_none());
        assert!(capped.capacity() >= MAX_READ_BUF);
        // Bytes already read (a pipelined request) are never dropped.
        let mut pipelined = BytesMut::with_capacity(16);
        pipelined.extend_from_slice(b"POST");
        assert!(next_buffer(&mut pipelined, 10 << 10).is_none());
    }

    #[tokio::test]
    async fn a_body_that_arrives_after_its_head_is_not_copied_on_the_serving_thread() {
        let timeout = std::time::Duration::from_secs(5);
        // The head's read brought the body's first four bytes; the rest comes later, followed
        // by the next request.
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"0123");
        let start = buf.as_ptr();
        let mut socket: &[u8] = b"456789POST";
        let body = read_body(&mut socket, &mut buf, 10, timeout).await.unwrap();
        assert_eq!(body.len(), 10);
        assert_eq!(&body.to_contiguous()[..], b"0123456789");
        assert_eq!(body.parts().len(), 2);
        assert_eq!(
            body.parts()[0].as_ptr(),
            start,
            "the body's start was copied out of the read buffer"
        );
        assert!(buf.is_empty());
        assert_eq!(
            socket, b"POST",
            "the next request's bytes were read as body"
        );
        // A body the buffer holds whole is one slice of it; the next request's bytes stay.
        let mut buf = BytesMut::from(&b"0123456789POST"[..]);
        let start = buf.as_ptr();
        let body = read_body(&mut &b""[..], &mut buf, 10, timeout)
            .await
            .unwrap();
        assert_eq!(body.parts().len(), 1);
        assert_eq!(body.parts()[0].as_ptr(), start);
        assert_eq!(&buf[..], b"POST");
        // A client that closes before the body is complete gets an error, not a short body.
        let mut buf = BytesMut::from(&b"0123"[..]);
        let cut = read_body(&mut &b"45"[..], &mut buf, 10, timeout).await;
        assert!(matches!(cut, Err(BodyError::Read(_))), "{cut:?}");
    }

    #[test]
    fn other_requests_are_left_whole_for_hyper() {
        let others: [&[u8]; 15] = [
            b"GET /loki/api/v1/push HTTP/1.1\r\n\r\n",
            b"POST /loki/api/v1/query HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /loki/api/v1/push HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            b"POST /loki/api/v1/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /loki/api/v1/push HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
            b"POST /loki/api/v1/push HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST /loki/api/v1/push HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /loki/api/v1/push HTTP/1.1\r\nContent-Length: 3\r\nUpgrade: websocket\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST http://loki/loki/api/v1/push HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /loki/api/v1/push HTTP/1.1\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\xfc\x03\x03",
            b"POST /loki/api/v1/push#x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /api/prom/push?#ush0 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ];
        for other in others {
            let mut buf = BytesMut::from(other);
            assert!(
                matches!(parse_head(&mut buf), Head::Other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
            assert_eq!(&buf[..], other, "bytes were taken before the hand-off");
        }
    }

    #[test]
    fn the_fuzz_check_holds_for_every_shape_here() {
        check_head(PUSH);
        check_head(&PUSH[..20]);
        check_head(
            b"POST /loki/api/v1/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        check_head(b"\x16\x03\x01");
        // Found by the fuzzer: a fragment in the target, which `PathAndQuery` drops.
        check_head(b"POST /api/prom/push?#ush0 HTTP/1.1\r\nHost: l\xcf\xcf\r\nContent-Length:5\r\n\r\nel\0\0\0");
    }

    #[test]
    fn the_answer_check_holds_for_every_shape_here() {
        let answers: [&[u8]; 9] = [
            b"HTTP/1.1 204 No Content\r\nDate: Sun, 29 Nov 2026 05:00:00 GMT\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 21\r\n\r\nentry too far behind\n",
            b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nslow \r\n4;x=y\r\ndown\r\n0\r\nTrailer: t\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
            b"HTTP/1.1 500 Internal Server Error\r\nConnection: x-hop, close\r\nX-Hop: dropped\r\nX-Kept: kept\r\nContent-Length: 3\r\n\r\nbad",
            b"HTTP/1.0 503 Service Unavailable\r\nX-Obs: caf\xc3\xa9 \xff\r\n\r\nuntil the connection closes",
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 599 Whatever\r\nContent-Length: 2\r\n\r\nokEXTRA",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
        ];
        for answer in answers {
            assert!(
                check_answer(answer),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
        // Refused (a 502 of ours), never written: the check returns false and does not panic.
        for refused in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            b"garbage",
            b"",
        ] {
            assert!(
                !check_answer(refused),
                "{:?}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    /// Loki's answer goes out with its status, headers and body bytes: with its length when
    /// known, chunked when streamed without one, and without a body for 204.
    #[tokio::test]
    async fn answers_are_written_with_their_bytes_whatever_their_framing() {
        use axum::body::Body;
        async fn written(response: axum::response::Response, keep_alive: bool) -> String {
            let mut out = Vec::new();
            write_response(&mut out, response, keep_alive)
                .await
                .unwrap();
            String::from_utf8(out).unwrap()
        }
        let date = "date: Fri, 27 Nov 2026 10:00:00 GMT\r\n";
        let mut whole = axum::response::Response::new(Body::from("entry too far behind\n"));
        *whole.status_mut() = StatusCode::BAD_REQUEST;
        whole
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        whole.headers_mut().insert(
            header::DATE,
            HeaderValue::from_static("Fri, 27 Nov 2026 10:00:00 GMT"),
        );
        assert_eq!(
            written(whole, true).await,
            format!("HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n{date}content-length: 21\r\n\r\nentry too far behind\n")
        );

        let parts: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"hello")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b" world")),
        ];
        let mut streamed =
            axum::response::Response::new(Body::from_stream(futures_util::stream::iter(parts)));
        *streamed.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        streamed.headers_mut().insert(
            header::DATE,
            HeaderValue::from_static("Fri, 27 Nov 2026 10:00:00 GMT"),
        );
        assert_eq!(
            written(streamed, false).await,
            format!("HTTP/1.1 429 Too Many Requests\r\n{date}connection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        );

        let mut empty = axum::response::Response::new(Body::empty());
        *empty.status_mut() = StatusCode::NO_CONTENT;
        empty
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let text = written(empty, true).await;
        assert!(
            text.starts_with("HTTP/1.1 204 No Content\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
    }

    #[test]
    fn connection_close_is_found_among_other_tokens() {
        let mut buf = BytesMut::from(
            &b"POST /api/prom/push HTTP/1.1\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let Head::Push(head) = parse_head(&mut buf) else {
            panic!("a legacy push was not served here");
        };
        assert!(!head.keep_alive);
        assert!(buf.is_empty());
    }
}
