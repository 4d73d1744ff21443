//! The human-readable form of an alert, before any channel's markup: a list of rows of styled
//! spans holding *raw* (unescaped, untrusted) text. Each channel escapes and marks it up in its
//! own way, after splitting if it must (Telegram splits rows, never markup).
//!
//! Every string from an [`Alert`] is attacker-influenced. Here it loses control characters
//! (terminal escapes, NUL, carriage returns) and Unicode bidi overrides, which could make a line
//! read differently from what it is; escaping for the channel happens later.

use crate::report::Alert;

/// How a span is shown, where the channel can show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Normal text.
    Plain,
    /// Bold (headings, the severity).
    Bold,
    /// Italic (meta information).
    Italic,
    /// Inline code (keys, tenants, queries).
    Code,
}

/// A piece of raw text with a style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// How it is shown.
    pub style: Style,
    /// The raw text: not escaped, one line, sanitized.
    pub text: String,
}

/// One line of the message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Row {
    /// True for lines of a preformatted block (evidence).
    pub pre: bool,
    /// The line's spans (empty for a blank line).
    pub spans: Vec<Span>,
}

impl Row {
    fn of(spans: Vec<Span>) -> Row {
        Row { pre: false, spans }
    }

    /// Returns the raw text of the row.
    pub fn text(&self) -> String {
        self.spans.iter().map(|s| s.text.as_str()).collect()
    }
}

fn span(style: Style, text: impl AsRef<str>) -> Span {
    Span {
        style,
        text: sanitize_line(text.as_ref()),
    }
}

/// Returns `s` as one line: newlines and tabs become spaces; other control characters and
/// bidi controls become U+FFFD (so their presence stays visible).
pub fn sanitize_line(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\t' => ' ',
            '\r' => ' ',
            c if c.is_control() || is_bidi_control(c) => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// Splits `s` into sanitized lines (for multi-line fields such as the explanation).
pub fn sanitize_lines(s: &str) -> Vec<String> {
    s.lines().map(sanitize_line).collect()
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Returns the one-line title: `[HIGH] ssh_brute_force: <summary>`.
pub fn title(alert: &Alert) -> String {
    let r = &alert.report;
    sanitize_line(&format!(
        "[{}] {}: {}",
        r.severity.as_str().to_uppercase(),
        r.rule,
        r.summary
    ))
}

/// Lays out an alert as rows of raw text.
pub fn layout(alert: &Alert) -> Vec<Row> {
    use Style::*;
    let r = &alert.report;
    let i = &alert.incident;
    let mut rows = Vec::new();
    let mut head = vec![
        span(
            Bold,
            format!(
                "{} {}",
                icon(r.severity),
                r.severity.as_str().to_uppercase()
            ),
        ),
        span(Plain, " "),
        span(Bold, &r.rule),
    ];
    if !r.category.is_empty() {
        head.push(span(Plain, " · "));
        head.push(span(Plain, &r.category));
    }
    if i.follow_up {
        head.push(span(Italic, format!(" (follow-up #{})", i.sequence)));
    }
    rows.push(Row::of(head));
    rows.push(Row::of(vec![span(Plain, &r.summary)]));
    let explanation = sanitize_lines(&r.explanation);
    if !explanation.is_empty() {
        rows.push(Row::default());
        rows.extend(explanation.into_iter().map(|l| {
            Row::of(vec![Span {
                style: Plain,
                text: l,
            }])
        }));
    }
    rows.push(Row::default());
    let mut who = Vec::new();
    if !i.key.is_empty() {
        who.push(span(
            Bold,
            format!(
                "{}: ",
                if i.key_kind.is_empty() {
                    "key"
                } else {
                    &i.key_kind
                }
            ),
        ));
        who.push(span(Code, &i.key));
        who.push(span(Plain, " · "));
    }
    who.push(span(Bold, "tenant: "));
    who.push(span(Code, &i.tenant));
    rows.push(Row::of(who));
    rows.push(Row::of(vec![
        span(Bold, "events: "),
        span(
            Plain,
            format!(
                "{} ({} new, threshold {}) from {} to {}",
                i.count, i.new_count, i.threshold, i.first_seen, i.last_seen
            ),
        ),
    ]));
    if let Some(field) = &i.distinct_field {
        let mut values = i.distinct_values.join(", ");
        if (i.distinct_values.len() as u64) < i.distinct_count {
            values.push_str(", …");
        }
        rows.push(Row::of(vec![
            span(Bold, format!("distinct {field}: ")),
            span(Plain, format!("{} ({values})", i.distinct_count)),
        ]));
    }
    if !r.affected_services.is_empty() {
        rows.push(Row::of(vec![
            span(Bold, "services: "),
            span(Plain, r.affected_services.join(", ")),
        ]));
    }
    if !r.recommended_actions.is_empty() {
        rows.push(Row::default());
        rows.push(Row::of(vec![span(Bold, "What to do:")]));
        for action in &r.recommended_actions {
            rows.push(Row::of(vec![span(Plain, "• "), span(Plain, action)]));
        }
    }
    if !r.evidence.is_empty() {
        rows.push(Row::default());
        rows.push(Row::of(vec![span(Bold, "Evidence:")]));
        for line in &r.evidence {
            rows.push(Row {
                pre: true,
                spans: vec![span(Plain, line)],
            });
        }
    }
    if !i.logql.is_empty() {
        rows.push(Row::of(vec![span(Bold, "LogQL: "), span(Code, &i.logql)]));
    }
    let mut meta = format!("incident {} · analyzer {}", i.id, r.analyzer);
    if let Some(model) = &r.model {
        meta.push_str(&format!(" ({model})"));
    }
    if r.severity != r.rule_severity {
        meta.push_str(&format!(" · rule severity {}", r.rule_severity));
    }
    rows.push(Row::of(vec![span(Italic, meta)]));
    if let Some(note) = &r.note {
        rows.push(Row::of(vec![span(Italic, format!("note: {note}"))]));
    }
    rows
}

fn icon(severity: crate::incident::Severity) -> &'static str {
    use crate::incident::Severity::*;
    match severity {
        Info => "ℹ️",
        Low => "🔵",
        Medium => "🟠",
        High => "🔴",
        Critical => "🚨",
    }
}

/// Renders rows as plain text (e-mail): evidence lines indented by four spaces.
pub fn plain(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        if row.pre {
            out.push_str("    ");
        }
        out.push_str(&row.text());
        out.push('\n');
    }
    out
}
