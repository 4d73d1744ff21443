//! A hand-written matcher for the built-in segfault regex ([`SEGFAULT`]).
//!
//! The regex ends in a literal and starts with a character class, so the regex crate finds a
//! match by searching backwards from the literal and then runs forwards again for the capture:
//! on attack-heavy traffic that was most of what a kernel line cost. The matcher finds the
//! literal and reads the line backwards once. It takes lines of printable ASCII only (where
//! `\s` is the space and `\d` an ASCII digit) and follows the regex's rules: the leftmost match,
//! the greedy binary name as long as it can be. On any other line it declines and the regex
//! runs. A property test (below) checks that it gives exactly the regex's verdict and capture.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// `<binary>[<pid>]: segfault at …`, the kernel's line for a crashing process.
pub(crate) const SEGFAULT: &str = r"(?P<binary>[^\s\[\]:]+)\[\d+\]: segfault at ";

/// The literal every match ends with.
static TAIL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"]: segfault at "));

/// The byte range of `binary` where [`SEGFAULT`] matches `line`, `Ok(None)` where it does not,
/// `Err(())` when the line is not printable ASCII (run the regex).
#[allow(clippy::result_unit_err)]
pub(crate) fn segfault(line: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    if !super::ssh::printable(line) {
        return Err(());
    }
    // A later occurrence's name cannot reach back past an earlier occurrence's `]: `, so the
    // first occurrence that has a name and a pid before it holds the leftmost match.
    for p in TAIL.find_iter(line) {
        let before = &line[..p];
        let digits = before
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let Some(open) = p.checked_sub(digits + 1) else {
            continue;
        };
        if digits == 0 || line[open] != b'[' {
            continue;
        }
        let name = line[..open]
            .iter()
            .rev()
            .take_while(|&&b| !matches!(b, b' ' | b'[' | b']' | b':'))
            .count();
        if name > 0 {
            return Ok(Some((open - name, open)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(line: &str) {
        static RE: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(SEGFAULT).unwrap());
        let want = RE
            .captures(line)
            .map(|c| c.name("binary").map(|m| (m.start(), m.end())).unwrap());
        match segfault(line.as_bytes()) {
            Ok(got) => assert_eq!(got, want, "{line:?}"),
            Err(()) => assert!(!line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}"),
        }
    }

    #[test]
    fn the_builtin_pack_uses_this_regex() {
        assert!(include_str!("builtin.yml").contains(&format!("'{SEGFAULT}'")));
    }

    #[test]
    fn known_lines() {
        for line in [
            "May 14 09:00:00 web1 kernel: [12.0] worker[812]: segfault at 0 ip 0 sp 0 error 4 in w",
            "kernel: php-fpm[1]: segfault at 7f ip 00 sp 00 error 6 in libc.so",
            "x[1[2]: segfault at 0",
            "a1[22]: segfault at ",
            "[22]: segfault at 0; b[3]: segfault at 1",
            "a[]: segfault at 0 b[4]: segfault at 1",
            "a:b[5]: segfault at 0",
            "a[5]: Segfault at 0",
            "a [5]: segfault at 0",
            "é[5]: segfault at 0",
            "a\t[5]: segfault at 0",
            "a[5]: segfault at",
        ] {
            check(line);
        }
    }

    fn pieces() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("worker"),
            Just("php-fpm"),
            Just("["),
            Just("]"),
            Just("12"),
            Just("0"),
            Just(":"),
            Just(": "),
            Just("]: segfault at "),
            Just("segfault at "),
            Just(" "),
            Just("\t"),
            Just("é"),
            Just("x"),
        ];
        proptest::collection::vec(piece, 0..14).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn matcher_agrees_with_the_regex_on_built_lines(line in pieces()) {
            check(&line);
        }

        #[test]
        fn matcher_agrees_with_the_regex_on_any_text(line in "\\PC{0,40}") {
            check(&line);
            check(&format!("{line}[1]: segfault at 0"));
        }
    }
}
