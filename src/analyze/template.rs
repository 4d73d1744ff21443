//! The template analyzer: a deterministic plain-English report built from the incident alone.
//!
//! It is the default backend, the fallback whenever an LLM is down, slow or wrong, and the base
//! an LLM report is merged onto. Same incident in, same report out (only `latency_ms` is set by
//! the caller); no IO.

use std::time::Duration;

use crate::analyze::prompt::{sanitize_line, truncate_line};
use crate::analyze::verdict::MAX_EVIDENCE;
use crate::incident::Incident;
use crate::report::Report;

/// Label names that name a service, most specific first.
const SERVICE_LABELS: &[&str] = &[
    "service_name",
    "service",
    "app",
    "application",
    "container",
    "unit",
    "program",
];

/// Longest piece of incident text (key, label value) quoted in the template's sentences.
const MAX_QUOTED_CHARS: usize = 120;

/// The kinds of incident the template knows advice for, recognised from the rule's id and
/// description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    BruteForce,
    WebScan,
    Injection,
    PathTraversal,
    Memory,
    Disk,
    Crash,
    Other,
}

impl Category {
    fn of(incident: &Incident) -> Category {
        let text = format!("{} {}", incident.rule, incident.description).to_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
        if has(&[
            "brute",
            "password",
            "auth fail",
            "login fail",
            "failed login",
            "invalid user",
        ]) {
            Category::BruteForce
        } else if has(&[
            "sqli",
            "sql",
            "injection",
            "xss",
            "remote code",
            "command exec",
        ]) {
            Category::Injection
        } else if has(&["traversal", "../", "lfi"]) {
            Category::PathTraversal
        } else if has(&["scan", "probe", "crawler", "404"]) {
            Category::WebScan
        } else if has(&["oom", "out of memory", "memory"]) {
            Category::Memory
        } else if has(&["disk", "no space", "enospc", "filesystem full"]) {
            Category::Disk
        } else if has(&["segfault", "crash", "panic", "core dump", "killed"]) {
            Category::Crash
        } else {
            Category::Other
        }
    }

    fn name(self, services: &[String]) -> String {
        let ssh = services.iter().any(|s| s.contains("ssh"));
        match self {
            Category::BruteForce if ssh => "ssh brute force".into(),
            Category::BruteForce => "brute force".into(),
            Category::WebScan => "web scan".into(),
            Category::Injection => "injection attempt".into(),
            Category::PathTraversal => "path traversal attempt".into(),
            Category::Memory => "resource exhaustion".into(),
            Category::Disk => "disk full".into(),
            Category::Crash => "crash".into(),
            Category::Other => "rule match".into(),
        }
    }

    /// Default advice, after the rule's own remediation. `who` is the quoted key or "the source".
    fn actions(self, who: &str) -> Vec<String> {
        let v: &[&str] = match self {
            Category::BruteForce => &[
                "Block or rate-limit {who} at the firewall (for example with fail2ban).",
                "Check whether any login from {who} succeeded after the failures.",
                "Allow key-based authentication only and disable password logins where possible.",
            ],
            Category::WebScan => &[
                "Block {who} at the edge if the probing continues.",
                "Check that none of the probed paths exist or returned data (status 200).",
            ],
            Category::Injection | Category::PathTraversal => &[
                "Check whether any request from {who} succeeded (status 200) and what it returned.",
                "Block {who} at the edge or in the web application firewall.",
                "Review the targeted endpoints for input validation.",
            ],
            Category::Memory => &[
                "Check the memory use and limits of the affected service and host.",
                "Look for a leak or a runaway process, and restart the service if it is degraded.",
            ],
            Category::Disk => &[
                "Free space or grow the volume before writes start failing.",
                "Check log rotation and the largest recent files.",
            ],
            Category::Crash => &[
                "Check whether the affected service restarted and is healthy.",
                "Collect the core dump or stack trace for the developers.",
            ],
            Category::Other => &["Review the evidence lines and decide whether this is expected."],
        };
        v.iter().map(|a| a.replace("{who}", who)).collect()
    }
}

/// Builds the deterministic plain-English report of `incident`: what happened, who, how many,
/// over what time, the affected service, and recommended actions (the rule's own remediation
/// first, then defaults for the kind of incident). `latency_ms` is 0; the analyzer sets it.
pub fn template_report(incident: &Incident) -> Report {
    let i = incident;
    let services = affected_services(i);
    let category = Category::of(i);
    let who = if i.key.is_empty() {
        "the source".to_owned()
    } else {
        quoted(&i.key)
    };
    let key_part = if i.key.is_empty() {
        String::new()
    } else {
        format!(" from {} {}", quoted(&i.key_kind), who)
    };
    let on = match services.as_slice() {
        [] => String::new(),
        [one] => format!(" on {one}"),
        many => format!(" on {}", many.join(", ")),
    };
    let span = span(i);
    let summary = format!(
        "Rule {} ({}) fired: {} matching events{key_part}{on} in {span}.",
        quoted(&i.rule),
        i.severity,
        i.count,
    );

    let mut explanation = String::new();
    if !i.description.is_empty() {
        explanation.push_str(&sentence(&quoted_len(&i.description, 300)));
        explanation.push(' ');
    }
    explanation.push_str(&format!(
        "logwarden counted {} matching events{key_part} between {} and {} ({span}), over the \
         rule's threshold of {}.",
        i.count, i.first_seen, i.last_seen, i.threshold
    ));
    if let Some(df) = &i.distinct_field {
        let shown: Vec<String> = i
            .distinct_values
            .iter()
            .take(5)
            .map(|v| quoted(v))
            .collect();
        let more = if i.distinct_count as usize > shown.len() {
            ", …"
        } else {
            ""
        };
        explanation.push_str(&format!(
            " {} different values of {} were seen ({}{more}).",
            i.distinct_count,
            quoted(df),
            shown.join(", ")
        ));
    }
    if i.follow_up {
        explanation.push_str(&format!(
            " This is update {} of an ongoing incident: {} new events since the previous alert.",
            i.sequence, i.new_count
        ));
    }
    if let Some(host) = ["host", "hostname", "instance", "node"]
        .iter()
        .find_map(|k| i.labels.get(*k))
    {
        explanation.push_str(&format!(" Host: {}.", quoted(host)));
    }
    explanation.push_str(&format!(" Tenant: {}.", quoted(&i.tenant)));

    let mut actions: Vec<String> = Vec::new();
    if let Some(r) = i.remediation.as_deref() {
        let r = sanitize_line(r).trim().to_owned();
        if !r.is_empty() {
            actions.push(r);
        }
    }
    actions.extend(category.actions(&who));
    if !i.logql.is_empty() {
        actions.push(format!(
            "See all matching lines in Grafana with the LogQL query {}",
            quoted_len(&i.logql, 400)
        ));
    }

    Report {
        incident_id: i.id.clone(),
        sequence: i.sequence,
        rule: i.rule.clone(),
        key: i.key.clone(),
        tenant: i.tenant.clone(),
        severity: i.severity,
        rule_severity: i.severity,
        category: category.name(&services),
        summary,
        explanation,
        affected_services: services,
        evidence: evidence(i),
        recommended_actions: actions,
        analyzer: "template".to_owned(),
        model: None,
        latency_ms: 0,
        note: None,
    }
}

/// Returns the time between the first and the newest match, e.g. `2m 30s` (whole seconds;
/// `under a second` below one).
pub fn span(i: &Incident) -> String {
    let nanos = i.last_seen.0.saturating_sub(i.first_seen.0).max(0) as u64;
    let secs = nanos / 1_000_000_000;
    if secs == 0 {
        "under a second".to_owned()
    } else {
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    }
}

/// Service names from the incident's and its samples' labels, most specific label first, at
/// most 5; `job` only when nothing more specific is there.
fn affected_services(i: &Incident) -> Vec<String> {
    let label_sets = std::iter::once(&i.labels).chain(i.samples.iter().map(|s| &s.labels));
    let mut out: Vec<String> = Vec::new();
    for name in SERVICE_LABELS {
        for labels in label_sets.clone() {
            if let Some(v) = labels.get(*name) {
                let v = quoted(v);
                if !v.is_empty() && !out.contains(&v) && out.len() < 5 {
                    out.push(v);
                }
            }
        }
    }
    if out.is_empty() {
        if let Some(job) = i.labels.get("job") {
            out.push(quoted(job));
        }
    }
    out
}

/// The newest distinct sample lines (control characters removed, cut), oldest first.
fn evidence(i: &Incident) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in i.samples.iter().rev() {
        let line = truncate_line(&sanitize_line(&s.line));
        if !line.trim().is_empty() && !out.contains(&line) {
            out.push(line);
            if out.len() == MAX_EVIDENCE {
                break;
            }
        }
    }
    out.reverse();
    out
}

fn quoted(s: &str) -> String {
    quoted_len(s, MAX_QUOTED_CHARS)
}

/// Incident text inside a sentence: one line, no control characters, bounded.
fn quoted_len(s: &str, max: usize) -> String {
    let clean = sanitize_line(s);
    let clean = clean.trim();
    match clean.char_indices().nth(max) {
        None => clean.to_owned(),
        Some((idx, _)) => format!("{}…", &clean[..idx]),
    }
}

fn sentence(s: &str) -> String {
    let s = s.trim();
    if s.ends_with(['.', '!', '?']) {
        s.to_owned()
    } else {
        format!("{s}.")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::incident::{EventTime, Sample, Severity};

    const T0: i64 = 1_714_564_800_000_000_000; // 2024-05-01T12:00:00Z

    pub(crate) fn sample(line: &str) -> Sample {
        Sample {
            timestamp: EventTime(T0),
            line: line.to_owned(),
            labels: BTreeMap::from([("service_name".to_owned(), "sshd".to_owned())]),
        }
    }

    /// An SSH brute-force incident: rule severity high, 42 events over 2m30s, 5 sample lines
    /// (one repeated three times).
    pub(crate) fn incident() -> Incident {
        let failed = "Failed password for root from 203.0.113.7 port 4242 ssh2";
        Incident {
            id: "inc-1".into(),
            rule: "ssh_brute_force".into(),
            description: "Many failed SSH logins from one address".into(),
            remediation: Some("Block the address in the perimeter firewall.".into()),
            severity: Severity::High,
            key: "203.0.113.7".into(),
            key_kind: "ip".into(),
            count: 42,
            new_count: 42,
            distinct_field: None,
            distinct_count: 0,
            distinct_values: vec![],
            threshold: 10,
            window_start: EventTime(T0),
            window_end: EventTime(T0 + 150_000_000_000),
            first_seen: EventTime(T0),
            last_seen: EventTime(T0 + 150_000_000_000),
            tenant: "acme".into(),
            labels: BTreeMap::from([
                ("host".to_owned(), "web1".to_owned()),
                ("job".to_owned(), "varlogs".to_owned()),
                ("service_name".to_owned(), "sshd".to_owned()),
            ]),
            samples: vec![
                sample("Invalid user admin from 203.0.113.7 port 4240"),
                sample(failed),
                sample(failed),
                sample(failed),
                sample("Connection closed by 203.0.113.7 port 4243 [preauth]"),
            ],
            logql: "{service_name=\"sshd\"} |= \"203.0.113.7\"".into(),
            follow_up: false,
            sequence: 0,
        }
    }

    #[test]
    fn template_report_reads_as_plain_english() {
        let r = template_report(&incident());
        assert_eq!(
            r.summary,
            "Rule ssh_brute_force (high) fired: 42 matching events from ip 203.0.113.7 on sshd \
             in 2m 30s."
        );
        assert_eq!(
            r.explanation,
            "Many failed SSH logins from one address. logwarden counted 42 matching events from \
             ip 203.0.113.7 between 2024-05-01T12:00:00.000Z and 2024-05-01T12:02:30.000Z \
             (2m 30s), over the rule's threshold of 10. Host: web1. Tenant: acme."
        );
        assert_eq!(r.category, "ssh brute force");
        assert_eq!(r.affected_services, ["sshd"]);
        assert_eq!(
            r.recommended_actions,
            [
                "Block the address in the perimeter firewall.",
                "Block or rate-limit 203.0.113.7 at the firewall (for example with fail2ban).",
                "Check whether any login from 203.0.113.7 succeeded after the failures.",
                "Allow key-based authentication only and disable password logins where possible.",
                "See all matching lines in Grafana with the LogQL query \
                 {service_name=\"sshd\"} |= \"203.0.113.7\"",
            ]
        );
        assert_eq!(
            r.evidence,
            [
                "Invalid user admin from 203.0.113.7 port 4240",
                "Failed password for root from 203.0.113.7 port 4242 ssh2",
                "Connection closed by 203.0.113.7 port 4243 [preauth]",
            ]
        );
        assert_eq!(
            (r.severity, r.rule_severity),
            (Severity::High, Severity::High)
        );
        assert_eq!(
            (r.analyzer.as_str(), r.model.as_deref()),
            ("template", None)
        );
        assert_eq!(
            (r.incident_id.as_str(), r.tenant.as_str()),
            ("inc-1", "acme")
        );
        assert_eq!(r, template_report(&incident()), "deterministic");
    }

    #[test]
    fn follow_ups_distinct_values_and_keyless_rules_are_described() {
        let mut i = incident();
        i.rule = "web_scanner".into();
        i.description = "Requests for well-known admin paths".into();
        i.remediation = None;
        i.key.clear();
        i.follow_up = true;
        i.sequence = 2;
        i.new_count = 12;
        i.distinct_field = Some("path".into());
        i.distinct_count = 9;
        i.distinct_values = vec!["/wp-admin".into(), "/.env".into()];
        i.labels = BTreeMap::from([("job".to_owned(), "nginx".to_owned())]);
        i.samples.iter_mut().for_each(|s| s.labels.clear());
        i.last_seen = i.first_seen;
        let r = template_report(&i);
        assert_eq!(
            r.summary,
            "Rule web_scanner (high) fired: 42 matching events on nginx in under a second."
        );
        assert!(
            r.explanation.contains(
                " 9 different values of path were seen (/wp-admin, /.env, …). This is update 2 \
                 of an ongoing incident: 12 new events since the previous alert."
            ),
            "{}",
            r.explanation
        );
        assert_eq!(r.category, "web scan");
        assert_eq!(
            r.recommended_actions[0],
            "Block the source at the edge if the probing continues."
        );
    }

    #[test]
    fn hostile_incident_text_stays_on_one_line_and_bounded() {
        let mut i = incident();
        i.key = format!("evil\n<b>key</b>{}", "k".repeat(500));
        let r = template_report(&i);
        assert!(!r.summary.contains('\n'));
        assert!(r.summary.len() < 400, "{}", r.summary);
        for text in r.recommended_actions.iter().chain(&r.evidence) {
            assert!(!text.chars().any(char::is_control), "{text:?}");
        }
    }

    #[test]
    fn categories_come_from_rule_words() {
        let cat = |rule: &str, desc: &str| {
            let mut i = incident();
            i.rule = rule.into();
            i.description = desc.into();
            i.labels.clear();
            i.samples.clear();
            template_report(&i).category
        };
        assert_eq!(cat("sqli_probe", ""), "injection attempt");
        assert_eq!(cat("oom_kill", "kernel OOM killer"), "resource exhaustion");
        assert_eq!(cat("disk_full", ""), "disk full");
        assert_eq!(cat("segfault", ""), "crash");
        assert_eq!(cat("brute", ""), "brute force");
        assert_eq!(cat("thing", "something else"), "rule match");
    }
}
