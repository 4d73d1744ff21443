//! Local aggregation of one batch before it goes to Redis, and the totals that come back.
//!
//! The engine records every non-late match into [`BatchDeltas`] as it goes (no I/O): counts are
//! summed per time bucket, distinct values keep their newest time (at most the cap per key),
//! samples keep the newest few. At the end of the batch [`super::SharedState::sync`] sends it all
//! in one round trip and returns a [`BatchTotals`] in the same order.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::bucket;

/// Which window a rule uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Matches in the window.
    Count,
    /// Different values of a field in the window.
    Distinct,
}

/// A rule's window, as the shared layer needs it (times in ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowParams {
    /// Count or distinct.
    pub kind: WindowKind,
    /// Matches (or values) that make the window fire.
    pub threshold: u32,
    /// Window length, ms (at least 1).
    pub window_ms: i64,
    /// Out-of-order tolerance, ms: how long past the window a key must outlive its last write.
    pub tolerance_ms: i64,
}

/// Names one shared window: (tenant, rule, key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowRef<'a> {
    /// The tenant (`X-Scope-OrgID`).
    pub tenant: &'a str,
    /// The rule id.
    pub rule: &'a str,
    /// The key value (an address, a host, `host,binary`…).
    pub key: &'a str,
}

/// Which keys get their shared samples back with the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SampleMode {
    /// Never (the caller reads them later with [`super::SharedState::samples`] if needed).
    Never,
    /// When the cluster-wide total reached the threshold (the default): what a claimant needs.
    #[default]
    WhenFiring,
    /// Always.
    Always,
}

impl SampleMode {
    pub(crate) fn as_arg(self) -> &'static str {
        match self {
            SampleMode::Never => "0",
            SampleMode::WhenFiring => "1",
            SampleMode::Always => "2",
        }
    }
}

/// One sample line as stored in Redis (JSON), with the replica that saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedSample {
    /// Event time, ns.
    pub ts_ns: i64,
    /// The line, cut to `state.max_sample_bytes`.
    pub line: String,
    /// The stream's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The distinct field's value, for distinct rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Id of the replica that saw it.
    #[serde(default)]
    pub replica: String,
}

/// One batch's deltas, keyed by (tenant, rule, key), in first-touched order.
#[derive(Debug)]
pub struct BatchDeltas {
    pub(crate) entries: Vec<EntryDeltas>,
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    scratch: String,
    samples_per_key: usize,
    max_sample_bytes: usize,
    max_distinct: usize,
    buckets_per_window: u32,
}

/// The deltas of one (tenant, rule, key) in a batch.
#[derive(Debug)]
pub struct EntryDeltas {
    pub(crate) tenant: String,
    pub(crate) rule: String,
    pub(crate) key: String,
    pub(crate) params: WindowParams,
    pub(crate) bucket_ms: i64,
    /// Newest event time recorded in this batch, ms.
    pub(crate) newest_ms: i64,
    /// (bucket index, events), ascending by index.
    pub(crate) counts: Vec<(i64, u64)>,
    /// value hash → newest time, ms.
    pub(crate) distinct: HashMap<u64, i64, foldhash::fast::RandomState>,
    /// Newest samples, in event-time order.
    pub(crate) samples: VecDeque<SharedSample>,
    pub(crate) want_samples: SampleMode,
    samples_per_key: usize,
    max_sample_bytes: usize,
}

impl BatchDeltas {
    /// Creates an empty batch with the bounds of a `state:` section.
    pub fn new(cfg: &super::StateConfig) -> Self {
        BatchDeltas {
            entries: Vec::new(),
            index: HashMap::default(),
            scratch: String::new(),
            samples_per_key: cfg.samples_per_key as usize,
            max_sample_bytes: cfg.max_sample_bytes as usize,
            max_distinct: cfg.max_distinct_per_key as usize,
            buckets_per_window: cfg.buckets_per_window,
        }
    }

    /// Returns the deltas of `at`, creating them (with `params`) on first touch. `params` of a
    /// later touch are ignored: one rule has one window per batch.
    pub fn entry(&mut self, at: WindowRef<'_>, params: &WindowParams) -> &mut EntryDeltas {
        self.scratch.clear();
        for (i, part) in [at.tenant, at.rule, at.key].into_iter().enumerate() {
            if i > 0 {
                self.scratch.push('\u{1f}');
            }
            self.scratch.push_str(part);
        }
        let i = match self.index.get(self.scratch.as_str()) {
            Some(&i) => i,
            None => {
                let i = self.entries.len();
                self.index.insert(self.scratch.clone(), i);
                self.entries.push(EntryDeltas {
                    tenant: at.tenant.to_owned(),
                    rule: at.rule.to_owned(),
                    key: at.key.to_owned(),
                    params: *params,
                    bucket_ms: bucket::bucket_ms(params.window_ms, self.buckets_per_window),
                    newest_ms: i64::MIN,
                    counts: Vec::new(),
                    distinct: HashMap::default(),
                    samples: VecDeque::new(),
                    want_samples: SampleMode::default(),
                    samples_per_key: self.samples_per_key,
                    max_sample_bytes: self.max_sample_bytes,
                });
                i
            }
        };
        let max_distinct = self.max_distinct.max(params.threshold as usize);
        let entry = &mut self.entries[i];
        if entry.distinct.len() > 2 * max_distinct {
            entry.trim_distinct(max_distinct);
        }
        entry
    }

    /// Returns the number of (tenant, rule, key) entries touched.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns true when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
    }

    /// Returns the (tenant, rule, key) of each entry, in the order totals come back.
    pub fn refs(&self) -> impl Iterator<Item = WindowRef<'_>> {
        self.entries.iter().map(EntryDeltas::window_ref)
    }

    pub(crate) fn finish(&mut self) {
        let max_distinct = self.max_distinct;
        for e in &mut self.entries {
            e.trim_distinct(max_distinct.max(e.params.threshold as usize));
        }
    }
}

impl EntryDeltas {
    /// Records one `count` event at `t_ms`.
    pub fn count(&mut self, t_ms: i64) {
        self.count_n(t_ms, 1);
    }

    /// Records `n` `count` events at `t_ms`.
    pub fn count_n(&mut self, t_ms: i64, n: u64) {
        self.newest_ms = self.newest_ms.max(t_ms);
        let b = bucket::bucket_index(t_ms, self.bucket_ms);
        // Events mostly arrive in order, so the bucket is usually the last one.
        match self.counts.iter().rposition(|(i, _)| *i <= b) {
            Some(at) if self.counts[at].0 == b => self.counts[at].1 += n,
            Some(at) => self.counts.insert(at + 1, (b, n)),
            None => self.counts.insert(0, (b, n)),
        }
    }

    /// Records one occurrence of the value hashed to `value_hash` at `t_ms` (`distinct` rules).
    pub fn distinct(&mut self, value_hash: u64, t_ms: i64) {
        self.newest_ms = self.newest_ms.max(t_ms);
        let newest = self.distinct.entry(value_hash).or_insert(t_ms);
        *newest = (*newest).max(t_ms);
    }

    /// Keeps `line` as evidence (the newest `samples_per_key` of the batch are sent).
    pub fn sample(
        &mut self,
        ts_ns: i64,
        line: &str,
        labels: &BTreeMap<String, String>,
        value: Option<&str>,
    ) {
        if self.samples_per_key == 0 {
            return;
        }
        if self.samples.len() >= self.samples_per_key {
            if self.samples.front().is_some_and(|s| s.ts_ns > ts_ns) {
                return;
            }
            self.samples.pop_front();
        }
        let s = SharedSample {
            ts_ns,
            line: truncate(line, self.max_sample_bytes).to_owned(),
            labels: labels.clone(),
            value: value.map(|v| truncate(v, self.max_sample_bytes).to_owned()),
            replica: String::new(),
        };
        let at = self.samples.partition_point(|x| x.ts_ns <= ts_ns);
        self.samples.insert(at, s);
    }

    /// Chooses when this key's shared samples come back with the totals.
    pub fn want_samples(&mut self, mode: SampleMode) {
        self.want_samples = mode;
    }

    /// Returns the (tenant, rule, key) of this entry.
    pub fn window_ref(&self) -> WindowRef<'_> {
        WindowRef {
            tenant: &self.tenant,
            rule: &self.rule,
            key: &self.key,
        }
    }

    /// Keeps the `cap` values with the newest times: exactly the ones a capped window needs.
    fn trim_distinct(&mut self, cap: usize) {
        if self.distinct.len() <= cap {
            return;
        }
        let mut times: Vec<i64> = self.distinct.values().copied().collect();
        let nth = times.len() - cap;
        let (_, &mut cutoff, _) = times.select_nth_unstable(nth);
        // Values strictly newer than the cut-off stay, then ties until `cap` are reached.
        let mut keep_ties = cap - self.distinct.values().filter(|&&t| t > cutoff).count();
        self.distinct.retain(|_, t| {
            if *t > cutoff {
                true
            } else if *t == cutoff && keep_ties > 0 {
                keep_ties -= 1;
                true
            } else {
                false
            }
        });
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The cluster-wide view of one (tenant, rule, key) after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTotals {
    /// Newest event time of the key over all replicas (`T`), ms.
    pub newest_ms: i64,
    /// Events (count) or different values (distinct, saturating at the cap) in the window
    /// ending at `newest_ms`, from every replica.
    pub total: u64,
    /// True when `total` reached the rule's threshold.
    pub fires: bool,
    /// Shared samples (if asked for, see [`SampleMode`]), oldest first, from every replica.
    pub samples: Vec<SharedSample>,
}

/// The totals of a batch, in the order of its entries.
#[derive(Debug, Clone, Default)]
pub struct BatchTotals {
    pub(crate) refs: Vec<(String, String, String)>,
    pub(crate) totals: Vec<KeyTotals>,
}

impl BatchTotals {
    /// Returns the totals of (tenant, rule, key), if the batch touched it.
    pub fn get(&self, at: WindowRef<'_>) -> Option<&KeyTotals> {
        self.refs
            .iter()
            .position(|(t, r, k)| t == at.tenant && r == at.rule && k == at.key)
            .map(|i| &self.totals[i])
    }

    /// Iterates over (window, totals) in the order the batch touched them.
    pub fn iter(&self) -> impl Iterator<Item = (WindowRef<'_>, &KeyTotals)> {
        self.refs.iter().zip(&self.totals).map(|((t, r, k), v)| {
            (
                WindowRef {
                    tenant: t,
                    rule: r,
                    key: k,
                },
                v,
            )
        })
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.totals.len()
    }

    /// Returns true when the batch was empty.
    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateConfig;

    const COUNT: WindowParams = WindowParams {
        kind: WindowKind::Count,
        threshold: 5,
        window_ms: 60_000,
        tolerance_ms: 60_000,
    };

    fn at(key: &str) -> WindowRef<'_> {
        WindowRef {
            tenant: "t",
            rule: "r",
            key,
        }
    }

    #[test]
    fn counts_are_summed_per_bucket_in_order() {
        let mut b = BatchDeltas::new(&StateConfig::default());
        let e = b.entry(at("a"), &COUNT);
        assert_eq!(e.bucket_ms, 2_000);
        for t in [4_100, 1_000, 1_999, 4_000, 0, 9_999] {
            e.count(t);
        }
        assert_eq!(e.counts, vec![(0, 3), (2, 2), (4, 1)]);
        assert_eq!(e.newest_ms, 9_999);
        b.entry(at("b"), &COUNT).count(1);
        b.entry(at("a"), &COUNT).count(1);
        assert_eq!(b.len(), 2);
        assert_eq!(b.refs().map(|r| r.key).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn distinct_values_keep_their_newest_time_and_are_capped() {
        let cfg = StateConfig {
            max_distinct_per_key: 3,
            ..StateConfig::default()
        };
        let params = WindowParams {
            kind: WindowKind::Distinct,
            threshold: 2,
            ..COUNT
        };
        let mut b = BatchDeltas::new(&cfg);
        let e = b.entry(at("a"), &params);
        e.distinct(1, 10);
        e.distinct(1, 5);
        for v in 2..=20u64 {
            e.distinct(v, v as i64 * 100);
        }
        b.finish();
        let e = &b.entries[0];
        let mut kept: Vec<(u64, i64)> = e.distinct.iter().map(|(v, t)| (*v, *t)).collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![(18, 1_800), (19, 1_900), (20, 2_000)]);
    }

    #[test]
    fn samples_keep_the_newest_lines_cut_at_a_char_boundary() {
        let cfg = StateConfig {
            samples_per_key: 2,
            max_sample_bytes: 64,
            ..StateConfig::default()
        };
        let mut b = BatchDeltas::new(&cfg);
        let labels = BTreeMap::from([("job".to_owned(), "auth".to_owned())]);
        let e = b.entry(at("a"), &COUNT);
        e.sample(3, "three", &labels, None);
        e.sample(1, "one", &labels, None);
        e.sample(2, "two", &labels, None);
        e.sample(4, &"é".repeat(40), &labels, None);
        let lines: Vec<&str> = e.samples.iter().map(|s| s.line.as_str()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "three");
        assert_eq!(lines[1].len(), 64);
    }
}
