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
                logwarden::decode::PushMeta {
                    content_type: Some("application/x-protobuf"),
                    content_encoding: None,
                    api: logwarden::decode::PushApi::V1,
                },
                Default::default(),
                |v| v.entry_count(),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(lines as u64, s.lines_acked);
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
        let meta = logwarden::decode::PushMeta {
            content_type: Some("application/x-protobuf"),
            content_encoding: None,
            api: logwarden::decode::PushApi::V1,
        };
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
