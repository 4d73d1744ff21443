//! Detect: runs compiled rules over decoded push entries and emits incidents.
//!
//! Receives a decoded [`PushView`] (from the inspection workers) or lines from files (`scan`).
//! Emits [`Incident`]s to an [`IncidentSink`] at the end of each batch, so an incident carries
//! all the evidence of the batch that made it fire. Owns the compiled rule set (swapped
//! atomically by [`Detector::reload`]), the per-(rule, key) windows, and its metrics.
//! Must never block or await: it is plain synchronous code called from several worker threads.
//!
//! Per line: one pass of an ASCII-case-insensitive literal search over every rule's literals
//! ([`literals::LiteralSet`]: byte-pair anchors behind a SIMD first pass, no lower-cased copy),
//! then only the rules whose literals hit run their parser, conditions and regexes. A line no
//! rule can match costs that one scan. Regex results are shared: rules that use the same regex
//! (the SSH rules share one list) run it once per line. Three built-in SSH regexes are matched
//! by hand on printable-ASCII lines (`detect/ssh.rs`, property-tested against the regexes).

pub mod extract;
mod kernel;
pub mod literals;
mod pair_filter;
pub mod rule;
mod ssh;
mod state;
pub mod window;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use self::extract::{AccessLine, NetSet, SyslogHeader};
use self::literals::LiteralSet;
use self::rule::{FieldKind, ParserKind, Rule, RuleFile};
use self::state::{hash_bytes, hash_str, KeyMap, KeyState, NewSample, Outcome};
use crate::decode::{labels::push_quoted, EntryView, Labels, PushView};
use crate::incident::{EventTime, Incident, IncidentSink, Sample};
use crate::state::{
    BatchDeltas, BatchTotals, SampleMode, SharedState, WindowKind, WindowParams, WindowRef,
};

/// The built-in rule pack, embedded in the binary.
pub const BUILTIN_RULES: &str = include_str!("detect/builtin.yml");

/// What access-log lines have between the time and the request: `… [time] "GET …`.
const ACCESS_SHAPE: &str = "] \"";

/// Separates tenant and key in the per-rule maps (a control character no key contains).
const TENANT_SEP: char = '\u{1f}';
/// [`Compiled::key_class`] of a rule whose key is built afresh for each rule.
const NO_KEY_CLASS: u32 = u32::MAX;

/// How far ahead of the wall clock an event time may be and still advance the watermark that
/// idle keys expire against. One entry stamped years ahead (a bad clock, a hostile client) would
/// otherwise expire every key of every tenant at once.
pub const MAX_FUTURE_SKEW_MS: i64 = 60_000;

fn system_time_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// === impl DetectConfig ===

/// The `detect:` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Loads the built-in rule pack (embedded in the binary).
    pub builtin: bool,
    /// Rule ids (built-in or from `rules` files) to switch off.
    pub disable: Vec<String>,
    /// Rule files (YAML, see docs/rules.md) loaded beside the built-in pack, in order.
    pub rules: Vec<PathBuf>,
    /// Most (rule, key) windows kept at once; beyond it the least recently active are evicted.
    pub max_keys: usize,
    /// Matching lines kept per key and sent with each incident.
    pub samples_per_key: usize,
    /// Longest sample line kept, in bytes (longer lines are cut).
    pub max_sample_bytes: usize,
    /// How far behind a key's newest event an entry may arrive and still count, e.g. `1m`.
    #[serde(with = "humantime_serde")]
    pub out_of_order_tolerance: Duration,
    /// Source addresses (CIDRs, or single addresses) that are not keyed as attackers unless a
    /// rule says so. Default: loopback and the private, unique-local and link-local ranges.
    #[serde(with = "cidr_list")]
    pub allowlist: Vec<IpNet>,
}

/// Serde for `Vec<IpNet>` as strings (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
mod cidr_list {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "allowlist entry {s:?} is not a CIDR (e.g. 10.0.0.0/8) or an address"
                        ))
                    })
            })
            .collect()
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            builtin: true,
            disable: Vec::new(),
            rules: Vec::new(),
            max_keys: 100_000,
            samples_per_key: 20,
            max_sample_bytes: 1024,
            out_of_order_tolerance: Duration::from_secs(60),
            allowlist: default_allowlist(),
        }
    }
}

/// Loopback, private (RFC 1918), unique-local and link-local ranges.
pub fn default_allowlist() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .map(|s| s.parse().expect("static CIDR is valid"))
    .collect()
}

impl DetectConfig {
    /// Checks the section and every rule it loads, without building a detector.
    ///
    /// # Errors
    /// The first problem found, naming the field, the bad value and what was expected.
    pub fn validate(&self) -> Result<(), DetectError> {
        compile_rules(self).map(|_| ())
    }

    /// Compiles the rules and returns their ids, in order.
    ///
    /// # Errors
    /// As [`DetectConfig::validate`].
    pub fn rule_ids(&self) -> Result<Vec<String>, DetectError> {
        compile_rules(self).map(|rules| rules.into_iter().map(|r| r.id).collect())
    }
}

/// Why the detect configuration or a rule file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A field of the `detect:` section.
    #[error("detect.{field}: {message}")]
    Config {
        /// The field, e.g. `max_keys`.
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A rule (in the built-in pack or a file).
    #[error("{location}: {message}")]
    Rule {
        /// Where, e.g. `detect.rules[0] (ssh.yml) rules[2]`.
        location: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A rule file could not be read.
    #[error("detect.rules[{index}]: couldn't read {path}: {source}")]
    Io {
        /// Position in `detect.rules`.
        index: usize,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("couldn't register detection metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl DetectError {
    /// Returns a bounded reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DetectError::Config { .. } => "config",
            DetectError::Rule { .. } => "rule",
            DetectError::Io { .. } => "io",
            DetectError::Metrics(_) => "metrics",
        }
    }
}

// === impl Compiled ===

#[derive(Debug, Clone, Copy)]
enum Role {
    Any,
    All(u8),
    None,
}

/// Everything a reload swaps at once: the rules, their prefilter, their state and the settings.
struct Compiled {
    rules: Vec<Arc<Rule>>,
    states: Vec<Arc<KeyMap>>,
    rule_matches: Vec<prometheus::IntCounter>,
    prefilter: LiteralSet,
    /// Every distinct regex of every rule, once (rules that share a regex share its result).
    regexes: Vec<regex::Regex>,
    /// Per regex: the lower-case literal every match of it starts with, when it has one.
    regex_prefixes: Vec<Option<memchr::memmem::Finder<'static>>>,
    /// Per regex: the hand-written matcher that stands for it (some built-in regexes).
    regex_matchers: Vec<Option<Matcher>>,
    /// Per rule: indexes into `regexes` of its `regex` list, in order.
    rule_regexes: Vec<Vec<u32>>,
    /// For each prefilter pattern: the (rule, role) pairs that use it.
    owners: Vec<Vec<(u32, Role)>>,
    /// Bit mask of all `all` literals per rule.
    all_masks: Vec<u64>,
    /// Rules without literals (gated by their parser only): checked on every line.
    always: Vec<u32>,
    /// Per rule: the rules (indexes) whose open incidents suppress it (`suppressed_by`).
    suppressors: Vec<Vec<u32>>,
    /// Per rule: rules with the same key fields share a class, so a line's key is built once
    /// for them all; [`NO_KEY_CLASS`] for keys that are never shared.
    key_class: Vec<u32>,
    /// The prefilter's pattern id for [`ACCESS_SHAPE`].
    access_shape: u32,
    samples_per_key: usize,
    max_sample_bytes: usize,
    max_keys: usize,
    allowlist: NetSet,
}

struct RuleSource {
    location: String,
    raw: rule::RawRule,
}

fn load_sources(cfg: &DetectConfig) -> Result<Vec<RuleSource>, DetectError> {
    let mut out = Vec::new();
    let mut push_file = |location: String, text: &str| -> Result<(), DetectError> {
        let file = RuleFile::parse(text).map_err(|message| DetectError::Rule {
            location: location.clone(),
            message,
        })?;
        for (i, raw) in file.rules.into_iter().enumerate() {
            out.push(RuleSource {
                location: format!("{location} rules[{i}]"),
                raw,
            });
        }
        Ok(())
    };
    if cfg.builtin {
        push_file("built-in rule pack".into(), BUILTIN_RULES)?;
    }
    for (index, path) in cfg.rules.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|source| DetectError::Io {
            index,
            path: path.clone(),
            source,
        })?;
        push_file(format!("detect.rules[{index}] ({})", path.display()), &text)?;
    }
    Ok(out)
}

fn compile_rules(cfg: &DetectConfig) -> Result<Vec<Rule>, DetectError> {
    if cfg.max_keys == 0 {
        return Err(DetectError::Config {
            field: "max_keys".into(),
            message: "0 must be greater than zero".into(),
        });
    }
    if cfg.samples_per_key > 1000 {
        return Err(DetectError::Config {
            field: "samples_per_key".into(),
            message: format!("{} must be at most 1000", cfg.samples_per_key),
        });
    }
    if cfg.max_sample_bytes < 64 || cfg.max_sample_bytes > 65_536 {
        return Err(DetectError::Config {
            field: "max_sample_bytes".into(),
            message: format!("{} must be between 64 and 65536", cfg.max_sample_bytes),
        });
    }
    let sources = load_sources(cfg)?;
    let mut rules: Vec<Rule> = Vec::with_capacity(sources.len());
    for src in &sources {
        let rule = rule::compile(&src.raw, cfg.out_of_order_tolerance).map_err(|message| {
            DetectError::Rule {
                location: src.location.clone(),
                message,
            }
        })?;
        if rules.iter().any(|r| r.id == rule.id) {
            return Err(DetectError::Rule {
                location: src.location.clone(),
                message: format!("rule id {:?} is defined twice", rule.id),
            });
        }
        if rule.all.len() > 64 {
            return Err(DetectError::Rule {
                location: src.location.clone(),
                message: format!("rule {:?} match.all: at most 64 literals", rule.id),
            });
        }
        rules.push(rule);
    }
    for (i, id) in cfg.disable.iter().enumerate() {
        if !rules.iter().any(|r| &r.id == id) {
            return Err(DetectError::Config {
                field: format!("disable[{i}]"),
                message: format!("no rule has the id {id:?}"),
            });
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        for id in &rule.suppressed_by {
            if id == &rule.id || !rules.iter().any(|r| &r.id == id) {
                return Err(DetectError::Rule {
                    location: sources[i].location.clone(),
                    message: format!(
                        "rule {:?} suppressed_by: {id:?} must be the id of another rule",
                        rule.id
                    ),
                });
            }
        }
    }
    // A disabled rule suppresses nothing (its id is simply not found in `Compiled::build`).
    rules.retain(|r| !cfg.disable.contains(&r.id));
    Ok(rules)
}

impl Compiled {
    fn build(
        cfg: &DetectConfig,
        metrics: &DetectMetrics,
        previous: Option<&Compiled>,
        total_keys: &AtomicUsize,
    ) -> Result<Self, DetectError> {
        let rules = compile_rules(cfg)?;
        let mut patterns: Vec<String> = Vec::new();
        let mut owners: Vec<Vec<(u32, Role)>> = Vec::new();
        let mut all_masks = Vec::with_capacity(rules.len());
        let mut always = Vec::new();
        let mut add = |lit: &str, rule: u32, role: Role| {
            let id = match patterns.iter().position(|p| p == lit) {
                Some(id) => id,
                None => {
                    patterns.push(lit.to_owned());
                    owners.push(Vec::new());
                    patterns.len() - 1
                }
            };
            owners[id].push((rule, role));
        };
        for (r, rule) in rules.iter().enumerate() {
            let r = r as u32;
            for lit in &rule.any {
                add(lit, r, Role::Any);
            }
            let mut mask = 0u64;
            for (bit, lit) in rule.all.iter().enumerate() {
                add(lit, r, Role::All(bit as u8));
                mask |= 1 << bit;
            }
            for lit in &rule.none {
                add(lit, r, Role::None);
            }
            all_masks.push(mask);
            if rule.any.is_empty() && rule.all.is_empty() {
                always.push(r);
            }
        }
        // The one pass over every line: case-insensitive, so lines need no lower-cased copy.
        // Its last pattern is the access-log shape that gates the rules without literals.
        let access_shape = patterns.len() as u32;
        patterns.push(ACCESS_SHAPE.to_owned());
        let prefilter = LiteralSet::new(&patterns);
        let mut states = Vec::with_capacity(rules.len());
        for rule in &rules {
            let kept = previous.and_then(|p| {
                p.rules
                    .iter()
                    .position(|old| old.same_state_shape(rule))
                    .map(|i| Arc::clone(&p.states[i]))
            });
            states.push(kept.unwrap_or_else(|| Arc::new(KeyMap::default())));
        }
        if let Some(p) = previous {
            // Keys of rules that are gone (or changed shape) no longer count.
            for old in &p.states {
                if !states.iter().any(|s| Arc::ptr_eq(s, old)) {
                    total_keys.fetch_sub(
                        old.len().min(total_keys.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                }
            }
        }
        let key_class = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                // The decoded URI is made by the first rule that needs it: a key holding it
                // could read differently for a rule before that one.
                if rule.key.iter().any(|f| f.kind == FieldKind::UriDecoded) {
                    return NO_KEY_CLASS;
                }
                // The first rule with these key fields names the class (this one, if none before).
                rules[..i]
                    .iter()
                    .position(|r| r.key == rule.key)
                    .unwrap_or(i) as u32
            })
            .collect();
        let suppressors = rules
            .iter()
            .map(|rule| {
                rule.suppressed_by
                    .iter()
                    .filter_map(|id| rules.iter().position(|r| &r.id == id))
                    .map(|i| i as u32)
                    .collect()
            })
            .collect();
        let mut regexes: Vec<regex::Regex> = Vec::new();
        let rule_regexes = rules
            .iter()
            .map(|rule| {
                rule.regexes
                    .iter()
                    .map(|re| {
                        let id = regexes
                            .iter()
                            .position(|r| r.as_str() == re.as_str())
                            .unwrap_or_else(|| {
                                regexes.push(re.clone());
                                regexes.len() - 1
                            });
                        id as u32
                    })
                    .collect()
            })
            .collect();
        let regex_prefixes = regexes
            .iter()
            .map(|re| {
                rule::required_prefix(re.as_str())
                    .map(|p| memchr::memmem::Finder::new(&p).into_owned())
            })
            .collect();
        let regex_matchers = regexes.iter().map(|re| Matcher::of(re.as_str())).collect();
        let rule_matches = rules
            .iter()
            .map(|r| metrics.rule_matches.with_label_values(&[r.id.as_str()]))
            .collect();
        Ok(Compiled {
            rules: rules.into_iter().map(Arc::new).collect(),
            states,
            rule_matches,
            prefilter,
            regexes,
            regex_prefixes,
            regex_matchers,
            rule_regexes,
            owners,
            all_masks,
            always,
            suppressors,
            key_class,
            access_shape,
            samples_per_key: cfg.samples_per_key,
            max_sample_bytes: cfg.max_sample_bytes,
            max_keys: cfg.max_keys,
            allowlist: NetSet::new(&cfg.allowlist),
        })
    }
}

// === impl DetectMetrics ===

struct DetectMetrics {
    rule_matches: prometheus::IntCounterVec,
    incidents: prometheus::IntCounterVec,
    keys: prometheus::IntGauge,
    evictions: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

impl DetectMetrics {
    fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
        let m = DetectMetrics {
            rule_matches: IntCounterVec::new(
                Opts::new("logwarden_rule_matches_total", "Lines matched, per rule."),
                &["rule"],
            )?,
            incidents: IntCounterVec::new(
                Opts::new(
                    "logwarden_incidents_total",
                    "Incidents emitted (follow-ups included).",
                ),
                &["rule", "severity"],
            )?,
            keys: IntGauge::new("logwarden_detect_keys", "Live (rule, key) windows.")?,
            evictions: IntCounter::new(
                "logwarden_detect_evictions_total",
                "(rule, key) windows removed: idle past their horizon, or evicted at max_keys.",
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "logwarden_detect_duration_seconds",
                    "Time to run detection over one batch (push or scan chunk).",
                )
                .buckets(vec![
                    1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0,
                ]),
            )?,
        };
        registry.register(Box::new(m.rule_matches.clone()))?;
        registry.register(Box::new(m.incidents.clone()))?;
        registry.register(Box::new(m.keys.clone()))?;
        registry.register(Box::new(m.evictions.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }
}

// === impl Detector ===

/// Lines [`Detector::process`] (the inspection threads' path) runs between two offers of its
/// core to a thread waiting for it (`sched_yield`), about 0.2 ms of work. Without them an
/// inspection thread, niced or not, keeps its core for a whole scheduler slice while a serving
/// thread or the agent waits behind it; with nothing waiting, a yield is one system call.
const YIELD_EVERY: usize = 512;

/// Runs the rule set over log lines; shared by all inspection workers (`&self` everywhere).
pub struct Detector {
    compiled: RwLock<Arc<Compiled>>,
    metrics: DetectMetrics,
    total_keys: AtomicUsize,
    /// Newest event time seen (ms): idle keys are expired relative to it.
    watermark_ms: AtomicI64,
    /// Held by the one thread that sweeps; the value is the watermark of the last idle sweep.
    sweeping: Mutex<i64>,
    /// Wall clock (ms since the epoch): event times further ahead of it than
    /// [`MAX_FUTURE_SKEW_MS`] do not advance the watermark.
    wall_clock_ms: fn() -> i64,
    value_hasher: foldhash::quality::RandomState,
    /// Windows and claims shared with the other replicas (`state.backend: redis`).
    shared: Option<SharedState>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("keys", &self.total_keys)
            .finish_non_exhaustive()
    }
}

/// One (line, rule) match, as `scan --emit matches` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineMatch<'a> {
    /// The rule id.
    pub rule: &'a str,
    /// The key, when the line has all the key's fields (empty for rules without a key).
    pub key: Option<&'a str>,
    /// True when the source is in the allowlist and so was not counted.
    pub allowlisted: bool,
}

impl Detector {
    /// Compiles the rules of `cfg` and registers the detection metrics in `registry`.
    ///
    /// # Errors
    /// A bad `detect:` field or rule (see [`DetectError`]), or a metric already registered.
    pub fn try_new(
        cfg: &DetectConfig,
        registry: &prometheus::Registry,
    ) -> Result<Self, DetectError> {
        let metrics = DetectMetrics::register(registry)?;
        let total_keys = AtomicUsize::new(0);
        let compiled = Compiled::build(cfg, &metrics, None, &total_keys)?;
        Ok(Detector {
            compiled: RwLock::new(Arc::new(compiled)),
            metrics,
            total_keys,
            watermark_ms: AtomicI64::new(i64::MIN),
            sweeping: Mutex::new(i64::MIN),
            wall_clock_ms: system_time_ms,
            value_hasher: foldhash::quality::RandomState::default(),
            shared: None,
        })
    }

    /// Shares windows, samples and incident claims with other replicas through `shared`
    /// (`state.backend: redis`; `None` keeps them in this process). See docs/scaling.md.
    #[must_use]
    pub fn with_shared_state(mut self, shared: Option<SharedState>) -> Self {
        self.shared = shared;
        self
    }

    /// Swaps in the rules and settings of `cfg` atomically. Windows of rules whose id, key and
    /// window are unchanged carry over. On error the old rules stay in force.
    ///
    /// # Errors
    /// As [`Detector::try_new`].
    pub fn reload(&self, cfg: &DetectConfig) -> Result<(), DetectError> {
        let current = self.current();
        let next = Compiled::build(cfg, &self.metrics, Some(&current), &self.total_keys)?;
        *self.compiled.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Returns the ids of the rules in force, in order.
    pub fn rule_ids(&self) -> Vec<String> {
        self.current().rules.iter().map(|r| r.id.clone()).collect()
    }

    fn current(&self) -> Arc<Compiled> {
        Arc::clone(&self.compiled.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs detection over one decoded push for `tenant`; incidents that fired go to `sink`
    /// at the end. Synchronous and non-blocking.
    pub fn process(&self, tenant: &str, push: &PushView<'_>, sink: &dyn IncidentSink) {
        let start = tokio::time::Instant::now();
        let mut batch = self.batch(tenant);
        // Lines since the last yield, counted across streams: a push of many small streams
        // (Promtail sends one per label set) yields as often as one of a single stream.
        let mut since_yield = 0;
        for stream in &push.streams {
            batch.set_stream_labels(&stream.labels);
            for part in stream.entries.chunks(YIELD_EVERY) {
                batch.entries(part, &mut |_| {});
                since_yield += part.len();
                if since_yield >= YIELD_EVERY {
                    since_yield = 0;
                    std::thread::yield_now();
                }
            }
        }
        batch.flush(sink);
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
    }

    /// Replaces the wall clock (ms since the epoch) that caps the watermark; for tests.
    #[cfg(test)]
    fn set_wall_clock(&mut self, clock: fn() -> i64) {
        self.wall_clock_ms = clock;
    }

    /// Starts a batch for `tenant`: feed it lines per stream, then [`Batch::flush`].
    /// `process` is built on it; `scan` uses it directly to stream files.
    pub fn batch(&self, tenant: &str) -> Batch<'_> {
        let compiled = self.current();
        let mut parts = RECYCLED
            .try_with(|r| r.take())
            .ok()
            .flatten()
            // The rule set it was made for is still this one (a weak reference: the address
            // of a rule set that is gone cannot be taken by another one while it is held).
            .filter(|r| std::ptr::eq(r.compiled.as_ptr(), Arc::as_ptr(&compiled)))
            .map_or_else(|| Parts::new(&compiled), |r| r.parts);
        // What a batch that was dropped unflushed left behind is not carried over (a no-op on
        // new parts; the line stamps stay valid because the line counter goes on).
        parts.stream_ok.fill(true);
        parts.matches.fill(0);
        parts.fired.clear();
        parts.delta_keys.clear();
        parts.touched.clear();
        parts.hits.clear();
        Batch {
            detector: self,
            tenant: tenant.to_owned(),
            labels: Arc::new(BTreeMap::new()),
            parts,
            newest_ms: i64::MIN,
            clock_cap_ms: (self.wall_clock_ms)().saturating_add(MAX_FUTURE_SKEW_MS),
            deltas: self.shared.as_ref().map(SharedState::batch),
            compiled,
        }
    }

    /// Makes room when the key bound is reached, and expires idle keys once per minute of event
    /// time. Only one thread sweeps at a time. For the minute's sweep the others go on; a
    /// thread that needs room waits for a sweep under way instead of adding keys past the
    /// bound: the sweeping thread may be an idle-class inspection thread that other work keeps
    /// off the CPU, and the thread that went on used to add keys without bound meanwhile
    /// (a million-address brute force grew the process by gigabytes).
    fn maintain(&self, compiled: &Compiled, need_room: bool) {
        let mut last = if need_room {
            self.sweeping.lock().unwrap_or_else(|e| e.into_inner())
        } else {
            match self.sweeping.try_lock() {
                Ok(last) => last,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        let wm = self.watermark_ms.load(Ordering::Relaxed);
        // Counted as they go: another thread may add keys to a map while it is swept, so the
        // map's length before and after does not tell how many went (the difference once
        // wrapped below zero and took the key count down to nothing).
        let mut removed = 0usize;
        if need_room || wm.saturating_sub(*last) >= 60_000 {
            *last = wm;
            for (rule, map) in compiled.rules.iter().zip(&compiled.states) {
                let horizon = rule
                    .spec
                    .window_ms
                    .saturating_add(rule.spec.tolerance_ms)
                    .saturating_add(rule.cooldown_ms);
                let cutoff = wm.saturating_sub(horizon);
                map.retain(|_, s| {
                    let keep =
                        s.newest_ms >= cutoff || s.open.as_ref().is_some_and(|o| o.emit_pending);
                    removed += usize::from(!keep);
                    keep
                });
            }
        }
        let total = self
            .total_keys
            .load(Ordering::Relaxed)
            .saturating_sub(removed);
        if need_room && total >= compiled.max_keys * 9 / 10 {
            // Still full of live keys: evict the least recently active tenth (ties go together).
            let mut newest: Vec<i64> = compiled
                .states
                .iter()
                .flat_map(|m| m.iter().map(|e| e.value().newest_ms).collect::<Vec<_>>())
                .collect();
            let goal = total
                .saturating_sub(compiled.max_keys * 9 / 10)
                .max(compiled.max_keys / 10)
                .max(1);
            if !newest.is_empty() {
                let nth = goal.min(newest.len()) - 1;
                let (_, cut, _) = newest.select_nth_unstable(nth);
                let cut = *cut;
                for map in &compiled.states {
                    map.retain(|_, s| {
                        let keep = s.newest_ms > cut;
                        removed += usize::from(!keep);
                        keep
                    });
                }
            }
        }
        if removed > 0 {
            self.total_keys.fetch_sub(
                removed.min(self.total_keys.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            self.metrics.evictions.inc_by(removed as u64);
        }
        self.metrics
            .keys
            .set(self.total_keys.load(Ordering::Relaxed) as i64);
    }
}

// === impl Batch ===

/// A batch of lines for one tenant, with reusable per-line scratch space. Not shared between
/// threads: each worker makes its own.
pub struct Batch<'d> {
    detector: &'d Detector,
    compiled: Arc<Compiled>,
    tenant: String,
    labels: Arc<BTreeMap<String, String>>,
    /// The per-rule stamps and the buffers, which the next batch on this thread reuses.
    parts: Parts,
    /// Newest event time of the batch, capped at `clock_cap_ms`.
    newest_ms: i64,
    /// Wall clock at the start of the batch plus the allowed skew.
    clock_cap_ms: i64,
    /// With shared state: this batch's matches aggregated per (rule, key), sent at the flush.
    deltas: Option<BatchDeltas>,
}

/// The part of a batch that outlives it: the per-rule line stamps, the regexes' capture slots
/// and the line buffers, left on the thread for the next batch over the same rule set
/// ([`Recycled`]). Building and dropping them took about 21,000 instructions per push with the
/// built-in pack (a capture slot set per regex, a dozen vectors). The stamps of a finished
/// batch never equal a later line's, because the line counter (`generation`) goes on.
#[derive(Default)]
struct Parts {
    generation: u32,
    stream_ok: Vec<bool>,
    /// Per rule: `generation` when a literal of the rule hit on the current line.
    touched_gen: Vec<u32>,
    regex_cache: RegexCache,
    any_gen: Vec<u32>,
    all_gen: Vec<u32>,
    all_bits: Vec<u64>,
    none_gen: Vec<u32>,
    touched: Vec<u32>,
    /// Prefilter pattern hits of the current line.
    hits: Vec<u32>,
    /// The decoded URI's buffer and the buffers it is decoded through, reused line after line.
    uri_buf: String,
    uri_scratch: extract::UriScratch,
    key_buf: String,
    /// The last address parsed for a key (the rules that key by `ip` read the same one).
    ip_memo: IpMemo,
    /// The key last built on this line, for the next rule with the same key fields.
    key_memo: KeyMemo,
    fired: Vec<(u32, Box<str>)>,
    matches: Vec<u64>,
    /// (rule, map key) of each entry of the batch's `deltas`, in the same order.
    delta_keys: Vec<(u32, Box<str>)>,
}

impl Parts {
    /// New parts for a batch over `compiled`.
    fn new(compiled: &Compiled) -> Parts {
        let n = compiled.rules.len();
        let regexes = compiled.regexes.len();
        Parts {
            stream_ok: vec![true; n],
            touched_gen: vec![0; n],
            regex_cache: RegexCache {
                generation: vec![0; regexes],
                hit: vec![false; regexes],
                fast: vec![None; regexes],
                locs: compiled
                    .regexes
                    .iter()
                    .map(regex::Regex::capture_locations)
                    .collect(),
                lower: Vec::new(),
                lower_generation: 0,
                lower_printable: false,
            },
            any_gen: vec![0; n],
            all_gen: vec![0; n],
            all_bits: vec![0; n],
            none_gen: vec![0; n],
            matches: vec![0; n],
            ..Parts::default()
        }
    }
}

/// A finished batch's [`Parts`] and the rule set they were made for, held weakly, so a replaced
/// rule set's windows are freed at once, not at this thread's next push; a new rule set starts
/// afresh.
struct Recycled {
    compiled: std::sync::Weak<Compiled>,
    parts: Parts,
}

/// Largest line buffer a batch leaves for the next one (a longer line's is freed).
const KEPT_LINE_BUFFER: usize = 64 << 10;

thread_local! {
    static RECYCLED: std::cell::Cell<Option<Recycled>> = const { std::cell::Cell::new(None) };
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let mut parts = std::mem::take(&mut self.parts);
        for buf in [&mut parts.uri_buf, &mut parts.key_buf] {
            if buf.capacity() > KEPT_LINE_BUFFER {
                *buf = String::new();
            }
        }
        if parts.regex_cache.lower.capacity() > KEPT_LINE_BUFFER {
            parts.regex_cache.lower = Vec::new();
        }
        parts.uri_scratch.bound(KEPT_LINE_BUFFER);
        let recycled = Recycled {
            compiled: Arc::downgrade(&self.compiled),
            parts,
        };
        // None while the thread is being torn down: the parts are then just dropped.
        let _ = RECYCLED.try_with(|r| r.set(Some(recycled)));
    }
}

/// Per-line lazily computed views shared by the rules that look at the line.
struct LineView<'t> {
    text: &'t str,
    /// The access-log fields up to the status; the referer and user agent are parsed from
    /// `access_tail` when a rule reads them.
    access: Option<Option<AccessLine<'t>>>,
    access_tail: &'t str,
    syslog: Option<Option<SyslogHeader<'t>>>,
    /// The decoded URI once `uri_ready` (the buffer is the batch's, reused line after line).
    uri_decoded: String,
    uri_ready: bool,
}

impl<'t> LineView<'t> {
    fn access(&mut self) -> Option<AccessLine<'t>> {
        if self.access.is_none() {
            let parsed = extract::parse_access_head(self.text);
            self.access_tail = parsed.map_or("", |(_, tail)| tail);
            self.access = Some(parsed.map(|(a, _)| a));
        }
        self.access.flatten()
    }

    fn syslog(&mut self) -> Option<SyslogHeader<'t>> {
        let text = self.text;
        *self
            .syslog
            .get_or_insert_with(|| extract::parse_syslog(text))
    }

    /// `path?query` as it stands in the line (they are slices of it), without a copy.
    fn path_and_query(&self, path: &str, query: &str) -> Option<&'t str> {
        let base = self.text.as_ptr() as usize;
        let start = (path.as_ptr() as usize).checked_sub(base)?;
        let mark = start + path.len();
        let end = mark + 1 + query.len();
        (self.text.as_bytes().get(mark) == Some(&b'?')
            && query.as_ptr() as usize == base + mark + 1
            && end <= self.text.len())
        .then(|| self.text.get(start..end))
        .flatten()
    }

    fn get<'s>(
        &'s self,
        name: &str,
        kind: FieldKind,
        caps: Option<&Caps<'t, '_>>,
        labels: &'s BTreeMap<String, String>,
    ) -> Option<Cow<'s, str>> {
        if let Some(m) = caps.and_then(|c| c.name(name, kind)) {
            return Some(Cow::Borrowed(m));
        }
        if kind == FieldKind::UriDecoded {
            return self
                .uri_ready
                .then_some(Cow::Borrowed(self.uri_decoded.as_str()));
        }
        if let Some(Some(a)) = &self.access {
            let v = match kind {
                FieldKind::Ip => Some(a.ip),
                FieldKind::User => Some(a.user),
                FieldKind::Method => Some(a.method),
                FieldKind::Path => Some(a.path),
                FieldKind::Query => Some(a.query),
                FieldKind::Status => Some(a.status),
                FieldKind::Referer => Some(extract::parse_access_tail(self.access_tail).0),
                FieldKind::UserAgent => Some(extract::parse_access_tail(self.access_tail).1),
                FieldKind::Vhost => a.vhost,
                FieldKind::Request => Some(a.request),
                FieldKind::Uri => {
                    return Some(if a.query.is_empty() {
                        Cow::Borrowed(a.path)
                    } else if let Some(uri) = self.path_and_query(a.path, a.query) {
                        Cow::Borrowed(uri)
                    } else {
                        Cow::Owned(format!("{}?{}", a.path, a.query))
                    })
                }
                _ => None,
            };
            if let Some(v) = v {
                return Some(Cow::Borrowed(v));
            }
        }
        if let Some(Some(s)) = &self.syslog {
            let v = match kind {
                FieldKind::Host => Some(s.host),
                FieldKind::Program => Some(s.program),
                FieldKind::Pid => Some(s.pid).filter(|p| !p.is_empty()),
                FieldKind::Message => Some(s.message),
                _ => None,
            };
            if let Some(v) = v {
                return Some(Cow::Borrowed(v));
            }
        }
        labels.get(name).map(|v| Cow::Borrowed(v.as_str()))
    }
}

impl Batch<'_> {
    /// Sets the labels of the stream the following lines belong to.
    pub fn set_stream_labels(&mut self, labels: &Labels<'_>) {
        let map: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.set_stream_map(map);
    }

    /// Sets the labels (as a map) of the stream the following lines belong to.
    pub fn set_stream_map(&mut self, labels: BTreeMap<String, String>) {
        for (ok, rule) in self.parts.stream_ok.iter_mut().zip(&self.compiled.rules) {
            *ok = rule
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(|n| labels.get(n).map(String::as_str)));
        }
        self.labels = Arc::new(labels);
    }

    /// Runs every rule over one line with event time `ts_ns`; calls `on_match` for each
    /// (line, rule) match, in rule order.
    pub fn line(&mut self, ts_ns: i64, line: &[u8], on_match: &mut dyn FnMut(LineMatch<'_>)) {
        let mut hits = std::mem::take(&mut self.parts.hits);
        hits.clear();
        let compiled = Arc::clone(&self.compiled);
        compiled.prefilter.find_all(line, &mut hits);
        self.line_with_hits(&compiled, ts_ns, line, &hits, on_match);
        self.parts.hits = hits;
    }

    /// Runs every rule over a stream's entries, as [`Batch::line`] does for each.
    pub fn entries(&mut self, entries: &[EntryView<'_>], on_match: &mut dyn FnMut(LineMatch<'_>)) {
        let mut hits = std::mem::take(&mut self.parts.hits);
        let compiled = Arc::clone(&self.compiled);
        for entry in entries {
            hits.clear();
            compiled.prefilter.find_all(&entry.line, &mut hits);
            self.line_with_hits(&compiled, entry.timestamp_ns, &entry.line, &hits, on_match);
        }
        self.parts.hits = hits;
    }

    /// Runs the rules over one line whose literal hits (prefilter pattern indexes) are known.
    /// `compiled` is the batch's rule set (passed in: no reference count touched per line).
    fn line_with_hits(
        &mut self,
        compiled: &Compiled,
        ts_ns: i64,
        line: &[u8],
        hits: &[u32],
        on_match: &mut dyn FnMut(LineMatch<'_>),
    ) {
        self.parts.generation = self.parts.generation.wrapping_add(1);
        if self.parts.generation == 0 {
            // Wrapped: clear the stamps so no stale one looks current.
            self.parts.any_gen.fill(0);
            self.parts.all_gen.fill(0);
            self.parts.none_gen.fill(0);
            self.parts.touched_gen.fill(0);
            self.parts.regex_cache.generation.fill(0);
            self.parts.regex_cache.lower_generation = 0;
            self.parts.ip_memo = IpMemo::default();
            self.parts.key_memo = KeyMemo::default();
            self.parts.generation = 1;
        }
        let generation = self.parts.generation;
        self.parts.touched.clear();
        let mut access_shape = false;
        for &pattern in hits {
            if pattern == compiled.access_shape {
                access_shape = true;
                continue;
            }
            {
                for &(r, role) in &compiled.owners[pattern as usize] {
                    let ri = r as usize;
                    match role {
                        Role::Any => self.parts.any_gen[ri] = generation,
                        Role::All(bit) => {
                            if self.parts.all_gen[ri] != generation {
                                self.parts.all_gen[ri] = generation;
                                self.parts.all_bits[ri] = 0;
                            }
                            self.parts.all_bits[ri] |= 1 << bit;
                        }
                        Role::None => self.parts.none_gen[ri] = generation,
                    }
                    if !matches!(role, Role::None) && self.parts.touched_gen[ri] != generation {
                        self.parts.touched_gen[ri] = generation;
                        self.parts.touched.push(r);
                    }
                }
            }
        }
        // Rules without literals are access-log rules: skip them on lines without the shape
        // `… [time] "request" …` before paying for UTF-8 validation and parsing.
        let always = !compiled.always.is_empty() && access_shape;
        if self.parts.touched.is_empty() && !always {
            return;
        }
        if always {
            for &r in &compiled.always {
                if self.parts.touched_gen[r as usize] != generation {
                    self.parts.touched_gen[r as usize] = generation;
                    self.parts.touched.push(r);
                }
            }
        }
        if self.parts.touched.len() > 1 {
            // Rule order (for `on_match`); the list is short and usually nearly sorted.
            self.parts.touched.sort_unstable();
        }
        // Valid UTF-8 (nearly every line) is checked much faster than it is repaired.
        let text: Cow<'_, str> = match simdutf8::basic::from_utf8(line) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        };
        let mut view = LineView {
            text: &text,
            access: None,
            access_tail: "",
            syslog: None,
            uri_decoded: std::mem::take(&mut self.parts.uri_buf),
            uri_ready: false,
        };
        let t_ms = ts_ns.div_euclid(1_000_000);
        let touched = std::mem::take(&mut self.parts.touched);
        let mut cache = std::mem::take(&mut self.parts.regex_cache);
        for &r in &touched {
            let ri = r as usize;
            let rule = &compiled.rules[ri];
            let gated = (rule.any.is_empty() || self.parts.any_gen[ri] == generation)
                && (compiled.all_masks[ri] == 0
                    || (self.parts.all_gen[ri] == generation
                        && self.parts.all_bits[ri] == compiled.all_masks[ri]))
                && self.parts.none_gen[ri] != generation
                && self.parts.stream_ok[ri];
            if gated {
                self.eval_rule(compiled, ri, &mut view, &mut cache, t_ms, ts_ns, on_match);
            }
        }
        self.parts.regex_cache = cache;
        self.parts.uri_buf = view.uri_decoded;
        self.parts.touched = touched;
        self.newest_ms = self.newest_ms.max(t_ms.min(self.clock_cap_ms));
    }

    #[allow(clippy::too_many_arguments)]
    fn eval_rule<'t>(
        &mut self,
        compiled: &Compiled,
        ri: usize,
        view: &mut LineView<'t>,
        cache: &mut RegexCache,
        t_ms: i64,
        ts_ns: i64,
        on_match: &mut dyn FnMut(LineMatch<'_>),
    ) {
        let rule = &compiled.rules[ri];
        match rule.parser {
            Some(ParserKind::Access) if view.access().is_none() => return,
            Some(ParserKind::Syslog) => {
                view.syslog();
            }
            _ => {}
        }
        let text = view.text;
        let mut caps_id = u32::MAX;
        let caps = if rule.regexes.is_empty() {
            None
        } else {
            match cache.first(compiled, ri, text, self.parts.generation) {
                Some(id) => {
                    caps_id = id as u32;
                    Some(Caps {
                        text,
                        regex: &compiled.regexes[id],
                        locs: &cache.locs[id],
                        fast: cache.fast[id],
                    })
                }
                None => return,
            }
        };
        if rule.not_regexes.iter().any(|re| re.is_match(text)) {
            return;
        }
        if rule.needs_uri_decoded && !view.uri_ready {
            let mut decoded = std::mem::take(&mut view.uri_decoded);
            let uri = view.get("uri", FieldKind::Uri, caps.as_ref(), &self.labels);
            extract::decode_uri_into(
                uri.as_deref().unwrap_or(""),
                &mut self.parts.uri_scratch,
                &mut decoded,
            );
            view.uri_decoded = decoded;
            view.uri_ready = true;
        }
        for c in &rule.conditions {
            let pass = match view.get(&c.field.name, c.field.kind, caps.as_ref(), &self.labels) {
                Some(v) => c.test.eval(&v) != c.negate,
                None => c.negate,
            };
            if !pass {
                return;
            }
        }
        // Build `tenant \x1f key`: fields joined by ','; `ip` fields normalised (addresses or
        // host names). Written into a reused buffer: no allocation for a key already tracked.
        // The rules of one line that key by the same fields, read from the same captures and
        // parsers, share the key built for the first of them.
        let prefix = self.tenant.len() + TENANT_SEP.len_utf8();
        let memo = KeyMemo {
            generation: self.parts.generation,
            class: compiled.key_class[ri],
            caps: caps_id,
            parsed: (view.access.is_some(), view.syslog.is_some()),
            key_ok: false,
            allowlisted: false,
        };
        let (key_ok, mut allowlisted) = if memo.class != NO_KEY_CLASS
            && self.parts.key_memo.same_key(&memo)
        {
            (self.parts.key_memo.key_ok, self.parts.key_memo.allowlisted)
        } else {
            self.parts.key_buf.clear();
            self.parts.key_buf.push_str(&self.tenant);
            self.parts.key_buf.push(TENANT_SEP);
            let mut key_ok = true;
            let mut allowlisted = false;
            for (i, f) in rule.key.iter().enumerate() {
                if i > 0 {
                    self.parts.key_buf.push(',');
                }
                match view.get(&f.name, f.kind, caps.as_ref(), &self.labels) {
                    Some(v) if f.is_ip => {
                        if let Some(ip) = self.parts.ip_memo.parse(
                            &v,
                            matches!(v, Cow::Borrowed(_)),
                            self.parts.generation,
                        ) {
                            allowlisted |= compiled.allowlist.contains(ip);
                            // Digits and dots that parse as IPv4 are already its canonical form
                            // (the parsers reject leading zeros): no need to print it again.
                            if ip.is_ipv4() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                                self.parts.key_buf.push_str(&v);
                            } else {
                                push_ip(&mut self.parts.key_buf, ip);
                            }
                        } else if let Some(host) = extract::normalize_source(&v) {
                            self.parts.key_buf.push_str(&host);
                        } else {
                            key_ok = false;
                        }
                    }
                    // Printable ASCII of at most 128 bytes (nearly every value) is copied as it is.
                    Some(v)
                        if !v.is_empty()
                            && v.len() <= 128
                            && v.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
                    {
                        self.parts.key_buf.push_str(&v)
                    }
                    Some(v) if !v.is_empty() => self
                        .parts
                        .key_buf
                        .extend(v.chars().filter(|c| !c.is_control()).take(128)),
                    // An attack needs a source to be counted; other missing parts group as "-".
                    _ if f.is_ip => key_ok = false,
                    _ => self.parts.key_buf.push('-'),
                }
            }
            // Also after a rule whose key is never shared: the buffer holds this key now.
            self.parts.key_memo = KeyMemo {
                key_ok,
                allowlisted,
                ..memo
            };
            (key_ok, allowlisted)
        };
        allowlisted &= !rule.include_allowlisted;
        let value = match &rule.distinct {
            Some(f) => view
                .get(&f.name, f.kind, caps.as_ref(), &self.labels)
                .map(|v| match v {
                    Cow::Borrowed(v) => Cow::Borrowed(truncate(v, 256)),
                    Cow::Owned(v) => Cow::Owned(truncate(&v, 256).to_owned()),
                }),
            None => None,
        };
        self.parts.matches[ri] += 1;
        if rule.line_signal {
            on_match(LineMatch {
                rule: &rule.id,
                key: key_ok.then_some(&self.parts.key_buf[prefix..]),
                allowlisted,
            });
        }
        if !key_ok || allowlisted || (rule.distinct.is_some() && value.is_none()) {
            return;
        }
        let kept_line = truncate(view.text, compiled.max_sample_bytes);
        let labels_for_shared = self.deltas.as_ref().map(|_| Arc::clone(&self.labels));
        let kept = NewSample {
            ts_ns,
            line: kept_line,
            labels: &self.labels,
            value: value.as_deref(),
            always_keep: self.deltas.is_some(),
        };
        let value_hash = value
            .as_deref()
            .map(|v| (self.detector.value_hasher.hash_one(v), v));
        // Looked up before taking this rule's entry: never two map locks held at once.
        let suppressed = compiled.suppressors[ri].iter().any(|&s| {
            compiled.states[s as usize]
                .get(self.parts.key_buf.as_str())
                .is_some_and(|state| state.open.is_some())
        });
        let map = &compiled.states[ri];
        let existing = map.get_mut(self.parts.key_buf.as_str());
        let mut state = if let Some(state) = existing {
            state
        } else {
            if self.detector.total_keys.load(Ordering::Relaxed) >= compiled.max_keys {
                self.detector.watermark_ms.fetch_max(
                    self.newest_ms.max(t_ms.min(self.clock_cap_ms)),
                    Ordering::Relaxed,
                );
                self.detector.maintain(compiled, true);
            }
            let mut created = false;
            let state = map
                .entry(self.parts.key_buf.as_str().into())
                .or_insert_with(|| {
                    created = true;
                    Box::new(KeyState::new(rule))
                });
            if created {
                self.detector.total_keys.fetch_add(1, Ordering::Relaxed);
            }
            state
        };
        let outcome = state.record(
            rule,
            t_ms,
            value_hash,
            kept,
            compiled.samples_per_key,
            suppressed,
        );
        let quiet = state.in_cooldown(t_ms);
        drop(state);
        if outcome == Outcome::EmitDue {
            self.parts
                .fired
                .push((ri as u32, self.parts.key_buf.as_str().into()));
        }
        if outcome != Outcome::Late {
            if let Some(deltas) = &mut self.deltas {
                let before = deltas.len();
                let params = WindowParams {
                    kind: if rule.distinct.is_some() {
                        WindowKind::Distinct
                    } else {
                        WindowKind::Count
                    },
                    threshold: rule.spec.threshold,
                    window_ms: rule.spec.window_ms,
                    tolerance_ms: rule.spec.tolerance_ms,
                };
                let at = WindowRef {
                    tenant: &self.tenant,
                    rule: &rule.id,
                    key: &self.parts.key_buf[prefix..],
                };
                let entry = deltas.entry(at, &params);
                match value.as_deref() {
                    // A hash every replica computes alike (the value hasher is per process).
                    Some(v) => entry.distinct(hash_str(v), t_ms),
                    None => entry.count(t_ms),
                }
                if let Some(labels) = &labels_for_shared {
                    entry.sample(ts_ns, kept_line, labels, value.as_deref());
                }
                // During a cooldown nothing can be emitted: skip reading the shared evidence.
                entry.want_samples(if quiet {
                    SampleMode::Never
                } else {
                    SampleMode::WhenFiring
                });
                if deltas.len() > before {
                    self.parts
                        .delta_keys
                        .push((ri as u32, self.parts.key_buf.as_str().into()));
                }
            }
        }
    }

    /// Emits the incidents that fired in this batch (with the evidence of the whole batch),
    /// updates the metrics and expires idle keys when due.
    pub fn flush(&mut self, sink: &dyn IncidentSink) {
        let compiled = Arc::clone(&self.compiled);
        for (ri, n) in self.parts.matches.iter_mut().enumerate() {
            if *n > 0 {
                compiled.rule_matches[ri].inc_by(*n);
                *n = 0;
            }
        }
        if self.newest_ms != i64::MIN {
            self.detector
                .watermark_ms
                .fetch_max(self.newest_ms, Ordering::Relaxed);
        }
        let totals = self.share(&compiled);
        let mut incidents = Vec::new();
        for (ri, map_key) in self.parts.fired.drain(..) {
            let rule = &compiled.rules[ri as usize];
            let Some(mut state) = compiled.states[ri as usize].get_mut(&map_key) else {
                continue;
            };
            if let Some(mut inc) = build_incident(rule, &map_key, &mut state) {
                let at = WindowRef {
                    tenant: &inc.tenant,
                    rule: &inc.rule,
                    key: &inc.key,
                };
                if let Some(t) = totals.as_ref().and_then(|t| t.get(at)) {
                    merge_shared(&mut inc, rule, t);
                }
                incidents.push((ri, inc));
            }
        }
        for (ri, inc) in incidents {
            if let Some(shared) = &self.detector.shared {
                // One replica alone reports an attack: the one that holds its claim.
                let cooldown = u64::try_from(compiled.rules[ri as usize].cooldown_ms)
                    .unwrap_or(0)
                    .max(1);
                let claim = shared.claim(
                    &inc.tenant,
                    &inc.rule,
                    &inc.key,
                    Duration::from_millis(cooldown),
                );
                if !claim.should_notify() {
                    tracing::debug!(
                        rule = %inc.rule,
                        key = %inc.key,
                        "incident claimed by another replica; not reported here"
                    );
                    continue;
                }
            }
            self.detector
                .metrics
                .incidents
                .with_label_values(&[inc.rule.as_str(), inc.severity.as_str()])
                .inc();
            sink.offer(inc);
        }
        self.detector.maintain(&compiled, false);
    }
}

impl Batch<'_> {
    /// With shared state: sends this batch's deltas in one round trip and applies the
    /// cluster-wide totals, adding the keys that fire only cluster-wide to `fired`. Returns
    /// the totals, or `None` when nothing is shared or Redis failed (degraded: the local
    /// verdicts stand).
    fn share(&mut self, compiled: &Compiled) -> Option<BatchTotals> {
        let shared = self.detector.shared.as_ref()?;
        let deltas = self.deltas.as_mut()?;
        let keys = std::mem::take(&mut self.parts.delta_keys);
        if deltas.is_empty() {
            return None;
        }
        let result = shared.sync(deltas);
        deltas.clear();
        let totals = result.ok()?;
        for ((ri, map_key), (_, t)) in keys.into_iter().zip(totals.iter()) {
            if !t.fires {
                continue;
            }
            let ri = ri as usize;
            let rule = &compiled.rules[ri];
            // Looked up before taking this rule's entry: never two map locks held at once.
            let suppressed = compiled.suppressors[ri].iter().any(|&s| {
                compiled.states[s as usize]
                    .get(&map_key)
                    .is_some_and(|state| state.open.is_some())
            });
            let Some(mut state) = compiled.states[ri].get_mut(&map_key) else {
                continue;
            };
            if state.apply_shared(rule, t.newest_ms, t.total, suppressed) == Outcome::EmitDue {
                drop(state);
                self.parts.fired.push((ri as u32, map_key));
            }
        }
        Some(totals)
    }
}

/// Puts the cluster-wide view into an incident about to be reported: the larger count and the
/// sample lines every replica contributed.
fn merge_shared(inc: &mut Incident, rule: &Rule, totals: &crate::state::KeyTotals) {
    if rule.distinct.is_some() {
        inc.distinct_count = inc.distinct_count.max(totals.total);
    } else {
        inc.count = inc.count.max(totals.total);
    }
    if !totals.samples.is_empty() {
        inc.samples = totals
            .samples
            .iter()
            .map(|s| Sample {
                timestamp: EventTime(s.ts_ns),
                line: s.line.clone(),
                labels: s.labels.clone(),
            })
            .collect();
        if let Some(first) = inc.samples.first() {
            inc.first_seen = EventTime(inc.first_seen.0.min(first.timestamp.0));
        }
    }
}

// === impl IpMemo ===

/// [`extract::parse_ip`] of the value last parsed on the current line, known by where it is:
/// a borrowed field value lives (unchanged) in the line, its captures, the decoded URI or the
/// stream labels for the whole line, so the same address and length means the same text.
#[derive(Default)]
struct IpMemo {
    /// The line (`Batch::generation`) of the memo; 0: none.
    generation: u32,
    at: usize,
    len: usize,
    ip: Option<std::net::IpAddr>,
}

impl IpMemo {
    /// `borrowed`: `s` is a borrowed field value (an owned one is parsed without the memo).
    fn parse(&mut self, s: &str, borrowed: bool, generation: u32) -> Option<std::net::IpAddr> {
        if !borrowed {
            return extract::parse_ip(s);
        }
        let at = s.as_ptr() as usize;
        if self.generation != generation || self.at != at || self.len != s.len() {
            *self = IpMemo {
                generation,
                at,
                len: s.len(),
                ip: extract::parse_ip(s),
            };
        }
        self.ip
    }
}

// === impl RegexCache ===

/// Per shared regex: the line (`generation`) it last ran on, its verdict and its captures, so
/// rules that share a regex run it once per line, without allocating.
#[derive(Default)]
struct RegexCache {
    generation: Vec<u32>,
    hit: Vec<bool>,
    locs: Vec<regex::CaptureLocations>,
    /// The captures when the hand-written matcher found the match (then `locs` is stale).
    fast: Vec<Option<FastCaps>>,
    /// The line in lower case, made for the line `lower_generation` when a regex gate needed it.
    lower: Vec<u8>,
    lower_generation: u32,
    /// `lower` is all printable ASCII (what the SSH matchers need).
    lower_printable: bool,
}

impl RegexCache {
    /// Runs rule `ri`'s regexes in order (each at most once per line) and returns the index of
    /// the first that matches.
    fn first(
        &mut self,
        compiled: &Compiled,
        ri: usize,
        text: &str,
        generation: u32,
    ) -> Option<usize> {
        for &id in &compiled.rule_regexes[ri] {
            let id = id as usize;
            if self.generation[id] != generation {
                self.generation[id] = generation;
                self.hit[id] = self.run(compiled, id, text, generation);
            }
            if self.hit[id] {
                return Some(id);
            }
        }
        None
    }

    /// Runs regex `id` over `text` (its hand-written matcher when it has one and the line
    /// suits it), leaving the captures in `locs` or `fast`; returns whether it matched.
    fn run(&mut self, compiled: &Compiled, id: usize, text: &str, generation: u32) -> bool {
        if !self.may_match(compiled, id, text, generation) {
            return false;
        }
        // `None`: the matcher declined the line (not printable ASCII); the regex decides.
        let verdict = match compiled.regex_matchers[id] {
            Some(Matcher::Segfault) => kernel::segfault(text.as_bytes()).ok().map(|found| {
                found.map(|binary| FastCaps {
                    names: SEGFAULT_GROUPS.0,
                    kinds: SEGFAULT_GROUPS.1,
                    spans: [binary, (0, 0)],
                })
            }),
            Some(Matcher::Ssh(shape)) => {
                self.lower_case(text, generation);
                match ssh::extract(shape, &self.lower, self.lower_printable) {
                    ssh::Verdict::Match(spans) => Some(Some(FastCaps {
                        names: SSH_GROUPS.0,
                        kinds: SSH_GROUPS.1,
                        spans: [spans.user, spans.ip],
                    })),
                    ssh::Verdict::NoMatch => Some(None),
                    ssh::Verdict::Decline => None,
                }
            }
            None => None,
        };
        if let Some(found) = verdict {
            self.fast[id] = found;
            return found.is_some();
        }
        self.fast[id] = None;
        compiled.regexes[id]
            .captures_read(&mut self.locs[id], text)
            .is_some()
    }

    /// Makes `lower` the line in lower case (once per line).
    fn lower_case(&mut self, text: &str, generation: u32) {
        if self.lower_generation != generation {
            self.lower_generation = generation;
            self.lower.clear();
            self.lower
                .extend(text.bytes().map(|b| b.to_ascii_lowercase()));
            self.lower_printable = ssh::printable(&self.lower);
        }
    }

    /// Returns false when regex `id` cannot match `text`: the text lacks the literal every
    /// match starts with (compared in lower case). A regex search that fails costs a pass over
    /// the whole line (for regexes anchored at the end, a reverse one); this test is one
    /// `memmem` over a lower-cased copy, made once per line.
    fn may_match(&mut self, compiled: &Compiled, id: usize, text: &str, generation: u32) -> bool {
        let Some(prefix) = &compiled.regex_prefixes[id] else {
            return true;
        };
        self.lower_case(text, generation);
        prefix.find(&self.lower).is_some()
    }
}

/// The captures of the regex that matched a line.
struct Caps<'t, 'c> {
    text: &'t str,
    regex: &'c regex::Regex,
    locs: &'c regex::CaptureLocations,
    fast: Option<FastCaps>,
}

/// A hand-written matcher that stands for one built-in regex, chosen by the regex's source
/// text: the SSH failure forms (`ssh`) and the kernel's segfault line (`kernel`).
#[derive(Debug, Clone, Copy)]
enum Matcher {
    Ssh(ssh::Shape),
    Segfault,
}

impl Matcher {
    fn of(src: &str) -> Option<Matcher> {
        if src == kernel::SEGFAULT {
            return Some(Matcher::Segfault);
        }
        ssh::Shape::of(src).map(Matcher::Ssh)
    }
}

/// The groups of the SSH matchers' regexes, by name and [`FieldKind`].
const SSH_GROUPS: ([&str; 2], [FieldKind; 2]) = (["user", "ip"], [FieldKind::User, FieldKind::Ip]);
/// The groups of the segfault matcher's regex (the second: none).
const SEGFAULT_GROUPS: ([&str; 2], [FieldKind; 2]) =
    (["binary", ""], [FieldKind::Other, FieldKind::Other]);

/// The captures a hand-written matcher found: every group of the regex it stands for, by name
/// (an empty name is no group).
#[derive(Debug, Clone, Copy)]
struct FastCaps {
    names: [&'static str; 2],
    /// `FieldKind::of` each name (`Other` for a name no parser field has, and for none).
    kinds: [FieldKind; 2],
    spans: [(usize, usize); 2],
}

impl<'t> Caps<'t, '_> {
    /// The group `name`, whose [`FieldKind`] is `kind`.
    fn name(&self, name: &str, kind: FieldKind) -> Option<&'t str> {
        if let Some(fast) = self.fast {
            // The matchers stand for regexes whose only groups are these. A parser field's
            // kind stands for its one name: no string comparison.
            let at = if kind == FieldKind::Other {
                fast.names
                    .iter()
                    .position(|n| !n.is_empty() && *n == name)?
            } else {
                fast.kinds.iter().position(|&k| k == kind)?
            };
            let (start, end) = fast.spans[at];
            return self.text.get(start..end);
        }
        let index = self.regex.capture_names().position(|n| n == Some(name))?;
        let (start, end) = self.locs.get(index)?;
        self.text.get(start..end)
    }
}

/// The key a rule built on a line, and what it was built from: a later rule of the same
/// [`Compiled::key_class`] on the same line, reading the same captures with the same parsers
/// run, would build the same key (it is still in `Batch::key_buf`).
#[derive(Debug, Clone, Copy)]
struct KeyMemo {
    /// The line (`Batch::generation`); 0: none.
    generation: u32,
    class: u32,
    /// The regex whose captures the key read (`u32::MAX`: none).
    caps: u32,
    /// Whether the access-log and the syslog parsers had run.
    parsed: (bool, bool),
    key_ok: bool,
    allowlisted: bool,
}

impl Default for KeyMemo {
    fn default() -> Self {
        KeyMemo {
            generation: 0,
            class: NO_KEY_CLASS,
            caps: u32::MAX,
            parsed: (false, false),
            key_ok: false,
            allowlisted: false,
        }
    }
}

impl KeyMemo {
    /// Whether `other` describes the same key as this one.
    fn same_key(&self, other: &KeyMemo) -> bool {
        self.generation == other.generation
            && self.class == other.class
            && self.caps == other.caps
            && self.parsed == other.parsed
    }
}

/// Appends `ip` as text; IPv4 without the formatting machinery (it is the hot key).
fn push_ip(buf: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                if octet >= 100 {
                    buf.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    buf.push(char::from(b'0' + octet / 10 % 10));
                }
                buf.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(_) => {
            let _ = write!(buf, "{ip}");
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

fn build_incident(rule: &Rule, map_key: &str, state: &mut KeyState) -> Option<Incident> {
    let samples: Vec<Sample> = state
        .samples
        .iter()
        .map(|s| Sample {
            timestamp: EventTime(s.ts_ns),
            line: s.line.to_string(),
            labels: (*s.labels).clone(),
        })
        .collect();
    let open = state.open.as_mut().filter(|o| o.emit_pending)?;
    let (tenant, key) = map_key.split_once(TENANT_SEP).unwrap_or(("", map_key));
    let labels = samples.last().map(|s| s.labels.clone()).unwrap_or_default();
    let mut id_hash = hash_str(tenant);
    for part in [rule.id.as_str(), key] {
        id_hash = hash_bytes(id_hash, &[0]);
        id_hash = hash_bytes(id_hash, part.as_bytes());
    }
    id_hash = hash_bytes(id_hash, &open.fired_ms.to_le_bytes());
    let ms = |t: i64| EventTime(t.saturating_mul(1_000_000));
    let incident = Incident {
        id: format!("{id_hash:016x}"),
        rule: rule.id.clone(),
        description: rule.description.clone(),
        remediation: rule.remediation.clone(),
        severity: rule.severity,
        key: key.to_owned(),
        key_kind: rule.key_kind.clone(),
        count: open.count,
        new_count: open.since_emit,
        distinct_field: rule.distinct.as_ref().map(|f| f.name.clone()),
        distinct_count: open.distinct_hashes.len() as u64,
        distinct_values: open.distinct_values.clone(),
        threshold: rule.spec.threshold,
        window_start: ms(open.window_end_ms.saturating_sub(rule.spec.window_ms)),
        window_end: ms(open.window_end_ms),
        first_seen: ms(open.first_seen_ms),
        last_seen: ms(open.last_seen_ms),
        tenant: tenant.to_owned(),
        logql: logql(&labels, key, samples.last().map(|s| s.line.as_str())),
        labels,
        samples,
        follow_up: open.emitted > 0,
        sequence: open.emitted,
    };
    open.emitted += 1;
    open.since_emit = 0;
    open.emit_pending = false;
    Some(incident)
}

/// Builds `{labels} |= "key part" …`: the stream of the newest sample, filtered by each key
/// part that occurs in its line (so the query shows the evidence and nothing is filtered away).
fn logql(labels: &BTreeMap<String, String>, key: &str, line: Option<&str>) -> String {
    let mut q = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            q.push_str(", ");
        }
        q.push_str(k);
        q.push('=');
        push_quoted(&mut q, v);
    }
    if labels.is_empty() {
        q.push_str("job=~\".+\"");
    }
    q.push('}');
    let line = line.unwrap_or("").to_ascii_lowercase();
    for part in key.split(',').filter(|p| !p.is_empty()) {
        if line.contains(&part.to_ascii_lowercase()) {
            q.push_str(" |= ");
            push_quoted(&mut q, part);
        }
    }
    q
}

#[cfg(test)]
mod tests;
