//! HTTP helpers: one place that builds every outgoing `reqwest` client, and the byte ranges
//! the hand-written HTTP/1.1 reader and client share parsed heads by.
//!
//! reqwest is built with rustls and the ring provider (no C build of aws-lc); such a client
//! needs the process-wide crypto provider installed before it is built, which
//! [`client_builder`] guarantees.

/// Installs rustls' ring crypto provider as the process default, once; later calls do nothing.
/// Without the `tls` feature it does nothing.
pub fn install_crypto_provider() {
    #[cfg(feature = "tls")]
    {
        // Err means a provider is installed already (ours or the embedder's): keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Where `part`, a subslice of `whole` (a header `httparse` found in a read buffer, say), sits
/// in it: the header can then be a shared slice of the frozen buffer instead of a copy.
pub(crate) fn range_in(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    debug_assert!(start + part.len() <= whole.len(), "not a subslice");
    start..start + part.len()
}

/// Where one header line's name and value sit in a head: start and end of each.
pub(crate) type LineRange = [u32; 4];

/// The header lines of one head, inline for a usual push or answer (Promtail and Alloy send
/// about six lines, Loki answers with two or three).
pub(crate) type LineRanges = smallvec::SmallVec<[LineRange; 8]>;

/// Where `line`, a header `httparse` found in `head`, sits in it. A head is read into one
/// buffer of at most a few hundred KiB, far below `u32::MAX`.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn line_range(head: &[u8], line: &httparse::Header<'_>) -> LineRange {
    let name = range_in(head, line.name.as_bytes());
    let value = range_in(head, line.value);
    [
        name.start as u32,
        name.end as u32,
        value.start as u32,
        value.end as u32,
    ]
}

/// Header lines as they came on the wire: the bytes of their head, and where the name and
/// value of each line sit in them. The push reader and the push client keep heads this way
/// and write lines on as they came; building an `http::HeaderMap` for each (a `HeaderName`
/// and a checked `HeaderValue` per line, then dropping them) cost the serving thread more
/// than parsing the head did. `httparse` checked the lines: a name is a token, a value holds
/// no CR, LF or other control character but tab.
#[derive(Debug, Clone, Default)]
pub struct HeadLines {
    bytes: bytes::Bytes,
    lines: LineRanges,
}

impl HeadLines {
    pub(crate) fn new(bytes: bytes::Bytes, lines: LineRanges) -> HeadLines {
        HeadLines { bytes, lines }
    }

    /// The lines, name and value, in the order and spelling they came in.
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines.iter().map(|&[n0, n1, v0, v1]| {
            (
                &self.bytes[n0 as usize..n1 as usize],
                &self.bytes[v0 as usize..v1 as usize],
            )
        })
    }

    /// The values of the header `name` (compared without regard to case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.lines()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of the header `name` (compared without regard to case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.lines()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of the header `name` as a `HeaderValue` sharing the head's bytes.
    pub fn value(&self, name: &str) -> Option<http::HeaderValue> {
        let &[_, _, v0, v1] = self.lines.iter().find(|&&[n0, n1, _, _]| {
            self.bytes[n0 as usize..n1 as usize].eq_ignore_ascii_case(name.as_bytes())
        })?;
        http::HeaderValue::from_maybe_shared(self.bytes.slice(v0 as usize..v1 as usize)).ok()
    }

    /// The lines as a `HeaderMap` (values share the head's bytes).
    pub fn to_header_map(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::with_capacity(self.lines.len());
        for &[n0, n1, v0, v1] in &self.lines {
            let name = http::HeaderName::from_bytes(&self.bytes[n0 as usize..n1 as usize]);
            let value =
                http::HeaderValue::from_maybe_shared(self.bytes.slice(v0 as usize..v1 as usize));
            // httparse accepts exactly the names and values these do.
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        headers
    }
}

/// A push request's headers: as the push reader read them, or as hyper did (the router's
/// pushes, and any head the push reader leaves to hyper).
#[derive(Debug, Clone)]
pub enum RequestHeaders {
    /// The lines as the agent sent them.
    Lines(HeadLines),
    /// hyper's map.
    Map(http::HeaderMap),
}

impl RequestHeaders {
    /// The first value of the header `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match self {
            RequestHeaders::Lines(lines) => lines.get(name),
            RequestHeaders::Map(map) => map.get(name).map(http::HeaderValue::as_bytes),
        }
    }

    /// The first value of the header `name` (lowercase) as a `HeaderValue`.
    pub fn value(&self, name: &str) -> Option<http::HeaderValue> {
        match self {
            RequestHeaders::Lines(lines) => lines.value(name),
            RequestHeaders::Map(map) => map.get(name).cloned(),
        }
    }

    /// The headers as a map to change: lines become a map first.
    pub fn map_mut(&mut self) -> &mut http::HeaderMap {
        if let RequestHeaders::Lines(lines) = self {
            *self = RequestHeaders::Map(lines.to_header_map());
        }
        match self {
            RequestHeaders::Map(map) => map,
            RequestHeaders::Lines(_) => unreachable!("made a map above"),
        }
    }

    /// The headers as a map (built from the lines when they are lines).
    pub fn to_map(&self) -> std::borrow::Cow<'_, http::HeaderMap> {
        match self {
            RequestHeaders::Lines(lines) => std::borrow::Cow::Owned(lines.to_header_map()),
            RequestHeaders::Map(map) => std::borrow::Cow::Borrowed(map),
        }
    }
}

/// A header value as text when it holds only visible ASCII and tabs, as
/// `http::HeaderValue::to_str` takes it.
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Whether a `Connection` header value carries the `close` token.
pub(crate) fn says_close(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// Most buffers handed to one `writev` (Linux's limit is 1024).
const MAX_IOV: usize = 512;

/// Writes a message head and its body's chunks, a bounded number of buffers per `writev`: the
/// push client's requests to Loki and the push reader's answers to agents.
pub(crate) async fn write_head_and_body<W>(
    out: &mut W,
    head: &[u8],
    body: &[bytes::Bytes],
) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use std::io::IoSlice;
    use tokio::io::AsyncWriteExt;
    let mut slices: smallvec::SmallVec<[IoSlice<'_>; 4]> =
        smallvec::SmallVec::with_capacity(body.len() + 1);
    slices.push(IoSlice::new(head));
    slices.extend(
        body.iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p)),
    );
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = bufs.len().min(MAX_IOV);
        let written = out.write_vectored(&bufs[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, written);
    }
    Ok(())
}

/// Returns a client builder with the crypto provider in place.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}
