//! Per-(rule, key) state: the window, the last N matching lines, and the open incident with its
//! cooldown. Lives in one sharded map per rule ([`KeyMap`]); the [`super::Detector`] bounds the
//! total number of keys and expires idle ones.
//!
//! Cooldowns live here, beside the window, rather than in a time-to-live cache: they run on event
//! time, so replaying the same input yields the same incidents whatever the wall clock does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use dashmap::DashMap;

use super::rule::Rule;
use super::window::{CountWindow, DistinctWindow, Recorded};

/// Values listed in an incident's `distinct_values`.
pub const MAX_LISTED_VALUES: usize = 20;
/// Different values counted exactly per open incident (then `distinct_count` stops growing).
const MAX_COUNTED_VALUES: usize = 1024;

/// One rule's keys: `tenant \x1f key` → state.
///
/// The state is boxed: under a flood of new keys (a brute force spread over a million addresses)
/// the map evicts and inserts all the time, and its tables settle at about four buckets per live
/// key; a bucket of a key and a pointer is 24 bytes, one holding the state itself was 216.
pub type KeyMap = DashMap<Box<str>, Box<KeyState>, foldhash::fast::RandomState>;

/// A matching line as the engine hands it over (borrowed; copied only into the ring).
#[derive(Debug, Clone)]
pub struct NewSample<'a> {
    /// Event time, ns.
    pub ts_ns: i64,
    /// The line, already truncated.
    pub line: &'a str,
    /// The stream's labels (cloned only when the sample it replaces has other labels).
    pub labels: &'a Arc<BTreeMap<String, String>>,
    /// The distinct field's value, for distinct rules.
    pub value: Option<&'a str>,
    /// Keep the line even where this replica's window cannot fire before the ring drops it
    /// (with shared state, the cluster-wide window may fire on it).
    pub always_keep: bool,
}

/// A matching line kept as evidence.
#[derive(Debug, Clone)]
pub struct KeptLine {
    /// Event time, ns.
    pub ts_ns: i64,
    /// The line, truncated (its buffer is reused when the ring is full).
    pub line: String,
    /// The stream's labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// The distinct field's value (truncated), for distinct rules.
    pub value: Option<String>,
}

/// The state of one key of one rule.
#[derive(Debug)]
pub struct KeyState {
    window: Window,
    /// Newest event time of any match of this key (ms), late ones included.
    pub newest_ms: i64,
    /// The newest matching lines, oldest first.
    pub samples: VecDeque<KeptLine>,
    /// The incident opened by the last firing, while it lasts (boxed: most keys never fire).
    pub open: Option<Box<OpenIncident>>,
}

#[derive(Debug)]
enum Window {
    Count(CountWindow),
    Distinct(DistinctWindow),
}

/// An incident that fired and has not ended.
#[derive(Debug, Clone)]
pub struct OpenIncident {
    /// Event time (ms) of the match that first fired it (part of the stable id).
    pub fired_ms: i64,
    /// Event time (ms) of the match behind the newest emission (window end).
    pub window_end_ms: i64,
    /// Matches before this time only update the counters.
    pub cooldown_until_ms: i64,
    /// First event counted (ms).
    pub first_seen_ms: i64,
    /// Newest event counted (ms).
    pub last_seen_ms: i64,
    /// Matches counted since it opened.
    pub count: u64,
    /// Matches since the previous emission.
    pub since_emit: u64,
    /// How many times it was emitted.
    pub emitted: u32,
    /// An emission is due at the end of the batch.
    pub emit_pending: bool,
    /// Hashes of the different values seen (exactly up to a bound), ascending.
    pub distinct_hashes: Vec<u64>,
    /// The first different values, for the incident.
    pub distinct_values: Vec<String>,
}

/// The outcome of recording one match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; nothing to emit (or an emission was already due).
    Counted,
    /// Older than the window's out-of-order tolerance: the window ignored it (an open
    /// incident may still have counted it). Not shared with other replicas.
    Late,
    /// An emission became due: the caller remembers the key and flushes it after the batch.
    EmitDue,
}

impl KeyState {
    /// Creates empty state for a rule.
    pub fn new(rule: &Rule) -> Self {
        KeyState {
            window: if rule.distinct.is_some() {
                Window::Distinct(DistinctWindow::default())
            } else {
                Window::Count(CountWindow::default())
            },
            newest_ms: i64::MIN,
            samples: VecDeque::new(),
            open: None,
        }
    }

    /// Records one match at `t_ms`; `value` is the distinct field's (hash, text) for distinct
    /// rules. Keeps `line` as a sample (at most `samples_per_key`). `suppressed`: a rule this
    /// one defers to (`suppressed_by`) has an open incident for the key, so a firing window
    /// opens no incident and emits no follow-up (the match is still counted).
    pub fn record(
        &mut self,
        rule: &Rule,
        t_ms: i64,
        value: Option<(u64, &str)>,
        new: NewSample<'_>,
        samples_per_key: usize,
        suppressed: bool,
    ) -> Outcome {
        let recorded = match (&mut self.window, value) {
            (Window::Count(w), _) => w.record(t_ms, &rule.spec),
            (Window::Distinct(w), Some((hash, _))) => w.record(hash, t_ms, &rule.spec),
            (Window::Distinct(_), None) => return Outcome::Counted,
        };
        self.newest_ms = self.newest_ms.max(t_ms);
        // A count window with `in_window` events cannot reach the threshold within the next
        // `samples_per_key - 1` matches when `in_window + samples_per_key <= threshold`, and by
        // then this line has left the ring: keeping it would be a copy no incident ever shows.
        // (A request-flood rule counts every access line; most keys never get near firing.)
        let unseen = match recorded {
            Recorded::Counted { in_window, .. } => {
                !new.always_keep
                    && self.open.is_none()
                    && matches!(self.window, Window::Count(_))
                    && (in_window as usize).saturating_add(samples_per_key)
                        <= rule.spec.threshold as usize
            }
            Recorded::Late => false,
        };
        if samples_per_key > 0 && !unseen {
            // Reuse the oldest sample's buffer (and its labels, when they are the same) once the
            // ring is full.
            let oldest = if self.samples.len() >= samples_per_key {
                self.samples.pop_front()
            } else {
                None
            };
            let (mut buf, labels, old_value) = match oldest {
                Some(old) if Arc::ptr_eq(&old.labels, new.labels) => {
                    (old.line, old.labels, old.value)
                }
                Some(old) => (old.line, Arc::clone(new.labels), old.value),
                None => (String::new(), Arc::clone(new.labels), None),
            };
            buf.clear();
            buf.push_str(new.line);
            let value = new.value.map(|v| {
                let mut kept = old_value.unwrap_or_default();
                kept.clear();
                kept.push_str(v);
                kept
            });
            let kept = KeptLine {
                ts_ns: new.ts_ns,
                line: buf,
                labels,
                value,
            };
            // Grow the ring by doubling up to `samples_per_key`, not past it: most keys of a
            // flood keep one line, and a default-sized ring would hold room for four.
            let len = self.samples.len();
            if len == self.samples.capacity() {
                let want = (2 * len).clamp(1, samples_per_key.max(len + 1));
                self.samples.reserve_exact(want - len);
            }
            // Keep samples in event-time order so the newest evidence is last.
            if self.samples.back().is_none_or(|s| s.ts_ns <= kept.ts_ns) {
                self.samples.push_back(kept);
            } else {
                let at = self.samples.partition_point(|s| s.ts_ns <= kept.ts_ns);
                self.samples.insert(at, kept);
            }
        }
        let fires = recorded.fires();
        let late = matches!(recorded, Recorded::Late);
        let outcome = match &mut self.open {
            Some(open) if t_ms < open.cooldown_until_ms || matches!(recorded, Recorded::Late) => {
                open.add(t_ms, value);
                Outcome::Counted
            }
            Some(open) if fires && suppressed => {
                open.add(t_ms, value);
                Outcome::Counted
            }
            Some(open) => {
                // The cooldown has passed.
                if fires {
                    open.add(t_ms, value);
                    open.window_end_ms = t_ms;
                    open.cooldown_until_ms = t_ms.saturating_add(rule.cooldown_ms);
                    let was = std::mem::replace(&mut open.emit_pending, true);
                    if was {
                        Outcome::Counted
                    } else {
                        Outcome::EmitDue
                    }
                } else {
                    // The attack has subsided: the incident ends; this match starts afresh.
                    self.open = None;
                    Outcome::Counted
                }
            }
            None if fires && !suppressed => {
                // A count window reports how many of its events are in the window; a distinct
                // window counts the matching lines kept in it.
                let in_window = match recorded {
                    Recorded::Counted { in_window: n, .. } if rule.distinct.is_none() => {
                        Some(u64::from(n))
                    }
                    _ => None,
                };
                self.open_incident(rule, t_ms, |kept| in_window.unwrap_or(kept));
                Outcome::EmitDue
            }
            None => Outcome::Counted,
        };
        if late && outcome == Outcome::Counted {
            Outcome::Late
        } else {
            outcome
        }
    }

    /// True while an emitted incident's cooldown runs at `t_ms`: no emission can be due before
    /// it passes, so the evidence other replicas shared is not needed yet.
    pub fn in_cooldown(&self, t_ms: i64) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| !o.emit_pending && t_ms < o.cooldown_until_ms)
    }

    /// Applies the cluster-wide view of this key after its batch was shared with the other
    /// replicas (`state.backend: redis`): `total` events (or distinct values) in the window
    /// ending at `newest_ms`, the newest event time of the key on any replica.
    ///
    /// Fires when the cluster-wide total reached the threshold although this replica's own
    /// window did not: opens an incident counting `total`, or emits a follow-up when the
    /// open one's cooldown has passed. An emission already due from the local window just
    /// takes the larger count. Returns [`Outcome::EmitDue`] when an emission became due.
    pub fn apply_shared(
        &mut self,
        rule: &Rule,
        newest_ms: i64,
        total: u64,
        suppressed: bool,
    ) -> Outcome {
        if total < u64::from(rule.spec.threshold) {
            return Outcome::Counted;
        }
        match &mut self.open {
            Some(open) if open.emit_pending => {
                open.count = open.count.max(total);
                Outcome::Counted
            }
            Some(open) if newest_ms < open.cooldown_until_ms || suppressed => Outcome::Counted,
            Some(open) => {
                open.window_end_ms = newest_ms;
                open.cooldown_until_ms = newest_ms.saturating_add(rule.cooldown_ms);
                open.last_seen_ms = open.last_seen_ms.max(newest_ms);
                open.emit_pending = true;
                Outcome::EmitDue
            }
            None if suppressed => Outcome::Counted,
            None => {
                self.open_incident(rule, newest_ms, |kept| total.max(kept));
                Outcome::EmitDue
            }
        }
    }

    /// Opens an incident that fired at `t_ms`; `count` gets the number of sample lines kept in
    /// its window and returns the incident's count. Its first values and first-seen time come
    /// from those lines.
    fn open_incident(&mut self, rule: &Rule, t_ms: i64, count: impl FnOnce(u64) -> u64) {
        let lower = t_ms.saturating_sub(rule.spec.window_ms);
        let in_window: Vec<&KeptLine> = self
            .samples
            .iter()
            .filter(|s| s.ts_ns.div_euclid(1_000_000) > lower)
            .collect();
        let count = count(in_window.len() as u64);
        let mut open = OpenIncident {
            fired_ms: t_ms,
            window_end_ms: t_ms,
            cooldown_until_ms: t_ms.saturating_add(rule.cooldown_ms),
            first_seen_ms: in_window
                .first()
                .map_or(t_ms, |s| s.ts_ns.div_euclid(1_000_000))
                .min(t_ms),
            last_seen_ms: t_ms,
            count,
            since_emit: count,
            emitted: 0,
            emit_pending: true,
            distinct_hashes: Vec::new(),
            distinct_values: Vec::new(),
        };
        for s in &in_window {
            if let Some(v) = &s.value {
                open.note_value(hash_str(v), v);
            }
        }
        self.open = Some(Box::new(open));
    }
}

impl OpenIncident {
    fn add(&mut self, t_ms: i64, value: Option<(u64, &str)>) {
        self.count += 1;
        self.since_emit += 1;
        self.first_seen_ms = self.first_seen_ms.min(t_ms);
        self.last_seen_ms = self.last_seen_ms.max(t_ms);
        if let Some((_, v)) = value {
            self.note_value(hash_str(v), v);
        }
    }

    fn note_value(&mut self, hash: u64, value: &str) {
        // Kept sorted: a long attack checks each match against up to MAX_COUNTED_VALUES hashes.
        let Err(at) = self.distinct_hashes.binary_search(&hash) else {
            return;
        };
        if self.distinct_hashes.len() >= MAX_COUNTED_VALUES {
            return;
        }
        self.distinct_hashes.insert(at, hash);
        if self.distinct_values.len() < MAX_LISTED_VALUES {
            self.distinct_values.push(value.to_owned());
        }
    }
}

/// FNV-1a, 64 bit: a stable hash (incident ids must not change between runs).
pub fn hash_str(s: &str) -> u64 {
    hash_bytes(0xcbf2_9ce4_8422_2325, s.as_bytes())
}

/// Continues an FNV-1a hash over `bytes`.
pub fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
