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
