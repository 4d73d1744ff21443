use std::io::Write;

use super::wire::{
    encode_snappy, timestamp_from_nanos, EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter,
};
use super::*;

const FIXTURE: &[u8] = include_bytes!("../../tests/data/promtail-2.8.0-push.bin");

fn pb_meta() -> PushMeta<'static> {
    PushMeta {
        content_type: Some("application/x-protobuf"),
        content_encoding: None,
        api: PushApi::V1,
    }
}

/// One stream's entries, owned: (timestamp, line, structured metadata).
type OwnedEntries = Vec<(i64, Vec<u8>, Vec<(String, Vec<u8>)>)>;

/// An owned copy of a view, to compare decodes of different encodings.
type Owned = Vec<(String, OwnedEntries)>;

fn owned(v: &PushView<'_>) -> Owned {
    v.streams
        .iter()
        .map(|s| {
            let entries = s
                .entries
                .iter()
                .map(|e| {
                    let md = e
                        .structured_metadata
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_vec()))
                        .collect();
                    (e.timestamp_ns, e.line.to_vec(), md)
                })
                .collect();
            (s.labels.to_string(), entries)
        })
        .collect()
}

fn decode_owned(body: &[u8], meta: PushMeta<'_>) -> Result<Owned, DecodeError> {
    with_decoded(body, meta, DecodeLimits::default(), owned)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn promtail_fixture_decodes_to_its_three_streams() {
    let streams = decode_owned(FIXTURE, pb_meta()).unwrap();
    let summary: Vec<(&str, usize)> = streams.iter().map(|(l, e)| (l.as_str(), e.len())).collect();
    assert_eq!(
        summary,
        vec![
            (
                r#"{filename="/var/log/syslog", host="vps1", job="syslog"}"#,
                18
            ),
            (
                r#"{filename="/var/log/nginx/site-access.log", host="vps1", job="nginx_access"}"#,
                120
            ),
            (
                r#"{filename="/var/log/auth.log", host="vps1", job="auth"}"#,
                82
            ),
        ]
    );
    // First lines are those of the files Promtail tailed.
    let first = |i: usize| String::from_utf8(streams[i].1[0].1.clone()).unwrap();
    assert_eq!(
        first(0),
        include_str!("../../tests/data/syslog")
            .lines()
            .next()
            .unwrap()
    );
    assert_eq!(
        first(1),
        include_str!("../../tests/data/access.log")
            .lines()
            .next()
            .unwrap()
    );
    assert_eq!(
        first(2),
        include_str!("../../tests/data/auth.log")
            .lines()
            .next()
            .unwrap()
    );
    // Every line of every file, in order.
    let all_lines = |i: usize| {
        streams[i]
            .1
            .iter()
            .map(|e| String::from_utf8(e.1.clone()).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        all_lines(2),
        include_str!("../../tests/data/auth.log")
            .lines()
            .collect::<Vec<_>>()
    );
    // Promtail stamps entries with the time it read them: November 2026.
    let ts = streams[0].1[0].0;
    assert!(
        (1_795_000_000_000_000_000..1_796_000_000_000_000_000).contains(&ts),
        "{ts}"
    );
}

/// Builds the same push with prost (an independent protobuf implementation).
fn prost_push() -> PushRequest {
    let entry = |ns: i64, line: &[u8], md: Vec<(&str, &[u8])>| EntryAdapter {
        timestamp: Some(timestamp_from_nanos(ns)),
        line: bytes::Bytes::copy_from_slice(line),
        structured_metadata: md
            .into_iter()
            .map(|(k, v)| LabelPairAdapter {
                name: k.into(),
                value: bytes::Bytes::copy_from_slice(v),
            })
            .collect(),
        parsed: vec![],
    };
    PushRequest {
        streams: vec![
            StreamAdapter {
                labels: r#"{job="auth", host="vps1"}"#.into(),
                entries: vec![
                    entry(
                        1_795_658_400_000_000_001,
                        b"Failed password for root from 203.0.113.42",
                        vec![],
                    ),
                    entry(
                        1_795_658_401_000_000_000,
                        b"second",
                        vec![("trace_id", b"abc")],
                    ),
                ],
                hash: 0,
            },
            StreamAdapter {
                labels: r#"{job="nginx"}"#.into(),
                entries: vec![entry(-1, b"before the epoch", vec![])],
                hash: 0,
            },
        ],
        format: String::new(),
    }
}

#[test]
fn independent_encodings_decode_identically() {
    let expected: Owned = vec![
        (
            r#"{host="vps1", job="auth"}"#.into(),
            vec![
                (
                    1_795_658_400_000_000_001,
                    b"Failed password for root from 203.0.113.42".to_vec(),
                    vec![],
                ),
                (
                    1_795_658_401_000_000_000,
                    b"second".to_vec(),
                    vec![("trace_id".into(), b"abc".to_vec())],
                ),
            ],
        ),
        (
            r#"{job="nginx"}"#.into(),
            vec![(-1, b"before the epoch".to_vec(), vec![])],
        ),
    ];
    let pb = encode_snappy(&prost_push());
    assert_eq!(decode_owned(&pb, pb_meta()).unwrap(), expected);
    // Alloy sends Content-Encoding: snappy; gzip and deflate add a layer around the snappy block.
    let alloy = PushMeta {
        content_encoding: Some("snappy"),
        ..pb_meta()
    };
    assert_eq!(decode_owned(&pb, alloy).unwrap(), expected);
    let gz = PushMeta {
        content_encoding: Some("gzip"),
        ..pb_meta()
    };
    assert_eq!(decode_owned(&gzip(&pb), gz).unwrap(), expected);
    let df = PushMeta {
        content_encoding: Some("deflate"),
        ..pb_meta()
    };
    assert_eq!(decode_owned(&raw_deflate(&pb), df).unwrap(), expected);

    let json = r#"{"streams":[
        {"stream":{"job":"auth","host":"vps1"},"values":[
            ["1795658400000000001","Failed password for root from 203.0.113.42"],
            ["1795658401000000000","second",{"trace_id":"abc"}]]},
        {"stream":{"job":"nginx"},"values":[["-1","before the epoch"]]}]}"#;
    let jm = PushMeta {
        content_type: Some("application/json; charset=utf-8"),
        content_encoding: None,
        api: PushApi::V1,
    };
    assert_eq!(decode_owned(json.as_bytes(), jm).unwrap(), expected);
    let jgz = PushMeta {
        content_encoding: Some("gzip"),
        ..jm
    };
    assert_eq!(decode_owned(&gzip(json.as_bytes()), jgz).unwrap(), expected);
    let jdf = PushMeta {
        content_encoding: Some("deflate"),
        ..jm
    };
    assert_eq!(
        decode_owned(&raw_deflate(json.as_bytes()), jdf).unwrap(),
        expected
    );
}

#[test]
fn legacy_json_on_api_prom_push() {
    let json = r#"{"streams":[{"labels":"{job=\"auth\"}","entries":[{"ts":"2026-11-26T01:00:00.5Z","line":"hello"}]}]}"#;
    let meta = PushMeta {
        content_type: Some("application/json"),
        content_encoding: None,
        api: PushApi::from_path("/api/prom/push"),
    };
    let got = decode_owned(json.as_bytes(), meta).unwrap();
    assert_eq!(
        got,
        vec![(
            r#"{job="auth"}"#.into(),
            vec![(1_795_654_800_500_000_000, b"hello".to_vec(), vec![])]
        )]
    );
}

#[test]
fn invalid_utf8_line_does_not_fail_the_batch() {
    let mut req = prost_push();
    req.streams[0].entries[0].line = bytes::Bytes::from_static(b"bad \xff\xfe bytes");
    let got = decode_owned(&encode_snappy(&req), pb_meta()).unwrap();
    assert_eq!(got[0].1[0].1, b"bad \xff\xfe bytes".to_vec());
    assert_eq!(got[0].1.len(), 2);
}

#[test]
fn a_push_decoded_after_a_larger_one_on_the_same_thread_sees_only_its_own_bytes() {
    // The thread's snappy buffer keeps the larger push's bytes past the smaller one's end.
    let small = encode_snappy(&prost_push());
    let expected = std::thread::spawn({
        let small = small.clone();
        move || decode_owned(&small, pb_meta()).unwrap()
    })
    .join()
    .unwrap();
    let mut big = prost_push();
    big.streams[0].entries[0].line = bytes::Bytes::from(vec![b'x'; 100_000]);
    let big = encode_snappy(&big);
    let got = decode_owned(&big, pb_meta()).unwrap();
    assert_eq!(got[0].1[0].1.len(), 100_000);
    assert_eq!(decode_owned(&small, pb_meta()).unwrap(), expected);
    // A corrupt block in between (cut short: it declares more than it holds) changes nothing.
    let err = decode_owned(&big[..big.len() / 2], pb_meta()).unwrap_err();
    assert_eq!(err.reason(), "snappy");
    assert_eq!(decode_owned(&small, pb_meta()).unwrap(), expected);
}

#[test]
fn declared_snappy_length_over_the_cap_is_refused_before_allocating() {
    // A 6-byte body declaring a 2 GiB output.
    let bomb = [0x80, 0x80, 0x80, 0x80, 0x08, 0x00];
    let limits = DecodeLimits {
        max_decompressed_bytes: 1 << 20,
    };
    let err = with_decoded(&bomb, pb_meta(), limits, |_| ()).unwrap_err();
    assert_eq!(err.reason(), "too_large");
    // The same cap applies to gzip output.
    let big = gzip(&vec![b'a'; 2 << 20]);
    let gz = PushMeta {
        content_type: Some("application/json"),
        content_encoding: Some("gzip"),
        api: PushApi::V1,
    };
    assert_eq!(
        with_decoded(&big, gz, limits, |_| ()).unwrap_err().reason(),
        "too_large"
    );
}

#[test]
fn malformed_bodies_fail_with_a_reason_and_never_panic() {
    let cases: Vec<(&str, Vec<u8>, PushMeta<'static>)> = vec![
        (
            "content_type",
            FIXTURE.to_vec(),
            PushMeta {
                content_type: None,
                ..pb_meta()
            },
        ),
        (
            "content_encoding",
            FIXTURE.to_vec(),
            PushMeta {
                content_encoding: Some("br"),
                ..pb_meta()
            },
        ),
        ("snappy", b"not snappy at all".to_vec(), pb_meta()),
        (
            "protobuf",
            snap::raw::Encoder::new()
                .compress_vec(b"\x0a\xff\xff\xff\x0f")
                .unwrap(),
            pb_meta(),
        ),
        (
            "labels",
            encode_snappy(&PushRequest {
                streams: vec![StreamAdapter {
                    labels: "{job=unquoted}".into(),
                    entries: vec![],
                    hash: 0,
                }],
                format: String::new(),
            }),
            pb_meta(),
        ),
        (
            "gzip",
            b"not gzip".to_vec(),
            PushMeta {
                content_encoding: Some("gzip"),
                ..pb_meta()
            },
        ),
        (
            "json",
            b"{\"streams\": [".to_vec(),
            PushMeta {
                content_type: Some("application/json"),
                ..pb_meta()
            },
        ),
        (
            "timestamp",
            br#"{"streams":[{"stream":{"a":"b"},"values":[[1,"x"]]}]}"#.to_vec(),
            PushMeta {
                content_type: Some("application/json"),
                ..pb_meta()
            },
        ),
        (
            "timestamp",
            br#"{"streams":[{"stream":{"a":"b"},"values":[["1.5","x"]]}]}"#.to_vec(),
            PushMeta {
                content_type: Some("application/json"),
                ..pb_meta()
            },
        ),
    ];
    for (reason, body, meta) in cases {
        let err = with_decoded(&body, meta, DecodeLimits::default(), |_| ()).unwrap_err();
        // A JSON number where Loki wants a string is a JSON type error.
        let got = err.reason();
        assert!(
            got == reason || (reason == "timestamp" && got == "json"),
            "expected {reason}, got {got}: {err}"
        );
    }
}

#[test]
fn truncated_fixture_prefixes_never_panic() {
    let raw = snap::raw::Decoder::new().decompress_vec(FIXTURE).unwrap();
    for cut in (0..raw.len()).step_by(7) {
        let _ = parse(&raw[..cut], BodyFormat::Protobuf);
    }
}

#[test]
fn null_values_and_extra_elements_are_tolerated_like_loki() {
    let json = br#"{"streams":[{"stream":{"a":"b"},"values":null},{"stream":{"a":"c"},"values":[null,["5","x",{"k":"v"},"extra"]]}]}"#;
    let meta = PushMeta {
        content_type: Some("application/json"),
        content_encoding: None,
        api: PushApi::V1,
    };
    let got = decode_owned(json, meta).unwrap();
    assert_eq!(got[0].1.len(), 0);
    assert_eq!(
        got[1].1,
        vec![(5, b"x".to_vec(), vec![("k".into(), b"v".to_vec())])]
    );
}

proptest::proptest! {
    /// The hand-written scanner agrees with prost's encoder on arbitrary pushes: timestamps of
    /// every varint length (negative, zero, far future), lines from empty to several varint
    /// bytes of length, structured metadata, several streams.
    #[test]
    fn scanner_reads_back_whatever_prost_encodes(
        streams in proptest::collection::vec(
            proptest::collection::vec(
                (
                    proptest::prelude::any::<i64>(),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                    proptest::collection::vec(("[a-z_]{1,8}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)), 0..3),
                ),
                0..6,
            ),
            1..4,
        ),
    ) {
        // Loki's timestamps are (seconds, nanos in 0..1e9): keep the nanosecond value in range
        // of that split so it survives the round trip.
        let streams: Vec<OwnedEntries> = streams
            .into_iter()
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|(ns, line, md)| (ns / 4, line, md))
                    .collect()
            })
            .collect();
        let request = PushRequest {
            streams: streams
                .iter()
                .enumerate()
                .map(|(i, entries)| StreamAdapter {
                    labels: format!(r#"{{job="j{i}"}}"#),
                    entries: entries
                        .iter()
                        .map(|(ns, line, md)| EntryAdapter {
                            timestamp: Some(timestamp_from_nanos(*ns)),
                            line: bytes::Bytes::copy_from_slice(line),
                            structured_metadata: md
                                .iter()
                                .map(|(k, v)| LabelPairAdapter {
                                    name: k.clone(),
                                    value: bytes::Bytes::copy_from_slice(v),
                                })
                                .collect(),
                            parsed: vec![],
                        })
                        .collect(),
                    hash: 0,
                })
                .collect(),
            format: String::new(),
        };
        let expected: Owned = streams
            .into_iter()
            .enumerate()
            .map(|(i, entries)| (format!(r#"{{job="j{i}"}}"#), entries))
            .collect();
        let got = decode_owned(&encode_snappy(&request), pb_meta()).unwrap();
        proptest::prop_assert_eq!(got, expected);
    }
}
