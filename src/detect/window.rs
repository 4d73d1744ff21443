//! Sliding event-time windows: time goes in as an argument, a verdict comes out.
//!
//! Semantics (documented in `docs/rules.md`): let `T` be the newest event time recorded for a key.
//! A `count` window fires when at least `threshold` recorded events have a time in
//! `(T - window, T]`; a `distinct` window fires when at least `threshold` different values have
//! their newest occurrence in `(T - window, T]`. Times are milliseconds (the resolution).
//! An event older than `T - tolerance` is late: it is not recorded and cannot make a window fire.
//!
//! Both windows keep at most `threshold` entries: the `threshold` newest event times (count), or
//! the `threshold` values with the newest last occurrence (distinct). That is exactly what the
//! firing condition needs, so memory per key is bounded by the threshold, whatever the traffic.

use std::collections::VecDeque;

/// The parameters of one rule's window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Events (or distinct values) needed to fire; at least 1.
    pub threshold: u32,
    /// Window length in ms; at least 1.
    pub window_ms: i64,
    /// How far behind the newest event an event may arrive and still count, in ms.
    pub tolerance_ms: i64,
}

/// What recording one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Older than the newest event minus the tolerance: ignored.
    Late,
    /// Recorded; `in_window` events (capped at the threshold) are in `(T - window, T]`.
    Counted {
        /// Events or distinct values in the window, at most `threshold`.
        in_window: u32,
        /// True when `in_window` reached the threshold.
        fires: bool,
    },
}

impl Recorded {
    /// Returns true when the window fired.
    pub fn fires(self) -> bool {
        matches!(self, Recorded::Counted { fires: true, .. })
    }
}

/// A sliding `count` window for one key.
#[derive(Debug, Clone, Default)]
pub struct CountWindow {
    /// The newest recorded event times inside the window, ascending, at most `threshold` of
    /// them.
    times: VecDeque<i64>,
    newest: Option<i64>,
}

impl CountWindow {
    /// Records one event at `t_ms` and returns whether the window fires.
    pub fn record(&mut self, t_ms: i64, spec: &WindowSpec) -> Recorded {
        let threshold = spec.threshold.max(1) as usize;
        if let Some(newest) = self.newest {
            if t_ms < newest.saturating_sub(spec.tolerance_ms) {
                return Recorded::Late;
            }
        }
        let newest = self.newest.map_or(t_ms, |n| n.max(t_ms));
        self.newest = Some(newest);
        // The window is (lower, newest]. `lower` never falls (the newest time only grows and
        // the spec is fixed for the state's life), so a time at or before it can never count
        // again: such times leave the front of the ascending list, and `times` holds exactly
        // the window's newest events (at most `threshold`).
        let lower = newest.saturating_sub(spec.window_ms);
        while self.times.front().is_some_and(|&oldest| oldest <= lower) {
            self.times.pop_front();
        }
        if t_ms > lower {
            if self.times.len() < threshold {
                self.insert_sorted(t_ms);
            } else if self.times.front().is_some_and(|&oldest| t_ms > oldest) {
                // Full: the new time displaces the oldest kept one (only the newest matter).
                self.times.pop_front();
                self.insert_sorted(t_ms);
            }
        }
        let in_window = self.times.len() as u32;
        Recorded::Counted {
            in_window,
            fires: in_window as usize >= threshold,
        }
    }

    /// Inserts keeping `times` ascending; in-order events (the common case) are appended.
    fn insert_sorted(&mut self, t_ms: i64) {
        if self.times.back().is_none_or(|&last| last <= t_ms) {
            self.times.push_back(t_ms);
        } else {
            let at = self.times.partition_point(|&x| x <= t_ms);
            self.times.insert(at, t_ms);
        }
    }

    /// Returns the newest event time recorded, if any.
    pub fn newest(&self) -> Option<i64> {
        self.newest
    }

    /// Returns the number of event times kept (never more than the threshold).
    pub fn kept(&self) -> usize {
        self.times.len()
    }
}

/// A sliding `distinct` window for one key: values are identified by a 64-bit hash.
#[derive(Debug, Clone, Default)]
pub struct DistinctWindow {
    /// (value hash, newest occurrence), at most `threshold` entries.
    values: Vec<(u64, i64)>,
    newest: Option<i64>,
}

impl DistinctWindow {
    /// Records one occurrence of the value hashed to `value` at `t_ms`.
    pub fn record(&mut self, value: u64, t_ms: i64, spec: &WindowSpec) -> Recorded {
        let threshold = spec.threshold.max(1) as usize;
        if let Some(newest) = self.newest {
            if t_ms < newest.saturating_sub(spec.tolerance_ms) {
                return Recorded::Late;
            }
        }
        let newest = self.newest.map_or(t_ms, |n| n.max(t_ms));
        self.newest = Some(newest);
        if let Some(entry) = self.values.iter_mut().find(|(v, _)| *v == value) {
            entry.1 = entry.1.max(t_ms);
        } else if self.values.len() < threshold {
            self.values.push((value, t_ms));
        } else if let Some(oldest) = self.values.iter_mut().min_by_key(|(_, t)| *t) {
            // Full: keep the `threshold` values seen most recently.
            if t_ms > oldest.1 {
                *oldest = (value, t_ms);
            }
        }
        let lower = newest.saturating_sub(spec.window_ms);
        let in_window = self.values.iter().filter(|(_, t)| *t > lower).count() as u32;
        Recorded::Counted {
            in_window,
            fires: in_window as usize >= threshold,
        }
    }

    /// Returns the newest event time recorded, if any.
    pub fn newest(&self) -> Option<i64> {
        self.newest
    }

    /// Returns the number of values kept (never more than the threshold).
    pub fn kept(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SPEC: WindowSpec = WindowSpec {
        threshold: 3,
        window_ms: 10_000,
        tolerance_ms: 5_000,
    };

    #[test]
    fn count_fires_exactly_at_threshold_not_before() {
        let mut w = CountWindow::default();
        assert_eq!(
            w.record(0, &SPEC),
            Recorded::Counted {
                in_window: 1,
                fires: false
            }
        );
        assert_eq!(
            w.record(1_000, &SPEC),
            Recorded::Counted {
                in_window: 2,
                fires: false
            }
        );
        assert_eq!(
            w.record(9_999, &SPEC),
            Recorded::Counted {
                in_window: 3,
                fires: true
            }
        );
    }

    #[test]
    fn count_window_is_half_open_on_the_left() {
        let mut w = CountWindow::default();
        w.record(0, &SPEC);
        w.record(5_000, &SPEC);
        // (10_000 - 10_000, 10_000] excludes the event at 0.
        assert_eq!(
            w.record(10_000, &SPEC),
            Recorded::Counted {
                in_window: 2,
                fires: false
            }
        );
    }

    #[test]
    fn count_expires_old_events() {
        let mut w = CountWindow::default();
        w.record(0, &SPEC);
        w.record(1, &SPEC);
        assert!(!w.record(20_000, &SPEC).fires());
        assert!(!w.record(20_001, &SPEC).fires());
        assert!(w.record(20_002, &SPEC).fires());
    }

    #[test]
    fn late_event_within_tolerance_counts_beyond_does_not() {
        let mut w = CountWindow::default();
        w.record(10_000, &SPEC);
        w.record(11_000, &SPEC);
        // 4 s late: inside the 5 s tolerance and inside the window.
        assert!(w.record(7_000, &SPEC).fires());
        let mut w = CountWindow::default();
        w.record(10_000, &SPEC);
        w.record(11_000, &SPEC);
        assert_eq!(w.record(5_999, &SPEC), Recorded::Late);
    }

    #[test]
    fn distinct_counts_values_not_events() {
        let mut w = DistinctWindow::default();
        assert!(!w.record(1, 0, &SPEC).fires());
        assert!(!w.record(1, 1, &SPEC).fires());
        assert!(!w.record(2, 2, &SPEC).fires());
        assert!(w.record(3, 3, &SPEC).fires());
    }

    #[test]
    fn distinct_expires_values() {
        let mut w = DistinctWindow::default();
        w.record(1, 0, &SPEC);
        w.record(2, 0, &SPEC);
        assert_eq!(
            w.record(3, 10_000, &SPEC),
            Recorded::Counted {
                in_window: 1,
                fires: false
            }
        );
        // A value seen again moves into the window.
        assert!(!w.record(1, 10_001, &SPEC).fires());
        assert!(w.record(2, 10_002, &SPEC).fires());
    }

    /// Reference: count of events in (T - window, T] among all non-late events, by brute force.
    fn reference(events: &[i64], spec: &WindowSpec) -> Vec<Option<u32>> {
        let mut accepted: Vec<i64> = Vec::new();
        let mut out = Vec::new();
        for &t in events {
            let newest = accepted.iter().copied().max();
            if newest.is_some_and(|n| t < n - spec.tolerance_ms) {
                out.push(None);
                continue;
            }
            accepted.push(t);
            let newest = newest.map_or(t, |n| n.max(t));
            let n = accepted
                .iter()
                .filter(|&&x| x > newest - spec.window_ms)
                .count() as u32;
            out.push(Some(n.min(spec.threshold)));
        }
        out
    }

    proptest! {
        #[test]
        fn count_window_matches_brute_force(
            deltas in proptest::collection::vec(-8_000i64..8_000, 1..200),
            threshold in 1u32..8,
            window_ms in 1i64..20_000,
            tolerance_ms in 0i64..10_000,
        ) {
            let spec = WindowSpec { threshold, window_ms, tolerance_ms };
            let mut t = 1_000_000i64;
            let events: Vec<i64> = deltas.iter().map(|d| { t += d; t }).collect();
            let expected = reference(&events, &spec);
            let mut w = CountWindow::default();
            for (i, &e) in events.iter().enumerate() {
                let got = match w.record(e, &spec) {
                    Recorded::Late => None,
                    Recorded::Counted { in_window, fires } => {
                        prop_assert_eq!(fires, in_window >= threshold);
                        // Only times inside the window are kept.
                        prop_assert_eq!(w.kept(), in_window as usize);
                        Some(in_window)
                    }
                };
                prop_assert_eq!(got, expected[i], "event {} at {}", i, e);
                prop_assert!(w.kept() <= threshold as usize);
            }
        }

        #[test]
        fn distinct_window_matches_brute_force(
            events in proptest::collection::vec((0u64..6, 0i64..5_000), 1..150),
            threshold in 1u32..6,
            window_ms in 1i64..3_000,
        ) {
            let spec = WindowSpec { threshold, window_ms, tolerance_ms: 1_000 };
            let mut w = DistinctWindow::default();
            let mut accepted: Vec<(u64, i64)> = Vec::new();
            let mut t = 0i64;
            for &(v, d) in &events {
                t += d - 2_000;
                let newest = accepted.iter().map(|e| e.1).max();
                let late = newest.is_some_and(|n| t < n - spec.tolerance_ms);
                let got = w.record(v, t, &spec);
                if late {
                    prop_assert_eq!(got, Recorded::Late);
                    continue;
                }
                accepted.push((v, t));
                let newest = newest.map_or(t, |n| n.max(t));
                let mut vals: Vec<u64> = accepted
                    .iter()
                    .filter(|e| e.1 > newest - window_ms)
                    .map(|e| e.0)
                    .collect();
                vals.sort_unstable();
                vals.dedup();
                let n = (vals.len() as u32).min(threshold);
                prop_assert_eq!(got, Recorded::Counted { in_window: n, fires: n >= threshold });
                prop_assert!(w.kept() <= threshold as usize);
            }
        }
    }
}
