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

/// A cursor over one message: the bytes `pos..end` of `buf`. A nested message is read over the
/// same buffer with a nearer `end` rather than over a sub-slice, so that its varints can still be
/// read eight bytes at a time (a timestamp's last varint ends a few bytes before its message
/// does, but rarely that close to the end of the whole push). Reads check only the buffer's
/// bounds; a field that runs past its message's `end` is found once, when the message is
/// finished ([`Reader::finish`]), and is an error, as one cut short by the buffer's end is.
#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    /// Ends a message: fails when its last field ran past its end.
    fn finish(&self) -> Scan<()> {
        if self.pos > self.end {
            return err("field runs past its message");
        }
        Ok(())
    }

    /// The bytes left in the message (none when a field ran past it).
    fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    /// Reads a varint. Tags, small lengths and most timestamps' nanoseconds fit in one byte,
    /// and lines' lengths in two, which are read inline; longer ones take
    /// [`Reader::varint_long`].
    #[inline(always)]
    fn varint(&mut self) -> Scan<u64> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
            if let Some(&c) = self.buf.get(self.pos + 1) {
                if c < 0x80 {
                    self.pos += 2;
                    return Ok(u64::from(b & 0x7f) | u64::from(c) << 7);
                }
            }
        }
        self.varint_long()
    }

    /// Reads a varint of up to eight bytes when eight bytes of the buffer are left, else
    /// returns `None` and reads nothing: the eight bytes as one word, where the first byte
    /// without its high bit ends the varint, and the seven-bit groups packed without a branch
    /// per byte.
    #[inline(always)]
    fn varint_short(&mut self) -> Option<u64> {
        let word = u64::from_le_bytes(*self.buf.get(self.pos..)?.first_chunk::<8>()?);
        let ends = !word & 0x8080_8080_8080_8080;
        if ends == 0 {
            return None;
        }
        // The high bit of the last byte: everything up to it is the varint.
        let last = ends.trailing_zeros();
        let mut v = word & 0x7f7f_7f7f_7f7f_7f7f & (u64::MAX >> (63 - last));
        v = (v & 0x007f_007f_007f_007f) | (v & 0x7f00_7f00_7f00_7f00) >> 1;
        v = (v & 0x0000_3fff_0000_3fff) | (v & 0x3fff_0000_3fff_0000) >> 2;
        v = (v & 0x0000_0000_0fff_ffff) | (v & 0x0fff_ffff_0000_0000) >> 4;
        self.pos += last as usize / 8 + 1;
        Some(v)
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Scan<u64> {
        if let Some(v) = self.varint_short() {
            return Ok(v);
        }
        // With ten bytes left, nine or ten bytes (no byte of the first eight ended it): the
        // eight groups, then the rest.
        if let Some(window) = self.buf.get(self.pos..self.pos + 10) {
            let window: &[u8; 10] = window.try_into().expect("ten bytes");
            let word = u64::from_le_bytes(*window.first_chunk::<8>().expect("eight bytes"));
            let mut value = (word & 0x7f7f_7f7f_7f7f_7f7f)
                .to_le_bytes()
                .iter()
                .rev()
                .fold(0u64, |acc, &g| acc << 7 | u64::from(g));
            for (i, &b) in window[8..].iter().enumerate() {
                value |= u64::from(b & 0x7f) << (56 + 7 * i);
                if b < 0x80 {
                    self.pos += 9 + i;
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

    /// Reads a length and returns the message of that many bytes that follows it.
    #[inline(always)]
    fn bytes(&mut self) -> Scan<Reader<'a>> {
        let len = self.varint()?;
        if len > self.remaining() as u64 {
            return err("length exceeds message");
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(Reader {
            buf: self.buf,
            pos: start,
            end: self.pos,
        })
    }

    /// The bytes left in this message.
    #[inline(always)]
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..self.end]
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
        if self.remaining() < n {
            return err("truncated fixed-width field");
        }
        self.pos += n;
        Ok(())
    }

    /// Reads a LEN field when the wire type says so, else fails: the field's message.
    #[inline(always)]
    fn len_field(&mut self, wire: u8) -> Scan<Reader<'a>> {
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
fn count_fields(mut r: Reader<'_>, wanted: u64) -> Scan<usize> {
    let mut n = 0;
    while !r.done() {
        let (field, wire) = r.tag()?;
        if field == wanted {
            n += 1;
        }
        if wire == WIRE_LEN {
            // What `skip` does, without building the field's reader.
            let len = r.varint()?;
            if len > r.remaining() as u64 {
                return err("length exceeds message");
            }
            r.pos += len as usize;
        } else {
            r.skip(wire)?;
        }
    }
    r.finish()?;
    Ok(n)
}

fn scan_push(buf: &[u8]) -> Scan<PushView<'_>> {
    let mut r = Reader::new(buf);
    let mut streams = Vec::with_capacity(count_fields(r, 1)?);
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => streams.push(parse_stream(r.len_field(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    Ok(PushView { streams })
}

fn parse_stream(mut r: Reader<'_>) -> Scan<StreamView<'_>> {
    let mut labels_raw: &[u8] = b"";
    let mut entries = Vec::with_capacity(count_fields(r, 2)?);
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => labels_raw = r.len_field(wire)?.rest(),
            2 => entries.push(parse_entry(r.len_field(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    r.finish()?;
    let Ok(labels_str) = std::str::from_utf8(labels_raw) else {
        return err("labels are not UTF-8");
    };
    let labels = parse_labels(labels_str).map_err(ScanError::Labels)?;
    Ok(StreamView { labels, entries })
}

#[inline]
fn parse_entry(r: Reader<'_>) -> Scan<EntryView<'_>> {
    match canonical_entry(r) {
        Some(entry) => Ok(entry),
        None => parse_entry_fields(r),
    }
}

/// An entry in the layout Loki's clients write (Promtail, Alloy, Loki's own Go code, prost): a
/// timestamp of seconds and, unless zero, nanoseconds, then the line, and nothing after it.
/// Reads it with one check per byte of framing; `None` for any other layout (structured
/// metadata, fields in another order, unknown fields, anything malformed), which
/// [`parse_entry_fields`] then reads field by field, or rejects.
#[inline(always)]
fn canonical_entry(mut r: Reader<'_>) -> Option<EntryView<'_>> {
    // Field 1 (timestamp), LEN.
    if r.done() || r.buf.get(r.pos) != Some(&0x0a) {
        return None;
    }
    r.pos += 1;
    let mut ts = r.bytes().ok()?;
    // Field 1 (seconds), VARINT; then field 2 (nanos), VARINT, or the timestamp's end.
    if ts.buf.get(ts.pos) != Some(&0x08) || ts.done() {
        return None;
    }
    ts.pos += 1;
    let seconds = ts.varint_short()? as i64;
    let mut nanos = 0i64;
    if !ts.done() {
        if ts.buf.get(ts.pos) != Some(&0x10) {
            return None;
        }
        ts.pos += 1;
        nanos = i64::from(ts.varint_short()? as i32);
    }
    if ts.pos != ts.end {
        return None;
    }
    // Field 2 (line), LEN, ending the entry.
    if r.done() || r.buf.get(r.pos) != Some(&0x12) {
        return None;
    }
    r.pos += 1;
    let line = r.bytes().ok()?;
    if r.pos != r.end {
        return None;
    }
    Some(EntryView {
        timestamp_ns: seconds.saturating_mul(1_000_000_000).saturating_add(nanos),
        line: Cow::Borrowed(line.rest()),
        structured_metadata: Vec::new(),
    })
}

/// Reads an entry field by field, in any order, skipping unknown fields.
#[inline(never)]
fn parse_entry_fields(mut r: Reader<'_>) -> Scan<EntryView<'_>> {
    let mut entry = EntryView::default();
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => entry.timestamp_ns = parse_timestamp(r.len_field(wire)?)?,
            2 => entry.line = Cow::Borrowed(r.len_field(wire)?.rest()),
            3 => entry
                .structured_metadata
                .push(parse_label_pair(r.len_field(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    r.finish()?;
    Ok(entry)
}

#[inline]
fn parse_timestamp(mut r: Reader<'_>) -> Scan<i64> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while !r.done() {
        let (field, wire) = r.tag()?;
        match (field, wire) {
            (1, WIRE_VARINT) => seconds = r.varint()? as i64,
            (2, WIRE_VARINT) => nanos = i64::from(r.varint()? as i32),
            _ => r.skip(wire)?,
        }
    }
    r.finish()?;
    Ok(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

fn parse_label_pair(mut r: Reader<'_>) -> Scan<(Cow<'_, str>, Cow<'_, [u8]>)> {
    let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
    while !r.done() {
        let (field, wire) = r.tag()?;
        match field {
            1 => name = r.len_field(wire)?.rest(),
            2 => value = r.len_field(wire)?.rest(),
            _ => r.skip(wire)?,
        }
    }
    r.finish()?;
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

    /// A nested message's varints are read through a window over the whole push: one that its
    /// message's length cuts short is an error even where the bytes after the message would
    /// finish it, and a message's fields never read the bytes after it.
    #[test]
    fn a_varint_cut_short_by_its_message_is_an_error_whatever_follows() {
        // stream { entry { timestamp (2 bytes: seconds' tag and a varint cut after one byte) } }
        // followed, outside the stream, by an unknown field whose bytes would end that varint.
        let push_of = |entry: &[u8]| {
            let mut stream = vec![0x0a, 0x02, b'{', b'}', 0x12, entry.len() as u8];
            stream.extend(entry);
            let mut push = vec![0x0a, stream.len() as u8];
            push.extend(&stream);
            push
        };
        let whole = push_of(&[0x0a, 0x02, 0x08, 0x80]);
        // Field 15 as a varint (its tag, 0x78, would end the cut varint), enough of them for
        // the ten-byte window.
        let mut push = whole.clone();
        push.extend([0x78, 0x01].repeat(6));
        for buf in [&whole[..], &push[..]] {
            match scan_push(buf) {
                Err(ScanError::Proto(m)) => assert!(
                    ["truncated varint", "field runs past its message"].contains(&m),
                    "{buf:?}: {m}"
                ),
                other => panic!("{buf:?}: {:?}", other.map(|v| v.streams.len())),
            }
        }
        // The same timestamp whole (seconds = 1) decodes, and the bytes after the message are
        // not taken into it: at the top level they are an unknown field 2, in a timestamp they
        // would be its nanoseconds.
        let mut push = push_of(&[0x0a, 0x02, 0x08, 0x01]);
        push.extend([0x10, 0x05].repeat(6));
        let view = scan_push(&push).map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(view.streams.len(), 1);
        assert_eq!(view.streams[0].entries.len(), 1);
        assert_eq!(view.streams[0].entries[0].timestamp_ns, 1_000_000_000);
    }

    /// Every entry of a push captured from Promtail 2.8.0 is in the layout the direct path reads,
    /// and reads the same both ways; entries in other layouts fall back to the field-by-field
    /// reading, which gives what prost encoded.
    #[test]
    fn promtail_entries_take_the_direct_path_and_read_the_same_both_ways() {
        let body = include_bytes!("../../tests/data/promtail-2.8.0-push.bin");
        let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        let mut push = Reader::new(&raw);
        let mut seen = 0;
        while !push.done() {
            let (field, wire) = push.tag().unwrap();
            assert_eq!(field, 1);
            let mut stream = push.len_field(wire).unwrap();
            while !stream.done() {
                let (field, wire) = stream.tag().unwrap();
                let field_reader = stream.len_field(wire).unwrap();
                if field == 2 {
                    let direct = canonical_entry(field_reader).expect("Promtail's layout");
                    let fields = parse_entry_fields(field_reader).ok().unwrap();
                    assert_eq!(direct, fields);
                    seen += 1;
                }
            }
        }
        assert!(seen > 10, "{seen} entries");

        // Other layouts: structured metadata after the line, the line before the timestamp,
        // nanoseconds before seconds, no seconds, an unknown field.
        let ts = |secs: i64, nanos: i32| prost_types_timestamp(secs, nanos);
        let line = |s: &[u8]| {
            let mut f = vec![0x12, s.len() as u8];
            f.extend(s);
            f
        };
        let cases: Vec<(Vec<u8>, i64, &[u8], usize)> = vec![
            (
                [
                    ts(5, 7),
                    line(b"x"),
                    vec![0x1a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v'],
                ]
                .concat(),
                5_000_000_007,
                b"x",
                1,
            ),
            ([line(b"yy"), ts(5, 7)].concat(), 5_000_000_007, b"yy", 0),
            (
                [vec![0x0a, 0x04, 0x10, 0x07, 0x08, 0x05], line(b"z")].concat(),
                5_000_000_007,
                b"z",
                0,
            ),
            (
                [vec![0x0a, 0x02, 0x10, 0x07], line(b"z")].concat(),
                7,
                b"z",
                0,
            ),
            (
                [ts(5, 0), line(b"w"), vec![0x78, 0x01]].concat(),
                5_000_000_000,
                b"w",
                0,
            ),
        ];
        for (entry, ns, text, metadata) in cases {
            let r = Reader::new(&entry);
            assert!(canonical_entry(r).is_none(), "{entry:?}");
            let got = parse_entry(r).ok().unwrap();
            assert_eq!(
                (
                    got.timestamp_ns,
                    &got.line[..],
                    got.structured_metadata.len()
                ),
                (ns, text, metadata)
            );
        }
    }

    /// A timestamp field (field 1 of an entry) as prost writes it: zero parts left out.
    fn prost_types_timestamp(secs: i64, nanos: i32) -> Vec<u8> {
        let mut body = Vec::new();
        if secs != 0 {
            body.push(0x08);
            prost::encoding::encode_varint(secs as u64, &mut body);
        }
        if nanos != 0 {
            body.push(0x10);
            prost::encoding::encode_varint(nanos as u64, &mut body);
        }
        let mut field = vec![0x0a, body.len() as u8];
        field.extend(body);
        field
    }

    #[test]
    fn a_varint_cut_short_or_longer_than_ten_bytes_is_an_error() {
        for buf in [&[0x80u8; 4][..], &[0xff; 9], &[0x80; 11], &[0xff; 16]] {
            assert!(Reader::new(buf).varint().is_err(), "{buf:?}");
        }
    }
}
