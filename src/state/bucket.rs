//! Bucket math for the shared `count` windows: event times (ms) go in, bucket indices come out.
//!
//! The local engine counts events in `(T - window, T]` at 1 ms resolution. The shared counter
//! keeps one integer per time bucket of `bucket_ms` instead, and counts every bucket that
//! overlaps the window, the partial one at the lower edge included. The shared total therefore
//! covers `(first_counted_bucket * bucket_ms, T]`: never less than the exact window and at most
//! `bucket_ms - 1` ms more. It never undercounts the events it was given, so a burst the local
//! engine would catch is always caught; it may fire up to one bucket earlier than an exact
//! window would (see docs/scaling.md).

/// Returns the bucket length for a window cut into at most `buckets_per_window` buckets:
/// `ceil(window_ms / buckets_per_window)`, at least 1 ms.
pub fn bucket_ms(window_ms: i64, buckets_per_window: u32) -> i64 {
    let window_ms = window_ms.max(1);
    let n = i64::from(buckets_per_window.max(1));
    ((window_ms + n - 1) / n).max(1)
}

/// Returns the index of the bucket holding `t_ms` (floor division, so negative times work).
pub fn bucket_index(t_ms: i64, bucket_ms: i64) -> i64 {
    t_ms.div_euclid(bucket_ms.max(1))
}

/// Returns the oldest bucket that still counts when the newest event is at `newest_ms`: the one
/// holding the window's (excluded) lower edge `newest_ms - window_ms`, which partly overlaps it.
pub fn first_counted_bucket(newest_ms: i64, window_ms: i64, bucket_ms: i64) -> i64 {
    bucket_index(newest_ms.saturating_sub(window_ms), bucket_ms)
}

/// How long (wall clock) a shared window's keys live after their last write: the window, the
/// out-of-order tolerance and one bucket. Past it no event can count in that window any more.
pub fn ttl_ms(window_ms: i64, tolerance_ms: i64, bucket_ms: i64) -> i64 {
    window_ms
        .saturating_add(tolerance_ms.max(0))
        .saturating_add(bucket_ms)
        .max(1)
}

/// A reference model of the shared counter, kept in memory: what the Lua script does to one
/// key's hash, for tests and for the bench's local baseline.
#[derive(Debug, Clone, Default)]
pub struct BucketedCount {
    /// (bucket index, count), unordered.
    buckets: Vec<(i64, u64)>,
    newest: Option<i64>,
}

impl BucketedCount {
    /// Adds `n` events at `t_ms` and returns the total over the window ending at the newest
    /// event, as the script computes it.
    pub fn add(&mut self, t_ms: i64, n: u64, window_ms: i64, bucket_ms: i64) -> u64 {
        let newest = self.newest.map_or(t_ms, |x| x.max(t_ms));
        self.newest = Some(newest);
        let first = first_counted_bucket(newest, window_ms, bucket_ms);
        let b = bucket_index(t_ms, bucket_ms);
        if b >= first {
            match self.buckets.iter_mut().find(|(i, _)| *i == b) {
                Some(entry) => entry.1 += n,
                None => self.buckets.push((b, n)),
            }
        }
        self.buckets.retain(|(i, _)| *i >= first);
        self.buckets.iter().map(|(_, c)| c).sum()
    }

    /// Returns the number of buckets kept (at most `window / bucket + 1`).
    pub fn kept(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn bucket_length_divides_the_window() {
        assert_eq!(bucket_ms(60_000, 30), 2_000);
        assert_eq!(bucket_ms(60_000, 7), 8_572);
        assert_eq!(bucket_ms(1, 30), 1);
        assert_eq!(bucket_ms(0, 30), 1);
        assert_eq!(bucket_ms(3_600_000, 0), 3_600_000);
    }

    #[test]
    fn indices_floor_negative_times() {
        assert_eq!(bucket_index(0, 1_000), 0);
        assert_eq!(bucket_index(999, 1_000), 0);
        assert_eq!(bucket_index(1_000, 1_000), 1);
        assert_eq!(bucket_index(-1, 1_000), -1);
    }

    #[test]
    fn the_partial_bucket_at_the_lower_edge_counts() {
        // Window (4_500, 10_500]: bucket 4 ([4_000, 5_000)) overlaps it and counts.
        assert_eq!(first_counted_bucket(10_500, 6_000, 1_000), 4);
        // Aligned edge: (4_000, 10_000]; bucket 4 holds 4_001..4_999, so it counts too.
        assert_eq!(first_counted_bucket(10_000, 6_000, 1_000), 4);
    }

    #[test]
    fn old_buckets_stop_counting() {
        let mut c = BucketedCount::default();
        assert_eq!(c.add(0, 5, 10_000, 1_000), 5);
        assert_eq!(c.add(10_999, 1, 10_000, 1_000), 6);
        // Newest 11_000: the window's edge 1_000 lies in bucket 1; bucket 0 is gone.
        assert_eq!(c.add(11_000, 1, 10_000, 1_000), 2);
        assert_eq!(c.kept(), 2);
    }

    #[test]
    fn ttl_covers_window_tolerance_and_a_bucket() {
        assert_eq!(ttl_ms(60_000, 60_000, 2_000), 122_000);
        assert_eq!(ttl_ms(60_000, -5, 2_000), 62_000);
    }

    proptest! {
        /// The bucketed total is bracketed by the exact counts over the window and over the
        /// window widened by one bucket, and the kept buckets stay bounded.
        #[test]
        fn bucketed_total_brackets_the_exact_window(
            deltas in proptest::collection::vec(-5_000i64..5_000, 1..150),
            window_ms in 1i64..30_000,
            buckets in 1u32..100,
        ) {
            let b = bucket_ms(window_ms, buckets);
            let mut t = 1_000_000i64;
            let mut seen: Vec<i64> = Vec::new();
            let mut c = BucketedCount::default();
            for d in deltas {
                t += d;
                seen.push(t);
                let got = c.add(t, 1, window_ms, b);
                let newest = *seen.iter().max().unwrap();
                let exact = seen.iter().filter(|&&x| x > newest - window_ms && x <= newest).count();
                let widened = seen.iter().filter(|&&x| x > newest - window_ms - b).count();
                prop_assert!(got as usize >= exact, "got {} < exact {}", got, exact);
                prop_assert!(got as usize <= widened, "got {} > widened {}", got, widened);
                prop_assert!(c.kept() as i64 <= window_ms / b + 2);
            }
        }
    }
}
