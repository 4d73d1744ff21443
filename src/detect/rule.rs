//! Rules: the YAML file format ([`RuleFile`], [`RawRule`]) and the compiled form ([`Rule`]) that
//! the engine runs. Compiling validates everything once; the engine never re-checks.

use std::time::Duration;

use serde::Deserialize;

use super::window::WindowSpec;
use crate::incident::Severity;

/// Longest id, field name or literal a rule may use (keeps metric labels and prefilters sane).
const MAX_NAME: usize = 64;
/// Largest threshold: window state per key is bounded by it.
pub const MAX_THRESHOLD: u32 = 10_000;

/// A rule file: `rules:` followed by a list of rules. Other top-level keys must start with `x-`
/// (they hold YAML anchors shared by several rules).
#[derive(Debug, Clone, Deserialize)]
pub struct RuleFile {
    /// The rules, in order.
    pub rules: Vec<RawRule>,
    /// `x-…` keys: shared YAML pieces, ignored otherwise.
    #[serde(flatten)]
    pub extensions: std::collections::BTreeMap<String, serde_yaml_ng::Value>,
}

impl RuleFile {
    /// Parses a rule file.
    ///
    /// # Errors
    /// YAML errors, unknown fields, and top-level keys other than `rules` and `x-…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RuleFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if let Some(k) = file.extensions.keys().find(|k| !k.starts_with("x-")) {
            return Err(format!(
                "unknown top-level key {k:?}: expected `rules` (or `x-…` for shared anchors)"
            ));
        }
        Ok(file)
    }
}

/// One rule as written in YAML (see `docs/rules.md` for every field with an example).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique id: lower-case letters, digits and `-`; used in metrics and incidents.
    pub id: String,
    /// One sentence saying what the rule detects.
    #[serde(default)]
    pub description: String,
    /// What an operator should do when it fires (plain text; used by the template analyzer and
    /// given to the LLM as the rule author's advice).
    #[serde(default)]
    pub remediation: Option<String>,
    /// `info`, `low`, `medium`, `high` or `critical`.
    pub severity: Severity,
    /// Optional Loki stream selector, e.g. `{job=~"auth|syslog", env!="dev"}`.
    #[serde(default)]
    pub selector: Option<String>,
    /// Optional built-in parser whose fields the rule uses: `access` or `syslog`.
    #[serde(default)]
    pub parser: Option<ParserKind>,
    /// What a line must (and must not) contain.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// Conditions on extracted fields, all of which must hold.
    #[serde(rename = "where", default)]
    pub conditions: Vec<RawCondition>,
    /// The field(s) the window is kept per: `ip`, or `host,binary`, or a list. Empty: one
    /// window for the whole rule.
    #[serde(default)]
    pub key: KeySpec,
    /// When true, sources in `detect.allowlist` are keyed like any other.
    #[serde(default)]
    pub include_allowlisted: bool,
    /// False for volume rules whose single lines are not suspicious by themselves (request
    /// floods): their matches count but `scan --emit matches` does not list them.
    #[serde(default = "yes")]
    pub line_signal: bool,
    /// Ids of rules that take precedence: while a key has an open incident of one of them,
    /// this rule opens no incident (and emits no follow-up) for that key. One attack, one
    /// incident: the slow SSH brute-force rule defers to the fast one.
    #[serde(default)]
    pub suppressed_by: Vec<String>,
    /// The window.
    pub aggregate: RawAggregate,
}

fn yes() -> bool {
    true
}

/// Which built-in parser a rule uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParserKind {
    /// nginx/apache combined or common access log.
    Access,
    /// The syslog header (`host program[pid]: message`).
    Syslog,
}

/// The line matcher of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Case-insensitive substrings; at least one must occur.
    #[serde(default)]
    pub any: Vec<String>,
    /// Case-insensitive substrings; all must occur.
    #[serde(default)]
    pub all: Vec<String>,
    /// Case-insensitive substrings; none may occur.
    #[serde(default)]
    pub none: Vec<String>,
    /// Regexes; when given, at least one must match. Named captures become fields.
    #[serde(default)]
    pub regex: Vec<String>,
    /// Regexes; none may match.
    #[serde(default)]
    pub not_regex: Vec<String>,
    /// More positive regexes sharing one prefix: each alternative becomes
    /// `(?i)<prefix>(?:<alternative>)` and joins `regex`.
    #[serde(default)]
    pub regex_prefixed: Option<RawPrefixed>,
}

/// Regexes that share a prefix (e.g. the apache error-log header up to `[client …]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefixed {
    /// The common prefix.
    pub prefix: String,
    /// The alternatives that follow it.
    pub alternatives: Vec<String>,
}

/// A condition on one field. Comparisons ignore ASCII case. A missing field fails the positive
/// tests (`in`, `prefix`, `suffix`, `contains`, `regex`) and passes the negative ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// The field name.
    pub field: String,
    /// The value equals one of these.
    #[serde(rename = "in", default)]
    pub is_in: Vec<String>,
    /// The value equals none of these.
    #[serde(default)]
    pub not_in: Vec<String>,
    /// The value starts with one of these.
    #[serde(default)]
    pub prefix: Vec<String>,
    /// The value starts with none of these.
    #[serde(default)]
    pub not_prefix: Vec<String>,
    /// The value ends with one of these.
    #[serde(default)]
    pub suffix: Vec<String>,
    /// The value ends with none of these.
    #[serde(default)]
    pub not_suffix: Vec<String>,
    /// The value contains one of these.
    #[serde(default)]
    pub contains: Vec<String>,
    /// The value contains none of these.
    #[serde(default)]
    pub not_contains: Vec<String>,
    /// The value matches this regex.
    #[serde(default)]
    pub regex: Option<String>,
    /// The value does not match this regex.
    #[serde(default)]
    pub not_regex: Option<String>,
}

/// The key of a rule: a comma-separated string or a list of field names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum KeySpec {
    /// No key: one window for the whole rule.
    #[default]
    None,
    /// `ip` or `host,binary`.
    One(String),
    /// `[host, binary]`.
    Many(Vec<String>),
}

impl KeySpec {
    fn fields(&self) -> Vec<String> {
        match self {
            KeySpec::None => vec![],
            KeySpec::One(s) => s.split(',').map(|f| f.trim().to_owned()).collect(),
            KeySpec::Many(v) => v.iter().map(|f| f.trim().to_owned()).collect(),
        }
    }
}

/// The window of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    /// Count distinct values of this field instead of events.
    #[serde(default)]
    pub distinct: Option<String>,
    /// Events (or distinct values) within `window` that fire the rule; 1 fires on every match.
    pub threshold: u32,
    /// Window length, e.g. `10s`, `5m`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// After an incident, how long further matches only update it; an attack that outlasts the
    /// cooldown gets a follow-up incident.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

/// A field a rule reads: resolved from regex captures, then the parser, then stream labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRef {
    /// The field name.
    pub name: String,
    /// Which parser field the name stands for (resolved once, not per line).
    pub kind: FieldKind,
    /// The field holds a source address (`ip` or `*_ip`): normalised, and required in keys.
    pub is_ip: bool,
}

/// The parser fields by name; `Other` for names only captures and labels give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum FieldKind {
    Ip,
    User,
    Method,
    Path,
    Query,
    Status,
    Referer,
    UserAgent,
    Vhost,
    Request,
    Uri,
    UriDecoded,
    Host,
    Program,
    Pid,
    Message,
    Other,
}

impl FieldKind {
    /// The parser field named `name`.
    pub fn of(name: &str) -> FieldKind {
        match name {
            "ip" => FieldKind::Ip,
            "user" => FieldKind::User,
            "method" => FieldKind::Method,
            "path" => FieldKind::Path,
            "query" => FieldKind::Query,
            "status" => FieldKind::Status,
            "referer" => FieldKind::Referer,
            "user_agent" => FieldKind::UserAgent,
            "vhost" => FieldKind::Vhost,
            "request" => FieldKind::Request,
            "uri" => FieldKind::Uri,
            "uri_decoded" => FieldKind::UriDecoded,
            "host" => FieldKind::Host,
            "program" => FieldKind::Program,
            "pid" => FieldKind::Pid,
            "message" => FieldKind::Message,
            _ => FieldKind::Other,
        }
    }
}

/// One compiled field condition.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The field tested.
    pub field: FieldRef,
    /// The test.
    pub test: Test,
    /// True for the negative forms (`not_*`).
    pub negate: bool,
}

/// What a condition tests (lists are lower-cased).
#[derive(Debug, Clone)]
pub enum Test {
    /// Equals one of.
    In(Vec<String>),
    /// Starts with one of.
    Prefix(Vec<String>),
    /// Ends with one of.
    Suffix(Vec<String>),
    /// Contains one of.
    Contains(Vec<String>),
    /// Matches.
    Regex(regex::Regex),
}

impl Test {
    /// Returns true when `value` (any case) passes the test.
    pub fn eval(&self, value: &str) -> bool {
        match self {
            Test::Regex(re) => re.is_match(value),
            _ => {
                let lower;
                let v = if value.bytes().any(|b| b.is_ascii_uppercase()) {
                    lower = value.to_ascii_lowercase();
                    lower.as_str()
                } else {
                    value
                };
                match self {
                    Test::In(list) => list.iter().any(|x| x == v),
                    // The bytes at both ends of an entry rule out nearly every entry before a
                    // comparison call (the suffix lists of static files are long, and every
                    // entry of a path prefix list starts with '/').
                    Test::Prefix(list) => list.iter().any(|x| {
                        ends_agree(x.as_bytes(), v.as_bytes(), 0) && v.starts_with(x.as_str())
                    }),
                    Test::Suffix(list) => list.iter().any(|x| {
                        v.len()
                            .checked_sub(x.len())
                            .is_some_and(|at| ends_agree(x.as_bytes(), v.as_bytes(), at))
                            && v.ends_with(x.as_str())
                    }),
                    Test::Contains(list) => list.iter().any(|x| v.contains(x.as_str())),
                    Test::Regex(_) => unreachable!("handled above"),
                }
            }
        }
    }
}

/// Whether `entry`'s first and last bytes are those of `value` at `at` (true for an empty
/// entry; false when `value` is too short to hold it there).
#[inline]
fn ends_agree(entry: &[u8], value: &[u8], at: usize) -> bool {
    match (entry.first(), entry.last()) {
        (Some(first), Some(last)) => {
            value.get(at) == Some(first) && value.get(at + entry.len() - 1) == Some(last)
        }
        _ => true,
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The id.
    pub id: String,
    /// The description.
    pub description: String,
    /// The remediation advice, if any.
    pub remediation: Option<String>,
    /// The severity.
    pub severity: Severity,
    /// The stream selector, if any.
    pub selector: Option<Selector>,
    /// The parser, if any.
    pub parser: Option<ParserKind>,
    /// Lower-cased `any` literals (after deriving status literals for access rules).
    pub any: Vec<String>,
    /// Lower-cased `all` literals.
    pub all: Vec<String>,
    /// Lower-cased `none` literals.
    pub none: Vec<String>,
    /// Positive regexes (one must match).
    pub regexes: Vec<regex::Regex>,
    /// Negative regexes.
    pub not_regexes: Vec<regex::Regex>,
    /// Field conditions.
    pub conditions: Vec<Condition>,
    /// Key fields.
    pub key: Vec<FieldRef>,
    /// `key` joined with commas (the incident's `key_kind`).
    pub key_kind: String,
    /// Key sources in the allowlist too.
    pub include_allowlisted: bool,
    /// Whether single matches are listed by `scan --emit matches`.
    pub line_signal: bool,
    /// Ids of the rules whose open incidents suppress this rule's (checked by the detector).
    pub suppressed_by: Vec<String>,
    /// The distinct field, for distinct windows.
    pub distinct: Option<FieldRef>,
    /// The window parameters (tolerance from the detector config).
    pub spec: WindowSpec,
    /// The window as configured.
    pub window: Duration,
    /// The cooldown in ms.
    pub cooldown_ms: i64,
    /// Whether any field read is `uri_decoded` (computed lazily per line).
    pub needs_uri_decoded: bool,
}

impl Rule {
    /// Returns true when two compilations keep compatible per-key state (so a reload can keep
    /// the live windows of an unchanged rule).
    pub fn same_state_shape(&self, other: &Rule) -> bool {
        self.id == other.id
            && self.key == other.key
            && self.distinct == other.distinct
            && self.spec == other.spec
            && self.cooldown_ms == other.cooldown_ms
    }
}

/// Compiles one raw rule; `where_` names its place for error messages, e.g.
/// `detect.rules[0] (/etc/logwarden/ssh.yml) rules[2]`.
///
/// # Errors
/// A message naming the field, the bad value and what was expected.
pub fn compile(raw: &RawRule, tolerance: Duration) -> Result<Rule, String> {
    let id = &raw.id;
    let bad = |field: &str, msg: String| format!("rule {id:?} {field}: {msg}");
    if id.is_empty()
        || id.len() > MAX_NAME
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "rule id {id:?} must be 1-{MAX_NAME} characters of a-z, 0-9, '-' or '_'"
        ));
    }
    let agg = &raw.aggregate;
    if agg.threshold == 0 || agg.threshold > MAX_THRESHOLD {
        return Err(bad(
            "aggregate.threshold",
            format!("{} must be between 1 and {MAX_THRESHOLD}", agg.threshold),
        ));
    }
    let window_ms = i64::try_from(agg.window.as_millis()).unwrap_or(i64::MAX);
    if window_ms == 0 {
        return Err(bad(
            "aggregate.window",
            format!(
                "{:?} must be greater than zero (at least 1ms)",
                humantime::format_duration(agg.window).to_string()
            ),
        ));
    }
    let cooldown_ms = i64::try_from(agg.cooldown.as_millis()).unwrap_or(i64::MAX);
    let lits = |field: &str, list: &[String]| -> Result<Vec<String>, String> {
        list.iter()
            .map(|l| {
                if l.is_empty() || l.len() > 256 {
                    Err(bad(field, format!("literal {l:?} must be 1-256 bytes")))
                } else {
                    Ok(l.to_ascii_lowercase())
                }
            })
            .collect()
    };
    let mut any = lits("match.any", &raw.matcher.any)?;
    let all = lits("match.all", &raw.matcher.all)?;
    let none = lits("match.none", &raw.matcher.none)?;
    let regex = |field: &str, src: &str| -> Result<regex::Regex, String> {
        regex::RegexBuilder::new(src)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| bad(field, format!("invalid regex {src:?}: {e}")))
    };
    let mut regexes = raw
        .matcher
        .regex
        .iter()
        .map(|r| regex("match.regex", r))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = &raw.matcher.regex_prefixed {
        for alt in &p.alternatives {
            regexes.push(regex(
                "match.regex_prefixed",
                &format!("(?i){}(?:{alt})", p.prefix),
            )?);
        }
    }
    let not_regexes = raw
        .matcher
        .not_regex
        .iter()
        .map(|r| regex("match.not_regex", r))
        .collect::<Result<Vec<_>, _>>()?;
    let field = |name: &str, what: &str| -> Result<FieldRef, String> {
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad(
                what,
                format!("field name {name:?} must be 1-{MAX_NAME} of [A-Za-z0-9_]"),
            ));
        }
        Ok(FieldRef {
            name: name.to_owned(),
            kind: FieldKind::of(name),
            is_ip: name == "ip" || name.ends_with("_ip"),
        })
    };
    let mut conditions = Vec::new();
    for (i, c) in raw.conditions.iter().enumerate() {
        let at = format!("where[{i}]");
        let f = field(&c.field, &at)?;
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>();
        let mut push = |test: Test, negate: bool| {
            conditions.push(Condition {
                field: f.clone(),
                test,
                negate,
            });
        };
        let before = conditions_len_hint(c);
        if before == 0 {
            return Err(bad(&at, "needs one of in, not_in, prefix, not_prefix, suffix, not_suffix, contains, not_contains, regex, not_regex".into()));
        }
        for (list, make, negate) in [
            (&c.is_in, Test::In as fn(Vec<String>) -> Test, false),
            (&c.not_in, Test::In, true),
            (&c.prefix, Test::Prefix, false),
            (&c.not_prefix, Test::Prefix, true),
            (&c.suffix, Test::Suffix, false),
            (&c.not_suffix, Test::Suffix, true),
            (&c.contains, Test::Contains, false),
            (&c.not_contains, Test::Contains, true),
        ] {
            if !list.is_empty() {
                push(make(lower(list)), negate);
            }
        }
        if let Some(r) = &c.regex {
            push(Test::Regex(regex(&format!("{at}.regex"), r)?), false);
        }
        if let Some(r) = &c.not_regex {
            push(Test::Regex(regex(&format!("{at}.not_regex"), r)?), true);
        }
    }
    // Access-log rules gated only by status codes get the codes as prefilter literals: in the
    // combined format a status always follows the request's closing quote (`" 404 `).
    if any.is_empty() && all.is_empty() && raw.parser == Some(ParserKind::Access) {
        if let Some(c) = raw
            .conditions
            .iter()
            .find(|c| c.field == "status" && !c.is_in.is_empty())
        {
            if c.is_in
                .iter()
                .all(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
            {
                any = c.is_in.iter().map(|s| format!("\" {s} ")).collect();
            }
        }
    }
    if any.is_empty() && all.is_empty() && raw.parser.is_none() {
        return Err(bad(
            "match",
            "needs at least one literal in match.any or match.all (the prefilter), or a parser"
                .into(),
        ));
    }
    let key_names = raw.key.fields();
    let key = key_names
        .iter()
        .map(|k| field(k, "key"))
        .collect::<Result<Vec<_>, _>>()?;
    let distinct = agg
        .distinct
        .as_deref()
        .map(|d| field(d, "aggregate.distinct"))
        .transpose()?;
    let selector = raw
        .selector
        .as_deref()
        .map(|s| Selector::parse(s).map_err(|e| bad("selector", format!("{s:?}: {e}"))))
        .transpose()?;
    let needs_uri_decoded = conditions.iter().any(|c| c.field.name == "uri_decoded")
        || distinct.as_ref().is_some_and(|d| d.name == "uri_decoded")
        || key.iter().any(|k| k.name == "uri_decoded");
    Ok(Rule {
        id: id.clone(),
        description: raw.description.clone(),
        remediation: raw.remediation.clone().filter(|r| !r.trim().is_empty()),
        severity: raw.severity,
        selector,
        parser: raw.parser,
        any,
        all,
        none,
        regexes,
        not_regexes,
        conditions,
        key_kind: key_names.join(","),
        key,
        include_allowlisted: raw.include_allowlisted,
        line_signal: raw.line_signal,
        suppressed_by: raw.suppressed_by.clone(),
        distinct,
        spec: WindowSpec {
            threshold: agg.threshold,
            window_ms,
            tolerance_ms: i64::try_from(tolerance.as_millis()).unwrap_or(i64::MAX),
        },
        window: agg.window,
        cooldown_ms,
        needs_uri_decoded,
    })
}

/// Returns the literal (in lower case, at least 3 bytes) that every match of `pattern` starts
/// with, if it has one: the leading literal characters of the pattern, up to the first that is
/// not a literal or an ASCII letter in either case. A line (lower-cased) that lacks it cannot
/// match. Letters whose case folding reaches beyond ASCII (`k`, `s` under `(?i)`) end it.
pub fn required_prefix(pattern: &str) -> Option<Vec<u8>> {
    use regex_syntax::hir::{Class, Hir, HirKind};

    /// Appends the literal start of `hir`; returns false where the literal part ends.
    fn walk(hir: &Hir, out: &mut Vec<u8>) -> bool {
        match hir.kind() {
            HirKind::Concat(items) => items.iter().all(|h| walk(h, out)),
            HirKind::Capture(c) => walk(&c.sub, out),
            // Zero-width: the literal text around it is still contiguous.
            HirKind::Look(_) => true,
            HirKind::Literal(lit) => {
                out.extend(lit.0.iter().map(u8::to_ascii_lowercase));
                true
            }
            HirKind::Class(class) => {
                let chars: Vec<(u32, u32)> = match class {
                    Class::Unicode(c) => c
                        .ranges()
                        .iter()
                        .map(|r| (u32::from(r.start()), u32::from(r.end())))
                        .collect(),
                    Class::Bytes(c) => c
                        .ranges()
                        .iter()
                        .map(|r| (u32::from(r.start()), u32::from(r.end())))
                        .collect(),
                };
                let byte = |c: u32| u8::try_from(c).ok().filter(u8::is_ascii);
                match chars[..] {
                    [(a, b)] if a == b => match byte(a) {
                        Some(a) => {
                            out.push(a.to_ascii_lowercase());
                            true
                        }
                        None => false,
                    },
                    [(a, a2), (b, b2)] if a == a2 && b == b2 => match (byte(a), byte(b)) {
                        (Some(a), Some(b))
                            if a.is_ascii_alphabetic() && a.to_ascii_lowercase() == b =>
                        {
                            out.push(b);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                }
            }
            _ => false,
        }
    }

    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    let mut out = Vec::new();
    walk(&hir, &mut out);
    (out.len() >= 3).then_some(out)
}

fn conditions_len_hint(c: &RawCondition) -> usize {
    [
        &c.is_in,
        &c.not_in,
        &c.prefix,
        &c.not_prefix,
        &c.suffix,
        &c.not_suffix,
        &c.contains,
        &c.not_contains,
    ]
    .iter()
    .filter(|l| !l.is_empty())
    .count()
        + usize::from(c.regex.is_some())
        + usize::from(c.not_regex.is_some())
}

// === impl Selector ===

/// A Loki stream selector: label matchers that must all hold.
#[derive(Debug, Clone)]
pub struct Selector {
    matchers: Vec<LabelMatcher>,
}

#[derive(Debug, Clone)]
struct LabelMatcher {
    name: String,
    op: MatchOp,
}

#[derive(Debug, Clone)]
enum MatchOp {
    Eq(String),
    Ne(String),
    Re(regex::Regex),
    Nre(regex::Regex),
}

impl Selector {
    /// Parses `{name="v", name!="v", name=~"re", name!~"re"}` (values double-quoted with `\`
    /// escapes, or back-quoted raw). Regexes are anchored at both ends, as in Loki.
    ///
    /// # Errors
    /// A message saying what was expected where.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let inner = s
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or("a selector must be enclosed in { }")?;
        let b = inner.as_bytes();
        let mut i = 0;
        let mut matchers = Vec::new();
        let skip_ws = |i: &mut usize| {
            while *i < b.len() && (b[*i] as char).is_whitespace() {
                *i += 1;
            }
        };
        loop {
            skip_ws(&mut i);
            if i >= b.len() {
                break;
            }
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let name = &inner[start..i];
            if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
                return Err(format!("expected a label name at byte {start}"));
            }
            skip_ws(&mut i);
            let op = match (b.get(i), b.get(i + 1)) {
                (Some(b'='), Some(b'~')) => "=~",
                (Some(b'!'), Some(b'~')) => "!~",
                (Some(b'!'), Some(b'=')) => "!=",
                (Some(b'='), _) => "=",
                _ => return Err(format!("expected =, !=, =~ or !~ after {name:?}")),
            };
            i += op.len();
            skip_ws(&mut i);
            let value = match b.get(i) {
                Some(b'"') => {
                    let mut out = String::new();
                    i += 1;
                    loop {
                        match b.get(i) {
                            None => return Err(format!("unterminated value for {name:?}")),
                            Some(b'"') => break,
                            Some(b'\\') => {
                                match b.get(i + 1) {
                                    Some(b'n') => out.push('\n'),
                                    Some(b't') => out.push('\t'),
                                    Some(&c) => out.push(c as char),
                                    None => return Err(format!("unterminated value for {name:?}")),
                                }
                                i += 2;
                                continue;
                            }
                            Some(_) => {
                                let ch = inner[i..].chars().next().ok_or("bad utf-8")?;
                                out.push(ch);
                                i += ch.len_utf8();
                                continue;
                            }
                        }
                    }
                    i += 1;
                    out
                }
                Some(b'`') => {
                    let end = inner[i + 1..]
                        .find('`')
                        .ok_or_else(|| format!("unterminated value for {name:?}"))?;
                    let v = inner[i + 1..i + 1 + end].to_owned();
                    i += end + 2;
                    v
                }
                _ => return Err(format!("expected a quoted value for {name:?}")),
            };
            let anchored = |v: &str| {
                regex::Regex::new(&format!("^(?:{v})$"))
                    .map_err(|e| format!("invalid regex for {name:?}: {e}"))
            };
            let op = match op {
                "=" => MatchOp::Eq(value),
                "!=" => MatchOp::Ne(value),
                "=~" => MatchOp::Re(anchored(&value)?),
                _ => MatchOp::Nre(anchored(&value)?),
            };
            matchers.push(LabelMatcher {
                name: name.to_owned(),
                op,
            });
            skip_ws(&mut i);
            match b.get(i) {
                Some(b',') => i += 1,
                None => break,
                Some(_) => return Err(format!("expected ',' or '}}' at byte {i}")),
            }
        }
        if matchers.is_empty() {
            return Err("a selector needs at least one matcher".into());
        }
        Ok(Selector { matchers })
    }

    /// Returns true when the labels satisfy every matcher (a missing label is the empty string).
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.matchers.iter().all(|m| {
            let v = get(&m.name).unwrap_or("");
            match &m.op {
                MatchOp::Eq(x) => v == x,
                MatchOp::Ne(x) => v != x,
                MatchOp::Re(re) => re.is_match(v),
                MatchOp::Nre(re) => !re.is_match(v),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Prefix and suffix tests are `starts_with` / `ends_with` of the lower-cased value
        /// against any entry (empty entries included).
        #[test]
        fn prefix_and_suffix_tests_are_plain_string_tests(
            value in "[aB./é]{0,6}",
            list in proptest::collection::vec("[ab./é]{0,3}", 0..5),
        ) {
            let lower = value.to_ascii_lowercase();
            proptest::prop_assert_eq!(
                Test::Prefix(list.clone()).eval(&value),
                list.iter().any(|x| lower.starts_with(x.as_str()))
            );
            proptest::prop_assert_eq!(
                Test::Suffix(list.clone()).eval(&value),
                list.iter().any(|x| lower.ends_with(x.as_str()))
            );
        }
    }

    #[test]
    fn selector_matches_like_loki() {
        let s = Selector::parse(r#"{job=~"auth|syslog", env!="dev", host!~`web.*`}"#).unwrap();
        let labels = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
        };
        assert!(s.matches(labels(&[("job", "auth"), ("host", "db1")])));
        assert!(!s.matches(labels(&[("job", "authx")])));
        assert!(!s.matches(labels(&[("job", "auth"), ("env", "dev")])));
        assert!(!s.matches(labels(&[("job", "syslog"), ("host", "web1")])));
        assert!(Selector::parse("job=\"x\"").is_err());
        assert!(Selector::parse("{job=\"x}").is_err());
        assert!(Selector::parse("{}").is_err());
    }

    fn raw(yaml: &str) -> RawRule {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn rejects_zero_window_naming_field_and_value() {
        let r = raw("{id: ssh-x, severity: high, match: {any: [x]}, aggregate: {threshold: 1, window: 0s, cooldown: 1m}}");
        let e = compile(&r, Duration::ZERO).unwrap_err();
        assert_eq!(
            e,
            r#"rule "ssh-x" aggregate.window: "0s" must be greater than zero (at least 1ms)"#
        );
    }

    #[test]
    fn rejects_rules_without_prefilter_literal() {
        let r = raw("{id: x, severity: low, match: {regex: [a+]}, aggregate: {threshold: 1, window: 1s, cooldown: 1s}}");
        assert!(compile(&r, Duration::ZERO)
            .unwrap_err()
            .contains("needs at least one literal"));
    }

    #[test]
    fn rejects_bad_thresholds_ids_and_regexes() {
        let r = raw("{id: x, severity: low, match: {any: [a]}, aggregate: {threshold: 0, window: 1s, cooldown: 1s}}");
        assert!(compile(&r, Duration::ZERO)
            .unwrap_err()
            .contains("aggregate.threshold: 0 must be between 1"));
        let r = raw("{id: X Y, severity: low, match: {any: [a]}, aggregate: {threshold: 1, window: 1s, cooldown: 1s}}");
        assert!(compile(&r, Duration::ZERO)
            .unwrap_err()
            .contains("rule id \"X Y\""));
        let r = raw("{id: x, severity: low, match: {any: [a], regex: ['(']}, aggregate: {threshold: 1, window: 1s, cooldown: 1s}}");
        assert!(compile(&r, Duration::ZERO)
            .unwrap_err()
            .contains("match.regex: invalid regex"));
    }

    #[test]
    fn required_prefixes_are_what_every_match_starts_with() {
        let p = |s: &str| required_prefix(s).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            p(r"(?i)\bfailed (?:password|none) for"),
            Some("failed ".into())
        );
        // `s` and `k` fold to non-ASCII characters under (?i): the literal ends before them.
        assert_eq!(
            p(r"(?i)\binvalid user (?P<u>\S+)"),
            Some("invalid u".into())
        );
        assert_eq!(p(r"(?i)\bbanner exchange"), Some("banner exchange".into()));
        assert_eq!(p(r"(?P<binary>[^\s]+)\[\d+\]: segfault at "), None);
        assert_eq!(p(r"Kernel panic"), Some("kernel panic".into()));
        assert_eq!(p(r"(?:abc|abd)"), None);
        assert_eq!(p(r"ab"), None);
        // "up", then `s`: too short to be worth a search.
        assert_eq!(p(r#"(?i)upstream: ""#), None);
        for (re, line) in [
            (r"(?i)\bfailed password", "FAILED PASSWORD"),
            (r"(?i)\binvalid user x", "INVALID USER x"),
            (r"(?i)\bdid not receive", "Did Not RECEIVE"),
        ] {
            assert!(regex::Regex::new(re).unwrap().is_match(line));
            let lower = line.to_ascii_lowercase();
            let prefix = required_prefix(re).unwrap();
            assert!(
                memchr::memmem::find(lower.as_bytes(), &prefix).is_some(),
                "{re}"
            );
        }
    }

    #[test]
    fn access_rules_get_status_literals() {
        let r = raw("{id: x, severity: low, parser: access, where: [{field: status, in: ['404', '403']}], key: ip, aggregate: {threshold: 1, window: 1s, cooldown: 1s}}");
        let rule = compile(&r, Duration::ZERO).unwrap();
        assert_eq!(rule.any, vec!["\" 404 ", "\" 403 "]);
        assert_eq!(rule.key_kind, "ip");
    }
}
