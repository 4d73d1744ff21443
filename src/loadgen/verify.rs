//! Verification after a load run: every acknowledged line is in Loki (read back through Loki's
//! query API), and every planted attack produced exactly one incident (read from logwarden's
//! webhook notifier, which loadgen receives on a listener of its own).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Attack lines an (tenant, address) needs within one calendar minute of event time in
/// acknowledged batches to count as planted: the SSH brute-force rule's threshold (6 in a
/// sliding minute, which any calendar minute lies in), so a detector must fire.
pub const PLANTED_MIN_LINES: u64 = 6;

/// What loadgen remembers of acknowledged batches for the checks.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Sequence numbers of acknowledged lines, per tenant ("" without tenants).
    pub acked: HashMap<String, Vec<u64>>,
    /// Acknowledged attack lines per (tenant, attacker address) and minute of event time.
    pub attacks: BTreeMap<(String, String), BTreeMap<i64, u64>>,
}

/// The outcome of the checks, part of the run's summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verification {
    /// Acknowledged lines looked up in Loki.
    pub lines_checked: u64,
    /// Acknowledged lines Loki does not have.
    pub lines_missing: u64,
    /// A few of the missing lines' sequence numbers.
    pub missing_examples: Vec<u64>,
    /// Lines Loki returned more than once (client retries Loki did not deduplicate).
    pub lines_duplicated: u64,
    /// Planted attacks: (tenant, address) pairs with at least [`PLANTED_MIN_LINES`] lines in
    /// one minute.
    pub attacks_planted: u64,
    /// Planted attacks with exactly one (first) incident.
    pub attacks_detected_once: u64,
    /// Planted attacks without an incident, as `tenant/address`.
    pub attacks_missed: Vec<String>,
    /// Planted attacks reported more than once as a new incident, as `tenant/address`.
    pub attacks_duplicated: Vec<String>,
    /// Incidents received in all (follow-ups included).
    pub incidents_received: u64,
}

impl Verification {
    /// True when a line was lost or an attack was missed or reported twice.
    pub fn failed(&self) -> bool {
        self.lines_missing > 0
            || !self.attacks_missed.is_empty()
            || !self.attacks_duplicated.is_empty()
    }
}

/// (tenant, rule, key) → first incidents received, and the number of incidents in all.
type Received = (BTreeMap<(String, String, String), u64>, u64);

/// The incidents received by the webhook listener.
#[derive(Debug, Default, Clone)]
pub struct Incidents(Arc<Mutex<Received>>);

impl Incidents {
    fn record(&self, alert: &serde_json::Value) {
        let inc = &alert["incident"];
        let text = |k: &str| inc[k].as_str().unwrap_or_default().to_owned();
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.1 += 1;
        if inc["follow_up"].as_bool() == Some(true) {
            return;
        }
        *guard
            .0
            .entry((text("tenant"), text("rule"), text("key")))
            .or_default() += 1;
    }
}

/// Listens on `addr` for logwarden's webhook alerts (any path, JSON bodies) until the returned
/// task is aborted.
///
/// # Errors
/// When the address cannot be bound.
pub async fn listen(
    addr: &str,
) -> anyhow::Result<(SocketAddr, Incidents, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for incidents on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let incidents = Incidents::default();
    let sink = incidents.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let sink = sink.clone();
        async move {
            if let Ok(alert) = serde_json::from_slice::<serde_json::Value>(&body) {
                sink.record(&alert);
            }
            axum::http::StatusCode::OK
        }
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((local, incidents, task))
}

/// Where and how to read a run back from Loki.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Loki's base URL, e.g. `http://127.0.0.1:3100`.
    pub base: &'a str,
    /// The run's id (its `run` label).
    pub run_id: &'a str,
    /// Time range to search, ns since the epoch: [start, end).
    pub window_ns: (i64, i64),
    /// Entries per `query_range` page.
    pub page_size: usize,
}

/// Reads back, through Loki's query API, the lines of the run for each tenant, and checks them
/// and the incidents against the ledger.
///
/// # Errors
/// When Loki cannot be queried or answers something that is not a stream result.
pub async fn verify(
    client: &reqwest::Client,
    q: &Query<'_>,
    ledger: &Ledger,
    incidents: Option<&Incidents>,
) -> anyhow::Result<Verification> {
    let mut v = Verification::default();
    for (tenant, acked) in &ledger.acked {
        let found = query_seqs(client, q, tenant).await?;
        let wanted: BTreeSet<u64> = acked.iter().copied().collect();
        v.lines_checked += wanted.len() as u64;
        for seq in &wanted {
            match found.get(seq) {
                None => {
                    v.lines_missing += 1;
                    if v.missing_examples.len() < 10 {
                        v.missing_examples.push(*seq);
                    }
                }
                Some(&n) if n > 1 => v.lines_duplicated += n - 1,
                Some(_) => {}
            }
        }
    }
    if let Some(incidents) = incidents {
        let guard = incidents.0.lock().unwrap_or_else(|e| e.into_inner());
        v.incidents_received = guard.1;
        for ((tenant, ip), minutes) in &ledger.attacks {
            if minutes.values().all(|&n| n < PLANTED_MIN_LINES) {
                continue;
            }
            v.attacks_planted += 1;
            // Without tenants, logwarden files pushes under its default tenant: match any.
            let n: u64 = guard
                .0
                .iter()
                .filter(|((t, rule, key), _)| {
                    (tenant.is_empty() || t == tenant) && rule == "ssh-brute-force" && key == ip
                })
                .map(|(_, n)| n)
                .sum();
            let name = format!("{tenant}/{ip}");
            match n {
                0 => v.attacks_missed.push(name),
                1 => v.attacks_detected_once += 1,
                _ => v.attacks_duplicated.push(name),
            }
        }
    }
    Ok(v)
}

/// Pages forward through `query_range` and counts each `seq=` of the run.
async fn query_seqs(
    client: &reqwest::Client,
    q: &Query<'_>,
    tenant: &str,
) -> anyhow::Result<HashMap<u64, u64>> {
    let (base, run_id, (start_ns, end_ns), limit) = (q.base, q.run_id, q.window_ns, q.page_size);
    let url = reqwest::Url::parse(&format!(
        "{}/loki/api/v1/query_range",
        base.trim_end_matches('/')
    ))
    .map_err(|e| anyhow::anyhow!("--verify-loki {base:?} is not a URL: {e}"))?;
    let query = format!(r#"{{job="loadgen", run="{run_id}"}}"#);
    let mut counts: HashMap<u64, u64> = HashMap::new();
    // Entries already counted at the page boundary's timestamp (the next page starts there).
    let mut at_boundary: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut start = start_ns;
    loop {
        let mut page = url.clone();
        page.query_pairs_mut()
            .append_pair("query", &query)
            .append_pair("start", &start.to_string())
            .append_pair("end", &end_ns.to_string())
            .append_pair("limit", &limit.to_string())
            .append_pair("direction", "forward");
        let mut req = client.get(page);
        if !tenant.is_empty() {
            req = req.header("x-scope-orgid", tenant);
        }
        let resp = req.timeout(Duration::from_secs(30)).send().await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            anyhow::bail!("Loki answered {status} to query_range: {body}");
        }
        let Some(result) = body["data"]["result"].as_array() else {
            anyhow::bail!("Loki's query_range answer has no data.result: {body}");
        };
        let mut entries: Vec<(i64, String)> = Vec::new();
        for stream in result {
            for value in stream["values"].as_array().into_iter().flatten() {
                let ts = value[0].as_str().and_then(|t| t.parse::<i64>().ok());
                let line = value[1].as_str();
                if let (Some(ts), Some(line)) = (ts, line) {
                    entries.push((ts, line.to_owned()));
                }
            }
        }
        let page_full = entries.len() >= limit;
        entries.sort();
        let newest = entries.last().map(|e| e.0);
        let mut new = 0usize;
        for e in entries {
            if e.0 == start && at_boundary.contains(&e) {
                continue;
            }
            new += 1;
            if let Some(seq) = seq_of(&e.1) {
                *counts.entry(seq).or_default() += 1;
            }
            if Some(e.0) == newest {
                at_boundary.insert(e);
            }
        }
        match newest {
            // A full page: go on from its newest timestamp (inclusive, skipping what was seen).
            Some(ts) if page_full && new > 0 => {
                if ts != start {
                    at_boundary.retain(|(t, _)| *t == ts);
                }
                start = ts;
            }
            _ => break,
        }
    }
    Ok(counts)
}

/// The `seq=<n>` marker loadgen writes into every line.
fn seq_of(line: &str) -> Option<u64> {
    let at = line.find(" seq=")? + 5;
    let digits: &str = &line[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_read_from_ordinary_and_attack_lines() {
        assert_eq!(seq_of("GET / HTTP/1.1 run=lg seq=42"), Some(42));
        assert_eq!(
            seq_of("sshd[4]: run=lg seq=7 Failed password for root from 203.0.113.10 port 1 ssh2"),
            Some(7)
        );
        assert_eq!(seq_of("no marker"), None);
    }

    #[test]
    fn a_missed_or_doubled_attack_or_a_lost_line_fails() {
        assert!(!Verification::default().failed());
        let lost = Verification {
            lines_missing: 1,
            ..Verification::default()
        };
        assert!(lost.failed());
        let missed = Verification {
            attacks_missed: vec!["a/203.0.113.10".into()],
            ..Verification::default()
        };
        assert!(missed.failed());
        let twice = Verification {
            attacks_duplicated: vec!["a/203.0.113.10".into()],
            ..Verification::default()
        };
        assert!(twice.failed());
    }
}
