//! The verdict: what the LLM is asked to return, its JSON Schema, and the checks that run before
//! any of it reaches a [`Report`].
//!
//! One table ([`FIELDS`]) produces both the schema sent to the server and the validator, so the
//! two cannot drift. The model's output is untrusted twice over (it read attacker-written lines):
//! it is validated field by field, its severity only ever raises the rule's, and its evidence is
//! kept only when it quotes a line that is really in the incident.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use crate::analyze::prompt::{sanitize_line, MAX_LINE_CHARS};
use crate::incident::{Incident, Severity};
use crate::report::Report;

/// The `name` sent with the OpenAI `json_schema` response format (vLLM requires one).
pub const SCHEMA_NAME: &str = "logwarden_incident_report";

/// Evidence quotes shorter than this are ignored: a few characters match almost any line.
pub const MIN_EVIDENCE_CHARS: usize = 8;

/// Most evidence lines kept in a report.
pub const MAX_EVIDENCE: usize = 5;

enum Kind {
    /// A string of `min..=max` characters.
    Text { min: usize, max: usize },
    /// One of the severity names.
    Severity,
    /// An array of `min_items..=max_items` strings, each of `1..=max` characters.
    List {
        min_items: usize,
        max_items: usize,
        max: usize,
    },
}

struct Field {
    name: &'static str,
    kind: Kind,
    /// Shown in the prompt and in the schema's `description`.
    about: &'static str,
}

/// The verdict's fields, in the order the model should write them.
const FIELDS: &[Field] = &[
    Field {
        name: "severity",
        kind: Kind::Severity,
        about: "info, low, medium, high or critical; never below the rule's severity",
    },
    Field {
        name: "category",
        kind: Kind::Text { min: 1, max: 80 },
        about: "attack or failure type, e.g. \"ssh brute force\", \"web scan\", \"disk full\"",
    },
    Field {
        name: "summary",
        kind: Kind::Text { min: 1, max: 300 },
        about: "one sentence: what happened",
    },
    Field {
        name: "explanation",
        kind: Kind::Text { min: 1, max: 1500 },
        about: "plain English: who, how many, over what time, how bad, what is unusual",
    },
    Field {
        name: "affected_services",
        kind: Kind::List {
            min_items: 0,
            max_items: 8,
            max: 80,
        },
        about: "services affected, e.g. \"sshd\", \"nginx\"",
    },
    Field {
        name: "evidence",
        kind: Kind::List {
            min_items: 0,
            max_items: 8,
            max: MAX_LINE_CHARS,
        },
        about: "log lines copied exactly from the data block that support the verdict",
    },
    Field {
        name: "recommended_actions",
        kind: Kind::List {
            min_items: 1,
            max_items: 8,
            max: 300,
        },
        about: "what the operator should do, most important first",
    },
];

/// Returns the JSON Schema of the verdict (sent as Ollama's `format` and inside OpenAI's
/// `response_format`).
pub fn schema() -> &'static Value {
    static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
        let mut properties = Map::new();
        for f in FIELDS {
            let p = match f.kind {
                Kind::Text { min, max } => json!({
                    "type": "string", "minLength": min, "maxLength": max, "description": f.about
                }),
                Kind::Severity => json!({
                    "type": "string",
                    "enum": Severity::ALL.map(Severity::as_str),
                    "description": f.about
                }),
                Kind::List {
                    min_items,
                    max_items,
                    max,
                } => json!({
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "maxLength": max},
                    "minItems": min_items,
                    "maxItems": max_items,
                    "description": f.about
                }),
            };
            properties.insert(f.name.to_owned(), p);
        }
        json!({
            "type": "object",
            "properties": properties,
            "required": FIELDS.iter().map(|f| f.name).collect::<Vec<_>>(),
            "additionalProperties": false
        })
    });
    &SCHEMA
}

/// Describes the fields for the prompt (Ollama's docs advise repeating the schema there).
pub fn describe_fields() -> String {
    let mut out = String::new();
    for f in FIELDS {
        let shape = match f.kind {
            Kind::Text { max, .. } => format!("string, at most {max} characters"),
            Kind::Severity => "string".to_owned(),
            Kind::List { max_items, .. } => format!("array of at most {max_items} strings"),
        };
        out.push_str(&format!("- {} ({shape}): {}\n", f.name, f.about));
    }
    out
}

/// A verdict that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The model's severity (before the floor is applied).
    pub severity: Severity,
    /// Attack or failure type.
    pub category: String,
    /// One sentence.
    pub summary: String,
    /// Plain-English explanation.
    pub explanation: String,
    /// Services affected.
    pub affected_services: Vec<String>,
    /// What the model quoted (not yet checked against the incident).
    pub evidence: Vec<String>,
    /// What to do.
    pub recommended_actions: Vec<String>,
}

/// Why a model's output was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerdictError {
    /// Not JSON at all, or cut off.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A required field is absent.
    #[error("missing field {0:?}")]
    Missing(&'static str),
    /// A field the schema does not allow.
    #[error("unexpected field {0:?}")]
    Unexpected(String),
    /// A field of the wrong type, length or value.
    #[error("field {field:?}: {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// Parses and validates a model's `content` against the schema.
///
/// # Errors
/// The first problem found (which becomes part of the retry prompt and of the fallback note).
pub fn parse(content: &str) -> Result<Verdict, VerdictError> {
    let value: Value = serde_json::from_str(content.trim()).map_err(|e| {
        VerdictError::Json(if e.is_eof() {
            "the output ends before the JSON object is complete".to_owned()
        } else {
            e.to_string()
        })
    })?;
    let Value::Object(obj) = value else {
        return Err(VerdictError::NotObject);
    };
    if let Some(extra) = obj.keys().find(|k| !FIELDS.iter().any(|f| f.name == *k)) {
        return Err(VerdictError::Unexpected(clip(extra, 40)));
    }
    let mut severity = Severity::Info;
    let mut texts: [String; 3] = Default::default();
    let mut lists: [Vec<String>; 3] = Default::default();
    let (mut t, mut l) = (0, 0);
    for f in FIELDS {
        let v = obj.get(f.name).ok_or(VerdictError::Missing(f.name))?;
        let invalid = |problem: String| VerdictError::Invalid {
            field: f.name,
            problem,
        };
        match f.kind {
            Kind::Severity => {
                let s = v
                    .as_str()
                    .ok_or_else(|| invalid(type_problem("a string", v)))?;
                severity = Severity::ALL
                    .into_iter()
                    .find(|sev| sev.as_str() == s)
                    .ok_or_else(|| invalid(format!("{:?} is not a severity", clip(s, 40))))?;
            }
            Kind::Text { min, max } => {
                let s = v
                    .as_str()
                    .ok_or_else(|| invalid(type_problem("a string", v)))?;
                check_len(s, min, max).map_err(invalid)?;
                texts[t] = s.to_owned();
                t += 1;
            }
            Kind::List {
                min_items,
                max_items,
                max,
            } => {
                let items = v
                    .as_array()
                    .ok_or_else(|| invalid(type_problem("an array", v)))?;
                if items.len() < min_items || items.len() > max_items {
                    return Err(invalid(format!(
                        "{} items (expected {min_items} to {max_items})",
                        items.len()
                    )));
                }
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let s = item
                        .as_str()
                        .ok_or_else(|| invalid(type_problem("strings", item)))?;
                    check_len(s, 1, max).map_err(invalid)?;
                    out.push(s.to_owned());
                }
                lists[l] = out;
                l += 1;
            }
        }
    }
    let [category, summary, explanation] = texts;
    let [affected_services, evidence, recommended_actions] = lists;
    Ok(Verdict {
        severity,
        category,
        summary,
        explanation,
        affected_services,
        evidence,
        recommended_actions,
    })
}

fn check_len(s: &str, min: usize, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n < min || n > max || s.trim().is_empty() {
        return Err(format!(
            "{n} characters (expected {min} to {max}, not blank)"
        ));
    }
    Ok(())
}

fn type_problem(expected: &str, got: &Value) -> String {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("expected {expected}, got {kind}")
}

fn clip(s: &str, max: usize) -> String {
    sanitize_line(s).chars().take(max).collect()
}

/// Builds the report from a validated verdict: the severity never goes below the rule's, the
/// evidence keeps only quotes of real sample lines (filled from the samples when none survive),
/// free text loses control characters, and the rule's own remediation stays first among the
/// actions. `template` supplies what the model left empty.
pub fn into_report(verdict: Verdict, incident: &Incident, template: Report) -> Report {
    let mut notes = Vec::new();
    let severity = verdict.severity.max(incident.severity);
    if verdict.severity < incident.severity {
        notes.push(format!(
            "the model proposed severity {}, below the rule's {}; the rule's severity is kept",
            verdict.severity, incident.severity
        ));
    }
    let (mut evidence, dropped) = matching_evidence(&verdict.evidence, incident);
    if dropped > 0 {
        notes.push(format!(
            "{dropped} evidence quote(s) from the model were not found in the incident's lines \
             and were dropped"
        ));
    }
    if evidence.is_empty() {
        evidence = template.evidence.clone();
    }
    let mut actions: Vec<String> = Vec::new();
    if let Some(r) = incident.remediation.as_deref().map(clean_text) {
        if !r.is_empty() {
            actions.push(r);
        }
    }
    for a in verdict.recommended_actions.iter().map(|a| clean_text(a)) {
        if !a.is_empty() && !actions.contains(&a) {
            actions.push(a);
        }
    }
    let mut services: Vec<String> = Vec::new();
    for s in verdict.affected_services.iter().map(|s| clean_text(s)) {
        if !s.is_empty() && !services.contains(&s) {
            services.push(s);
        }
    }
    if services.is_empty() {
        services = template.affected_services.clone();
    }
    Report {
        severity,
        category: clean_text(&verdict.category),
        summary: clean_text(&verdict.summary),
        explanation: clean_text(&verdict.explanation),
        affected_services: services,
        evidence,
        recommended_actions: actions,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        ..template
    }
}

/// Keeps the sample lines the model's quotes come from: a quote counts when, stripped of the
/// prompt's own decorations (`| `, `37× `, `…[+N chars]`), it is a substring of a sample line
/// (as the model saw it, control characters removed). The whole line is kept, not the quote, so
/// the model cannot shorten a line into a different meaning.
/// Returns the lines and how many quotes matched none.
fn matching_evidence(quotes: &[String], incident: &Incident) -> (Vec<String>, usize) {
    let lines: Vec<String> = incident
        .samples
        .iter()
        .map(|s| sanitize_line(&s.line))
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut unmatched = 0;
    for quote in quotes {
        let q = strip_decorations(quote);
        let found = (q.chars().count() >= MIN_EVIDENCE_CHARS)
            .then(|| lines.iter().find(|l| l.contains(q)))
            .flatten();
        match found {
            Some(line) => {
                let line = crate::analyze::prompt::truncate_line(line);
                if !out.contains(&line) && out.len() < MAX_EVIDENCE {
                    out.push(line);
                }
            }
            None => unmatched += 1,
        }
    }
    (out, unmatched)
}

fn strip_decorations(quote: &str) -> &str {
    let mut q = quote.trim();
    q = q.strip_prefix('|').unwrap_or(q).trim_start();
    if let Some((n, rest)) = q.split_once('×') {
        if !n.is_empty() && n.trim().chars().all(|c| c.is_ascii_digit()) {
            q = rest.trim_start();
        }
    }
    if let Some(i) = q.rfind("…[+") {
        if q.ends_with(" chars]") {
            q = &q[..i];
        }
    }
    q.trim_end_matches('…').trim()
}

/// Model free text: control characters become spaces (a report goes to chat channels and Loki),
/// runs of whitespace collapse.
fn clean_text(s: &str) -> String {
    sanitize_line(s)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::template::tests::incident;
    use crate::analyze::template_report;

    fn valid() -> Value {
        json!({
            "severity": "high",
            "category": "ssh brute force",
            "summary": "One address is guessing SSH passwords.",
            "explanation": "203.0.113.7 failed 42 logins in two minutes.",
            "affected_services": ["sshd"],
            "evidence": ["Failed password for root from 203.0.113.7 port 4242 ssh2"],
            "recommended_actions": ["Block 203.0.113.7"]
        })
    }

    #[test]
    fn schema_lists_every_field_as_required_with_enum_and_bounds() {
        let s = schema();
        assert_eq!(s["type"], "object");
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["required"].as_array().unwrap().len(), FIELDS.len());
        assert_eq!(
            s["properties"]["severity"]["enum"],
            json!(["info", "low", "medium", "high", "critical"])
        );
        assert_eq!(s["properties"]["summary"]["maxLength"], 300);
        assert_eq!(
            s["properties"]["evidence"]["items"]["maxLength"],
            MAX_LINE_CHARS
        );
        assert_eq!(s["properties"]["recommended_actions"]["minItems"], 1);
    }

    #[test]
    fn valid_output_parses() {
        let v = parse(&valid().to_string()).unwrap();
        assert_eq!(v.severity, Severity::High);
        assert_eq!(v.affected_services, ["sshd"]);
    }

    #[test]
    fn each_schema_violation_is_named() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([1]), "not a JSON object"),
            (
                {
                    let mut v = valid();
                    v.as_object_mut().unwrap().remove("summary");
                    v
                },
                "missing field \"summary\"",
            ),
            (
                {
                    let mut v = valid();
                    v["cancel"] = json!(true);
                    v
                },
                "unexpected field \"cancel\"",
            ),
            (
                {
                    let mut v = valid();
                    v["severity"] = json!("none");
                    v
                },
                "field \"severity\": \"none\" is not a severity",
            ),
            (
                {
                    let mut v = valid();
                    v["severity"] = json!(3);
                    v
                },
                "field \"severity\": expected a string, got a number",
            ),
            (
                {
                    let mut v = valid();
                    v["summary"] = json!("x".repeat(301));
                    v
                },
                "field \"summary\": 301 characters (expected 1 to 300, not blank)",
            ),
            (
                {
                    let mut v = valid();
                    v["category"] = json!("   ");
                    v
                },
                "field \"category\": 3 characters (expected 1 to 80, not blank)",
            ),
            (
                {
                    let mut v = valid();
                    v["recommended_actions"] = json!([]);
                    v
                },
                "field \"recommended_actions\": 0 items (expected 1 to 8)",
            ),
            (
                {
                    let mut v = valid();
                    v["evidence"] = json!([1]);
                    v
                },
                "field \"evidence\": expected strings, got a number",
            ),
            (
                {
                    let mut v = valid();
                    v["affected_services"] = json!("sshd");
                    v
                },
                "field \"affected_services\": expected an array, got a string",
            ),
        ];
        for (value, want) in cases {
            assert_eq!(parse(&value.to_string()).unwrap_err().to_string(), want);
        }
        let cut = &valid().to_string()[..60];
        assert_eq!(
            parse(cut).unwrap_err().to_string(),
            "not valid JSON: the output ends before the JSON object is complete"
        );
        assert!(matches!(parse("Sure! Here is"), Err(VerdictError::Json(_))));
    }

    #[test]
    fn severity_is_a_floor_and_a_lower_proposal_is_noted() {
        let inc = incident(); // rule severity high
        let mut v = parse(&valid().to_string()).unwrap();
        v.severity = Severity::Low;
        let r = into_report(v.clone(), &inc, template_report(&inc));
        assert_eq!(
            (r.severity, r.rule_severity),
            (Severity::High, Severity::High)
        );
        assert!(r.note.unwrap().contains("proposed severity low"));
        v.severity = Severity::Critical;
        let r = into_report(v, &inc, template_report(&inc));
        assert_eq!(r.severity, Severity::Critical);
        assert_eq!(r.note, None);
    }

    #[test]
    fn evidence_keeps_only_real_lines_and_falls_back_to_samples() {
        let inc = incident();
        let mut v = parse(&valid().to_string()).unwrap();
        v.evidence = vec![
            "| 3× Failed password for root from 203.0.113.7".into(), // decorated real quote
            "Accepted password for root from 203.0.113.7".into(),    // invented
            "root".into(),                                           // too short to count
        ];
        let r = into_report(v.clone(), &inc, template_report(&inc));
        assert_eq!(
            r.evidence,
            ["Failed password for root from 203.0.113.7 port 4242 ssh2"]
        );
        assert!(r.note.unwrap().contains("2 evidence quote(s)"));

        v.evidence = vec!["made up entirely, not in any line".into()];
        let r = into_report(v, &inc, template_report(&inc));
        assert_eq!(r.evidence, template_report(&inc).evidence);
        for line in &r.evidence {
            assert!(inc.samples.iter().any(|s| s.line == *line));
        }
    }

    #[test]
    fn rule_remediation_leads_the_actions_and_text_is_cleaned() {
        let inc = incident();
        let mut v = parse(&valid().to_string()).unwrap();
        v.summary = "two\nlines\u{1b}[31m red".into();
        let r = into_report(v, &inc, template_report(&inc));
        assert_eq!(r.recommended_actions[0], inc.remediation.clone().unwrap());
        assert_eq!(r.recommended_actions[1], "Block 203.0.113.7");
        assert_eq!(r.summary, "two lines [31m red");
        assert_eq!(r.analyzer, "template"); // the caller sets analyzer and model
    }
}
