//! Shared state: one batch's Redis round trip against the local work it rides on.
//!
//! A batch touches 200 (rule, key) windows with 10 matches each (2 000 matches). Compared:
//! - `local_windows`: the local engine's count windows recording the 2 000 matches;
//! - `aggregate`: building the batch's deltas (what the engine adds per batch with Redis);
//! - `redis_round_trip`: sending them to the Redis on 127.0.0.1:6379 and reading the totals.
//!
//! Prints the Redis round trips per batch counted by `logwarden_state_redis_round_trips_total`.
//! Without a reachable Redis the Redis case is skipped with a loud note.

use std::hint::black_box;
use std::net::TcpStream;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use logwarden::detect::window::{CountWindow, WindowSpec};
use logwarden::state::{
    Backend, BatchDeltas, SharedState, StateConfig, WindowKind, WindowParams, WindowRef,
};

const KEYS: usize = 200;
const PER_KEY: i64 = 10;
const T0: i64 = 1_767_225_600_000;

const PARAMS: WindowParams = WindowParams {
    kind: WindowKind::Count,
    threshold: 6,
    window_ms: 60_000,
    tolerance_ms: 60_000,
};

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("198.51.{}.{}", i / 256, i % 256))
        .collect()
}

fn fill(batch: &mut BatchDeltas, keys: &[String], round: i64) {
    for (i, key) in keys.iter().enumerate() {
        let at = WindowRef {
            tenant: "bench",
            rule: "ssh-brute-force",
            key,
        };
        for j in 0..PER_KEY {
            batch
                .entry(at, &PARAMS)
                .count(T0 + round * 1_000 + i as i64 + j * 50);
        }
    }
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("state_batch_200_keys");
    group.throughput(Throughput::Elements(KEYS as u64 * PER_KEY as u64));

    let spec = WindowSpec {
        threshold: PARAMS.threshold,
        window_ms: PARAMS.window_ms,
        tolerance_ms: PARAMS.tolerance_ms,
    };
    group.bench_function("local_windows", |b| {
        b.iter_batched_ref(
            || vec![CountWindow::default(); KEYS],
            |windows| {
                for (i, w) in windows.iter_mut().enumerate() {
                    for j in 0..PER_KEY {
                        black_box(w.record(T0 + i as i64 + j * 50, &spec));
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });

    let cfg = StateConfig {
        backend: Backend::Redis,
        key_prefix: format!("lwbench-{}", std::process::id()),
        timeout: Duration::from_millis(500),
        ..StateConfig::default()
    };
    group.bench_function("aggregate", |b| {
        let mut batch = BatchDeltas::new(&cfg);
        b.iter(|| {
            batch.clear();
            fill(&mut batch, &keys, 0);
            black_box(batch.len())
        })
    });

    let up = TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    if !up {
        eprintln!("\n!!! SKIPPED: redis_round_trip needs Redis on 127.0.0.1:6379 !!!\n");
        group.finish();
        return;
    }
    let registry = prometheus::Registry::new();
    let shared = SharedState::try_new(&cfg, &registry).expect("valid config");
    let mut batches = 0u64;
    group.bench_function("redis_round_trip", |b| {
        let mut batch = shared.batch();
        let mut round = 0;
        b.iter(|| {
            round += 1;
            batch.clear();
            fill(&mut batch, &keys, round);
            let totals = shared.sync(&mut batch).expect("Redis answers");
            batches += 1;
            black_box(totals.len())
        })
    });
    group.finish();

    let text = logwarden::metrics::render(&registry);
    let count = |prefix: &str| -> f64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
            .sum()
    };
    let trips = count("logwarden_state_redis_round_trips_total{op=\"batch\"}")
        + count("logwarden_state_redis_round_trips_total{op=\"load_script\"}");
    let secs = count("logwarden_state_redis_duration_seconds_sum{op=\"batch\"}");
    if batches == 0 {
        return;
    }
    eprintln!(
        "redis round trips per batch: {:.3} ({trips} round trips, {batches} batches of {KEYS} keys); \
         mean round trip {:.3} ms",
        trips / batches.max(1) as f64,
        secs * 1e3 / batches.max(1) as f64
    );
}

/// A fleet's push of about `bytes` bytes: every 8th line is an attack line (SSH failures and web
/// probes from `attackers` addresses), the rest ordinary access and service lines.
fn fleet_lines(bytes: usize, attackers: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut total = 0;
    for i in 0.. {
        if total >= bytes {
            break;
        }
        let l = match (i % 8, i % 3) {
            (0, 0) => format!(
                "Nov 26 09:00:00 host{} sshd[{i}]: Failed password for root from 203.0.113.{} port {i} ssh2",
                i % 10,
                i % attackers
            ),
            (0, _) => format!(
                r#"192.0.2.{} - - [26/Nov/2026:09:00:00 +0000] "GET /.env?{i} HTTP/1.1" 404 162 "-" "Mozilla/5.0""#,
                i % attackers
            ),
            (_, 0) => format!(
                r#"198.51.100.{} - - [26/Nov/2026:09:00:00 +0000] "GET /static/app.{i}.js HTTP/1.1" 200 4312 "-" "Mozilla/5.0 (X11; Linux x86_64)""#,
                i % 200
            ),
            _ => format!("Nov 26 09:00:00 host{} app[812]: order {i} placed in 12ms", i % 10),
        };
        total += l.len();
        out.push(l);
    }
    out
}

/// The detection stage over the same pushes with `local` and `redis` state: the ratio is what
/// sharing windows costs the inspection workers (never the request path).
fn bench_stage(c: &mut Criterion) {
    use logwarden::detect::{DetectConfig, Detector};
    let up = TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    if !up {
        eprintln!("\n!!! SKIPPED: detect_stage needs Redis on 127.0.0.1:6379 !!!\n");
        return;
    }
    let cfg = StateConfig {
        backend: Backend::Redis,
        key_prefix: format!("lwbench-stage-{}", std::process::id()),
        timeout: Duration::from_millis(500),
        ..StateConfig::default()
    };
    let labels: std::collections::BTreeMap<String, String> =
        [("job".to_owned(), "fleet".to_owned())].into();
    let sink = |_: logwarden::incident::Incident| {};
    // 250 attacking addresses in every push (a distributed scan: the worst case, every push
    // touches hundreds of windows) and 3 (an ordinary day's brute force).
    for (name, bytes, attackers) in [
        ("64KiB_250_attackers", 64 << 10, 250),
        ("1MiB_250_attackers", 1 << 20, 250),
        ("64KiB_3_attackers", 64 << 10, 3),
        ("1MiB_3_attackers", 1 << 20, 3),
    ] {
        let lines = fleet_lines(bytes, attackers);
        let mut group = c.benchmark_group(format!("detect_stage_{name}"));
        group.throughput(Throughput::Elements(lines.len() as u64));
        for backend in ["local", "redis"] {
            let registry = prometheus::Registry::new();
            let detector = Detector::try_new(&DetectConfig::default(), &registry).unwrap();
            let detector = if backend == "redis" {
                detector.with_shared_state(Some(SharedState::try_new(&cfg, &registry).unwrap()))
            } else {
                detector
            };
            // Event time moves one second per push, as a live stream's would.
            let mut push_no = 0i64;
            group.bench_function(backend, |b| {
                b.iter(|| {
                    push_no += 1;
                    let ts = (T0 + push_no * 1_000) * 1_000_000;
                    let mut batch = detector.batch("bench");
                    batch.set_stream_map(labels.clone());
                    for l in &lines {
                        batch.line(ts, l.as_bytes(), &mut |_| {});
                    }
                    batch.flush(&sink);
                })
            });
            if backend == "redis" && push_no > 0 {
                let text = logwarden::metrics::render(&registry);
                let sum = |prefix: &str| -> f64 {
                    text.lines()
                        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
                        .sum()
                };
                let trips = sum("logwarden_state_redis_round_trips_total{op=\"batch\"}")
                    + sum("logwarden_state_redis_round_trips_total{op=\"load_script\"}");
                let batches = sum("logwarden_state_batches_total{outcome=\"shared\"}");
                let keys = sum("logwarden_state_batch_keys_sum");
                let secs = sum("logwarden_state_redis_duration_seconds_sum{op=\"batch\"}");
                eprintln!(
                    "{name} pushes ({} lines): {:.3} Redis round trips per push, {:.0} keys per push, \
                     mean round trip {:.2} ms ({trips} round trips, {batches} pushes)",
                    lines.len(),
                    trips / batches.max(1.0),
                    keys / batches.max(1.0),
                    secs * 1e3 / batches.max(1.0)
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench, bench_stage);
criterion_main!(benches);
