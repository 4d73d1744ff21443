//! Report sinks: the Loki report stream and the JSON-lines file.
//!
//! Each report becomes one line of JSON ([`ReportLine`]: the report's fields plus the incident's
//! counts, times, labels and query; no raw samples, the report quotes its evidence) in the stream
//! `{job="logwarden", rule="…", severity="…"}` (severity = the report's final one), pushed as
//! snappy-compressed protobuf to `{loki}/loki/api/v1/push` with `X-Scope-OrgID` = the configured
//! `reports.tenant` or else the incident's tenant. The push goes straight to Loki, not through
//! logwarden's own push route, so reports are never inspected by detection. The entry's
//! timestamp is the time the report is written.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::{BoxFuture, Notifier, NotifyError, Retrier};
use crate::config::ConfigError;
use crate::decode::labels::push_quoted;
use crate::decode::wire::{
    encode_snappy, timestamp_from_nanos, EntryAdapter, PushRequest, StreamAdapter,
};
use crate::incident::EventTime;
use crate::report::{Alert, Report};

/// The `job` label of the report stream.
pub const JOB: &str = "logwarden";

/// One line of the report stream: the report, flattened, with the incident's facts.
#[derive(Debug, Serialize)]
pub struct ReportLine<'a> {
    /// The report's fields at the top level (`incident_id`, `severity`, `summary`, …).
    #[serde(flatten)]
    pub report: &'a Report,
    /// Matching events counted for the incident so far.
    pub count: u64,
    /// Matching events since the previous emission.
    pub new_count: u64,
    /// The rule's threshold.
    pub threshold: u32,
    /// First matching event.
    pub first_seen: EventTime,
    /// Newest matching event.
    pub last_seen: EventTime,
    /// Start of the window that fired.
    pub window_start: EventTime,
    /// End of the window that fired.
    pub window_end: EventTime,
    /// True for a follow-up.
    pub follow_up: bool,
    /// The labels of the newest sample's stream.
    pub labels: &'a std::collections::BTreeMap<String, String>,
    /// A LogQL query for the evidence.
    pub logql: &'a str,
}

impl<'a> ReportLine<'a> {
    /// Takes the line's fields from an alert.
    pub fn new(alert: &'a Alert) -> Self {
        let i = &alert.incident;
        ReportLine {
            report: &alert.report,
            count: i.count,
            new_count: i.new_count,
            threshold: i.threshold,
            first_seen: i.first_seen,
            last_seen: i.last_seen,
            window_start: i.window_start,
            window_end: i.window_end,
            follow_up: i.follow_up,
            labels: &i.labels,
            logql: &i.logql,
        }
    }

    /// Returns the line as JSON (one line: JSON escapes every newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report line always serializes")
    }
}

/// Returns the report stream's label string, e.g. `{job="logwarden", rule="ssh", severity="high"}`.
pub fn stream_labels(report: &Report) -> String {
    let mut s = String::from("{job=");
    push_quoted(&mut s, JOB);
    s.push_str(", rule=");
    push_quoted(&mut s, &report.rule);
    s.push_str(", severity=");
    push_quoted(&mut s, report.severity.as_str());
    s.push('}');
    s
}

/// Builds the snappy protobuf push of one report line at `now_ns`.
pub fn push_body(alert: &Alert, now_ns: i64) -> Vec<u8> {
    let line = ReportLine::new(alert).to_json();
    encode_snappy(&PushRequest {
        streams: vec![StreamAdapter {
            labels: stream_labels(&alert.report),
            entries: vec![EntryAdapter {
                timestamp: Some(timestamp_from_nanos(now_ns)),
                line: Bytes::from(line),
                structured_metadata: Vec::new(),
                parsed: Vec::new(),
            }],
            hash: 0,
        }],
        format: String::new(),
    })
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Pushes reports to Loki.
pub struct LokiSink {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    tenant: Option<String>,
    timeout: Duration,
}

impl LokiSink {
    pub(crate) fn try_new(
        loki_url: &reqwest::Url,
        tenant: Option<String>,
        http: reqwest::Client,
    ) -> Result<Self, ConfigError> {
        let mut endpoint = loki_url.clone();
        let path = format!("{}/loki/api/v1/push", loki_url.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "upstream.url",
                format!("\"{loki_url}\" must be http(s) to push reports"),
            ));
        }
        Ok(LokiSink {
            http,
            endpoint,
            tenant,
            timeout: Duration::from_secs(10),
        })
    }

    async fn push(&self, tenant: &str, body: Vec<u8>) -> Result<(), NotifyError> {
        let resp = self
            .http
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header("X-Scope-OrgID", tenant)
            .body(body)
            .send()
            .await
            .map_err(NotifyError::from_reqwest)?;
        super::check_status(resp).await.map(drop)
    }
}

impl Notifier for LokiSink {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        retrier: &'a Retrier,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            let tenant = self.tenant.as_deref().unwrap_or(&alert.incident.tenant);
            // One timestamp for every attempt: a retried push is then an exact duplicate,
            // which Loki drops, instead of a second line.
            let body = push_body(alert, now_ns());
            retrier.run(|| self.push(tenant, body.clone())).await
        })
    }
}

/// Appends reports as JSON lines to a file (opened per write, so log rotation just works).
pub struct FileSink {
    path: PathBuf,
}

impl FileSink {
    pub(crate) fn new(path: PathBuf) -> Self {
        FileSink { path }
    }
}

impl Notifier for FileSink {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        _retrier: &'a Retrier,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            let mut line = ReportLine::new(alert).to_json();
            line.push('\n');
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await?;
            // One write of the whole line: O_APPEND keeps concurrent appenders from interleaving.
            file.write_all(line.as_bytes()).await?;
            file.flush().await?;
            Ok(())
        })
    }
}
