//! Decode: turns the bytes of one Loki push into a read-only view of its streams and entries.
//!
//! Receives the request body exactly as the client sent it, plus its `Content-Type`,
//! `Content-Encoding` and path. Emits a [`PushView`] that borrows from the (decompressed)
//! buffer wherever the wire format allows, so a line costs no copy.
//!
//! Two steps, both plain synchronous functions so they are trivial to test and bench:
//! 1. [`decompress`] undoes `Content-Encoding` (gzip, raw deflate) and, for protobuf, the
//!    snappy block, enforcing the decompressed-size cap *before* allocating (the snappy block
//!    goes into a buffer each thread keeps for its next push: see [`with_decoded`]);
//! 2. [`parse`] reads protobuf (a hand-written borrowing scanner, see `decode/protobuf.rs`)
//!    or JSON (Loki's v1 format, or the legacy v0 format on `/api/prom/push`).
//!
//! Decoding never touches the bytes that are forwarded, and a decode failure never changes the
//! answer the client gets: Loki decides. Failures are counted by [`DecodeError::reason`].

mod json;
pub mod labels;
mod protobuf;
pub mod wire;

use std::borrow::Cow;
use std::cell::Cell;
use std::io::Read;

pub use labels::{parse_labels, LabelError, Labels};

/// Which JSON dialect a push uses; Loki picks it from the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushApi {
    /// `/loki/api/v1/push`: JSON is `{"streams":[{"stream":{..},"values":[[ns, line, {..}]]}]}`.
    V1,
    /// `/api/prom/push`: JSON is the legacy `{"streams":[{"labels":"{..}","entries":[{"ts","line"}]}]}`.
    Legacy,
}

impl PushApi {
    /// Returns the dialect Loki uses for a request path (`loghttp.GetVersion`).
    pub fn from_path(path: &str) -> Self {
        const V1: &[u8] = b"/loki/api/v1";
        if path
            .as_bytes()
            .windows(V1.len())
            .any(|w| w.eq_ignore_ascii_case(V1))
        {
            PushApi::V1
        } else {
            PushApi::Legacy
        }
    }
}

/// The body format after content negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// Snappy-block protobuf `PushRequest` (any media type that is not JSON, as in Loki).
    Protobuf,
    /// JSON in the given dialect.
    Json(PushApi),
}

impl BodyFormat {
    /// Returns the format Loki would read for this `Content-Type`, or an error when it is absent.
    ///
    /// # Errors
    /// [`DecodeError::ContentType`] for a missing or empty media type, which Loki answers with 400.
    pub fn from_content_type(
        content_type: Option<&str>,
        api: PushApi,
    ) -> Result<Self, DecodeError> {
        let media = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if media.is_empty() {
            return Err(DecodeError::ContentType);
        }
        Ok(if media == "application/json" {
            BodyFormat::Json(api)
        } else {
            BodyFormat::Protobuf
        })
    }
}

/// A decoded push: the streams of one request, borrowing from the decompressed buffer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PushView<'a> {
    /// The streams in the order they were sent.
    pub streams: Vec<StreamView<'a>>,
}

impl PushView<'_> {
    /// Returns the number of entries (log lines) over all streams.
    pub fn entry_count(&self) -> usize {
        self.streams.iter().map(|s| s.entries.len()).sum()
    }
}

/// One stream: its label set and its entries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StreamView<'a> {
    /// The stream's labels, parsed from Loki's label-string syntax and sorted by name.
    pub labels: Labels<'a>,
    /// The entries in the order they were sent.
    pub entries: Vec<EntryView<'a>>,
}

/// One log entry.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EntryView<'a> {
    /// Event time in nanoseconds since the Unix epoch (0 when the entry carried none).
    pub timestamp_ns: i64,
    /// The log line, as bytes: Loki accepts invalid UTF-8 and so do we.
    pub line: Cow<'a, [u8]>,
    /// Structured metadata (name, value) pairs.
    pub structured_metadata: Vec<(Cow<'a, str>, Cow<'a, [u8]>)>,
}

/// Caps applied while decoding, so an attacker-declared size never drives an allocation.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest body after undoing Content-Encoding and snappy, in bytes.
    pub max_decompressed_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_decompressed_bytes: 512 << 20,
        }
    }
}

/// Why a push could not be decoded. Each variant maps to one `reason` label value.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing or empty Content-Type")]
    ContentType,
    #[error("Content-Encoding {0:?} not supported")]
    ContentEncoding(String),
    #[error("decompressed body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid gzip body")]
    Gzip(#[source] std::io::Error),
    #[error("invalid deflate body")]
    Deflate(#[source] std::io::Error),
    #[error("invalid snappy block")]
    Snappy(#[source] snap::Error),
    #[error("invalid protobuf push request: {0}")]
    Protobuf(&'static str),
    #[error("invalid JSON push request: {0}")]
    Json(#[source] serde_json::Error),
    #[error("couldn't parse labels: {0}")]
    Labels(#[from] LabelError),
    #[error("invalid entry timestamp: {0}")]
    Timestamp(String),
}

impl DecodeError {
    /// Returns the bounded label value used in `logwarden_decode_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::ContentType => "content_type",
            DecodeError::ContentEncoding(_) => "content_encoding",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Gzip(_) => "gzip",
            DecodeError::Deflate(_) => "deflate",
            DecodeError::Snappy(_) => "snappy",
            DecodeError::Protobuf(_) => "protobuf",
            DecodeError::Json(_) => "json",
            DecodeError::Labels(_) => "labels",
            DecodeError::Timestamp(_) => "timestamp",
        }
    }

    /// Every reason label value, so metrics can be pre-registered at zero.
    pub const REASONS: &'static [&'static str] = &[
        "content_type",
        "content_encoding",
        "too_large",
        "gzip",
        "deflate",
        "snappy",
        "protobuf",
        "json",
        "labels",
        "timestamp",
    ];
}

/// Undoes `Content-Encoding` and, for protobuf bodies, the snappy block.
///
/// Returns the bytes [`parse`] reads; borrows `body` when nothing had to be undone (plain JSON).
/// The snappy block is decompressed into `scratch`, grown to the block's declared length when
/// shorter and otherwise written over in place: what it held before is never read, only the
/// bytes the block wrote are returned.
///
/// # Errors
/// Unsupported encodings, corrupt compressed data, or output over `limits.max_decompressed_bytes`.
pub fn decompress<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    format: BodyFormat,
    limits: DecodeLimits,
    scratch: &'a mut Vec<u8>,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let max = limits.max_decompressed_bytes;
    // Loki compares the header as an exact string; "snappy" means nothing extra (Alloy sends it).
    let unwrapped: Cow<'a, [u8]> = match content_encoding.unwrap_or("") {
        "" | "snappy" => Cow::Borrowed(body),
        "gzip" => Cow::Owned(read_capped(
            flate2::read::MultiGzDecoder::new(body),
            max,
            DecodeError::Gzip,
        )?),
        "deflate" => Cow::Owned(inflate(body, max)?),
        other => return Err(DecodeError::ContentEncoding(other.to_owned())),
    };
    match format {
        // Loki's JSON reader (jsoniter and jsonparser) passes invalid UTF-8 through, so Loki
        // stores such a push; serde_json would refuse it whole, and one bad byte in one line
        // would hide every other line of the batch from detection. Invalid sequences become
        // U+FFFD instead, as Go's own decoder would have them.
        BodyFormat::Json(_) => match std::str::from_utf8(&unwrapped) {
            Ok(_) => Ok(unwrapped),
            Err(_) => Ok(Cow::Owned(
                String::from_utf8_lossy(&unwrapped)
                    .into_owned()
                    .into_bytes(),
            )),
        },
        BodyFormat::Protobuf => {
            let declared = snap::raw::decompress_len(&unwrapped).map_err(DecodeError::Snappy)?;
            if declared > max {
                return Err(DecodeError::TooLarge { limit: max });
            }
            if scratch.len() < declared {
                scratch.resize(declared, 0);
            }
            let out = &mut scratch[..declared];
            let written = snap::raw::Decoder::new()
                .decompress(&unwrapped, out)
                .map_err(DecodeError::Snappy)?;
            Ok(Cow::Borrowed(&scratch[..written]))
        }
    }
}

/// Inflates an HTTP `deflate` body: Loki (Go `compress/flate`) uses raw DEFLATE (RFC 1951); some
/// clients send zlib (RFC 1950) instead, so that is tried when raw fails.
fn inflate(body: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    match read_capped(
        flate2::read::DeflateDecoder::new(body),
        max,
        DecodeError::Deflate,
    ) {
        Ok(out) => Ok(out),
        Err(DecodeError::TooLarge { limit }) => Err(DecodeError::TooLarge { limit }),
        Err(raw_err) => read_capped(
            flate2::read::ZlibDecoder::new(body),
            max,
            DecodeError::Deflate,
        )
        .map_err(|_| raw_err),
    }
}

fn read_capped(
    reader: impl Read,
    max: usize,
    wrap: fn(std::io::Error) -> DecodeError,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let read = reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(wrap)?;
    if read > max {
        return Err(DecodeError::TooLarge { limit: max });
    }
    Ok(out)
}

/// Parses decompressed push bytes in the given format into a borrowed view.
///
/// # Errors
/// Malformed protobuf or JSON, an unparsable label string, or a malformed timestamp.
pub fn parse(buf: &[u8], format: BodyFormat) -> Result<PushView<'_>, DecodeError> {
    match format {
        BodyFormat::Protobuf => protobuf::parse_push(buf),
        BodyFormat::Json(PushApi::V1) => json::parse_v1(buf),
        BodyFormat::Json(PushApi::Legacy) => json::parse_legacy(buf),
    }
}

/// The request metadata a push is decoded with.
#[derive(Debug, Clone, Copy)]
pub struct PushMeta<'h> {
    /// `Content-Type` header value, if any.
    pub content_type: Option<&'h str>,
    /// `Content-Encoding` header value, if any.
    pub content_encoding: Option<&'h str>,
    /// The push API the request came in on.
    pub api: PushApi,
}

thread_local! {
    /// The thread's snappy output buffer, kept from one push to the next: a new one per push
    /// was allocated zeroed and then written over, and zeroing alone cost about a twentieth of
    /// inspecting a push.
    static SNAPPY_OUT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Largest snappy output buffer a thread keeps for its next push (Promtail's batches are 1 MiB
/// of lines by default); a larger push's buffer is freed after it, so a rare huge push does not
/// hold its memory.
pub const KEPT_SNAPPY_BUFFER: usize = 8 << 20;

/// Decompresses and parses a push in one call, handing the view to `f`.
///
/// The view borrows from a buffer that lives only for the call, hence the closure.
///
/// # Errors
/// Any [`DecodeError`] from negotiation, [`decompress`] or [`parse`].
pub fn with_decoded<R>(
    body: &[u8],
    meta: PushMeta<'_>,
    limits: DecodeLimits,
    f: impl FnOnce(&PushView<'_>) -> R,
) -> Result<R, DecodeError> {
    let format = BodyFormat::from_content_type(meta.content_type, meta.api)?;
    // Taken out for the call (a nested call would find an empty one and allocate its own).
    let mut scratch = SNAPPY_OUT.take();
    let result = decompress(body, meta.content_encoding, format, limits, &mut scratch)
        .and_then(|buf| Ok(f(&parse(&buf, format)?)));
    if scratch.capacity() <= KEPT_SNAPPY_BUFFER {
        SNAPPY_OUT.set(scratch);
    }
    result
}

#[cfg(test)]
mod tests;
