//! Alertmanager: `POST {url}/api/v2/alerts` with a one-element array of `postableAlert`.
//!
//! Alertmanager identifies an alert by its label set, so labels hold only what identifies the
//! incident and stays the same across its follow-ups: `alertname` (the rule), `severity` (the
//! rule's, not the analysis', which could differ between follow-ups), `key`, `instance` (the
//! `host`, `instance` or `hostname` label of the incident's stream) and `tenant`. Counts, times,
//! text and the analysed severity go into annotations, which Alertmanager updates in place.
//!
//! `startsAt` is the incident's first event (never in the future); `endsAt` is now plus the
//! larger of `ends_after` (default 15m) and the rule's window. A follow-up re-sends the same
//! labels, which moves `endsAt` forward; when the attack stops, no follow-up comes and the alert
//! resolves by itself at `endsAt`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::text::sanitize_line;
use super::{BoxFuture, Notifier, NotifyError, Retrier};
use crate::report::Alert;

/// Longest annotation value we send; evidence beyond it is cut.
const MAX_ANNOTATION: usize = 4000;

/// One `postableAlert`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostableAlert {
    /// Identity.
    pub labels: BTreeMap<String, String>,
    /// Everything else.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    /// RFC 3339.
    #[serde(rename = "endsAt")]
    pub ends_at: String,
}

/// Builds the alert Alertmanager receives for `alert`, as of `now`.
pub fn postable(
    alert: &Alert,
    ends_after: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> PostableAlert {
    let i = &alert.incident;
    let r = &alert.report;
    let mut labels = BTreeMap::new();
    let mut label = |name: &str, value: &str| {
        let value = sanitize_line(value);
        // Alertmanager drops empty values; leaving them out keeps the set the same.
        if !value.is_empty() {
            labels.insert(name.to_owned(), value);
        }
    };
    label("alertname", &i.rule);
    label("severity", i.severity.as_str());
    label("key", &i.key);
    label("tenant", &i.tenant);
    let instance = ["host", "instance", "hostname"]
        .iter()
        .find_map(|l| i.labels.get(*l))
        .map(String::as_str)
        .unwrap_or("");
    label("instance", instance);

    let mut annotations = BTreeMap::new();
    let mut note = |name: &str, value: String| {
        let value: String = value
            .lines()
            .map(sanitize_line)
            .collect::<Vec<_>>()
            .join("\n");
        if !value.is_empty() {
            annotations.insert(name.to_owned(), cut(value));
        }
    };
    note("summary", r.summary.clone());
    note("description", r.explanation.clone());
    note("category", r.category.clone());
    note("assessed_severity", r.severity.as_str().to_owned());
    note("rule_description", i.description.clone());
    note("count", i.count.to_string());
    note("new_count", i.new_count.to_string());
    note("threshold", i.threshold.to_string());
    note("first_seen", i.first_seen.to_rfc3339());
    note("last_seen", i.last_seen.to_rfc3339());
    note("services", r.affected_services.join(", "));
    note("recommended_actions", r.recommended_actions.join("\n"));
    note("evidence", r.evidence.join("\n"));
    note("logql", i.logql.clone());
    note("incident_id", i.id.clone());
    note("sequence", i.sequence.to_string());
    let analyzer = match &r.model {
        Some(model) => format!("{} ({model})", r.analyzer),
        None => r.analyzer.clone(),
    };
    note("analyzer", analyzer);
    if let Some(n) = &r.note {
        note("note", n.clone());
    }

    let first_seen = nanos_to_utc(i.first_seen.0).unwrap_or(now);
    let window =
        Duration::from_nanos(i.window_end.0.saturating_sub(i.window_start.0).max(0) as u64);
    let ends_after =
        chrono::Duration::from_std(ends_after.max(window)).unwrap_or(chrono::Duration::minutes(15));
    PostableAlert {
        labels,
        annotations,
        starts_at: rfc3339(first_seen.min(now)),
        ends_at: rfc3339(now + ends_after),
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_ANNOTATION {
        let mut end = MAX_ANNOTATION;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn nanos_to_utc(ns: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Posts alerts to one Alertmanager.
pub struct AlertmanagerNotifier {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    ends_after: Duration,
    timeout: Duration,
}

impl AlertmanagerNotifier {
    pub(crate) fn new(
        base: &reqwest::Url,
        ends_after: Duration,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Self {
        let mut endpoint = base.clone();
        let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        AlertmanagerNotifier {
            http,
            endpoint,
            ends_after,
            timeout,
        }
    }

    async fn post(&self, body: &[PostableAlert]) -> Result<(), NotifyError> {
        let resp = self
            .http
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(NotifyError::from_reqwest)?;
        super::check_status(resp).await.map(drop)
    }
}

impl Notifier for AlertmanagerNotifier {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        retrier: &'a Retrier,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            retrier
                .run(|| {
                    // Rebuilt per attempt: endsAt counts from when Alertmanager gets it.
                    let body = [postable(alert, self.ends_after, chrono::Utc::now())];
                    async move { self.post(&body).await }
                })
                .await
        })
    }
}
