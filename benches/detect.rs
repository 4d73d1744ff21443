//! Detection throughput over ~1 MiB pushes with the whole built-in pack, per core:
//! (a) ordinary traffic no rule matches, (b) a realistic mix (~12 % of lines hit some rule's
//! literals), (c) attack-heavy traffic; plus memory per tracked key (`-- --memory`).
//!
//! Each kind is measured three ways in the same run, so figures from a noisy shared machine can
//! be read as ratios: `decode` (snappy + protobuf of the same push, the floor), `engine`
//! (detection over the already decoded push) and `decode_engine` (what a push costs).

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use logwarden::decode::wire::{
    encode_snappy, timestamp_from_nanos, EntryAdapter, PushRequest, StreamAdapter,
};
use logwarden::decode::{
    parse_labels, with_decoded, DecodeLimits, EntryView, PushApi, PushMeta, PushView, StreamView,
};
use logwarden::detect::{DetectConfig, Detector};
use logwarden::incident::Incident;

const T0: i64 = 1_714_521_600_000_000_000;

fn ordinary(i: usize) -> String {
    match i % 4 {
        0 => format!(
            r#"198.51.100.{} - - [14/May/2024:09:00:00 +0000] "GET /static/app.{i}.js HTTP/1.1" 200 4312 "https://shop.example.com/" "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36""#,
            i % 200
        ),
        1 => format!(
            "May 14 09:00:00 web1 app[812]: order {i} placed by customer {} in 12ms",
            i % 977
        ),
        2 => format!(
            r#"{{"level":"info","ts":"2024-05-14T09:00:00Z","msg":"request served","path":"/api/items/{i}","status":200,"duration_ms":{}}}"#,
            i % 90
        ),
        _ => format!("May 14 09:00:00 web1 systemd[1]: Started session {i} of user deploy."),
    }
}

fn hit(i: usize) -> String {
    match i % 5 {
        0 => format!("May 14 09:00:00 web1 sshd[{i}]: Failed password for root from 203.0.113.{} port {i} ssh2", i % 250),
        1 => format!(r#"192.0.2.{} - - [14/May/2024:09:00:00 +0000] "GET /wp-login.php?{i} HTTP/1.1" 404 162 "-" "Mozilla/5.0""#, i % 250),
        2 => format!(r#"192.0.2.{} - - [14/May/2024:09:00:00 +0000] "GET /item?id={i}%27%20union%20select%20null-- HTTP/1.1" 500 162 "-" "sqlmap/1.7""#, i % 250),
        3 => format!("May 14 09:00:00 web1 sshd[{i}]: Invalid user u{i} from 203.0.113.{} port 4000", i % 250),
        _ => format!("May 14 09:00:00 web1 kernel: [{i}.0] worker[{i}]: segfault at 0 ip 0 sp 0 error 4 in w"),
    }
}

/// Lines of about 1 MiB in total where every `hit_every`-th line (0: none) is a rule hit.
fn lines(hit_every: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut i = 0;
    while bytes < 1 << 20 {
        let l = if hit_every > 0 && i % hit_every == 0 {
            hit(i / hit_every)
        } else {
            ordinary(i)
        };
        bytes += l.len();
        out.push(l);
        i += 1;
    }
    out
}

fn push(lines: &[String]) -> PushView<'_> {
    let labels = parse_labels(r#"{job="varlogs", host="web1"}"#).unwrap();
    let entries = lines
        .iter()
        .enumerate()
        .map(|(i, l)| EntryView {
            timestamp_ns: T0 + i as i64 * 1_000_000,
            line: Cow::Borrowed(l.as_bytes()),
            structured_metadata: vec![],
        })
        .collect();
    PushView {
        streams: vec![StreamView { labels, entries }],
    }
}

/// Event time between the starts of consecutive pushes of one kind: each push carries the next
/// stretch of time, as Promtail's do, so windows slide instead of seeing the same instants
/// again (which would take the engine's out-of-order path on every line).
const PUSH_SPAN_NS: i64 = 20_000_000_000;

/// `view` moved `k` pushes later in event time.
fn later<'a>(view: &PushView<'a>, k: i64) -> PushView<'a> {
    PushView {
        streams: view
            .streams
            .iter()
            .map(|s| StreamView {
                labels: s.labels.clone(),
                entries: s
                    .entries
                    .iter()
                    .map(|e| EntryView {
                        timestamp_ns: e.timestamp_ns + k * PUSH_SPAN_NS,
                        line: e.line.clone(),
                        structured_metadata: e.structured_metadata.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The same lines as a snappy-compressed protobuf push body, `k` pushes later in event time.
fn body(lines: &[String], k: i64) -> Vec<u8> {
    let entries = lines
        .iter()
        .enumerate()
        .map(|(i, l)| EntryAdapter {
            timestamp: Some(timestamp_from_nanos(
                T0 + k * PUSH_SPAN_NS + i as i64 * 1_000_000,
            )),
            line: bytes::Bytes::copy_from_slice(l.as_bytes()),
            structured_metadata: vec![],
            parsed: vec![],
        })
        .collect();
    encode_snappy(&PushRequest {
        streams: vec![StreamAdapter {
            labels: r#"{job="varlogs", host="web1"}"#.into(),
            entries,
            hash: 0,
        }],
        format: String::new(),
    })
}

fn bench_detect(c: &mut Criterion) {
    let meta = PushMeta {
        content_type: Some("application/x-protobuf"),
        content_encoding: None,
        api: PushApi::V1,
    };
    let limits = DecodeLimits::default();
    for (name, every) in [
        ("a_ordinary", 0usize),
        ("b_mix_12pct", 8),
        ("c_attack_heavy", 1),
    ] {
        let lines = lines(every);
        let view = push(&lines);
        let pb = body(&lines, 0);
        let detector =
            Detector::try_new(&DetectConfig::default(), &prometheus::Registry::new()).unwrap();
        let incidents = AtomicUsize::new(0);
        let sink = |_: Incident| {
            incidents.fetch_add(1, Ordering::Relaxed);
        };
        let mut group = c.benchmark_group(format!("detect_{name}"));
        group.throughput(Throughput::Elements(lines.len() as u64));
        group.bench_function("decode", |b| {
            b.iter(|| with_decoded(&pb, meta, limits, |v| v.entry_count()).unwrap())
        });
        // Each push later than the one before (built outside the timed routine).
        let mut k = 0;
        group.bench_function("engine", |b| {
            b.iter_batched_ref(
                || {
                    k += 1;
                    later(&view, k)
                },
                |v| detector.process("bench", v, &sink),
                BatchSize::SmallInput,
            )
        });
        group.bench_function("decode_engine", |b| {
            b.iter_batched_ref(
                || {
                    k += 1;
                    body(&lines, k)
                },
                |pb| {
                    with_decoded(pb, meta, limits, |v| detector.process("bench", v, &sink)).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

/// Resident memory per tracked key under a flood of distinct sources (printed, not timed):
/// a million sources each failing one SSH login, with `max_keys` room for all of them (the cost
/// per key) and with the default `max_keys` (what the bound holds the map to while the flood
/// churns through it). Each run in a process of its own (`--memory-run MAX_KEYS`), so one does
/// not inherit the other's freed memory.
fn memory_per_key() {
    let exe = std::env::current_exe().unwrap();
    for max_keys in [1_000_000usize, DetectConfig::default().max_keys] {
        let out = std::process::Command::new(&exe)
            .args(["--memory-run", &max_keys.to_string()])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn memory_run(max_keys: usize) {
    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(0)
            * 4096
    }
    let n = 1_000_000usize;
    let cfg = DetectConfig {
        max_keys,
        ..DetectConfig::default()
    };
    let registry = prometheus::Registry::new();
    let detector = Detector::try_new(&cfg, &registry).unwrap();
    let before = rss_bytes();
    let mut batch = detector.batch("bench");
    let labels: std::collections::BTreeMap<String, String> = [("job", "auth"), ("host", "web1")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    batch.set_stream_map(labels);
    for i in 0..n {
        let line = format!(
            "May 14 09:00:00 web1 sshd[1]: Failed password for root from {}.{}.{}.{} port 22 ssh2",
            1 + (i >> 24) % 200,
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        batch.line(T0 + i as i64 * 1000, line.as_bytes(), &mut |_| {});
    }
    batch.flush(&|_: Incident| {});
    let after = rss_bytes();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    let keys: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("logwarden_detect_keys "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    println!(
        "memory: {n} distinct sources x 3 ssh rules, max_keys {max_keys}: {keys} (rule, key) \
         windows kept, {:.1} MiB RSS growth, {:.0} bytes per kept window",
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / keys.max(1.0)
    );
}

/// One engine pass over each of `views`: the function callgrind measures (`--passes`).
#[inline(never)]
fn engine_passes(detector: &Detector, views: &[PushView<'_>]) -> usize {
    let incidents = AtomicUsize::new(0);
    let sink = |_: Incident| {
        incidents.fetch_add(1, Ordering::Relaxed);
    };
    for view in views {
        detector.process("bench", view, &sink);
    }
    incidents.load(Ordering::Relaxed)
}

/// `n` decodes (snappy + protobuf) of `body`: what callgrind measures with `--decode-passes`.
#[inline(never)]
fn decode_passes(body: &[u8], n: usize) -> usize {
    let meta = PushMeta {
        content_type: Some("application/x-protobuf"),
        content_encoding: None,
        api: PushApi::V1,
    };
    let mut entries = 0;
    for _ in 0..n {
        entries += with_decoded(body, meta, DecodeLimits::default(), |v| v.entry_count()).unwrap();
    }
    entries
}

/// `--passes KIND N` (KIND: a, b or c): one warm-up pass, then `N` passes in
/// [`engine_passes`], for instruction counts that do not depend on the machine's load:
/// `valgrind --tool=callgrind --toggle-collect='*engine_passes*' … -- --passes a 4`.
/// `--decode-passes KIND N` does the same for decoding, in [`decode_passes`].
fn passes(kind: &str, n: usize, decode: bool) {
    let every = match kind {
        "a" => 0,
        "b" => 8,
        _ => 1,
    };
    let lines = lines(every);
    if decode {
        let pb = body(&lines, 0);
        decode_passes(&pb, 1);
        let entries = decode_passes(&pb, n);
        println!(
            "{kind}: {} lines, {n} decode passes, {entries} entries",
            lines.len()
        );
        return;
    }
    let view = push(&lines);
    let detector =
        Detector::try_new(&DetectConfig::default(), &prometheus::Registry::new()).unwrap();
    detector.process("bench", &view, &|_: Incident| {});
    let views: Vec<PushView<'_>> = (1..=n as i64).map(|k| later(&view, k)).collect();
    let incidents = engine_passes(&detector, &views);
    println!(
        "{kind}: {} lines, {n} passes, {incidents} incidents",
        lines.len()
    );
}

criterion_group!(benches, bench_detect);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-run") {
        memory_run(args[i + 1].parse().expect("--memory-run MAX_KEYS"));
        return;
    }
    if args.iter().any(|a| a == "--memory") {
        memory_per_key();
        return;
    }
    if let Some(i) = args
        .iter()
        .position(|a| a == "--passes" || a == "--decode-passes")
    {
        let kind = args.get(i + 1).map_or("a", String::as_str);
        let n = args.get(i + 2).and_then(|n| n.parse().ok()).unwrap_or(4);
        passes(kind, n, args[i] == "--decode-passes");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
