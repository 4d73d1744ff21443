//! The load generator behaves like Promtail: retries 429/5xx/connection errors with backoff,
//! drops other 4xx, and counts what was acknowledged.

use std::time::Duration;

use clap::Parser;
use logwarden::loadgen::{run, LoadgenArgs};

use crate::support::{FakeLoki, Reply};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

/// How a push to Loki's v1 endpoint with this content type (and no content encoding) is read.
fn v1_push(content_type: &'static str) -> logwarden::decode::PushMeta<'static> {
    logwarden::decode::PushMeta {
        content_type: Some(content_type),
        content_encoding: None,
        api: logwarden::decode::PushApi::V1,
    }
}

fn args(url: &str, extra: &[&str]) -> LoadgenArgs {
    let mut argv = vec![
        "loadgen",
        "--url",
        url,
        "--duration",
        "30s",
        "--min-backoff",
        "10ms",
    ];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

#[tokio::test]
async fn retries_like_promtail_and_counts_acknowledged_lines() {
    let loki = FakeLoki::start().await;
    loki.script([
        Reply::status(429),
        Reply::status(503),
        Reply::status(204),
        Reply::status(204),
    ]);
    let url = format!("{}/loki/api/v1/push", loki.url());
    let s = run(args(
        &url,
        &[
            "--batches",
            "2",
            "--batch-bytes",
            "4096",
            "--tenants",
            "a,b",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(s.batches_acked, 2);
    assert_eq!(s.retries, 2);
    assert!(!s.lost_lines());
    let reqs = loki.requests();
    assert_eq!(reqs.len(), 4);
    // The retried batch is resent byte for byte.
    assert_eq!(reqs[0].body, reqs[2].body);
    // Every acknowledged line is in what Loki accepted (the last two requests).
    let lines: usize = reqs[2..]
        .iter()
        .map(|r| {
            logwarden::decode::with_decoded(
                &r.body,
                v1_push("application/x-protobuf"),
                Default::default(),
                |v| v.entry_count(),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(lines as u64, s.lines_acked);
}

/// `--latencies-out` writes one latency per acknowledged batch (its final attempt), in
/// ascending order, agreeing with the summary: benchmarks pool them over rounds.
#[tokio::test]
async fn latencies_out_lists_every_acknowledged_batch_in_order() {
    let loki = FakeLoki::start().await;
    loki.script([Reply::status(503), Reply::status(204)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latencies.txt");
    let url = format!("{}/loki/api/v1/push", loki.url());
    let s = run(args(
        &url,
        &[
            "--batches",
            "5",
            "--batch-bytes",
            "2048",
            "--latencies-out",
            path.to_str().unwrap(),
        ],
    ))
    .await
    .unwrap();
    assert_eq!((s.batches_acked, s.retries), (5, 1));
    let us: Vec<f64> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        us.len(),
        5,
        "one latency per acknowledged batch, not per attempt"
    );
    assert!(us.windows(2).all(|w| w[0] <= w[1]), "ascending: {us:?}");
    assert!(us[0] > 0.0);
    let max_ms = us[4] / 1000.0;
    assert!(
        (max_ms - s.latency_max_ms).abs() < 0.001,
        "file's largest {max_ms} ms, summary's {} ms",
        s.latency_max_ms
    );
}

#[tokio::test]
async fn other_4xx_drops_the_batch_without_retry() {
    let loki = FakeLoki::start().await;
    loki.script([Reply::text(400, "bad\n")]);
    let url = format!("{}/loki/api/v1/push", loki.url());
    let s = run(args(&url, &["--batches", "1", "--batch-bytes", "1024"]))
        .await
        .unwrap();
    assert_eq!((s.batches_acked, s.batches_dropped, s.retries), (0, 1, 0));
    assert!(s.lost_lines());
    assert_eq!(loki.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_is_held_over_all_senders() {
    // Small batches make each sender's pause between batches a couple of milliseconds, the
    // scale at which the timer's late wake-ups used to lower the rate by a fifth or more.
    let loki = FakeLoki::start().await;
    let url = format!("{}/loki/api/v1/push", loki.url());
    let rate = 10_000.0;
    let rate_arg = rate.to_string();
    let s = run(args(
        &url,
        &[
            "--batches",
            "2000",
            "--batch-bytes",
            "1024",
            "--concurrency",
            "2",
            "--rate",
            &rate_arg,
        ],
    ))
    .await
    .unwrap();
    assert!(!s.lost_lines());
    let achieved = s.lines_acked as f64 / s.elapsed_seconds;
    assert!(
        (0.9 * rate..=1.1 * rate).contains(&achieved),
        "asked for {rate} lines/s, sent {achieved:.0} lines/s ({} batches)",
        s.batches_acked
    );
}

#[tokio::test]
async fn unreachable_target_exhausts_retries() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{dead}/loki/api/v1/push");
    let started = std::time::Instant::now();
    let s = run(args(
        &url,
        &[
            "--batches",
            "1",
            "--batch-bytes",
            "512",
            "--max-retries",
            "3",
        ],
    ))
    .await
    .unwrap();
    assert_eq!((s.batches_exhausted, s.retries), (1, 3));
    // Backoff doubles from 10 ms: 10 + 20 + 40 ms at least.
    assert!(started.elapsed() >= Duration::from_millis(70));
}

#[tokio::test]
async fn attack_share_plants_brute_force_lines_from_known_addresses() {
    let loki = FakeLoki::start().await;
    let url = format!("{}/loki/api/v1/push", loki.url());
    let s = run(args(
        &url,
        &[
            "--batches",
            "1",
            "--batch-bytes",
            "20000",
            "--attack-share",
            "0.1",
            "--format",
            "json",
        ],
    ))
    .await
    .unwrap();
    assert!(s.attack_lines_acked > 0);
    let body = String::from_utf8(loki.requests()[0].body.to_vec()).unwrap();
    assert_eq!(
        loki.requests()[0].headers["content-type"],
        "application/json"
    );
    let failed = body.matches("Failed password for root from ").count() as u64;
    assert_eq!(failed, s.attack_lines_acked);
    assert!(logwarden::loadgen::ATTACKERS
        .iter()
        .all(|ip| body.contains(ip)));
}

#[tokio::test]
async fn attackers_spread_the_attack_over_that_many_distinct_tracked_addresses() {
    let loki = FakeLoki::start().await;
    let url = format!("{}/loki/api/v1/push", loki.url());
    // Every line an attack line; 2,500 of them cycle through 1,000 addresses.
    let s = run(args(
        &url,
        &[
            "--batches",
            "1",
            "--batch-bytes",
            "300000",
            "--attack-share",
            "1",
            "--attackers",
            "1000",
            "--format",
            "json",
        ],
    ))
    .await
    .unwrap();
    assert!(s.attack_lines_acked >= 2000, "{s:?}");
    let body = &loki.requests()[0].body;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let addresses: std::collections::BTreeSet<&str> = text
        .split("Failed password for root from ")
        .skip(1)
        .map(|rest| rest.split(' ').next().unwrap())
        .collect();
    assert_eq!(addresses.len(), 1000);
    assert!(logwarden::loadgen::ATTACKERS
        .iter()
        .all(|ip| addresses.contains(ip)));
    assert!(addresses
        .iter()
        .all(|a| a.parse::<std::net::IpAddr>().is_ok()));
    // The engine tracks each as its own key in each of the three SSH rules keyed by address.
    let registry = prometheus::Registry::new();
    let detector = logwarden::detect::Detector::try_new(&Default::default(), &registry).unwrap();
    logwarden::decode::with_decoded(body, v1_push("application/json"), Default::default(), |v| {
        detector.process("t", v, &|_| {})
    })
    .unwrap();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert_eq!(
        crate::support::metric_sum(&text, "logwarden_detect_keys", &[]),
        3000.0
    );
    // Zero addresses is refused with a message saying what is expected.
    let err = Cli::try_parse_from(["loadgen", "--attackers", "0"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("from 1 to"), "{err}");
}

#[tokio::test]
async fn tenants_alternate_and_planted_attacks_are_detected() {
    let loki = FakeLoki::start().await;
    let url = format!("{}/loki/api/v1/push", loki.url());
    // Two senders that alternate batches must still spread them over both tenants.
    let s = run(args(
        &url,
        &[
            "--batches",
            "8",
            "--concurrency",
            "2",
            "--batch-bytes",
            "8192",
            "--tenants",
            "a,b",
            "--attack-share",
            "0.1",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(s.batches_acked, 8);
    let reqs = loki.requests();
    let per_tenant = |t: &str| {
        reqs.iter()
            .filter(|r| r.headers["x-scope-orgid"] == t)
            .count()
    };
    assert_eq!((per_tenant("a"), per_tenant("b")), (4, 4));
    // The engine finds every planted brute force in what was sent: the attack lines are real
    // sshd failures, run marker included.
    let registry = prometheus::Registry::new();
    let detector = logwarden::detect::Detector::try_new(&Default::default(), &registry).unwrap();
    let found = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let sink = |i: logwarden::incident::Incident| {
        if i.rule == "ssh-brute-force" {
            found.lock().unwrap().insert(i.key);
        }
    };
    for r in &reqs {
        let meta = v1_push("application/x-protobuf");
        logwarden::decode::with_decoded(&r.body, meta, Default::default(), |v| {
            detector.process("t", v, &sink)
        })
        .unwrap();
    }
    let found = found.into_inner().unwrap();
    let planted: std::collections::BTreeSet<String> = logwarden::loadgen::ATTACKERS
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(found, planted);
}

/// A fake Loki with the query side: stores the entries of every push it accepts (snappy
/// protobuf), per tenant, and answers `query_range` (equality selectors, `[start, end)`,
/// `limit`, `direction=forward`) in Loki's `streams` shape. With `lose_every = n` it answers
/// every n-th push 204 without storing it: a Loki that loses acknowledged data.
mod queryable {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Query, State};
    use axum::http::HeaderMap;
    use axum::routing::{get, post};

    type Entry = (String, BTreeMap<String, String>, i64, String);

    #[derive(Clone, Default)]
    pub struct Shared {
        entries: Arc<Mutex<Vec<Entry>>>,
        pushes: Arc<Mutex<u64>>,
        lose_every: u64,
    }

    pub async fn start(lose_every: u64) -> String {
        let shared = Shared {
            lose_every,
            ..Shared::default()
        };
        let app = axum::Router::new()
            .route("/loki/api/v1/push", post(push))
            .route("/loki/api/v1/query_range", get(query_range))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn tenant(headers: &HeaderMap) -> String {
        headers
            .get("x-scope-orgid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("fake")
            .to_owned()
    }

    async fn push(
        State(s): State<Shared>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let n = {
            let mut p = s.pushes.lock().unwrap();
            *p += 1;
            *p
        };
        if s.lose_every > 0 && n % s.lose_every == 0 {
            return axum::http::StatusCode::NO_CONTENT;
        }
        let meta = super::v1_push("application/x-protobuf");
        let t = tenant(&headers);
        let mut new = Vec::new();
        logwarden::decode::with_decoded(&body, meta, Default::default(), |view| {
            for stream in &view.streams {
                let labels: BTreeMap<String, String> = stream
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                for e in &stream.entries {
                    new.push((
                        t.clone(),
                        labels.clone(),
                        e.timestamp_ns,
                        String::from_utf8_lossy(&e.line).into_owned(),
                    ));
                }
            }
        })
        .unwrap();
        s.entries.lock().unwrap().extend(new);
        axum::http::StatusCode::NO_CONTENT
    }

    async fn query_range(
        State(s): State<Shared>,
        headers: HeaderMap,
        Query(q): Query<BTreeMap<String, String>>,
    ) -> axum::Json<serde_json::Value> {
        let selector = logwarden::decode::parse_labels(&q["query"]).unwrap();
        let want: Vec<(String, String)> = selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let start: i64 = q["start"].parse().unwrap();
        let end: i64 = q["end"].parse().unwrap();
        let limit: usize = q["limit"].parse().unwrap();
        assert_eq!(q["direction"], "forward");
        let t = tenant(&headers);
        let mut hits: Vec<Entry> = s
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter(|(et, labels, ts, _)| {
                *et == t
                    && (start..end).contains(ts)
                    && want.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        hits.sort_by_key(|e| e.2);
        hits.truncate(limit);
        let mut streams: BTreeMap<String, (BTreeMap<String, String>, Vec<serde_json::Value>)> =
            BTreeMap::new();
        for (_, labels, ts, line) in hits {
            let key = format!("{labels:?}");
            streams
                .entry(key)
                .or_insert_with(|| (labels, Vec::new()))
                .1
                .push(serde_json::json!([ts.to_string(), line]));
        }
        let result: Vec<serde_json::Value> = streams
            .into_values()
            .map(|(labels, values)| serde_json::json!({"stream": labels, "values": values}))
            .collect();
        axum::Json(serde_json::json!({
            "status": "success",
            "data": {"resultType": "streams", "result": result}
        }))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Loadgen → serve (built-in pack, webhook to loadgen) → a Loki that keeps what it accepts:
/// every acknowledged line is read back (in pages), every planted attack is one incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_reads_every_line_back_and_finds_each_planted_attack_once() {
    let loki = queryable::start(0).await;
    let hook = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "reports:\n  loki: false\nnotify:\n  - type: webhook\n    url: http://{hook}/alerts\n    min_severity: info\n"
    );
    let svc = crate::support::Service::start(&yaml, &loki, &[]).await;
    let push = svc.url("/loki/api/v1/push");
    let s = run(args(
        &push,
        &[
            // ~22 attack lines per (tenant, address): at least 6 in one minute even when the
            // run crosses a minute boundary.
            "--batches",
            "48",
            "--batch-bytes",
            "8192",
            "--tenants",
            "a,b",
            "--attack-share",
            "0.05",
            "--verify-loki",
            &loki,
            "--incident-webhook",
            &hook,
            "--verify-wait",
            "2s",
            "--verify-page-size",
            "300",
        ],
    ))
    .await
    .unwrap();
    let v = s.verify.clone().expect("verification ran");
    assert_eq!(v.lines_checked, s.lines_acked, "{v:?}");
    assert!(
        s.lines_acked > 1000,
        "several pages per tenant: {}",
        s.lines_acked
    );
    assert_eq!(v.lines_missing, 0, "{v:?}");
    // 4 planted addresses in each of 2 tenants.
    assert_eq!(v.attacks_planted, 8, "{v:?}");
    assert_eq!(v.attacks_detected_once, 8, "{v:?}");
    assert!(!s.failed(), "{v:?}");
    svc.stop().await;
}

#[tokio::test]
async fn verification_fails_when_loki_loses_acknowledged_lines() {
    // Every 5th push is acknowledged and thrown away.
    let loki = queryable::start(5).await;
    let s = run(args(
        &format!("{loki}/loki/api/v1/push"),
        &[
            "--batches",
            "10",
            "--batch-bytes",
            "4096",
            "--verify-loki",
            &loki,
            "--verify-wait",
            "10ms",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(s.batches_acked, 10);
    let v = s.verify.clone().unwrap();
    assert_eq!(v.lines_checked, s.lines_acked);
    // Two of ten batches were lost: a fifth of the lines.
    assert_eq!(v.lines_missing * 5, s.lines_acked, "{v:?}");
    assert!(s.failed());
}
