//! A borrowing protobuf scanner for `logproto.PushRequest` (field numbers in `proto/push.proto`).
//!
//! It walks the wire format once and points into the buffer: no per-line allocation, and line
//! bytes are never checked for UTF-8 (Loki does not either). Unknown fields are skipped as the
//! protobuf spec requires; every length is checked against the bytes that remain, so a hostile
//! length can only produce an error, never an allocation.

use std::borrow::Cow;

use super::{parse_labels, DecodeError, EntryView, PushView, StreamView};

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(DecodeError::Protobuf("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(DecodeError::Protobuf("varint longer than 10 bytes"))
    }

    /// Reads a tag and returns (field number, wire type).
    #[inline]
    fn tag(&mut self) -> Result<(u64, u8), DecodeError> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(DecodeError::Protobuf("field number 0"));
        }
        Ok((field, (key & 7) as u8))
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if len > remaining {
            return Err(DecodeError::Protobuf("length exceeds message"));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        let n = match wire {
            WIRE_VARINT => {
                self.varint()?;
                return Ok(());
            }
            WIRE_LEN => {
                self.bytes()?;
                return Ok(());
            }
            WIRE_I64 => 8,
            WIRE_I32 => 4,
            _ => return Err(DecodeError::Protobuf("unsupported wire type")),
        };
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Protobuf("truncated fixed-width field"));
        }
        self.pos += n;
        Ok(())
    }

    /// Reads a LEN field when the wire type says so, else fails.
    fn len_field(&mut self, wire: u8) -> Result<&'a [u8], DecodeError> {
        if wire != WIRE_LEN {
            return Err(DecodeError::Protobuf("unexpected wire type"));
        }
        self.bytes()
    }
}

/// Parses a decompressed `PushRequest`.
pub(super) fn parse_push(buf: &[u8]) -> Result<PushView<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let mut streams = Vec::new();
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => streams.push(parse_stream(r.len_field(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    Ok(PushView { streams })
}

fn parse_stream(buf: &[u8]) -> Result<StreamView<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let mut labels_raw: &[u8] = b"";
    let mut entries = Vec::new();
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => labels_raw = r.len_field(wire)?,
            2 => entries.push(parse_entry(r.len_field(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    let labels_str = std::str::from_utf8(labels_raw)
        .map_err(|_| DecodeError::Protobuf("labels are not UTF-8"))?;
    Ok(StreamView {
        labels: parse_labels(labels_str)?,
        entries,
    })
}

fn parse_entry(buf: &[u8]) -> Result<EntryView<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let mut entry = EntryView::default();
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => entry.timestamp_ns = parse_timestamp(r.len_field(wire)?)?,
            2 => entry.line = Cow::Borrowed(r.len_field(wire)?),
            3 => entry
                .structured_metadata
                .push(parse_label_pair(r.len_field(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    Ok(entry)
}

fn parse_timestamp(buf: &[u8]) -> Result<i64, DecodeError> {
    let mut r = Reader::new(buf);
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while !r.done() {
        let (field, wire) = r.tag()?;
        match (field, wire) {
            (1, WIRE_VARINT) => seconds = r.varint()? as i64,
            (2, WIRE_VARINT) => nanos = i64::from(r.varint()? as i32),
            _ => r.skip(wire)?,
        }
    }
    Ok(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

fn parse_label_pair(buf: &[u8]) -> Result<(Cow<'_, str>, Cow<'_, [u8]>), DecodeError> {
    let mut r = Reader::new(buf);
    let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => name = r.len_field(wire)?,
            2 => value = r.len_field(wire)?,
            _ => r.skip(wire)?,
        }
    }
    Ok((String::from_utf8_lossy(name), Cow::Borrowed(value)))
}
