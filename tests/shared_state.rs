//! The shared-state layer against a real Redis: the one on 127.0.0.1:6379 (CI starts it), and
//! for the outage test a private `redis-server` on its own loopback port, started and killed
//! here. Every test uses its own key prefix, so they run in parallel against one Redis.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use logwarden::state::{
    Backend, BatchDeltas, Claim, SampleMode, SharedState, StateConfig, StateError, WindowKind,
    WindowParams, WindowRef,
};
use prometheus::Registry;

#[path = "common/redis.rs"]
mod redis_support;

use redis_support::{
    cleanup, free_port, prefix, require_redis, require_redis_server, PrivateRedis, SHARED_REDIS,
};

fn config(prefix: &str, url: &str) -> StateConfig {
    StateConfig {
        backend: Backend::Redis,
        redis_url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        // Generous for a loaded CI machine; the outage test sets its own.
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..StateConfig::default()
    }
}

fn replica(cfg: &StateConfig) -> (SharedState, Registry) {
    let registry = Registry::new();
    let state = SharedState::try_new(cfg, &registry).expect("valid config");
    (state, registry)
}

fn metric(registry: &Registry, line_start: &str) -> Option<f64> {
    logwarden::metrics::render(registry)
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

fn at<'a>(tenant: &'a str, rule: &'a str, key: &'a str) -> WindowRef<'a> {
    WindowRef { tenant, rule, key }
}

const COUNT_1M: WindowParams = WindowParams {
    kind: WindowKind::Count,
    threshold: 6,
    window_ms: 60_000,
    tolerance_ms: 60_000,
};

/// Base event time: 2026-01-01T00:00:00Z in ms, so bucket math runs on realistic numbers.
const T0: i64 = 1_767_225_600_000;

#[test]
fn counts_from_two_replicas_add_up() {
    if !require_redis() {
        return;
    }
    let p = prefix("sum");
    let cfg = config(&p, &format!("redis://{SHARED_REDIS}"));
    let (a, _) = replica(&cfg);
    let (b, registry_b) = replica(&cfg);
    let ip = at("acme", "ssh-brute-force", "203.0.113.7");

    // Replica A sees three failures, B four: neither alone reaches 6.
    let mut batch = a.batch();
    for i in 0..3 {
        batch.entry(ip, &COUNT_1M).count(T0 + i * 1_000);
    }
    let totals = a.sync(&mut batch).unwrap();
    let t = totals.get(ip).unwrap();
    assert_eq!((t.total, t.fires, t.newest_ms), (3, false, T0 + 2_000));

    let mut batch = b.batch();
    for i in 0..4 {
        batch.entry(ip, &COUNT_1M).count(T0 + 10_000 + i * 1_000);
    }
    // Another tenant and another key are counted apart.
    batch
        .entry(at("other", "ssh-brute-force", "203.0.113.7"), &COUNT_1M)
        .count(T0);
    batch
        .entry(at("acme", "ssh-brute-force", "198.51.100.1"), &COUNT_1M)
        .count(T0);
    let totals = b.sync(&mut batch).unwrap();
    let t = totals.get(ip).unwrap();
    assert_eq!((t.total, t.fires, t.newest_ms), (7, true, T0 + 13_000));
    assert_eq!(
        totals
            .get(at("other", "ssh-brute-force", "203.0.113.7"))
            .unwrap()
            .total,
        1
    );
    assert_eq!(
        totals
            .get(at("acme", "ssh-brute-force", "198.51.100.1"))
            .unwrap()
            .total,
        1
    );

    // A sees the cluster-wide total on its next batch.
    let mut batch = a.batch();
    batch.entry(ip, &COUNT_1M).count(T0 + 14_000);
    assert_eq!(a.sync(&mut batch).unwrap().get(ip).unwrap().total, 8);
    assert_eq!(
        metric(
            &registry_b,
            "logwarden_state_redis_round_trips_total{op=\"batch\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &registry_b,
            "logwarden_state_batches_total{outcome=\"shared\"}"
        ),
        Some(1.0)
    );
    assert!(!a.is_degraded() && !b.is_degraded());
    cleanup(&p);
}

/// The script keeps a running sum per window and subtracts the buckets that leave it; checked
/// against a plain model over a long random walk of event times: small steps, jumps of several
/// buckets, silences longer than the window, late events, and two replicas writing.
#[test]
fn running_sum_matches_a_recount_over_a_random_walk() {
    if !require_redis() {
        return;
    }
    let p = prefix("walk");
    let cfg = StateConfig {
        buckets_per_window: 10,
        ..config(&p, &format!("redis://{SHARED_REDIS}"))
    };
    let (a, _) = replica(&cfg);
    let (b, _) = replica(&cfg);
    let params = WindowParams {
        kind: WindowKind::Count,
        threshold: 1_000_000,
        window_ms: 10_000,
        tolerance_ms: 10_000,
    };
    let bucket_ms = 1_000;
    let k = at("t", "r", "walk");
    // The model: events accepted per bucket, and the newest time.
    let mut accepted: BTreeMap<i64, u64> = BTreeMap::new();
    let mut newest = i64::MIN;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut t = T0;
    for step in 0..300 {
        t += match next(10) {
            0 => 10_000 + next(40_000) as i64, // a silence longer than the window
            1..=3 => next(4_000) as i64,       // a few buckets
            _ => next(300) as i64,
        };
        let replica = if step % 2 == 0 { &a } else { &b };
        let mut batch = replica.batch();
        let mut events = Vec::new();
        for _ in 0..1 + next(5) {
            // Mostly around t, sometimes late by up to two windows.
            let e = if next(6) == 0 {
                t - next(20_000) as i64
            } else {
                t + next(500) as i64
            };
            batch.entry(k, &params).count(e);
            events.push(e);
        }
        let got = replica.sync(&mut batch).unwrap().get(k).unwrap().clone();
        newest = newest.max(events.iter().copied().max().unwrap());
        let first = (newest - params.window_ms).div_euclid(bucket_ms);
        for e in events {
            let idx = e.div_euclid(bucket_ms);
            if idx >= first {
                *accepted.entry(idx).or_default() += 1;
            }
        }
        let want: u64 = accepted.range(first..).map(|(_, n)| n).sum();
        assert_eq!(
            (got.newest_ms, got.total),
            (newest, want),
            "step {step}: t {t}"
        );
    }
    cleanup(&p);
}

#[test]
fn old_buckets_stop_counting_on_event_time() {
    if !require_redis() {
        return;
    }
    let p = prefix("expiry");
    let cfg = StateConfig {
        buckets_per_window: 10,
        ..config(&p, &format!("redis://{SHARED_REDIS}"))
    };
    let (a, _) = replica(&cfg);
    let (b, _) = replica(&cfg);
    let params = WindowParams {
        kind: WindowKind::Count,
        threshold: 3,
        window_ms: 10_000,
        tolerance_ms: 10_000,
    };
    let k = at("t", "r", "k");
    // Five events in bucket [T0, T0 + 1 s) on A.
    let mut batch = a.batch();
    for i in 0..5 {
        batch.entry(k, &params).count(T0 + i * 100);
    }
    assert_eq!(a.sync(&mut batch).unwrap().get(k).unwrap().total, 5);

    // At T0 + 10 999 the window's edge (T0 + 999) still lies in the first bucket: it counts.
    let mut batch = b.batch();
    batch.entry(k, &params).count(T0 + 10_999);
    assert_eq!(b.sync(&mut batch).unwrap().get(k).unwrap().total, 6);

    // One ms later the edge moves into the next bucket and the first one is gone for good.
    let mut batch = b.batch();
    batch.entry(k, &params).count(T0 + 11_000);
    let totals = b.sync(&mut batch).unwrap();
    assert_eq!(totals.get(k).unwrap().total, 2);

    // A late event in the expired bucket does not bring it back; T stays the newest.
    let mut batch = a.batch();
    batch.entry(k, &params).count(T0 + 500);
    let t = a.sync(&mut batch).unwrap();
    let t = t.get(k).unwrap();
    assert_eq!((t.total, t.newest_ms), (2, T0 + 11_000));
    cleanup(&p);
}

#[test]
fn distinct_values_are_counted_across_replicas_within_their_bound() {
    if !require_redis() {
        return;
    }
    let p = prefix("distinct");
    let cfg = StateConfig {
        max_distinct_per_key: 10,
        ..config(&p, &format!("redis://{SHARED_REDIS}"))
    };
    let (a, _) = replica(&cfg);
    let (b, _) = replica(&cfg);
    let params = WindowParams {
        kind: WindowKind::Distinct,
        threshold: 5,
        window_ms: 60_000,
        tolerance_ms: 60_000,
    };
    let k = at("t", "ssh-user-enumeration", "203.0.113.9");
    let mut batch = a.batch();
    for v in 1..=3u64 {
        batch.entry(k, &params).distinct(v, T0 + v as i64);
    }
    let t = a.sync(&mut batch).unwrap();
    assert_eq!(t.get(k).unwrap().total, 3);
    // B sees 2, 3 again (no double count) and 4, 5: five different values in all, exactly.
    let mut batch = b.batch();
    for v in 2..=5u64 {
        batch.entry(k, &params).distinct(v, T0 + 1_000 + v as i64);
    }
    let t = b.sync(&mut batch).unwrap();
    let t = t.get(k).unwrap();
    assert_eq!((t.total, t.fires), (5, true));

    // 50 more values saturate at the bound (10), never more.
    let mut batch = a.batch();
    for v in 100..150u64 {
        batch.entry(k, &params).distinct(v, T0 + 2_000 + v as i64);
    }
    assert_eq!(a.sync(&mut batch).unwrap().get(k).unwrap().total, 10);

    // A minute later only the values seen again remain in the window.
    let mut batch = b.batch();
    batch.entry(k, &params).distinct(7, T0 + 70_000);
    batch.entry(k, &params).distinct(149, T0 + 70_001);
    let t = b.sync(&mut batch).unwrap();
    assert_eq!(t.get(k).unwrap().total, 2);
    cleanup(&p);
}

#[test]
fn exactly_one_of_many_concurrent_claimers_wins_until_the_claim_expires() {
    if !require_redis() {
        return;
    }
    let p = prefix("claim");
    let cfg = config(&p, &format!("redis://{SHARED_REDIS}"));
    let replicas: Vec<(SharedState, Registry)> = (0..8).map(|_| replica(&cfg)).collect();
    let barrier = Arc::new(Barrier::new(replicas.len()));
    let ttl = Duration::from_millis(400);
    let outcomes: Vec<Claim> = std::thread::scope(|s| {
        let handles: Vec<_> = replicas
            .iter()
            .map(|(r, _)| {
                let barrier = Arc::clone(&barrier);
                s.spawn(move || {
                    barrier.wait();
                    r.claim("t", "ssh-brute-force", "203.0.113.7", ttl)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i] == Claim::Won)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|&&c| c == Claim::Lost).count(),
        replicas.len() - 1
    );
    let winner = winners[0];
    let loser = (winner + 1) % replicas.len();
    // The holder wins again (its follow-ups go through) and renews; the others still lose.
    assert_eq!(
        replicas[winner]
            .0
            .claim("t", "ssh-brute-force", "203.0.113.7", ttl),
        Claim::Won
    );
    assert_eq!(
        replicas[loser]
            .0
            .claim("t", "ssh-brute-force", "203.0.113.7", ttl),
        Claim::Lost
    );
    // Another key is a different incident.
    assert_eq!(
        replicas[loser]
            .0
            .claim("t", "ssh-brute-force", "198.51.100.3", ttl),
        Claim::Won
    );
    assert_eq!(
        metric(
            &replicas[loser].1,
            "logwarden_state_claims_total{outcome=\"lost\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &replicas[loser].1,
            "logwarden_state_claims_total{outcome=\"won\"}"
        ),
        Some(1.0)
    );
    // After the TTL (the cooldown) the next replica to claim takes over.
    std::thread::sleep(ttl + Duration::from_millis(200));
    assert_eq!(
        replicas[loser]
            .0
            .claim("t", "ssh-brute-force", "203.0.113.7", ttl),
        Claim::Won
    );
    assert_eq!(
        replicas[winner]
            .0
            .claim("t", "ssh-brute-force", "203.0.113.7", ttl),
        Claim::Lost
    );
    cleanup(&p);
}

#[test]
fn samples_from_every_replica_are_bounded_and_merged() {
    if !require_redis() {
        return;
    }
    let p = prefix("samples");
    let cfg = StateConfig {
        samples_per_key: 4,
        ..config(&p, &format!("redis://{SHARED_REDIS}"))
    };
    let (a, _) = replica(&cfg);
    let (b, _) = replica(&cfg);
    let a = a.with_replica_id("replica-a");
    let b = b.with_replica_id("replica-b");
    let params = WindowParams {
        threshold: 5,
        ..COUNT_1M
    };
    let k = at("t", "ssh-brute-force", "203.0.113.7");
    let labels = BTreeMap::from([("job".to_owned(), "sshd".to_owned())]);
    let mut batch = a.batch();
    for i in 0..3i64 {
        let e = batch.entry(k, &params);
        e.count(T0 + i * 1_000);
        e.sample(
            (T0 + i * 1_000) * 1_000_000,
            &format!("a{i}"),
            &labels,
            None,
        );
    }
    // Not firing yet: with the default mode no samples come back.
    let t = a.sync(&mut batch).unwrap();
    assert!(t.get(k).unwrap().samples.is_empty());

    let mut batch = b.batch();
    for i in 0..3i64 {
        let e = batch.entry(k, &params);
        e.count(T0 + 500 + i * 1_000);
        e.sample(
            (T0 + 500 + i * 1_000) * 1_000_000,
            &format!("b{i}"),
            &labels,
            None,
        );
    }
    let t = b.sync(&mut batch).unwrap();
    let t = t.get(k).unwrap();
    assert!(t.fires);
    // The four of six received last (B's three, then A's newest), sorted by event time, from
    // both replicas.
    let lines: Vec<(&str, &str)> = t
        .samples
        .iter()
        .map(|s| (s.line.as_str(), s.replica.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            ("b0", "replica-b"),
            ("b1", "replica-b"),
            ("a2", "replica-a"),
            ("b2", "replica-b")
        ]
    );
    assert_eq!(t.samples[0].labels, labels);
    // The same list, read on its own by the other replica.
    assert_eq!(
        a.samples("t", "ssh-brute-force", "203.0.113.7").unwrap(),
        t.samples
    );

    // `Always` returns samples below the threshold too.
    let other = at("t", "ssh-brute-force", "198.51.100.5");
    let mut batch = a.batch();
    let e = batch.entry(other, &params);
    e.count(T0);
    e.sample(T0 * 1_000_000, "only", &labels, None);
    e.want_samples(SampleMode::Always);
    let t = a.sync(&mut batch).unwrap();
    assert_eq!(t.get(other).unwrap().samples.len(), 1);
    cleanup(&p);
}

#[test]
fn a_large_batch_is_one_round_trip() {
    if !require_redis() {
        return;
    }
    let p = prefix("roundtrip");
    let cfg = StateConfig {
        max_keys_per_script: 50,
        ..config(&p, &format!("redis://{SHARED_REDIS}"))
    };
    let (a, registry) = replica(&cfg);
    let keys: Vec<String> = (0..200).map(|i| format!("192.0.2.{i}")).collect();
    let fill = |batch: &mut BatchDeltas| {
        for (i, key) in keys.iter().enumerate() {
            for j in 0..5 {
                batch
                    .entry(at("t", "r", key), &COUNT_1M)
                    .count(T0 + (i as i64) * 10 + j);
            }
        }
    };
    // Warm up: the first batch may have to load the script.
    let mut batch = a.batch();
    fill(&mut batch);
    a.sync(&mut batch).unwrap();
    let before = metric(
        &registry,
        "logwarden_state_redis_round_trips_total{op=\"batch\"}",
    )
    .unwrap();
    let mut batch = a.batch();
    fill(&mut batch);
    let totals = a.sync(&mut batch).unwrap();
    assert_eq!(totals.len(), 200);
    assert!(totals.iter().all(|(_, t)| t.total == 10 && t.fires));
    let after = metric(
        &registry,
        "logwarden_state_redis_round_trips_total{op=\"batch\"}",
    )
    .unwrap();
    assert_eq!(
        after - before,
        1.0,
        "one round trip for 200 keys in 4 scripts"
    );
    cleanup(&p);
}

// === outages ===

/// Collects what the test's tracing subscriber writes.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

#[test]
fn redis_stopped_mid_test_degrades_then_resumes() {
    if !require_redis_server() {
        return;
    }
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, outage_scenario);
    // One WARN when it degraded and one INFO when it resumed, per replica: not one per call.
    assert_eq!(logs.count("WARN"), 2, "one per replica");
    assert_eq!(logs.count("shared state degraded"), 2);
    assert_eq!(logs.count("shared state resumed"), 2);
}

fn outage_scenario() {
    let server = PrivateRedis::start(free_port());
    let port = server.port;
    let p = prefix("outage");
    let cfg = StateConfig {
        timeout: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(100),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(400),
        ..config(&p, &format!("redis://127.0.0.1:{port}"))
    };
    let (a, registry) = replica(&cfg);
    let (b, _) = replica(&cfg);
    let k = at("t", "r", "k");
    let add = |s: &SharedState, t: i64| {
        let mut batch = s.batch();
        batch.entry(k, &COUNT_1M).count(t);
        s.sync(&mut batch).map(|t| t.get(k).unwrap().total)
    };
    assert_eq!(add(&a, T0).unwrap(), 1);
    assert_eq!(add(&b, T0 + 1).unwrap(), 2);
    assert_eq!(metric(&registry, "logwarden_state_degraded"), Some(0.0));

    server.kill();
    let started = std::time::Instant::now();
    let err = add(&a, T0 + 2).unwrap_err();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "a call against a dead Redis took {took:?}"
    );
    assert!(
        matches!(
            err,
            StateError::Io(_) | StateError::Connect(_) | StateError::Timeout(_)
        ),
        "{err:?}"
    );
    assert!(a.is_degraded());
    assert_eq!(metric(&registry, "logwarden_state_degraded"), Some(1.0));
    // While degraded and before the backoff ends, calls do not touch the network at all.
    let started = std::time::Instant::now();
    assert!(matches!(add(&a, T0 + 3), Err(StateError::Degraded)));
    assert!(started.elapsed() < Duration::from_millis(20));
    assert_eq!(
        a.claim("t", "r", "k", Duration::from_secs(60)),
        Claim::Degraded
    );
    assert_eq!(
        metric(
            &registry,
            "logwarden_state_batches_total{outcome=\"local\"}"
        ),
        Some(2.0)
    );

    // Still down after the backoff: the probe fails and the backoff grows, still degraded.
    std::thread::sleep(Duration::from_millis(150));
    assert!(add(&a, T0 + 4).is_err());
    assert!(a.is_degraded());

    // Redis comes back on the same port (empty: no persistence, and no script loaded).
    let _server = PrivateRedis::start(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let total = loop {
        match add(&a, T0 + 5) {
            Ok(total) => break total,
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "shared state did not resume"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(total, 1, "a fresh Redis starts from zero");
    assert!(!a.is_degraded());
    assert_eq!(metric(&registry, "logwarden_state_degraded"), Some(0.0));
    assert!(
        metric(
            &registry,
            "logwarden_state_redis_round_trips_total{op=\"load_script\"}"
        )
        .unwrap()
            >= 1.0
    );
    // B had a connection to the dead server in its pool: it fails once at most, then resumes.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match add(&b, T0 + 6) {
            Ok(total) => {
                assert_eq!(total, 2, "both replicas count into the new Redis");
                break;
            }
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "b did not resume");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn a_redis_that_never_answers_fails_within_the_timeout() {
    // Accepts connections and reads, never answers: a hung or overloaded Redis.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let cfg = StateConfig {
        timeout: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(100),
        ..config(&prefix("hung"), &format!("redis://127.0.0.1:{port}"))
    };
    let (a, registry) = replica(&cfg);
    let mut batch = a.batch();
    batch.entry(at("t", "r", "k"), &COUNT_1M).count(T0);
    let started = std::time::Instant::now();
    let err = a.sync(&mut batch).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(400), "took {took:?}");
    assert!(
        matches!(err, StateError::Timeout(_) | StateError::Connect(_)),
        "{err:?}"
    );
    assert!(a.is_degraded());
    let timeouts = metric(
        &registry,
        "logwarden_state_redis_errors_total{kind=\"timeout\"}",
    )
    .unwrap()
        + metric(
            &registry,
            "logwarden_state_redis_errors_total{kind=\"connect\"}",
        )
        .unwrap();
    assert_eq!(timeouts, 1.0);
}
