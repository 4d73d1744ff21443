//! A borrowing protobuf scanner for `logproto.PushRequest` (field numbers in `proto/push.proto`).
//!
//! It walks the wire format once and points into the buffer: no per-line allocation, and line
//! bytes are never checked for UTF-8 (Loki does not either). Unknown fields are skipped as the
//! protobuf spec requires; every length is checked against the bytes that remain, so a hostile
//! length can only produce an error, never an allocation.

use std::borrow::Cow;

use super::{parse_labels, DecodeError, EntryView, PushView, StreamView};

/// The scanner's own error: a static message, so `Result`s on the hot path stay two words wide.
type Scan<T> = Result<T, ScanError>;

#[derive(Debug)]
enum ScanError {
    Proto(&'static str),
    Labels(super::LabelError),
}

impl From<ScanError> for DecodeError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Proto(m) => DecodeError::Protobuf(m),
            ScanError::Labels(l) => DecodeError::Labels(l),
        }
    }
}

fn err<T>(m: &'static str) -> Scan<T> {
    Err(ScanError::Proto(m))
}

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

    /// Reads a varint. Tags, small lengths and most timestamps' nanoseconds fit in one byte,
    /// which is read inline; longer ones take [`Reader::varint_long`].
    #[inline(always)]
    fn varint(&mut self) -> Scan<u64> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Scan<u64> {
        // With ten bytes left (all but the message's last few varints), a fixed-size window:
        // no bounds check per byte, and the loop unrolls.
        if let Some(window) = self.buf.get(self.pos..self.pos + 10) {
            let window: &[u8; 10] = window.try_into().expect("ten bytes");
            let mut value = 0u64;
            for (i, &b) in window.iter().enumerate() {
                value |= u64::from(b & 0x7f) << (7 * i);
                if b < 0x80 {
                    self.pos += i + 1;
                    return Ok(value);
                }
            }
            return err("varint longer than 10 bytes");
        }
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(ScanError::Proto("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        err("varint longer than 10 bytes")
    }

    /// Reads a tag and returns (field number, wire type).
    #[inline]
    fn tag(&mut self) -> Scan<(u64, u8)> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return err("field number 0");
        }
        Ok((field, (key & 7) as u8))
    }

    #[inline]
    fn bytes(&mut self) -> Scan<&'a [u8]> {
        let len = self.varint()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if len > remaining {
            return err("length exceeds message");
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn skip(&mut self, wire: u8) -> Scan<()> {
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
            _ => return err("unsupported wire type"),
        };
        if self.buf.len() - self.pos < n {
            return err("truncated fixed-width field");
        }
        self.pos += n;
        Ok(())
    }

    /// Reads a LEN field when the wire type says so, else fails.
    fn len_field(&mut self, wire: u8) -> Scan<&'a [u8]> {
        if wire != WIRE_LEN {
            return err("unexpected wire type");
        }
        self.bytes()
    }
}

/// Parses a decompressed `PushRequest`.
pub(super) fn parse_push(buf: &[u8]) -> Result<PushView<'_>, DecodeError> {
    Ok(scan_push(buf)?)
}

/// Counts the fields numbered `field` in a message (a tag-only pass that skips their bodies),
/// so the vectors that hold them are allocated once at their exact size: with Vec's default
/// growth, a push of a million one-entry streams cost over 500 bytes per stream in spare
/// capacity and reallocation. The count is bounded by the buffer's length.
fn count_fields(buf: &[u8], wanted: u64) -> Scan<usize> {
    let mut r = Reader::new(buf);
    let mut n = 0;
    while !r.done() {
        let (field, wire) = r.tag()?;
        if field == wanted {
            n += 1;
        }
        r.skip(wire)?;
    }
    Ok(n)
}

fn scan_push(buf: &[u8]) -> Scan<PushView<'_>> {
    let mut r = Reader::new(buf);
    let mut streams = Vec::with_capacity(count_fields(buf, 1)?);
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => streams.push(parse_stream(r.len_field(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    Ok(PushView { streams })
}

fn parse_stream(buf: &[u8]) -> Scan<StreamView<'_>> {
    let mut r = Reader::new(buf);
    let mut labels_raw: &[u8] = b"";
    let mut entries = Vec::with_capacity(count_fields(buf, 2)?);
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => labels_raw = r.len_field(wire)?,
            2 => entries.push(parse_entry(r.len_field(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    let Ok(labels_str) = std::str::from_utf8(labels_raw) else {
        return err("labels are not UTF-8");
    };
    let labels = parse_labels(labels_str).map_err(ScanError::Labels)?;
    Ok(StreamView { labels, entries })
}

#[inline]
fn parse_entry(buf: &[u8]) -> Scan<EntryView<'_>> {
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

#[inline]
fn parse_timestamp(buf: &[u8]) -> Scan<i64> {
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

fn parse_label_pair(buf: &[u8]) -> Scan<(Cow<'_, str>, Cow<'_, [u8]>)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length a varint can have, at both ends of its range and in between, read as prost
    /// writes it: from the middle of a message (with bytes after it) and at its very end.
    #[test]
    fn varints_of_every_length_read_back_as_written() {
        let mut values = vec![0u64, u64::MAX, 1_795_658_400, 999_999_999];
        for bits in (7..64).step_by(7) {
            values.extend([
                (1 << bits) - 1,
                1 << bits,
                (1 << bits) | 0x55,
                (1 << bits) + 0x2a5a,
            ]);
        }
        for value in values {
            let mut encoded = Vec::new();
            prost::encoding::encode_varint(value, &mut encoded);
            for trailing in [0usize, 1, 9] {
                let mut buf = encoded.clone();
                buf.extend(std::iter::repeat_n(0xffu8, trailing));
                let mut r = Reader::new(&buf);
                assert_eq!(r.varint().ok(), Some(value), "{value:#x}, {trailing} after");
                assert_eq!(r.pos, encoded.len(), "{value:#x}, {trailing} after");
            }
        }
    }

    #[test]
    fn a_varint_cut_short_or_longer_than_ten_bytes_is_an_error() {
        for buf in [&[0x80u8; 4][..], &[0xff; 9], &[0x80; 11], &[0xff; 16]] {
            assert!(Reader::new(buf).varint().is_err(), "{buf:?}");
        }
    }
}
