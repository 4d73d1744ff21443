//! Loadgen: pushes log batches the way Promtail does, for load, soak and fault tests.
//!
//! Each worker builds batches of synthetic lines (ordinary traffic with a configurable share of
//! attack lines from planted addresses, so detections have a known ground truth), encodes them
//! as snappy protobuf (or JSON), and sends them with Promtail's retry policy: 429, 5xx and
//! connection errors are retried with exponential backoff from 500 ms (at most 10 retries);
//! any other non-2xx drops the batch. The summary counts what was acknowledged, retried and lost,
//! and the latency percentiles of acknowledged pushes. Every line carries `run=<id> seq=<n>` so a
//! verifier can check that each acknowledged line arrived exactly where it should.

pub mod verify;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::decode::wire::{
    encode_snappy, timestamp_from_nanos, EntryAdapter, PushRequest, StreamAdapter,
};

/// Body encoding of the pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Snappy-block protobuf, as Promtail and Alloy send.
    Protobuf,
    /// Loki's v1 JSON.
    Json,
}

/// `logwarden loadgen` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Push URL (logwarden or Loki), e.g. http://127.0.0.1:3101/loki/api/v1/push.
    #[arg(long, default_value = "http://127.0.0.1:3101/loki/api/v1/push")]
    pub url: String,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many batches in total (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub batches: u64,
    /// Concurrent senders (Promtail sends one batch at a time per client).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Bytes of log lines per batch (Promtail's `batchsize` default is 1 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_bytes: usize,
    /// Target lines per second over all senders (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Streams per batch.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Tenants (`X-Scope-OrgID`), used round-robin per batch; empty: no header.
    #[arg(long, value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// Body encoding.
    #[arg(long, value_enum, default_value = "protobuf")]
    pub format: Format,
    /// Share of lines that are attack traffic (SSH brute force from planted addresses).
    #[arg(long, default_value_t = 0.0)]
    pub attack_share: f64,
    /// Distinct addresses the attack lines cycle through: the first four are [`ATTACKERS`],
    /// the rest IPv6 documentation addresses (`2001:db8::…`), one per index. A large number
    /// spreads the attack so thin that few addresses reach a rule's threshold: it measures
    /// what a distributed brute force costs in tracked keys and memory.
    #[arg(long, default_value_t = ATTACKERS.len(), value_parser = parse_attackers)]
    pub attackers: usize,
    /// Run id written into every line and label, so runs can be told apart.
    #[arg(long, default_value = "lg")]
    pub run_id: String,
    /// Maximum retries per batch (Promtail's `max_retries` default is 10).
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,
    /// First retry backoff (Promtail's `min_period` default is 500 ms); doubles up to 5 minutes.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub min_backoff: Duration,
    /// Per-request timeout (Promtail's default is 10 s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the latency of every acknowledged request (microseconds, one per line, in
    /// ascending order) to this file, so runs can be pooled or plotted.
    #[arg(long)]
    pub latencies_out: Option<std::path::PathBuf>,
    /// Build this many batches up front and send them in turn (0: build each batch fresh).
    /// For throughput benchmarks, so the generator's own encoding cost is not measured.
    #[arg(long, default_value_t = 0)]
    pub prebuilt: usize,
    /// After the run, read every acknowledged line back from this Loki's query API (base URL,
    /// e.g. http://127.0.0.1:3100) and fail when one is missing.
    #[arg(long)]
    pub verify_loki: Option<String>,
    /// Receive logwarden's webhook alerts on this address during the run (point a `webhook`
    /// notifier at it) and fail unless every planted attack produced exactly one incident.
    #[arg(long)]
    pub incident_webhook: Option<String>,
    /// How long to wait after the last push before verifying (ingestion, detection, alerting).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub verify_wait: Duration,
    /// Entries asked per `query_range` page (Loki's `max_entries_limit_per_query` defaults to
    /// 5000).
    #[arg(long, default_value_t = 5000)]
    pub verify_page_size: usize,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Batches acknowledged with 2xx.
    pub batches_acked: u64,
    /// Lines in acknowledged batches.
    pub lines_acked: u64,
    /// Body bytes of acknowledged batches (as sent, compressed).
    pub bytes_acked: u64,
    /// Line bytes of acknowledged batches (uncompressed).
    pub line_bytes_acked: u64,
    /// Retries after 429, 5xx or connection errors.
    pub retries: u64,
    /// Batches dropped after a non-retryable status (like Promtail: other 4xx).
    pub batches_dropped: u64,
    /// Batches given up after `max_retries`.
    pub batches_exhausted: u64,
    /// Attack lines in acknowledged batches.
    pub attack_lines_acked: u64,
    /// Wall time, seconds.
    pub elapsed_seconds: f64,
    /// Acknowledged batches per second.
    pub requests_per_second: f64,
    /// Acknowledged body megabytes (10^6) per second.
    pub megabytes_per_second: f64,
    /// Acknowledged lines per second.
    pub lines_per_second: f64,
    /// Latency percentiles of acknowledged requests (last attempt), milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub latency_p99_ms: f64,
    /// Highest latency, milliseconds.
    pub latency_max_ms: f64,
    /// The checks of `--verify-loki` / `--incident-webhook`, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<verify::Verification>,
}

impl Summary {
    /// Returns true when any line that should have been delivered was not.
    pub fn lost_lines(&self) -> bool {
        self.batches_dropped > 0 || self.batches_exhausted > 0
    }

    /// Returns true when the run lost a line or the verification found a problem.
    pub fn failed(&self) -> bool {
        self.lost_lines()
            || self
                .verify
                .as_ref()
                .is_some_and(verify::Verification::failed)
    }
}

/// The addresses that brute-force SSH in attack traffic (documentation ranges).
pub const ATTACKERS: &[&str] = &[
    "203.0.113.10",
    "203.0.113.11",
    "198.51.100.12",
    "198.51.100.13",
];

/// `--attackers`: at least one, and no more than [`attacker_address`] keeps distinct.
fn parse_attackers(s: &str) -> Result<usize, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..=1 << 32).contains(&n) => Ok(n as usize),
        _ => Err(format!("expected a whole number from 1 to {}", 1u64 << 32)),
    }
}

/// The address of attacker `index` (`--attackers`): [`ATTACKERS`] first, then one IPv6
/// documentation address (`2001:db8::/32`) per index, distinct for every index below 2^32.
pub fn attacker_address(index: usize) -> std::borrow::Cow<'static, str> {
    match ATTACKERS.get(index) {
        Some(ip) => (*ip).into(),
        None => {
            let n = (index - ATTACKERS.len()) as u64;
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (n >> 16) as u16, n as u16)
                .to_string()
                .into()
        }
    }
}

const ORDINARY: &[&str] = &[
    "192.0.2.10 - - [26/Nov/2026:01:00:00 +0000] \"GET /index.html HTTP/1.1\" 200 4909 \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\"",
    "192.0.2.11 - - [26/Nov/2026:01:00:00 +0000] \"GET /static/app.js HTTP/1.1\" 200 73512 \"https://example.com/\" \"Mozilla/5.0\"",
    "Nov 26 01:00:00 vps1 CRON[1201]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)",
    "Nov 26 01:00:00 vps1 sshd[3301]: Accepted publickey for deploy from 192.0.2.20 port 50122 ssh2",
    "Nov 26 01:00:00 vps1 systemd[1]: Started Session 42 of User deploy.",
    "{\"level\":\"info\",\"msg\":\"request served\",\"path\":\"/api/v1/items\",\"status\":200,\"duration_ms\":12}",
];

struct Counters {
    acked: AtomicU64,
    lines: AtomicU64,
    bytes: AtomicU64,
    line_bytes: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
    exhausted: AtomicU64,
    attack: AtomicU64,
    batches_started: AtomicU64,
    seq: AtomicU64,
}

/// Called for each acknowledged batch when its 2xx arrives (see [`run_with`]).
pub type AckHook = Arc<dyn Fn(&Acked<'_>) + Send + Sync>;

/// An acknowledged batch, for verifiers: they can check that every acknowledged line reached
/// Loki, and pool latencies over several runs.
#[derive(Debug)]
pub struct Acked<'a> {
    /// The batch's log lines, as sent.
    pub lines: &'a [bytes::Bytes],
    /// Attack lines among them.
    pub attack_lines: u64,
    /// Latency of the attempt that was acknowledged.
    pub latency: Duration,
}

/// One encoded batch.
struct Batch {
    body: Vec<u8>,
    /// The log lines in the body (cheap clones of the encoded entries' buffers).
    texts: Vec<bytes::Bytes>,
    /// The sequence numbers of the lines, and the attacker (index for [`attacker_address`]) of
    /// each attack line.
    seqs: Vec<u64>,
    attackers: Vec<usize>,
    /// The minute (of event time) the batch's lines are stamped in.
    minute: i64,
    lines: u64,
    line_bytes: u64,
    attack_lines: u64,
}

fn build_batch(args: &LoadgenArgs, seq: &AtomicU64, batch_no: u64) -> Batch {
    let streams_n = args.streams.max(1);
    let mut streams: Vec<StreamAdapter> = (0..streams_n)
        .map(|i| StreamAdapter {
            labels: format!(r#"{{job="loadgen", run="{}", stream="{i}"}}"#, args.run_id),
            entries: Vec::new(),
            hash: 0,
        })
        .collect();
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let (mut line_bytes, mut lines, mut attack_lines) = (0u64, 0u64, 0u64);
    let mut texts = Vec::new();
    let mut seqs = Vec::new();
    let mut attackers = Vec::new();
    // A deterministic share: every k-th line is an attack line.
    let attack_every = if args.attack_share > 0.0 {
        (1.0 / args.attack_share).round().max(1.0) as u64
    } else {
        0
    };
    while (line_bytes as usize) < args.batch_bytes.max(1) {
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let mut line = String::with_capacity(160);
        if attack_every > 0 && n.is_multiple_of(attack_every) {
            let who = (n / attack_every) as usize % args.attackers.max(1);
            attackers.push(who);
            let ip = attacker_address(who);
            // The marker goes before the message: sshd's failure lines end with "ssh2", and the
            // rules that extract the address expect nothing after it.
            let _ = write!(
                line,
                "Nov 26 01:00:00 vps1 sshd[4{n}]: run={} seq={n} Failed password for root from {ip} port {} ssh2",
                args.run_id,
                40000 + n % 20000
            );
            attack_lines += 1;
        } else {
            line.push_str(ORDINARY[n as usize % ORDINARY.len()]);
            let _ = write!(line, " run={} seq={n}", args.run_id);
        }
        seqs.push(n);
        line_bytes += line.len() as u64;
        lines += 1;
        let s = (n as usize + batch_no as usize) % streams_n;
        let line = bytes::Bytes::from(line);
        texts.push(line.clone());
        streams[s].entries.push(EntryAdapter {
            timestamp: Some(timestamp_from_nanos(now_ns + lines as i64)),
            line,
            structured_metadata: vec![],
            parsed: vec![],
        });
    }
    streams.retain(|s| !s.entries.is_empty());
    let req = PushRequest {
        streams,
        format: String::new(),
    };
    let body = match args.format {
        Format::Protobuf => encode_snappy(&req),
        Format::Json => to_json(&req),
    };
    Batch {
        body,
        texts,
        seqs,
        attackers,
        minute: now_ns.div_euclid(60_000_000_000),
        lines,
        line_bytes,
        attack_lines,
    }
}

/// Encodes a push request as Loki's v1 JSON (`{"streams":[{"stream":{..},"values":[..]}]}`).
pub fn to_json(req: &PushRequest) -> Vec<u8> {
    let streams: Vec<serde_json::Value> = req
        .streams
        .iter()
        .map(|s| {
            let labels =
                crate::decode::parse_labels(&s.labels).expect("loadgen writes valid labels");
            let stream: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            let values: Vec<serde_json::Value> = s
                .entries
                .iter()
                .map(|e| {
                    let ts = e.timestamp.unwrap_or_default();
                    let ns = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
                    serde_json::json!([ns.to_string(), String::from_utf8_lossy(&e.line)])
                })
                .collect();
            serde_json::json!({ "stream": stream, "values": values })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "streams": streams })).expect("JSON of strings")
}

/// Sends one batch with Promtail's retry policy; returns the latency of the final attempt when
/// it was acknowledged.
async fn send(
    client: &reqwest::Client,
    args: &LoadgenArgs,
    tenant: Option<&str>,
    batch: &Batch,
    counters: &Counters,
) -> Option<Duration> {
    let content_type = match args.format {
        Format::Protobuf => "application/x-protobuf",
        Format::Json => "application/json",
    };
    let mut backoff = args.min_backoff;
    for attempt in 0..=args.max_retries {
        let mut req = client
            .post(&args.url)
            .header("content-type", content_type)
            .header(
                "user-agent",
                concat!("logwarden-loadgen/", env!("CARGO_PKG_VERSION")),
            )
            .body(batch.body.clone());
        if let Some(t) = tenant {
            req = req.header("x-scope-orgid", t);
        }
        let started = Instant::now();
        let retry = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let _ = resp.bytes().await;
                if status.is_success() {
                    return Some(started.elapsed());
                }
                if crate::forward::client_will_retry(status) {
                    true
                } else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        status = status.as_u16(),
                        "batch dropped (non-retryable status)"
                    );
                    return None;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e.without_url(), "push failed, will retry");
                true
            }
        };
        if retry && attempt < args.max_retries {
            counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(300));
        }
    }
    counters.exhausted.fetch_add(1, Ordering::Relaxed);
    None
}

/// Runs the load and returns its summary.
///
/// # Errors
/// When the HTTP client cannot be built.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<Summary> {
    run_with(args, None).await
}

/// How far behind its schedule a paced sender may be and still make the time up.
const CATCH_UP: Duration = Duration::from_millis(100);

/// Like [`run`], and calls `on_ack` with every batch as it is acknowledged.
///
/// # Errors
/// When the HTTP client cannot be built.
pub async fn run_with(args: LoadgenArgs, on_ack: Option<AckHook>) -> anyhow::Result<Summary> {
    let verifying = args.verify_loki.is_some() || args.incident_webhook.is_some();
    if verifying && args.prebuilt > 0 {
        anyhow::bail!("--prebuilt resends the same lines: it cannot be combined with verification");
    }
    let listener = match &args.incident_webhook {
        Some(addr) => Some(verify::listen(addr).await?),
        None => None,
    };
    let ledger = Arc::new(std::sync::Mutex::new(verify::Ledger::default()));
    let window_start_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let client = crate::http::client_builder()
        .timeout(args.timeout)
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency.max(1))
        .build()?;
    let counters = Arc::new(Counters {
        acked: AtomicU64::new(0),
        lines: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        line_bytes: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        exhausted: AtomicU64::new(0),
        attack: AtomicU64::new(0),
        batches_started: AtomicU64::new(0),
        seq: AtomicU64::new(0),
    });
    let prebuilt: Arc<Vec<Batch>> = Arc::new(
        (0..args.prebuilt as u64)
            .map(|i| build_batch(&args, &counters.seq, i))
            .collect(),
    );
    let args = Arc::new(args);
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency.max(1) {
        let (client, args, counters) = (client.clone(), Arc::clone(&args), Arc::clone(&counters));
        let prebuilt = Arc::clone(&prebuilt);
        let on_ack = on_ack.clone();
        let ledger = verifying.then(|| Arc::clone(&ledger));
        tasks.spawn(async move {
            let mut latencies: Vec<Duration> = Vec::new();
            // When this worker's next batch is due under `--rate`: a schedule of its own,
            // advanced by each batch's share of the rate, so the timer's late wake-ups (it
            // has millisecond resolution) do not add up and lower the rate. The senders'
            // schedules are spread over a batch's interval, so that they do not send in step.
            let mut next_due: Option<Instant> = None;
            loop {
                let batch_no = counters.batches_started.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= deadline || (args.batches > 0 && batch_no >= args.batches) {
                    break;
                }
                let batch_started = Instant::now();
                let fresh;
                let batch = if prebuilt.is_empty() {
                    fresh = build_batch(&args, &counters.seq, batch_no);
                    &fresh
                } else {
                    &prebuilt[batch_no as usize % prebuilt.len()]
                };
                // Round-robin on the shared batch number: adding the worker's index here made
                // workers that alternate batches all send to one tenant.
                let tenant = (!args.tenants.is_empty())
                    .then(|| args.tenants[batch_no as usize % args.tenants.len()].as_str());
                if let Some(latency) = send(&client, &args, tenant, batch, &counters).await {
                    if let Some(ledger) = &ledger {
                        let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
                        let tenant = tenant.unwrap_or_default().to_owned();
                        l.acked
                            .entry(tenant.clone())
                            .or_default()
                            .extend_from_slice(&batch.seqs);
                        for &who in &batch.attackers {
                            *l.attacks
                                .entry((tenant.clone(), attacker_address(who).into_owned()))
                                .or_default()
                                .entry(batch.minute)
                                .or_default() += 1;
                        }
                    }
                    if let Some(hook) = &on_ack {
                        hook(&Acked {
                            lines: &batch.texts,
                            attack_lines: batch.attack_lines,
                            latency,
                        });
                    }
                    latencies.push(latency);
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    counters.lines.fetch_add(batch.lines, Ordering::Relaxed);
                    counters
                        .bytes
                        .fetch_add(batch.body.len() as u64, Ordering::Relaxed);
                    counters
                        .line_bytes
                        .fetch_add(batch.line_bytes, Ordering::Relaxed);
                    counters
                        .attack
                        .fetch_add(batch.attack_lines, Ordering::Relaxed);
                }
                if args.rate > 0 {
                    // Pace: this worker's share of the target line rate. A worker that fell
                    // behind (slow answers, a retry) makes up at most `CATCH_UP` of it, so a
                    // stalled upstream is not followed by a burst.
                    let per_worker = args.rate as f64 / args.concurrency.max(1) as f64;
                    let due = Duration::from_secs_f64(batch.lines as f64 / per_worker);
                    let now = Instant::now();
                    let from = next_due
                        .unwrap_or_else(|| {
                            // The first batch: start this worker's schedule at its share of
                            // the interval.
                            let share = worker as f64 / args.concurrency.max(1) as f64;
                            batch_started + due.mul_f64(share)
                        })
                        .max(now.checked_sub(CATCH_UP).unwrap_or(now));
                    next_due = Some(from + due);
                    tokio::time::sleep_until(from + due).await;
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    if let Some(path) = &args.latencies_out {
        let mut text = String::with_capacity(latencies.len() * 8);
        for l in &latencies {
            let _ = writeln!(text, "{:.1}", l.as_secs_f64() * 1e6);
        }
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing latencies to {}: {e}", path.display()))?;
    }
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    let verify = if verifying {
        tokio::time::sleep(args.verify_wait).await;
        let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|e| e.into_inner()));
        let end_ns = chrono::Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or(i64::MAX)
            .saturating_add(60_000_000_000);
        let window = (window_start_ns.saturating_sub(60_000_000_000), end_ns);
        let incidents = listener.as_ref().map(|(_, incidents, _)| incidents);
        let mut v = match &args.verify_loki {
            Some(base) => {
                let q = verify::Query {
                    base,
                    run_id: &args.run_id,
                    window_ns: window,
                    page_size: args.verify_page_size.max(1),
                };
                verify::verify(&client, &q, &ledger, incidents).await?
            }
            None => {
                let empty = verify::Ledger {
                    acked: Default::default(),
                    attacks: ledger.attacks.clone(),
                };
                let q = verify::Query {
                    base: "",
                    run_id: &args.run_id,
                    window_ns: window,
                    page_size: 1,
                };
                verify::verify(&client, &q, &empty, incidents).await?
            }
        };
        if args.verify_loki.is_none() {
            v.lines_checked = 0;
        }
        if let Some((_, _, task)) = &listener {
            task.abort();
        }
        Some(v)
    } else {
        None
    };
    let c = &counters;
    let acked = c.acked.load(Ordering::Relaxed);
    let bytes = c.bytes.load(Ordering::Relaxed);
    let lines = c.lines.load(Ordering::Relaxed);
    Ok(Summary {
        batches_acked: acked,
        lines_acked: lines,
        bytes_acked: bytes,
        line_bytes_acked: c.line_bytes.load(Ordering::Relaxed),
        retries: c.retries.load(Ordering::Relaxed),
        batches_dropped: c.dropped.load(Ordering::Relaxed),
        batches_exhausted: c.exhausted.load(Ordering::Relaxed),
        attack_lines_acked: c.attack.load(Ordering::Relaxed),
        elapsed_seconds: elapsed,
        requests_per_second: acked as f64 / elapsed,
        megabytes_per_second: bytes as f64 / elapsed / 1e6,
        lines_per_second: lines as f64 / elapsed,
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        latency_max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        verify,
    })
}

/// Formats a summary for people.
pub fn format_summary(s: &Summary) -> String {
    let mut out = format_counts(s);
    if let Some(v) = &s.verify {
        let _ = write!(
            out,
            "\nverify: {} acknowledged lines checked in Loki, {} missing{}, {} duplicated; \
             {} planted attacks, {} detected once, missed {:?}, reported twice {:?}; {} incidents received",
            v.lines_checked,
            v.lines_missing,
            if v.missing_examples.is_empty() {
                String::new()
            } else {
                format!(" (seq {:?}…)", v.missing_examples)
            },
            v.lines_duplicated,
            v.attacks_planted,
            v.attacks_detected_once,
            v.attacks_missed,
            v.attacks_duplicated,
            v.incidents_received
        );
    }
    out
}

fn format_counts(s: &Summary) -> String {
    format!(
        "acked {} batches, {} lines ({} attack), {:.1} MB sent in {:.1}s: {:.1} req/s, {:.2} MB/s, {:.0} lines/s; \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; retries {}, dropped {}, exhausted {}",
        s.batches_acked,
        s.lines_acked,
        s.attack_lines_acked,
        s.bytes_acked as f64 / 1e6,
        s.elapsed_seconds,
        s.requests_per_second,
        s.megabytes_per_second,
        s.lines_per_second,
        s.latency_p50_ms,
        s.latency_p99_ms,
        s.latency_max_ms,
        s.retries,
        s.batches_dropped,
        s.batches_exhausted
    )
}
