//! The fault suite: loadgen pushes through the real `serve` binary into a fake Loki that stores
//! what it accepts, while the upstream, logwarden itself or the alerting backends fail. Each run
//! must end with every acknowledged line stored upstream (duplicates from client retries are
//! allowed and reported), every accepted line inspected exactly once (a retried batch is not
//! inspected twice), and every planted attack reported exactly once.
//!
//! Run with `--no-capture` to see what each scenario measured.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use clap::Parser;
use logwarden::loadgen::{Acked, LoadgenArgs, Summary, ATTACKERS};

use crate::support::{metric_sum, Fault, ServeProcess, StoringLoki};

use crate::notify_support::{self, FakeHttp};

const TENANTS: [&str; 2] = ["acme", "beta"];

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

/// The load of every fault run: two Promtail-like senders at a steady rate, two tenants, 1 %
/// brute-force lines from the planted addresses, Promtail's retry policy and timeout.
fn load_args(url: &str, run_id: &str, duration: Duration, extra: &[&str]) -> LoadgenArgs {
    let duration = format!("{}ms", duration.as_millis());
    let mut argv = vec![
        "loadgen",
        "--url",
        url,
        "--run-id",
        run_id,
        "--duration",
        &duration,
        "--concurrency",
        "2",
        "--batch-bytes",
        "32768",
        "--tenants",
        "acme,beta",
        "--attack-share",
        "0.01",
    ];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

/// What loadgen saw acknowledged.
#[derive(Default)]
struct AckLog {
    /// Every acknowledged line.
    lines: Vec<Bytes>,
    /// (when, lines, attack lines) per acknowledged batch.
    batches: Vec<(Instant, u64, u64)>,
    latencies: Vec<Duration>,
}

type Acks = Arc<Mutex<AckLog>>;

fn recorder(acks: &Acks) -> logwarden::loadgen::AckHook {
    let acks = Arc::clone(acks);
    Arc::new(move |a: &Acked<'_>| {
        let mut log = acks.lock().unwrap();
        log.lines.extend(a.lines.iter().cloned());
        log.batches
            .push((Instant::now(), a.lines.len() as u64, a.attack_lines));
        log.latencies.push(a.latency);
    })
}

/// Runs loadgen in this process (on its own tasks) and returns its summary.
fn spawn_load(args: LoadgenArgs, acks: &Acks) -> tokio::task::JoinHandle<anyhow::Result<Summary>> {
    tokio::spawn(logwarden::loadgen::run_with(args, Some(recorder(acks))))
}

/// The config every fault run starts `serve` with: a short forward timeout (so a stall is
/// quick), one inspection worker, every incident to `hook`, reports into Loki.
fn serve_yaml(hook: &str) -> String {
    format!(
        "upstream:\n  timeout: 1s\n  connect_timeout: 500ms\ninspect:\n  workers: 1\n\
         notify:\n  - type: webhook\n    url: {hook}/hook\n    min_severity: info\n"
    )
}

/// Asserts that every acknowledged line is stored upstream; returns (acknowledged, duplicates).
fn assert_nothing_missing(loki: &StoringLoki, acks: &Acks) -> (usize, u64) {
    let log = acks.lock().unwrap();
    let missing: Vec<&Bytes> = log.lines.iter().filter(|l| loki.stored(l) == 0).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged lines are missing upstream, e.g. {:?}",
        missing.len(),
        log.lines.len(),
        missing.first()
    );
    // Each acknowledged line is distinct (run id and sequence number), so the copies beyond the
    // first are the duplicates retries caused.
    let distinct: HashSet<&Bytes> = log.lines.iter().collect();
    assert_eq!(distinct.len(), log.lines.len(), "loadgen repeated a line");
    (log.lines.len(), loki.duplicates())
}

/// Waits until the process has inspected at least `lines` lines and its queue is empty (at most
/// 20 s); returns its metrics then.
async fn settled(serve: &ServeProcess, lines: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = serve.metrics().await;
        let inspected = metric_sum(&m, "logwarden_push_lines_total", &[]);
        let depth = metric_sum(&m, "logwarden_inspect_queue_depth", &[]);
        if (inspected >= lines as f64 && depth == 0.0) || Instant::now() > deadline {
            // A moment more, so an inspection that would double-count shows up too.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return serve.metrics().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that the process inspected exactly the lines it acknowledged: none shed, none twice
/// (a batch answered 429/5xx/502/504 is inspected only when its retry is accepted).
fn assert_inspected_once(metrics: &str, lines: u64, attack_lines: u64) {
    let shed = metric_sum(metrics, "logwarden_inspect_queue_dropped_total", &[]);
    assert_eq!(shed, 0.0, "inspection was shed; the exact check needs none");
    let inspected = metric_sum(metrics, "logwarden_push_lines_total", &[]);
    assert_eq!(
        inspected, lines as f64,
        "lines inspected vs acknowledged through this process"
    );
    let matched = metric_sum(
        metrics,
        "logwarden_rule_matches_total",
        &[r#"rule="ssh-brute-force""#],
    );
    assert_eq!(
        matched, attack_lines as f64,
        "brute-force lines matched vs acknowledged"
    );
}

/// The incidents a webhook received, keyed by (tenant, rule, key), with how often each came.
async fn incidents(hook: &FakeHttp, metrics: &str) -> BTreeMap<(String, String, String), u32> {
    // Every incident the process emitted reaches the (healthy) webhook.
    let emitted = metric_sum(metrics, "logwarden_incidents_total", &[]) as usize;
    hook.wait_for(emitted, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = hook.requests();
    assert_eq!(got.len(), emitted, "webhook calls vs incidents emitted");
    let mut seen = BTreeMap::new();
    for r in &got {
        let i = &r.json()["incident"];
        assert_eq!(i["follow_up"], false, "unexpected follow-up: {i}");
        let key = (
            i["tenant"].as_str().unwrap().to_owned(),
            i["rule"].as_str().unwrap().to_owned(),
            i["key"].as_str().unwrap().to_owned(),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// Asserts one incident per (tenant, rule, key) and one brute-force incident per planted
/// attacker and tenant; returns the incident count.
fn assert_each_attack_once(seen: &BTreeMap<(String, String, String), u32>) -> usize {
    for (k, n) in seen {
        assert_eq!(*n, 1, "incident {k:?} counted {n} times");
    }
    for tenant in TENANTS {
        for ip in ATTACKERS {
            let k = (
                tenant.to_owned(),
                "ssh-brute-force".to_owned(),
                ip.to_string(),
            );
            assert!(
                seen.contains_key(&k),
                "planted attack {k:?} missed: {seen:?}"
            );
        }
    }
    seen.len()
}

/// Asserts that no incident was reported into Loki twice: report lines with the same incident
/// id and sequence must be byte-identical copies (a retried report push), never two reports.
fn assert_reports_once(loki: &StoringLoki) -> (usize, usize) {
    let reports = loki.reports();
    let mut by_id: BTreeMap<(String, u64), HashSet<String>> = BTreeMap::new();
    for r in &reports {
        let v: serde_json::Value = serde_json::from_str(&r.line).unwrap();
        let id = v["incident_id"].as_str().unwrap().to_owned();
        let seq = v["sequence"].as_u64().unwrap();
        by_id.entry((id, seq)).or_default().insert(r.line.clone());
    }
    for (k, lines) in &by_id {
        assert_eq!(lines.len(), 1, "incident {k:?} reported differently twice");
    }
    (by_id.len(), reports.len())
}

/// Everything a fault run checks once the load is over, for a process that lived throughout.
async fn verify(
    name: &str,
    serve: &ServeProcess,
    loki: &StoringLoki,
    hook: &FakeHttp,
    acks: &Acks,
    summary: &Summary,
) {
    assert!(
        !summary.lost_lines(),
        "{name}: loadgen gave up on batches: {summary:?}"
    );
    let (acked, duplicates) = assert_nothing_missing(loki, acks);
    assert_eq!(acked as u64, summary.lines_acked);
    let metrics = settled(serve, summary.lines_acked).await;
    assert_inspected_once(&metrics, summary.lines_acked, summary.attack_lines_acked);
    let seen = incidents(hook, &metrics).await;
    let n = assert_each_attack_once(&seen);
    let (reported, report_lines) = assert_reports_once(loki);
    let (stored, refused, stalled) = loki.counts();
    eprintln!(
        "FAULT {name}: acked {acked} lines in {} batches ({} retries), missing 0, duplicates \
         upstream {duplicates}; Loki stored {stored} pushes, refused {refused}, stalled \
         {stalled}; inspected {acked} once each; incidents {n} (each once), reports {reported} \
         in {report_lines} lines",
        summary.batches_acked, summary.retries
    );
}

/// Starts the fake Loki, a webhook sink and `serve`; returns them with the push URL.
async fn setup() -> (StoringLoki, FakeHttp, ServeProcess, String) {
    let loki = StoringLoki::start().await;
    let hook = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let serve = ServeProcess::start(&serve_yaml(&hook.url()), &loki.url(), &[]).await;
    let url = serve.url("/loki/api/v1/push");
    (loki, hook, serve, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_mid_run() {
    let (loki, hook, serve, url) = setup().await;
    let acks = Acks::default();
    let load = spawn_load(
        load_args(
            &url,
            "restart",
            Duration::from_secs(10),
            &["--rate", "8000"],
        ),
        &acks,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    loki.kill().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    loki.restart().await;
    let summary = load.await.unwrap().unwrap();
    assert!(summary.retries > 0, "the outage was not noticed");
    verify(
        "(a) upstream killed 3 s",
        &serve,
        &loki,
        &hook,
        &acks,
        &summary,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_429_and_503_in_bursts() {
    let (loki, hook, serve, url) = setup().await;
    let acks = Acks::default();
    let load = spawn_load(
        load_args(&url, "bursts", Duration::from_secs(10), &["--rate", "8000"]),
        &acks,
    );
    for fault in [
        // Rate limited: refused before anything is written.
        Fault::Refuse {
            status: 429,
            store: false,
        },
        // Partially written, then refused: every retry is a duplicate upstream.
        Fault::Refuse {
            status: 503,
            store: true,
        },
    ] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        loki.set_fault(fault);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        loki.set_fault(Fault::None);
    }
    let summary = load.await.unwrap().unwrap();
    assert!(summary.retries > 0, "no burst was noticed");
    verify(
        "(b) 429 and 503 bursts",
        &serve,
        &loki,
        &hook,
        &acks,
        &summary,
    )
    .await;
    assert!(loki.counts().1 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stalling_past_the_forward_timeout() {
    let (loki, hook, serve, url) = setup().await;
    let acks = Acks::default();
    let load = spawn_load(
        load_args(&url, "stall", Duration::from_secs(10), &["--rate", "8000"]),
        &acks,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Loki writes each push but answers only after 2 s; logwarden gives up at 1 s with 504.
    loki.set_fault(Fault::Stall {
        delay: Duration::from_secs(2),
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    loki.set_fault(Fault::None);
    let summary = load.await.unwrap().unwrap();
    let m = serve.metrics().await;
    assert!(
        metric_sum(
            &m,
            "logwarden_upstream_errors_total",
            &[r#"reason="timeout""#]
        ) > 0.0,
        "no forward timed out"
    );
    verify(
        "(c) upstream stalled 3 s",
        &serve,
        &loki,
        &hook,
        &acks,
        &summary,
    )
    .await;
    assert!(
        loki.duplicates() > 0,
        "a stalled push was written and retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logwarden_sigkilled_and_restarted_mid_run() {
    let (loki, hook, mut serve, url) = setup().await;
    // The restarted process alerts to its own sink, so incidents are checked per lifetime.
    let hook2 = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let acks = Acks::default();
    let load = spawn_load(
        load_args(
            &url,
            "sigkill",
            Duration::from_secs(10),
            &["--rate", "8000"],
        ),
        &acks,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first_metrics = serve.metrics().await;
    serve.kill();
    let killed = Instant::now();
    serve.rewrite_config(&serve_yaml(&hook2.url()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.restart().await;
    let restarted = killed.elapsed();
    let summary = load.await.unwrap().unwrap();
    assert!(summary.retries > 0, "the crash was not noticed");
    assert!(!summary.lost_lines(), "loadgen gave up: {summary:?}");
    let (acked, duplicates) = assert_nothing_missing(&loki, &acks);

    // The first life: nothing it alerted on came twice.
    let first: BTreeMap<_, u32> = {
        let mut seen = BTreeMap::new();
        for r in hook.requests() {
            let i = &r.json()["incident"];
            let k = (
                i["tenant"].to_string(),
                i["rule"].to_string(),
                i["key"].to_string(),
            );
            *seen.entry(k).or_insert(0) += 1;
        }
        seen
    };
    assert!(first.values().all(|&n| n == 1), "{first:?}");
    assert!(
        metric_sum(&first_metrics, "logwarden_push_lines_total", &[]) > 0.0,
        "the first process inspected nothing before the kill"
    );
    // The second life inspected exactly the batches acknowledged after the crash: none of the
    // retries that the first life may already have forwarded is counted twice.
    let (after_lines, after_attack) = {
        let log = acks.lock().unwrap();
        log.batches
            .iter()
            .filter(|(at, _, _)| *at > killed)
            .fold((0, 0), |(l, a), (_, bl, ba)| (l + bl, a + ba))
    };
    assert!(after_lines > 0, "nothing acknowledged after the restart");
    let metrics = settled(&serve, after_lines).await;
    assert_inspected_once(&metrics, after_lines, after_attack);
    let seen = incidents(&hook2, &metrics).await;
    let n = assert_each_attack_once(&seen);
    let (reported, report_lines) = assert_reports_once(&loki);
    eprintln!(
        "FAULT (d) logwarden SIGKILLed, back after {restarted:?}: acked {acked} lines in {} \
         batches ({} retries), missing 0, duplicates upstream {duplicates}; second life \
         inspected {after_lines} lines once each, {n} incidents once each (first life {}); \
         reports {reported} in {report_lines} lines",
        summary.batches_acked,
        summary.retries,
        first.len()
    );
}
