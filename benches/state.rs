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
    eprintln!(
        "redis round trips per batch: {:.3} ({trips} round trips, {batches} batches of {KEYS} keys); \
         mean round trip {:.3} ms",
        trips / batches.max(1) as f64,
        secs * 1e3 / batches.max(1) as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
