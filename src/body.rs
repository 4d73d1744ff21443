//! Request bodies as they were read: the chunks hyper handed over, kept apart.
//!
//! A 1 MiB push arrives as a dozen or more chunks (hyper reads at most `server.max_header_bytes`
//! at a time). Forwarding sends the chunks as they are, with one vectored write; only an
//! inspection that actually runs joins them, on an inspection thread. Joining on the serving
//! thread would copy every pushed byte once more on the request path, and for nothing whenever
//! the inspection is shed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;

/// A whole request body, in the chunks it was read in. Cloning shares the chunks. A push read
/// by the server's own reader is one chunk, or two when the body did not all come with its
/// head's read: up to two are kept without an allocation, so neither building the body nor
/// sharing it with the inspection allocates.
#[derive(Clone, Debug, Default)]
pub struct Chunks {
    parts: SmallVec<[Bytes; 2]>,
    len: usize,
}

impl Chunks {
    /// Returns an empty body.
    pub fn new() -> Chunks {
        Chunks::default()
    }

    /// Appends a chunk (empty chunks are skipped).
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.parts.push(chunk);
        }
    }

    /// Returns the body length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns the chunks, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Returns true for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the body in one piece: shared when it is one chunk, otherwise copied once.
    pub fn to_contiguous(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => {
                let mut out = BytesMut::with_capacity(self.len);
                for part in parts {
                    out.extend_from_slice(part);
                }
                out.freeze()
            }
        }
    }

    /// Returns an HTTP body that sends the chunks as they are, with an exact length.
    pub fn into_body(self) -> ChunksBody {
        ChunksBody {
            remaining: self.len as u64,
            parts: self.parts.into_iter().collect(),
        }
    }
}

impl FromIterator<Bytes> for Chunks {
    fn from_iter<I: IntoIterator<Item = Bytes>>(chunks: I) -> Chunks {
        let mut body = Chunks::new();
        for chunk in chunks {
            body.push(chunk);
        }
        body
    }
}

/// [`Chunks`] as an outgoing HTTP body: one data frame per chunk, exact size hint (so the
/// request carries `Content-Length`, like the client's).
#[derive(Debug)]
pub struct ChunksBody {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl Body for ChunksBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.parts.pop_front() {
            Some(part) => {
                self.remaining -= part.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(part))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    #[tokio::test]
    async fn chunks_go_out_unchanged_with_their_exact_length() {
        for parts in [
            &[][..],
            &[&b"one"[..]][..],
            &[&b"ab"[..], b"", b"cde", b"f"][..],
        ] {
            let c = chunks(parts);
            let joined: Vec<u8> = parts.concat();
            assert_eq!(c.len(), joined.len());
            assert_eq!(c.is_empty(), joined.is_empty());
            assert_eq!(c.to_contiguous(), joined);
            let body = c.clone().into_body();
            assert_eq!(body.size_hint().exact(), Some(joined.len() as u64));
            assert_eq!(body.is_end_stream(), joined.is_empty());
            let sent = body.collect().await.unwrap().to_bytes();
            assert_eq!(sent, joined);
        }
    }

    #[test]
    fn one_chunk_is_shared_not_copied() {
        let bytes = Bytes::from(vec![7u8; 4096]);
        let mut c = Chunks::new();
        c.push(bytes.clone());
        assert_eq!(c.to_contiguous().as_ptr(), bytes.as_ptr());
    }
}
