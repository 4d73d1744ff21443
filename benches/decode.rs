//! Decode throughput of a realistic ~1 MiB push (what Promtail sends at its default batch size):
//! snappy-block protobuf and JSON, in MB/s of uncompressed log bytes and in lines/s.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use logwarden::decode::wire::{
    encode_snappy, timestamp_from_nanos, EntryAdapter, PushRequest, StreamAdapter,
};
use logwarden::decode::{with_decoded, DecodeLimits, PushApi, PushMeta};

const AUTH: &str = include_str!("../tests/data/auth.log");
const ACCESS: &str = include_str!("../tests/data/access.log");
const SYSLOG: &str = include_str!("../tests/data/syslog");

/// Three streams cycling through real-looking lines until ~1 MiB of line bytes.
fn realistic_push() -> (PushRequest, usize, usize) {
    let sources = [("auth", AUTH), ("nginx_access", ACCESS), ("syslog", SYSLOG)];
    let mut streams: Vec<StreamAdapter> = sources
        .iter()
        .map(|(job, _)| StreamAdapter {
            labels: format!(r#"{{filename="/var/log/{job}.log", host="vps1", job="{job}"}}"#),
            entries: vec![],
            hash: 0,
        })
        .collect();
    let (mut bytes, mut lines) = (0usize, 0usize);
    let mut ts = 1_795_658_400_000_000_000i64;
    'fill: loop {
        for (i, (_, text)) in sources.iter().enumerate() {
            for line in text.lines() {
                streams[i].entries.push(EntryAdapter {
                    timestamp: Some(timestamp_from_nanos(ts)),
                    line: bytes::Bytes::copy_from_slice(line.as_bytes()),
                    structured_metadata: vec![],
                    parsed: vec![],
                });
                ts += 1_000_000;
                bytes += line.len();
                lines += 1;
                if bytes >= 1 << 20 {
                    break 'fill;
                }
            }
        }
    }
    (
        PushRequest {
            streams,
            format: String::new(),
        },
        bytes,
        lines,
    )
}

fn bench_decode(c: &mut Criterion) {
    let (req, line_bytes, lines) = realistic_push();
    let pb = encode_snappy(&req);
    let json = logwarden::loadgen::to_json(&req);
    let pb_meta = PushMeta {
        content_type: Some("application/x-protobuf"),
        content_encoding: None,
        api: PushApi::V1,
    };
    let json_meta = PushMeta {
        content_type: Some("application/json"),
        content_encoding: None,
        api: PushApi::V1,
    };
    let limits = DecodeLimits::default();
    eprintln!(
        "push: {lines} lines, {line_bytes} line bytes; protobuf+snappy body {} bytes, JSON body {} bytes",
        pb.len(),
        json.len()
    );
    for (unit, throughput) in [
        ("bytes", Throughput::Bytes(line_bytes as u64)),
        ("lines", Throughput::Elements(lines as u64)),
    ] {
        let mut g = c.benchmark_group(format!("decode_1mib_push_{unit}"));
        g.throughput(throughput);
        g.bench_function("protobuf_snappy", |b| {
            b.iter_batched(
                || (),
                |_| with_decoded(&pb, pb_meta, limits, |v| v.entry_count()).unwrap(),
                BatchSize::SmallInput,
            )
        });
        g.bench_function("json", |b| {
            b.iter_batched(
                || (),
                |_| with_decoded(&json, json_meta, limits, |v| v.entry_count()).unwrap(),
                BatchSize::SmallInput,
            )
        });
        // The baseline measured in the same run: snappy decompression alone.
        g.bench_function("snappy_only_baseline", |b| {
            b.iter(|| snap::raw::Decoder::new().decompress_vec(&pb).unwrap().len())
        });
        g.finish();
    }
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
