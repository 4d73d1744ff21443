//! The literal prefilter: finds which of the rules' literals occur in a line, ignoring ASCII
//! case, in one pass over the line's byte pairs.
//!
//! Each literal is anchored at one of its byte pairs, chosen to be rare in log text. A 64 Ki-bit
//! table, indexed by the two raw bytes at each position (every case variant of an anchor has its
//! bit set), tells whether any literal is anchored at that pair; only then are the literals
//! anchored there (found by the rank of the bit) compared with the line. The table is 8 KiB and its look-ups do not depend on
//! each other, so a line that contains no anchor costs a few instructions per byte, instead of
//! the chain of dependent transitions an automaton walks. The result is exact: every occurrence
//! of a literal contains its anchor at a fixed offset, and every candidate is verified.
//! One-byte literals are anchored at every pair they start. Where the CPU has SSE4.2 or AVX2, a
//! SIMD first pass (`pair_filter`) picks the positions worth a look in the table, 32 at
//! a time.

use super::pair_filter::PairFilter;

/// Pairs of (lower-cased) bytes common in log text, most common first, counted over the sample
/// logs in this repository. A literal is anchored at the pair least likely to occur in ordinary
/// lines; pairs missing here are ranked by how common their two bytes are on their own.
#[rustfmt::skip]
const COMMON_PAIRS: [&[u8; 2]; 256] = [
    b" \"", b"00", b": ", b", ", b"\":", b"0 ", b"li", b".1", b"20", b".0", b"ht", b"/5", b"in",
    b"t ", b"le", b".3", b"\" ", b"1.", b"0.", b"e ", b"24", b"il", b"ge", b"fa", b" s", b"7.",
    b"om", b"36", b" -", b"- ", b"ma", b" l", b"53", b"ro", b"/1", b" (", b"37", b"sh", b"ch",
    b") ", b":0", b" 2", b"tt", b"at", b"ec", b"tp", b"pl", b"or", b" f", b"ss", b" a", b"19",
    b"\"m", b"12", b"\",", b"er", b"on", b" [", b"] ", b" c", b"6 ", b"me", b"10", b"st", b"ti",
    b"11", b"ar", b"mo", b"se", b"te", b"de", b"it", b"th", b"ap", b".5", b"ll", b"co", b"14",
    b" t", b"02", b"ho", b"/s", b" h", b"ri", b" 1", b"es", b"9:", b"et", b"4:", b"1\"", b"nu",
    b"e\"", b"we", b"ne", b"d ", b"09", b" /", b"ex", b"ed", b"la", b"eb", b"5.", b"au", b"pp",
    b"0]", b"51", b"86", b"ke", b"re", b"p/", b" g", b"8.", b"2.", b"/2", b"[1", b"ck", b"98",
    b"64", b"i/", b"\"g", b"am", b"r ", b"+0", b" +", b"ay", b"nt", b"l,", b"ut", b"sa", b"4.",
    b"e/", b"ct", b"6\"", b"tm", b"ml", b"a/", b"no", b"oz", b"zi", b"en", b"; ", b"af", b"t/",
    b"ki", b"x ", b"ew", b"x1", b"h\"", b"x8", b" x", b"hr", b"1;", b"ux", b"4)", b"(k", b"ko",
    b"ik", b"(x", b"6_", b"_6", b"bk", b"kh", b"o)", b"4/", b"/m", b"y/", b"tr", b"e.", b"\"h",
    b"ru", b"lo", b".c", b":1", b"xx", b" p", b"ue", b"s ", b"2 ", b"01", b".2", b"ca", b"\"d",
    b"p.", b"al", b"n ", b"mp", b"ai", b"hd", b"ps", b"tc", b"e,", b"s:", b"ic", b"ul", b"xa",
    b"op", b"us", b"//", b"os", b"\"l", b":/", b"og", b":3", b"sc", b"fo", b"he", b"4 ", b"m/",
    b"\"s", b" n", b"1:", b".e", b"1 ", b":2", b"od", b"ta", b"8 ", b"]:", b"t\"", b"\\\"", b"92",
    b"id", b"ou", b"pe", b"ng", b"d[", b"rt", b"an", b" r", b"io", b"18", b" u", b"fi", b"ip",
    b"pr", b"ac", b"js", b"go", b" i", b"m ", b"ot", b"y ", b"13", b"c\"", b".4", b"po", b"\"-",
    b"0:", b"42", b":4", b"im", b"bl", b"26", b"ea", b"5 ", b"fr",
];

/// Pairs of the month abbreviations, which almost every syslog and access-log line carries in
/// its timestamp (`Nov 26 …`, `[26/Nov/2026:…]`), where [`COMMON_PAIRS`] lacks them: without
/// them a literal could be anchored at a pair that every line of one month holds (`onmouseover`
/// was anchored at `ov`, `sleep` at `ep`, `union` at `un`). Ranked after the common pairs.
const MONTH_PAIRS: [&[u8; 2]; 8] = [b"ja", b"fe", b"ju", b"un", b"ug", b"ep", b"oc", b"ov"];

/// One literal anchored at a pair: its index, the offset of the pair in it, its length and its
/// first byte (checked before the literal is read near the end of a line), and its first eight
/// bytes as a word, compared with eight bytes of the line at once.
#[derive(Debug, Clone, Copy)]
struct Anchored {
    literal: u32,
    offset: u32,
    len: u32,
    first: u8,
    head: Head,
}

/// The first (up to) eight bytes of a lower-cased literal, little-endian: the line's eight
/// bytes `w` match when `(w | case) & mask == word`. `case` has bit 5 set in the bytes that
/// are letters (so both cases of the line's byte compare equal), `mask` covers the literal's
/// bytes.
#[derive(Debug, Clone, Copy)]
struct Head {
    word: u64,
    case: u64,
    mask: u64,
}

impl Head {
    fn new(lit: &[u8]) -> Head {
        let mut head = Head {
            word: 0,
            case: 0,
            mask: 0,
        };
        for (i, &b) in lit.iter().take(8).enumerate() {
            head.word |= u64::from(b) << (8 * i);
            head.mask |= 0xff << (8 * i);
            if b.is_ascii_lowercase() {
                head.case |= 0x20 << (8 * i);
            }
        }
        head
    }
}

impl Anchored {
    /// Whether the literal has four bytes from its anchor on (then candidates are checked
    /// against the gram table before the literal is compared).
    fn gated(&self) -> bool {
        self.offset + 4 <= self.len
    }
}

/// The literals anchored at one pair: a range of `anchored`, and whether they are all gated
/// ([`Anchored::gated`]).
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: u32,
    end: u32,
    gated: bool,
}

/// Finds every literal of a fixed set that occurs in a line (ASCII case-insensitive).
#[derive(Debug, Clone)]
pub struct LiteralSet {
    /// Lower-cased literals, indexed by pattern id.
    literals: Vec<Box<[u8]>>,
    /// Bit `a | b << 8` is set when a literal is anchored at the bytes `a b` (any case).
    bits: Box<[u64; 1024]>,
    /// Per word of `bits`: the number of bits set in the words before it.
    rank: Box<[u32; 1024]>,
    /// Per bit set in `bits`, in order: its literals in `anchored`.
    slots: Vec<Slot>,
    /// Bit [`gram_index`] of the four (case-folded) bytes that start at the anchor of each
    /// literal that has four bytes from its anchor on.
    grams: Box<[u64; 1024]>,
    /// The anchored literals, grouped by (lower-cased) anchor pair.
    anchored: Vec<Anchored>,
    /// One-byte literals: (pattern id, lower-case byte, upper-case byte), for the last byte.
    single: Vec<(u32, u8, u8)>,
    /// The SIMD first pass that finds the positions worth a look in `bits`; `None` when this
    /// CPU has no SIMD level for it (then every position is looked up).
    filter: Option<PairFilter>,
}

impl LiteralSet {
    /// Builds the set; pattern ids are the indexes in `literals`. Literals are compared ignoring
    /// ASCII case; empty literals never match.
    pub fn new<S: AsRef<[u8]>>(literals: &[S]) -> Self {
        let literals: Vec<Box<[u8]>> = literals
            .iter()
            .map(|l| l.as_ref().to_ascii_lowercase().into_boxed_slice())
            .collect();
        let mut bits = Box::new([0u64; 1024]);
        let mut by_pair: Vec<(u16, Anchored)> = Vec::new();
        let mut single = Vec::new();
        for (id, lit) in literals.iter().enumerate() {
            let id = id as u32;
            match lit.len() {
                0 => {}
                1 => {
                    // Anchored at every pair it starts (the line's last byte is checked apart):
                    // no separate pass over the line.
                    let (c, upper) = (lit[0], lit[0].to_ascii_uppercase());
                    single.push((id, c, upper));
                    for y in (0..=255u8).filter(|y| !y.is_ascii_uppercase()) {
                        for x in [c, upper] {
                            for y in [y, y.to_ascii_uppercase()] {
                                let idx = pair_index(x, y);
                                bits[idx >> 6] |= 1 << (idx & 63);
                            }
                        }
                        by_pair.push((
                            pair_index(c, y) as u16,
                            Anchored {
                                literal: id,
                                offset: 0,
                                len: 1,
                                first: c,
                                head: Head::new(&[c]),
                            },
                        ));
                    }
                }
                _ => {
                    let offset = (0..lit.len() - 1)
                        .min_by_key(|&i| pair_score(lit[i], lit[i + 1]))
                        .unwrap_or(0);
                    let (a, b) = (lit[offset], lit[offset + 1]);
                    for x in [a, a.to_ascii_uppercase()] {
                        for y in [b, b.to_ascii_uppercase()] {
                            let idx = pair_index(x, y);
                            bits[idx >> 6] |= 1 << (idx & 63);
                        }
                    }
                    by_pair.push((
                        pair_index(a, b) as u16,
                        Anchored {
                            literal: id,
                            offset: offset as u32,
                            len: lit.len() as u32,
                            first: lit[0],
                            head: Head::new(lit),
                        },
                    ));
                }
            }
        }
        by_pair.sort_by_key(|&(pair, a)| (pair, a.literal));
        // The anchors as the first pass sees them: a one-byte literal accepts any second byte.
        let mut anchors: Vec<(u8, Option<u8>)> = Vec::new();
        for &(pair, a) in &by_pair {
            let [x, y] = pair.to_le_bytes();
            let anchor = if a.len == 1 { (x, None) } else { (x, Some(y)) };
            if !anchors.contains(&anchor) {
                anchors.push(anchor);
            }
        }
        let common: Vec<&[u8; 2]> = COMMON_PAIRS.iter().chain(&MONTH_PAIRS).copied().collect();
        let filter = PairFilter::new(&anchors, byte_score, &common);
        // (lower-cased pair, range in `anchored`), sorted by pair.
        let mut groups: Vec<(u16, u32, u32)> = Vec::new();
        let mut anchored = Vec::with_capacity(by_pair.len());
        for (pair, a) in by_pair {
            let at = anchored.len() as u32;
            match groups.last_mut() {
                Some(g) if g.0 == pair => g.2 = at + 1,
                _ => groups.push((pair, at, at + 1)),
            }
            anchored.push(a);
        }
        let mut grams = Box::new([0u64; 1024]);
        for a in &anchored {
            if a.gated() {
                let lit = &literals[a.literal as usize];
                let at = a.offset as usize;
                let gram = [lit[at], lit[at + 1], lit[at + 2], lit[at + 3]];
                let idx = gram_index(u32::from_le_bytes(gram));
                grams[idx >> 6] |= 1 << (idx & 63);
            }
        }
        let mut rank = Box::new([0u32; 1024]);
        let mut slots = Vec::new();
        let mut count = 0;
        for (w, word) in bits.iter().enumerate() {
            rank[w] = count;
            count += word.count_ones();
            let mut rest = *word;
            while rest != 0 {
                let idx = w << 6 | rest.trailing_zeros() as usize;
                rest &= rest - 1;
                let [a, b] = (idx as u16).to_le_bytes();
                let lower = pair_index(a.to_ascii_lowercase(), b.to_ascii_lowercase()) as u16;
                let (start, end) = groups
                    .binary_search_by_key(&lower, |g| g.0)
                    .map_or((0, 0), |g| (groups[g].1, groups[g].2));
                let gated = anchored[start as usize..end as usize]
                    .iter()
                    .all(Anchored::gated);
                slots.push(Slot { start, end, gated });
            }
        }
        LiteralSet {
            literals,
            bits,
            rank,
            slots,
            grams,
            anchored,
            single,
            filter,
        }
    }

    /// Returns the number of literals.
    pub fn len(&self) -> usize {
        self.literals.len()
    }

    /// Returns true when the set has no literals.
    pub fn is_empty(&self) -> bool {
        self.literals.is_empty()
    }

    /// Pushes the id of every literal that occurs in `line` to `out` (a literal that occurs
    /// several times may be pushed several times; the order is unspecified).
    pub fn find_all(&self, line: &[u8], out: &mut Vec<u32>) {
        if let Some(&last) = line.last() {
            for &(id, lower, upper) in &self.single {
                if last == lower || last == upper {
                    out.push(id);
                }
            }
        }
        if self.anchored.is_empty() {
            return;
        }
        match &self.filter {
            Some(filter) => {
                let bits: &[u64; 1024] = &self.bits;
                filter.for_each_candidate(
                    line,
                    #[inline(always)]
                    |at| {
                        let idx = pair_index(line[at], line[at + 1]);
                        let word = bits[idx >> 6];
                        if (word >> (idx & 63)) & 1 != 0 {
                            // Inlined into the SIMD code, where `count_ones` is one instruction.
                            self.verify_found(line, at, idx, word, out);
                        }
                    },
                );
            }
            None => self.scan_pairs(line, out),
        }
    }

    /// [`LiteralSet::find_all`] without the SIMD first pass (for tests).
    #[cfg(test)]
    fn find_all_scalar(&self, line: &[u8], out: &mut Vec<u32>) {
        let set = LiteralSet {
            filter: None,
            ..self.clone()
        };
        set.find_all(line, out);
    }

    /// The pass without SIMD: the bit table looked up at every position.
    fn scan_pairs(&self, line: &[u8], out: &mut Vec<u32>) {
        let bits: &[u64; 1024] = &self.bits;
        let test = |idx: usize| (bits[idx >> 6] >> (idx & 63)) & 1;
        // Eight positions per step, from one 8-byte load and the byte after it: the table
        // look-ups are independent, and there is one branch per step.
        let mut at = 0;
        while at + 9 <= line.len() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&line[at..at + 8]);
            let w = u64::from_le_bytes(word);
            let next = u64::from(line[at + 8]);
            let mut found = 0u64;
            for k in 0..7 {
                found |= test((w >> (8 * k)) as usize & 0xffff) << k;
            }
            found |= test((w >> 56 | next << 8) as usize) << 7;
            while found != 0 {
                self.verify(line, at + found.trailing_zeros() as usize, out);
                found &= found - 1;
            }
            at += 8;
        }
        while at + 1 < line.len() {
            if test(pair_index(line[at], line[at + 1])) != 0 {
                self.verify(line, at, out);
            }
            at += 1;
        }
    }

    /// Compares the literals anchored at the pair starting at `line[at]` with the line.
    #[inline(never)]
    fn verify(&self, line: &[u8], at: usize, out: &mut Vec<u32>) {
        self.verify_inline(line, at, out);
    }

    /// [`LiteralSet::verify`], inlined.
    #[inline(always)]
    fn verify_inline(&self, line: &[u8], at: usize, out: &mut Vec<u32>) {
        let idx = pair_index(line[at], line[at + 1]);
        self.verify_found(line, at, idx, self.bits[idx >> 6], out);
    }

    /// [`LiteralSet::verify`] where the pair's index `idx` in the bit table and the table's
    /// word holding its bit are known.
    #[inline(always)]
    fn verify_found(&self, line: &[u8], at: usize, idx: usize, word: u64, out: &mut Vec<u32>) {
        let below = word & ((1u64 << (idx & 63)) - 1);
        let slot = self.rank[idx >> 6] as usize + below.count_ones() as usize;
        let Some(&Slot { start, end, gated }) = self.slots.get(slot) else {
            return;
        };
        if gated {
            // Every literal here has four bytes from the anchor on: those four must be one of
            // theirs (most anchors seen in ordinary text end here).
            let Some(&four) = line.get(at..).and_then(|s| s.first_chunk::<4>()) else {
                return;
            };
            let idx = gram_index(u32::from_le_bytes(four));
            if (self.grams[idx >> 6] >> (idx & 63)) & 1 == 0 {
                return;
            }
        }
        for a in &self.anchored[start as usize..end as usize] {
            let Some(from) = at.checked_sub(a.offset as usize) else {
                continue;
            };
            let len = a.len as usize;
            if let Some(eight) = line.get(from..from + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(eight);
                let w = u64::from_le_bytes(word);
                if (w | a.head.case) & a.head.mask != a.head.word {
                    continue;
                }
                let rest = &self.literals[a.literal as usize][len.min(8)..];
                let matches = rest.is_empty()
                    || line.get(from + 8..from + len).is_some_and(|s| {
                        s.iter()
                            .zip(rest)
                            .all(|(&x, &y)| x.to_ascii_lowercase() == y)
                    });
                if matches {
                    out.push(a.literal);
                }
                continue;
            }
            // Near the end of the line: byte by byte.
            let Some(s) = line.get(from..from + len) else {
                continue;
            };
            if s[0].to_ascii_lowercase() != a.first {
                continue;
            }
            let lit = &self.literals[a.literal as usize];
            if s.iter()
                .zip(lit.iter())
                .all(|(&x, &y)| x.to_ascii_lowercase() == y)
            {
                out.push(a.literal);
            }
        }
    }
}

/// The bit of four bytes (little-endian) in the gram table, ignoring ASCII case: bit 5 of each
/// byte is set first (which folds each upper-case letter onto its lower case, and some
/// punctuation onto other punctuation: the table may accept more, never less).
#[inline(always)]
fn gram_index(four: u32) -> usize {
    ((four | 0x2020_2020).wrapping_mul(0x9e37_79b1) >> 16) as usize
}

/// The bit of the pair `a b` in the table: `a` in the low byte, as a little-endian load of the
/// two bytes gives it.
fn pair_index(a: u8, b: u8) -> usize {
    usize::from(a) | usize::from(b) << 8
}

/// How likely the (lower-cased) pair `a b` is in ordinary log lines: higher is more common.
fn pair_score(a: u8, b: u8) -> u32 {
    if let Some(rank) = COMMON_PAIRS
        .iter()
        .chain(&MONTH_PAIRS)
        .position(|p| **p == [a, b])
    {
        return 1_000_000 - rank as u32 * 1_000;
    }
    byte_score(a) * byte_score(b)
}

/// How common one (lower-cased) byte is in log text, roughly.
fn byte_score(b: u8) -> u32 {
    match b {
        b' ' => 100,
        b'e' => 90,
        b't' => 70,
        b'a' | b'o' => 65,
        b'0'..=b'9' | b'i' | b'n' => 60,
        b's' | b'r' => 55,
        b'.' | b'/' | b':' | b'-' | b'"' => 50,
        b'l' => 40,
        b'h' | b'd' => 35,
        b'c' => 30,
        b'u' | b'm' => 25,
        b'p' => 22,
        b'f' | b'=' | b'_' | b',' | b'[' | b']' | b'(' | b')' => 20,
        b'g' => 18,
        b'w' | b'y' => 15,
        b'b' => 12,
        b'v' => 8,
        b'k' => 7,
        b'x' => 4,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// No literal of the built-in pack is anchored at a pair inside a month's abbreviation, in
    /// any case: the timestamp that nearly every syslog and access-log line carries costs no
    /// literal comparison, whatever the month.
    #[test]
    fn the_built_in_pack_anchors_no_literal_in_a_month() {
        let detector = crate::detect::Detector::try_new(
            &crate::detect::DetectConfig::default(),
            &prometheus::Registry::new(),
        )
        .unwrap();
        let set = &detector.current().prefilter;
        let names = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec";
        for name in names.split(' ') {
            for case in [name.to_owned(), name.to_uppercase(), name.to_lowercase()] {
                for w in case.as_bytes().windows(2) {
                    let idx = pair_index(w[0], w[1]);
                    assert_eq!((set.bits[idx >> 6] >> (idx & 63)) & 1, 0, "{case}: {w:?}");
                }
            }
        }
    }

    /// The reference: every literal that occurs, by naive search.
    fn naive(literals: &[&str], line: &[u8]) -> Vec<u32> {
        let lower = line.to_ascii_lowercase();
        let mut out: Vec<u32> = literals
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                let l = l.to_ascii_lowercase();
                !l.is_empty() && lower.windows(l.len()).any(|w| w == l.as_bytes())
            })
            .map(|(i, _)| i as u32)
            .collect();
        out.dedup();
        out
    }

    /// What the set finds, checked to be the same with and without the SIMD first pass.
    fn found(set: &LiteralSet, line: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        set.find_all(line, &mut out);
        out.sort_unstable();
        out.dedup();
        let mut scalar = Vec::new();
        set.find_all_scalar(line, &mut scalar);
        scalar.sort_unstable();
        scalar.dedup();
        assert_eq!(out, scalar, "SIMD and scalar passes differ on {line:?}");
        out
    }

    #[test]
    fn finds_literals_in_any_case_and_position() {
        let lits = [
            "failed password",
            "'",
            "<",
            "\" 404 ",
            ".env",
            "oom",
            "ab",
            "b",
        ];
        let set = LiteralSet::new(&lits);
        for line in [
            &b"May 1 sshd[1]: FAILED Password for root"[..],
            b"GET /.ENV HTTP/1.1\" 404 12",
            b"x' <svg",
            b"room",
            b"AB",
            b"a",
            b"",
            b"\xff\xfe failed password\xff",
        ] {
            assert_eq!(found(&set, line), naive(&lits, line), "{line:?}");
        }
    }

    #[test]
    fn overlapping_and_repeated_literals_are_all_found() {
        let lits = ["abc", "bcd", "cd", "abcd", "dd"];
        let set = LiteralSet::new(&lits);
        assert_eq!(found(&set, b"xxABCDD"), vec![0, 1, 2, 3, 4]);
        assert_eq!(found(&set, b"abcabc"), vec![0]);
    }

    proptest! {
        #[test]
        fn agrees_with_naive_search(
            lits in proptest::collection::vec("[abAB' <\"0-9]{1,5}|[abAB]{6,12}", 1..12),
            line in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'b'), Just(b'A'), Just(b'B'), Just(b' '),
                    Just(b'\''), Just(b'<'), Just(b'"'), Just(b'0'), Just(b'4'), Just(0xc3)],
                0..100),
        ) {
            let refs: Vec<&str> = lits.iter().map(String::as_str).collect();
            let set = LiteralSet::new(&refs);
            prop_assert_eq!(found(&set, &line), naive(&refs, &line));
        }

        #[test]
        fn agrees_with_aho_corasick_on_the_builtin_literals(line in ".{0,200}") {
            // Built once: the proptest runs hundreds of lines through the same sets.
            static SETS: std::sync::OnceLock<(LiteralSet, aho_corasick::AhoCorasick)> =
                std::sync::OnceLock::new();
            let (set, ac) = SETS.get_or_init(|| {
                let lits = builtin_literals();
                let ac = aho_corasick::AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(&lits)
                    .unwrap();
                (LiteralSet::new(&lits), ac)
            });
            let mut want: Vec<u32> = ac
                .find_overlapping_iter(line.as_bytes())
                .map(|m| m.pattern().as_u32())
                .collect();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(found(set, line.as_bytes()), want);
        }
    }

    /// Every literal of the built-in pack, spelled as in its rules, plus spliced lines.
    fn builtin_literals() -> Vec<String> {
        let file = crate::detect::rule::RuleFile::parse(crate::detect::BUILTIN_RULES).unwrap();
        let mut out: Vec<String> = Vec::new();
        for r in &file.rules {
            for l in r
                .matcher
                .any
                .iter()
                .chain(&r.matcher.all)
                .chain(&r.matcher.none)
            {
                if !out.contains(l) {
                    out.push(l.clone());
                }
            }
        }
        out
    }

    #[test]
    fn finds_builtin_literals_spliced_into_ordinary_lines() {
        let lits = builtin_literals();
        let set = LiteralSet::new(&lits);
        let refs: Vec<&str> = lits.iter().map(String::as_str).collect();
        let base = "198.51.100.7 - - [14/May/2024:09:00:00 +0000] \"GET /static/app.js HTTP/1.1\" 200 43 \"-\" \"Mozilla/5.0\"";
        for lit in &lits {
            for at in [0, 20, 60, base.len()] {
                let line = format!("{}{}{}", &base[..at], lit.to_ascii_uppercase(), &base[at..]);
                assert_eq!(
                    found(&set, line.as_bytes()),
                    naive(&refs, line.as_bytes()),
                    "{line}"
                );
            }
        }
    }
}
