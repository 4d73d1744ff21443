//! The SIMD first pass of the literal prefilter: which byte pairs of a line may be anchors.
//!
//! The anchor pairs are spread over [`BUCKETS`] buckets. A bucket accepts the pair `x y` when
//! the low and the high nibble of `x` and of `y` each occur at that place in one of its pairs,
//! so a position is tested with four 16-entry table look-ups (one byte shuffle each, 32
//! positions at once) per group of eight buckets. A bucket accepts every pair of its own (and
//! every case variant), so no anchor is missed; it also accepts the crossings of its pairs'
//! nibbles, which the exact bit table of [`super::literals::LiteralSet`] then rejects. The
//! buckets are filled greedily so that the crossings they add are rare in log text (by the same
//! model that picks the anchors), which keeps those false candidates to a few per line.
//!
//! SIMD comes from `fearless_simd` (runtime detection, safe API): AVX2, else SSE4.2 (two
//! 16-byte halves per step), else none, and the caller scans with the bit table alone.

use fearless_simd::{prelude::*, u8x32, Level};

/// Buckets: four groups of eight (one bit per bucket in a table byte).
pub const BUCKETS: usize = 32;
/// Groups of eight buckets.
const GROUPS: usize = 4;
const _: () = assert!(BUCKETS == GROUPS * 8);

/// Nibble tables per group: first byte's low nibble, its high nibble, second byte's low
/// nibble, its high nibble. Bit `k` of entry `n` is set when bucket `8 × group + k` accepts
/// nibble `n` there. Each 16-entry table is stored twice (shuffles look up per 16-byte block).
type Tables = [[[u8; 32]; 4]; GROUPS];

/// The first pass: the nibble tables and the SIMD level to run them at.
#[derive(Debug, Clone)]
pub struct PairFilter {
    tables: Tables,
    level: Level,
}

/// A bucket while it is filled: its nibble sets as 16-bit masks.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    a_lo: u16,
    a_hi: u16,
    b_lo: u16,
    b_hi: u16,
}

impl Bucket {
    fn with(mut self, a: &[u8], b: &[u8]) -> Bucket {
        for &x in a {
            self.a_lo |= 1 << (x & 15);
            self.a_hi |= 1 << (x >> 4);
        }
        for &y in b {
            self.b_lo |= 1 << (y & 15);
            self.b_hi |= 1 << (y >> 4);
        }
        self
    }
}

/// Every byte whose nibbles are in `lo` × `hi`.
fn bytes_of(lo: u16, hi: u16) -> impl Iterator<Item = u8> {
    (0..16u8)
        .filter(move |h| hi >> h & 1 != 0)
        .flat_map(move |h| {
            (0..16u8)
                .filter(move |l| lo >> l & 1 != 0)
                .map(move |l| h << 4 | l)
        })
}

impl PairFilter {
    /// Builds the filter for `anchors`: (first byte, second byte) in lower case, a second byte
    /// of `None` standing for any byte. `byte_score` and `common` model log text: how common a
    /// (lower-cased) byte is, and the most common (lower-cased) pairs, most common first.
    /// Returns `None` when this CPU has no SIMD level the filter runs at.
    pub fn new(
        anchors: &[(u8, Option<u8>)],
        byte_score: impl Fn(u8) -> u32,
        common: &[&[u8; 2]],
    ) -> Option<PairFilter> {
        let level = Level::new();
        if !Self::runs_at(level) {
            return None;
        }
        Some(PairFilter {
            tables: Self::tables(anchors, byte_score, common),
            level,
        })
    }

    /// True when the filter has a SIMD path at `level`.
    fn runs_at(level: Level) -> bool {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            level.as_sse4_2().is_some()
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        {
            let _ = level;
            false
        }
    }

    /// Fills the buckets greedily: each anchor goes where it adds the least expected weight of
    /// accepted pairs in log text.
    fn tables(
        anchors: &[(u8, Option<u8>)],
        byte_score: impl Fn(u8) -> u32,
        common: &[&[u8; 2]],
    ) -> Tables {
        // The expected weight of each pair in log text: the product of its bytes' scores, plus
        // a weight falling with the rank for the common pairs (in every case).
        let score: Vec<u32> = (0..=255u8)
            .map(|b| byte_score(b.to_ascii_lowercase()))
            .collect();
        let mut weight = vec![0u32; 1 << 16];
        for (x, row) in weight.chunks_exact_mut(256).enumerate() {
            for (y, w) in row.iter_mut().enumerate() {
                *w = score[x] * score[y];
            }
        }
        for (rank, p) in common.iter().enumerate() {
            let w = (common.len() - rank) as u32 * 2000;
            let [x, y] = **p;
            for x in [x, x.to_ascii_uppercase()] {
                for y in [y, y.to_ascii_uppercase()] {
                    weight[usize::from(x) << 8 | usize::from(y)] += w;
                }
            }
        }
        let cost = |b: &Bucket| -> u64 {
            let ys: Vec<u8> = bytes_of(b.b_lo, b.b_hi).collect();
            bytes_of(b.a_lo, b.a_hi)
                .map(|x| {
                    let row = &weight[usize::from(x) << 8..][..256];
                    ys.iter()
                        .map(|&y| u64::from(row[usize::from(y)]))
                        .sum::<u64>()
                })
                .sum()
        };
        let mut buckets = [Bucket::default(); BUCKETS];
        let mut costs = [0u64; BUCKETS];
        // Anchors that accept any second byte first: they need buckets of their own.
        let mut order: Vec<&(u8, Option<u8>)> = anchors.iter().collect();
        order.sort_by_key(|&&(a, b)| (b.is_some(), a, b));
        let all: Vec<u8> = (0..=255).collect();
        for &(a, b) in order {
            let xs = [a, a.to_ascii_uppercase()];
            let ys = b.map(|b| [b, b.to_ascii_uppercase()]);
            let ys: &[u8] = ys.as_ref().map_or(&all, |y| y);
            let (k, next, c) = buckets
                .iter()
                .zip(&costs)
                .enumerate()
                .map(|(k, (bucket, &before))| {
                    let next = bucket.with(&xs, ys);
                    let c = cost(&next);
                    (k, next, c, c - before)
                })
                .min_by_key(|&(k, _, _, added)| (added, k))
                .map(|(k, next, c, _)| (k, next, c))
                .expect("there are buckets");
            buckets[k] = next;
            costs[k] = c;
        }
        let mut tables = [[[0u8; 32]; 4]; GROUPS];
        for (k, b) in buckets.iter().enumerate() {
            let (group, bit) = (k / 8, 1u8 << (k % 8));
            for n in 0..16 {
                for (t, set) in [b.a_lo, b.a_hi, b.b_lo, b.b_hi].into_iter().enumerate() {
                    if set >> n & 1 != 0 {
                        tables[group][t][n] |= bit;
                        tables[group][t][n + 16] |= bit;
                    }
                }
            }
        }
        tables
    }

    /// Calls `f(at)` for every position `at` (`at + 1 < line.len()`) whose pair
    /// `line[at] line[at + 1]` the buckets accept, in increasing order. Every anchor position
    /// is among them.
    #[inline]
    pub fn for_each_candidate(&self, line: &[u8], mut f: impl FnMut(usize)) {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if let Some(avx2) = self.level.as_avx2() {
            avx2.vectorize(
                #[inline(always)]
                || scan(avx2, &self.tables, line, &mut f),
            );
        } else if let Some(sse) = self.level.as_sse4_2() {
            sse.vectorize(
                #[inline(always)]
                || scan(sse, &self.tables, line, &mut f),
            );
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        let _ = (line, f);
    }

    /// The same at a given level (for tests: every level this CPU has).
    #[cfg(test)]
    pub fn for_each_candidate_at(&self, level: Level, line: &[u8], f: impl FnMut(usize)) {
        let filter = PairFilter {
            tables: self.tables,
            level,
        };
        filter.for_each_candidate(line, f);
    }

    /// The nibble test of one pair, without SIMD (for tests).
    #[cfg(test)]
    pub fn accepts(&self, x: u8, y: u8) -> bool {
        (0..GROUPS).any(|g| {
            let t = &self.tables[g];
            t[0][usize::from(x & 15)]
                & t[1][usize::from(x >> 4)]
                & t[2][usize::from(y & 15)]
                & t[3][usize::from(y >> 4)]
                != 0
        })
    }
}

/// The scan at one SIMD level: 32 positions per step, each step loading the 33 bytes it needs.
#[inline(always)]
fn scan<S: Simd>(simd: S, tables: &Tables, line: &[u8], f: &mut impl FnMut(usize)) {
    let n = line.len();
    if n < 2 {
        return;
    }
    let mut at = 0;
    while let Some(block) = line[at..].first_chunk::<33>() {
        emit(step(simd, tables, block), at, f);
        at += 32;
    }
    // Positions `at ..= n - 2` are left, fewer than 32.
    if at + 1 < n {
        if let Some(block) = line[n.saturating_sub(33)..].first_chunk::<33>() {
            // The last 33 bytes, without the positions already done.
            let from = n - 33;
            emit(step(simd, tables, block) >> (at - from), at, f);
        } else {
            let mut buf = [0u8; 33];
            buf[..n].copy_from_slice(line);
            let mask = step(simd, tables, &buf) & ((1u32 << (n - 1)) - 1);
            emit(mask, 0, f);
        }
    }
}

/// One group's four tables as vectors.
#[inline(always)]
fn load<S: Simd>(simd: S, t: &[[u8; 32]; 4]) -> [u8x32<S>; 4] {
    [
        u8x32::load_array_ref(simd, &t[0]),
        u8x32::load_array_ref(simd, &t[1]),
        u8x32::load_array_ref(simd, &t[2]),
        u8x32::load_array_ref(simd, &t[3]),
    ]
}

/// The positions `0..32` whose pair (`block[i]`, `block[i + 1]`) some bucket accepts, as a bit
/// mask.
#[inline(always)]
fn step<S: Simd>(simd: S, tables: &Tables, block: &[u8; 33]) -> u32 {
    let (first, _) = block.split_first_chunk::<32>().expect("33 bytes");
    let (_, second) = block.split_last_chunk::<32>().expect("33 bytes");
    let a = u8x32::load_array_ref(simd, first);
    let b = u8x32::load_array_ref(simd, second);
    let low = simd.splat_u8x32(15);
    let (a_lo, a_hi) = (simd.and_u8x32(a, low), simd.shr_u8x32(a, 4));
    let (b_lo, b_hi) = (simd.and_u8x32(b, low), simd.shr_u8x32(b, 4));
    let mut any = simd.splat_u8x32(0);
    for t in tables {
        let t = load(simd, t);
        let hit = simd.and_u8x32(
            simd.and_u8x32(
                simd.swizzle_dyn_within_blocks_u8x32(t[0], a_lo),
                simd.swizzle_dyn_within_blocks_u8x32(t[1], a_hi),
            ),
            simd.and_u8x32(
                simd.swizzle_dyn_within_blocks_u8x32(t[2], b_lo),
                simd.swizzle_dyn_within_blocks_u8x32(t[3], b_hi),
            ),
        );
        any = simd.or_u8x32(any, hit);
    }
    let none = simd.simd_eq_u8x32(any, simd.splat_u8x32(0));
    !(simd.to_bitmask_mask8x32(none) as u32)
}

/// Calls `f(base + i)` for every bit `i` set in `mask`, lowest first.
#[inline(always)]
fn emit(mut mask: u32, base: usize, f: &mut impl FnMut(usize)) {
    while mask != 0 {
        f(base + mask.trailing_zeros() as usize);
        mask &= mask - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every SIMD level this CPU has that the filter runs at.
    fn levels() -> Vec<Level> {
        let mut out = Vec::new();
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            let level = Level::new();
            if let Some(avx2) = level.as_avx2() {
                out.push(avx2.level());
            }
            if let Some(sse) = level.as_sse4_2() {
                out.push(sse.level());
            }
        }
        out
    }

    fn byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            any::<u8>(),
            proptest::sample::select(b"abAB' <\"0e".to_vec()),
        ]
    }

    proptest! {
        /// The SIMD scan reports exactly the positions the nibble test accepts (at every level,
        /// for every line length, so the last partial step is covered), and the nibble test
        /// accepts every anchor in any case.
        #[test]
        fn simd_scan_is_the_nibble_test_and_misses_no_anchor(
            anchors in proptest::collection::vec((byte(), proptest::option::of(byte())), 1..80),
            line in proptest::collection::vec(byte(), 0..140),
        ) {
            let anchors: Vec<(u8, Option<u8>)> = anchors
                .into_iter()
                .map(|(a, b)| (a.to_ascii_lowercase(), b.map(|b| b.to_ascii_lowercase())))
                .collect();
            let Some(filter) = PairFilter::new(&anchors, |b| 1 + u32::from(b % 7), &[b"ab", b"e "])
            else {
                return Ok(());
            };
            let pairs = line.len().saturating_sub(1);
            let want: Vec<usize> =
                (0..pairs).filter(|&i| filter.accepts(line[i], line[i + 1])).collect();
            for level in levels() {
                let mut got = Vec::new();
                filter.for_each_candidate_at(level, &line, |at| got.push(at));
                prop_assert_eq!(&got, &want, "{:?}", level);
            }
            for i in 0..pairs {
                let (x, y) = (line[i].to_ascii_lowercase(), line[i + 1].to_ascii_lowercase());
                if anchors.contains(&(x, Some(y))) || anchors.contains(&(x, None)) {
                    prop_assert!(filter.accepts(line[i], line[i + 1]), "{i}");
                }
            }
        }
    }
}
