//! Prost messages for Loki's push API, derived by hand to match `proto/push.proto`.
//!
//! Used to *encode* pushes (reports written back to Loki, the load generator, tests). Decoding on
//! the hot path uses the borrowing scanner in `protobuf.rs` instead, which allocates nothing per
//! line; these structs are its independent cross-check in tests.

use bytes::Bytes;

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
    /// Set inside Loki only; leave empty.
    #[prost(string, tag = "2")]
    pub format: String,
}

/// `logproto.StreamAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// Label string such as `{job="auth"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    /// Internal to Loki; leave 0.
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    /// Always set it: Loki reads an absent timestamp as year 1 and rejects the entry.
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<prost_types::Timestamp>,
    #[prost(bytes = "bytes", tag = "2")]
    pub line: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
    /// Read path only; ignored on push.
    #[prost(message, repeated, tag = "4")]
    pub parsed: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// Converts Unix nanoseconds to a protobuf timestamp with `nanos` in `[0, 1e9)`.
pub fn timestamp_from_nanos(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

/// Encodes a push request the way Promtail and Alloy do: protobuf, then a snappy block.
pub fn encode_snappy(req: &PushRequest) -> Vec<u8> {
    use prost::Message;
    let pb = req.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&pb)
        .expect("snappy block encoding of an in-memory buffer cannot fail")
}
