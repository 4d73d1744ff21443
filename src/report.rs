//! Report: what analysis concludes about one incident — the one struct every analyzer backend
//! produces, every notifier delivers and the Loki report stream stores.
//!
//! Log text is attacker-controlled: a report's free-text fields may come from an LLM that read
//! it, so notifiers escape every field for their channel, and the severity is never lower than
//! the rule's (`severity >= rule_severity` is an invariant the analyzer enforces).

use serde::{Deserialize, Serialize};

use crate::incident::{Incident, Severity};

/// The analysis of one incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The incident's id (follow-ups share it).
    pub incident_id: String,
    /// The incident's emission number: 0 first, then 1, 2, … for follow-ups.
    pub sequence: u32,
    /// The rule that fired.
    pub rule: String,
    /// The incident's key (e.g. the attacking address).
    pub key: String,
    /// The tenant the lines were pushed for.
    pub tenant: String,
    /// The final severity: the rule's, or higher if the analysis raised it; never lower.
    pub severity: Severity,
    /// The rule's own severity (the floor).
    pub rule_severity: Severity,
    /// Category / attack type, e.g. `ssh brute force`, `web scan`, `resource exhaustion`.
    pub category: String,
    /// One sentence: what happened.
    pub summary: String,
    /// A short plain-English explanation: who, how many, over what time, how bad.
    pub explanation: String,
    /// Services affected, e.g. `sshd`, `nginx`.
    pub affected_services: Vec<String>,
    /// Lines quoted from the incident (never text the analyzer made up).
    pub evidence: Vec<String>,
    /// What to do, most important first.
    pub recommended_actions: Vec<String>,
    /// Which analyzer wrote it: `template`, `ollama` or `openai`.
    pub analyzer: String,
    /// The model, for LLM analyzers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Time the analysis took, in milliseconds.
    pub latency_ms: u64,
    /// Why the report differs from what was asked for (e.g. the LLM timed out and the template
    /// report was used instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An incident with its report: what the notifiers deliver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The facts, as detection found them.
    pub incident: Incident,
    /// The analysis.
    pub report: Report,
}
