//! Hand-written matchers for three of the built-in SSH regexes.
//!
//! On attack-heavy traffic most of the engine's time went to capturing these regexes (the
//! bounded backtracker over the match, after a reverse search from the end of the line). A
//! regex whose source is exactly one of [`FAILED`], [`INVALID_USER`] or [`NOT_ALLOWED`] is
//! first tried with the matcher here. It works on lines of printable ASCII only (bytes
//! `0x20..=0x7e`), where `(?i)`, `\b`, `\s`, `\S`, `\d` and `.` have their plain ASCII meaning,
//! and follows the regex's leftmost-first rules by hand: the leftmost start, the optional
//! `invalid user ` taken before left out, the lazy user as short as possible, the greedy
//! address as long as possible. On any other line it declines and the regex runs. A property
//! test (below) checks that it gives exactly the regex's verdict and captures.

/// `Failed <method> for [invalid user] <user> from <addr> [port N] [sshN][: details]`.
pub(crate) const FAILED: &str = r"(?i)\bfailed (?:password|keyboard-interactive(?:/pam)?|hostbased|unknown|none) for (?:(?:invalid|illegal) user )?(?P<user>.*?) from (?P<ip>\S+)(?: port \d+)?(?: ssh\d?)?(?::.*)?\s*$";

/// `Invalid user <user> from <addr> [port N]`.
pub(crate) const INVALID_USER: &str =
    r"(?i)\b(?:invalid|illegal) user (?P<user>.*?) from (?P<ip>\S+)(?: port \d+)?\s*$";

/// `User <user> from <addr> not allowed because …`.
pub(crate) const NOT_ALLOWED: &str =
    r"(?i)\buser (?P<user>\S+) from (?P<ip>\S+) not allowed because ";

/// Which regex a matcher stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Failed,
    InvalidUser,
    NotAllowed,
}

impl Shape {
    /// The matcher for a regex with source `src`, if there is one.
    pub(crate) fn of(src: &str) -> Option<Shape> {
        match src {
            FAILED => Some(Shape::Failed),
            INVALID_USER => Some(Shape::InvalidUser),
            NOT_ALLOWED => Some(Shape::NotAllowed),
            _ => None,
        }
    }
}

/// Byte ranges of the `user` and `ip` captures (every shape has both, and both always take
/// part in a match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spans {
    pub user: (usize, usize),
    pub ip: (usize, usize),
}

/// A matcher's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Match(Spans),
    NoMatch,
    /// Not a line the matcher handles: run the regex.
    Decline,
}

/// Whether every byte of `s` is printable ASCII (`0x20..=0x7e`): the lines the matchers take.
pub(crate) fn printable(s: &[u8]) -> bool {
    // No early exit: the compiler turns this into wide compares.
    s.iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x20) < 0x5f))
}

/// Runs the matcher for `shape` over `lower`, the line in ASCII lower case (same length and
/// offsets as the line); `printable` is [`printable`]`(lower)`.
pub(crate) fn extract(shape: Shape, lower: &[u8], printable: bool) -> Verdict {
    if !printable {
        return Verdict::Decline;
    }
    let found = match shape {
        Shape::Failed => failed(lower),
        Shape::InvalidUser => invalid_user(lower),
        Shape::NotAllowed => not_allowed(lower),
    };
    found.map_or(Verdict::NoMatch, Verdict::Match)
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every position where `needle` occurs, overlapping ones included (` from from `).
fn find_all<'a>(s: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    memchr::memchr_iter(needle[0], s).filter(move |&p| s[p..].starts_with(needle))
}

/// Positions where `needle` (starting with a word byte) occurs after a word boundary.
fn starts<'a>(s: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    find_all(s, needle).filter(move |&p| p == 0 || !is_word(s[p - 1]))
}

/// End of the run of non-space bytes starting at `at`.
fn run_end(s: &[u8], at: usize) -> usize {
    s[at..]
        .iter()
        .position(|&b| b == b' ')
        .map_or(s.len(), |n| at + n)
}

/// `s` from `at` is ` port <digits>` (the digits as many as there are); returns where it
/// ends, or `at` when it is not there.
fn port(s: &[u8], at: usize) -> usize {
    let rest = &s[at..];
    if rest.starts_with(b" port ") {
        let digits = rest[6..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 {
            return at + 6 + digits;
        }
    }
    at
}

/// `s[at..]` is only spaces.
fn blank(s: &[u8], at: usize) -> bool {
    s[at..].iter().all(|&b| b == b' ')
}

/// The user starts at `u0`; the lazy user ends at the first ` from ` after which the rest
/// matches `tail` (given the address's start and end).
fn user_then_ip(s: &[u8], u0: usize, tail: impl Fn(&[u8], usize, usize) -> bool) -> Option<Spans> {
    for f in find_all(&s[u0..], b" from ") {
        let f = u0 + f;
        let ip0 = f + 6;
        let ip1 = run_end(s, ip0);
        if ip1 > ip0 && tail(s, ip0, ip1) {
            return Some(Spans {
                user: (u0, f),
                ip: (ip0, ip1),
            });
        }
    }
    None
}

/// `(?: port \d+)?(?: ssh\d?)?(?::.*)?\s*$` from the end of the longest address; else the
/// address shortened to end before its last `:` (after its first byte), where `:.*` takes the
/// rest.
fn failed_tail(s: &[u8], ip0: usize, ip1: &mut usize) -> bool {
    let mut at = port(s, *ip1);
    if s[at..].starts_with(b" ssh") {
        at += 4;
        if s.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
    }
    if s.get(at) == Some(&b':') || blank(s, at) {
        return true;
    }
    match s[ip0 + 1..*ip1].iter().rposition(|&b| b == b':') {
        Some(c) => {
            *ip1 = ip0 + 1 + c;
            true
        }
        None => false,
    }
}

fn failed(s: &[u8]) -> Option<Spans> {
    const METHODS: [&[u8]; 6] = [
        b"password",
        b"keyboard-interactive/pam",
        b"keyboard-interactive",
        b"hostbased",
        b"unknown",
        b"none",
    ];
    for p in starts(s, b"failed ") {
        let rest = &s[p + 7..];
        // At most one method can be followed by " for " (`/pam` or not: `/` against ` `).
        let Some(q) = METHODS.iter().find_map(|m| {
            (rest.starts_with(m) && rest[m.len()..].starts_with(b" for "))
                .then(|| p + 7 + m.len() + 5)
        }) else {
            continue;
        };
        let tail = |s: &[u8], ip0: usize, ip1: usize| failed_tail(s, ip0, &mut { ip1 });
        let found = |u0: usize| {
            user_then_ip(s, u0, tail).map(|mut spans| {
                failed_tail(s, spans.ip.0, &mut spans.ip.1);
                spans
            })
        };
        let rest = &s[q..];
        let invalid = rest.starts_with(b"invalid user ") || rest.starts_with(b"illegal user ");
        // Whether a ` from ` works does not depend on where the user starts, and `found(q)`
        // has tried every one after `q`: a later start cannot match either (this keeps a
        // hostile line linear).
        return invalid
            .then(|| found(q + 13))
            .flatten()
            .or_else(|| found(q));
    }
    None
}

fn invalid_user(s: &[u8]) -> Option<Spans> {
    // Both words are seven bytes: find the common " user " and look back.
    for p in find_all(s, b" user ") {
        let Some(w) = p.checked_sub(7) else {
            continue;
        };
        if !(s[w..p] == *b"invalid" || s[w..p] == *b"illegal") || (w > 0 && is_word(s[w - 1])) {
            continue;
        }
        let tail = |s: &[u8], _: usize, ip1: usize| blank(s, port(s, ip1));
        // As in `failed`: a later start has only ` from `s already tried.
        return user_then_ip(s, p + 6, tail);
    }
    None
}

fn not_allowed(s: &[u8]) -> Option<Spans> {
    for p in starts(s, b"user ") {
        let u0 = p + 5;
        let u1 = run_end(s, u0);
        if u1 == u0 || !s[u1..].starts_with(b" from ") {
            continue;
        }
        let ip0 = u1 + 6;
        let ip1 = run_end(s, ip0);
        if ip1 > ip0 && s[ip1..].starts_with(b" not allowed because ") {
            return Some(Spans {
                user: (u0, u1),
                ip: (ip0, ip1),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The regex's verdict and captures, as [`extract`] gives them.
    fn by_regex(re: &regex::Regex, line: &str) -> Verdict {
        match re.captures(line) {
            None => Verdict::NoMatch,
            Some(c) => {
                let span = |n: &str| c.name(n).map(|m| (m.start(), m.end())).unwrap();
                Verdict::Match(Spans {
                    user: span("user"),
                    ip: span("ip"),
                })
            }
        }
    }

    /// Checks every matcher against its regex on `line`; returns how many matched.
    fn check(line: &str) -> usize {
        static REGEXES: std::sync::LazyLock<Vec<regex::Regex>> = std::sync::LazyLock::new(|| {
            [FAILED, INVALID_USER, NOT_ALLOWED]
                .iter()
                .map(|src| regex::Regex::new(src).unwrap())
                .collect()
        });
        let lower: Vec<u8> = line.bytes().map(|b| b.to_ascii_lowercase()).collect();
        let mut matched = 0;
        for re in REGEXES.iter() {
            let shape = Shape::of(re.as_str()).unwrap();
            assert_eq!(
                printable(&lower),
                lower.iter().all(|&b| (0x20..0x7f).contains(&b))
            );
            match extract(shape, &lower, printable(&lower)) {
                Verdict::Decline => {
                    assert!(
                        !lower.iter().all(|&b| (0x20..0x7f).contains(&b)),
                        "{line:?}"
                    )
                }
                v => {
                    assert_eq!(v, by_regex(re, line), "{shape:?} on {line:?}");
                    matched += usize::from(v != Verdict::NoMatch);
                }
            }
        }
        matched
    }

    #[test]
    fn the_builtin_pack_uses_these_regexes() {
        let pack = include_str!("builtin.yml");
        for src in [FAILED, INVALID_USER, NOT_ALLOWED] {
            assert!(pack.contains(&format!("'{src}'")), "{src}");
        }
    }

    #[test]
    fn known_lines() {
        for line in [
            "sshd[1]: Failed password for root from 203.0.113.9 port 22 ssh2",
            "sshd[1]: Failed password for invalid user admin from 203.0.113.9 port 22 ssh2",
            "sshd[1]: Failed password for invalid user from 203.0.113.9 port 22 ssh2",
            "sshd[1]: Failed password for invalid user  from 203.0.113.9",
            "sshd[1]: FAILED PASSWORD FOR x from 1.2.3.4 from 5.6.7.8 PORT 1 SSH2",
            "Failed keyboard-interactive/pam for bob from ::1 port 22 ssh2: details",
            "Failed keyboard-interactive for bob from 1.2.3.4:x y",
            "Failed none for bob from 1.2.3.4:22",
            "Failed none for bob from :1:2 z",
            "Failed none for bob from a:b:c z",
            "Failed none for bob from 1.2.3.4 port  ",
            "Failed none for bob from 1.2.3.4 port 22 ssh22",
            "Failed none for bob from 1.2.3.4 ssh",
            "xFailed password for root from 1.2.3.4; failed password for r from 5.6.7.8",
            "Failed publickey for root from 1.2.3.4 port 22 ssh2",
            "sshd[1]: Invalid user u1 from 203.0.113.1 port 4000",
            "sshd[1]: invalid user from from 1.2.3.4",
            "sshd[1]: Illegal user a from b from c  ",
            "sshd[1]: xinvalid user a from b; invalid user c from d port 9",
            "sshd[1]: Invalid user u1 from 203.0.113.1 port 4000 [preauth]",
            "sshd[1]: User bob from 1.2.3.4 not allowed because not listed in AllowUsers",
            "sshd[1]: User bob from  1.2.3.4 not allowed because x; user c from d not allowed because ",
            "sshd[1]: User bob from 1.2.3.4 not allowed because",
            "Failed password for ünïcode from 1.2.3.4 port 22 ssh2",
            "Failed password for root from 1.2.3.4\tport 22",
        ] {
            check(line);
        }
        assert_eq!(
            check("Failed password for invalid user a from 1.2.3.4 port 2"),
            2
        );
        assert_eq!(check("User a from 1.2.3.4 not allowed because none"), 1);
    }

    #[test]
    fn hostile_lines_stay_linear() {
        for unit in [
            "failed password for invalid user  from x ",
            "invalid user illegal user from from  ",
            "user a from b not allowed ",
        ] {
            let line = unit.repeat(2_000) + "x";
            let lower = line.as_bytes();
            let start = std::time::Instant::now();
            for shape in [Shape::Failed, Shape::InvalidUser, Shape::NotAllowed] {
                extract(shape, lower, printable(lower));
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(1),
                "{unit}"
            );
            check(&unit.repeat(50));
        }
    }

    /// Lines built from the pieces the regexes look for, with random case, spacing and junk.
    fn pieces() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("failed "),
            Just("Failed "),
            Just("password "),
            Just("keyboard-interactive"),
            Just("/pam "),
            Just("none "),
            Just("publickey "),
            Just("for "),
            Just("FOR "),
            Just("invalid user "),
            Just("Illegal User "),
            Just("user "),
            Just(" from "),
            Just("from "),
            Just(" From "),
            Just("1.2.3.4"),
            Just("::1"),
            Just(":"),
            Just(" port "),
            Just("22"),
            Just(" ssh2"),
            Just(" ssh"),
            Just(" not allowed because "),
            Just(" [preauth]"),
            Just(" "),
            Just("  "),
            Just("x"),
            Just("_"),
            Just("\t"),
            Just("é"),
            Just("\n"),
        ];
        proptest::collection::vec(piece, 0..14).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn matchers_agree_with_the_regexes_on_built_lines(line in pieces()) {
            check(&line);
        }

        #[test]
        fn matchers_agree_with_the_regexes_on_random_lines(
            line in "[ -~]{0,40}( from [ -~]{0,12}| port [0-9]{1,3}| ssh[0-9]?)*[ :-~]{0,8}"
        ) {
            check(&line);
            check(&format!("Failed password for {line}"));
            check(&format!("Invalid user {line}"));
            check(&format!("User {line}"));
        }

        #[test]
        fn matchers_agree_with_the_regexes_on_any_text(line in "\\PC{0,60}") {
            check(&line);
            check(&format!("Failed none for invalid user {line} from 1.2.3.4 port 2"));
        }
    }
}
