//! Incident: what detection emits when a rule's window fires for a key, and the bounded queue
//! that carries incidents from the inspection workers to their consumer.
//!
//! Receives incidents from [`crate::detect::Detector`]; emits them on a bounded
//! `tokio::sync::mpsc` channel whose receiver the consumer owns (a WARN logger today, the
//! analysis stage later). Owns the drop counter `logwarden_incident_queue_dropped_total`.
//! Must never block or await: [`IncidentSink::offer`] is called from synchronous detection code,
//! so a full queue drops the incident, counts it and logs at WARN.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};
use tokio::sync::mpsc;

/// How serious an incident is; ordered from `info` (lowest) to `critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth recording, not worth waking anyone.
    Info,
    /// Likely noise from the internet at large (scanners, probes).
    Low,
    /// A targeted attempt or an operational problem worth a look.
    Medium,
    /// An attack in progress or a failure that hurts service.
    High,
    /// Needs a human now.
    Critical,
}

impl Severity {
    /// Every severity, lowest first (bounded metric label values).
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// Returns the lower-case name used in rule files, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event time in nanoseconds since the Unix epoch, serialized as RFC 3339 (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventTime(pub i64);

impl EventTime {
    /// Returns the time as RFC 3339 with millisecond precision, e.g. `2024-05-01T12:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000) as u32;
        match chrono::DateTime::from_timestamp(secs, nanos) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => self.0.to_string(),
        }
    }
}

impl Serialize for EventTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// One log line that contributed to an incident, with the labels of the stream it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Event time of the line.
    pub timestamp: EventTime,
    /// The line (lossily decoded to UTF-8 and truncated to a bounded length).
    pub line: String,
    /// The labels of the stream the line came from.
    pub labels: BTreeMap<String, String>,
}

/// What a rule emits when its window fires for a key (and again, as a follow-up, when the
/// attack outlasts the cooldown).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Stable identifier: the same input always yields the same id; follow-ups share it.
    pub id: String,
    /// The id of the rule that fired.
    pub rule: String,
    /// The rule's description.
    pub description: String,
    /// The rule's severity.
    pub severity: Severity,
    /// The key the window is kept for (e.g. `203.0.113.7`, or `web1,nginx` for `host,binary`);
    /// empty for rules without a key.
    pub key: String,
    /// The field names the key is made of, comma-separated (e.g. `ip`, `host,binary`).
    pub key_kind: String,
    /// Matching events counted for this incident since it opened (all emissions together).
    pub count: u64,
    /// Matching events since the previous emission of this incident (equals `count` at first).
    pub new_count: u64,
    /// For `distinct` rules: the field whose different values are counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_field: Option<String>,
    /// For `distinct` rules: how many different values were seen (values beyond the bound on
    /// `distinct_values` are counted but not listed).
    pub distinct_count: u64,
    /// Up to 20 of the distinct values, in order of first appearance.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distinct_values: Vec<String>,
    /// The rule's threshold.
    pub threshold: u32,
    /// Start of the window that fired: `window_end` minus the rule's window.
    pub window_start: EventTime,
    /// Event time of the match that made the window fire (or the follow-up's match).
    pub window_end: EventTime,
    /// Event time of the first match counted for this incident.
    pub first_seen: EventTime,
    /// Event time of the newest match counted for this incident.
    pub last_seen: EventTime,
    /// The tenant (`X-Scope-OrgID`) the lines were pushed for.
    pub tenant: String,
    /// Labels of the stream of the newest sample.
    pub labels: BTreeMap<String, String>,
    /// The most recent matching lines for the key (bounded, oldest first).
    pub samples: Vec<Sample>,
    /// A LogQL query that shows the evidence in Grafana.
    pub logql: String,
    /// True for an update on an attack that outlasted the cooldown.
    pub follow_up: bool,
    /// 0 for the first emission, then 1, 2, … for follow-ups.
    pub sequence: u32,
}

/// Receives incidents from detection. Implementations must not block.
pub trait IncidentSink: Send + Sync {
    /// Hands over one incident; never blocks (a full queue drops and counts).
    fn offer(&self, incident: Incident);
}

/// Any `Fn(Incident)` closure is a sink (handy for `scan` and tests).
impl<F: Fn(Incident) + Send + Sync> IncidentSink for F {
    fn offer(&self, incident: Incident) {
        self(incident)
    }
}

/// The bounded queue between detection and the incident consumer.
#[derive(Debug, Clone)]
pub struct IncidentQueue {
    incidents_tx: mpsc::Sender<Incident>,
    dropped: prometheus::IntCounter,
}

impl IncidentQueue {
    /// Default number of incidents the queue holds before it drops.
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// Creates a queue of `capacity` incidents (at least 1) and registers
    /// `logwarden_incident_queue_dropped_total` in `registry`. Returns the sender side (the
    /// sink) and the receiver for the consumer.
    ///
    /// # Errors
    /// The metric is already registered in `registry`.
    pub fn try_new(
        capacity: usize,
        registry: &prometheus::Registry,
    ) -> Result<(Self, mpsc::Receiver<Incident>), prometheus::Error> {
        let dropped = prometheus::IntCounter::new(
            "logwarden_incident_queue_dropped_total",
            "Incidents dropped because the incident queue was full or closed.",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let (incidents_tx, incidents_rx) = mpsc::channel(capacity.max(1));
        Ok((
            IncidentQueue {
                incidents_tx,
                dropped,
            },
            incidents_rx,
        ))
    }
}

impl IncidentSink for IncidentQueue {
    fn offer(&self, incident: Incident) {
        let reason = match self.incidents_tx.try_send(incident) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "full",
            Err(mpsc::error::TrySendError::Closed(_)) => "closed",
        };
        self.dropped.inc();
        tracing::warn!(reason, "incident queue rejected an incident, dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(id: &str) -> Incident {
        Incident {
            id: id.into(),
            rule: "r".into(),
            description: String::new(),
            severity: Severity::High,
            key: "203.0.113.7".into(),
            key_kind: "ip".into(),
            count: 1,
            new_count: 1,
            distinct_field: None,
            distinct_count: 0,
            distinct_values: vec![],
            threshold: 1,
            window_start: EventTime(0),
            window_end: EventTime(0),
            first_seen: EventTime(0),
            last_seen: EventTime(0),
            tenant: "t".into(),
            labels: BTreeMap::new(),
            samples: vec![],
            logql: String::new(),
            follow_up: false,
            sequence: 0,
        }
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let registry = prometheus::Registry::new();
        let (queue, mut rx) = IncidentQueue::try_new(2, &registry).unwrap();
        for i in 0..5 {
            queue.offer(incident(&i.to_string()));
        }
        assert_eq!(rx.try_recv().unwrap().id, "0");
        assert_eq!(rx.try_recv().unwrap().id, "1");
        assert!(rx.try_recv().is_err());
        let text = render(&registry);
        assert!(
            text.contains("logwarden_incident_queue_dropped_total 3"),
            "{text}"
        );
    }

    #[test]
    fn closed_queue_counts_drops() {
        let registry = prometheus::Registry::new();
        let (queue, rx) = IncidentQueue::try_new(2, &registry).unwrap();
        drop(rx);
        queue.offer(incident("x"));
        assert!(render(&registry).contains("logwarden_incident_queue_dropped_total 1"));
    }

    #[test]
    fn severity_orders_and_serializes_lowercase() {
        assert!(Severity::Critical > Severity::High && Severity::Low > Severity::Info);
        assert_eq!(
            serde_json::to_string(&Severity::Medium).unwrap(),
            "\"medium\""
        );
        let json = serde_json::to_value(incident("a")).unwrap();
        assert_eq!(json["first_seen"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["severity"], "high");
    }

    fn render(registry: &prometheus::Registry) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut buf)
            .unwrap();
        buf
    }
}
