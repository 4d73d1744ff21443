//! Loki's label-string syntax (`{app="api", env="prod"}`), parsed as PromQL's `ParseMetric` does.
//!
//! Grammar: `[name] "{" [item ("," item)* [","]] "}"`, `item := NAME "=" STRING`, where STRING is
//! double-quoted, single-quoted (both with Go escapes) or backtick-quoted (raw). Values borrow
//! from the input unless they contain escapes.

use std::borrow::Cow;
use std::fmt;

/// A parsed label set, sorted by name, with empty values dropped (as Loki does).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Labels<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Labels<'a> {
    /// Builds a label set from pairs: sorts them by name and drops empty values.
    pub fn from_pairs(mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>) -> Self {
        pairs.retain(|(_, v)| !v.is_empty());
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Labels { pairs }
    }

    /// Returns the value of a label, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Iterates over (name, value) pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// Returns the number of labels.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Returns true when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Copies the label set so it no longer borrows from the push buffer.
    pub fn into_owned(self) -> Labels<'static> {
        Labels {
            pairs: self
                .pairs
                .into_iter()
                .map(|(n, v)| (Cow::Owned(n.into_owned()), Cow::Owned(v.into_owned())))
                .collect(),
        }
    }
}

/// Writes the canonical Loki form `{a="x", b="y"}`, escaping values as Go `strconv.Quote` does.
impl fmt::Display for Labels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(2 + self.pairs.len() * 16);
        out.push('{');
        for (i, (name, value)) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            push_name(&mut out, name);
            out.push('=');
            push_quoted(&mut out, value);
        }
        out.push('}');
        f.write_str(&out)
    }
}

/// Appends a label name: bare when it is a classic identifier (`[a-zA-Z_][a-zA-Z0-9_]*`),
/// quoted otherwise (the UTF-8 names Prometheus 3 syntax allows), so the output parses back.
fn push_name(out: &mut String, name: &str) {
    let mut bytes = name.bytes();
    let classic = bytes.next().is_some_and(is_name_start)
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if classic {
        out.push_str(name);
    } else {
        push_quoted(out, name);
    }
}

/// Appends `value` as a double-quoted PromQL string. Never use Rust's `{:?}` for this: it emits
/// `\u{..}` and `\0`, which Loki rejects.
pub fn push_quoted(out: &mut String, value: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Why a label string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at byte {offset}")]
pub struct LabelError {
    /// What was wrong.
    pub message: &'static str,
    /// Byte offset in the label string.
    pub offset: usize,
}

/// Parses a Loki label string such as `{job="auth", host="vps1"}`.
///
/// # Errors
/// Anything Loki's parser rejects: missing braces, bad names, unterminated or invalid strings,
/// unknown escapes, literal newlines and duplicate names.
pub fn parse_labels(input: &str) -> Result<Labels<'_>, LabelError> {
    let mut p = Parser { s: input, pos: 0 };
    // Every pair has an '=' (a value may hold more): an upper bound from the input itself, so
    // a push of a million small streams does not pay for Vec's default growth on each.
    let bare_name = !input.trim_start().starts_with('{');
    let mut pairs =
        Vec::with_capacity(usize::from(bare_name) + input.bytes().filter(|&b| b == b'=').count());
    p.skip_ws();
    // A bare metric name before `{` becomes `__name__`.
    if p.peek().is_some_and(is_name_start) {
        let name = p.name()?;
        pairs.push((Cow::Borrowed("__name__"), Cow::Borrowed(name)));
        p.skip_ws();
    }
    p.expect(b'{', "expected '{'")?;
    loop {
        p.skip_ws();
        if p.peek() == Some(b'}') {
            p.pos += 1;
            break;
        }
        let name: Cow<'_, str> = match p.peek() {
            Some(b'"') | Some(b'\'') | Some(b'`') => p.string()?,
            Some(c) if is_name_start(c) => Cow::Borrowed(p.name()?),
            _ => return Err(p.err("expected label name")),
        };
        p.skip_ws();
        p.expect(b'=', "expected '='")?;
        p.skip_ws();
        let value = p.string()?;
        pairs.push((name, value));
        p.skip_ws();
        match p.peek() {
            Some(b',') => p.pos += 1,
            Some(b'}') => {
                p.pos += 1;
                break;
            }
            _ => return Err(p.err("expected ',' or '}'")),
        }
    }
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err("unexpected characters after '}'"));
    }
    let mut names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_ref()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(LabelError {
            message: "duplicate label name",
            offset: 0,
        });
    }
    Ok(Labels::from_pairs(pairs))
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn err(&self, message: &'static str) -> LabelError {
        LabelError {
            message,
            offset: self.pos,
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8, message: &'static str) -> Result<(), LabelError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(message))
        }
    }

    fn name(&mut self) -> Result<&'a str, LabelError> {
        let start = self.pos;
        // Names may contain ':' only in metric names; label names are [a-zA-Z_][a-zA-Z0-9_]*.
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expected name"));
        }
        Ok(&self.s[start..self.pos])
    }

    fn string(&mut self) -> Result<Cow<'a, str>, LabelError> {
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'' | b'`')) => q,
            _ => return Err(self.err("expected quoted string")),
        };
        self.pos += 1;
        let start = self.pos;
        let bytes = self.s.as_bytes();
        if quote == b'`' {
            let end = memchr::memchr(b'`', &bytes[start..])
                .ok_or_else(|| self.err("unterminated raw string"))?;
            self.pos = start + end + 1;
            return Ok(Cow::Borrowed(&self.s[start..start + end]));
        }
        // Fast path: no escapes before the closing quote.
        let mut i = start;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => break,
                b'\n' => {
                    return Err(LabelError {
                        message: "unterminated quoted string",
                        offset: i,
                    })
                }
                c if c == quote => {
                    self.pos = i + 1;
                    return Ok(Cow::Borrowed(&self.s[start..i]));
                }
                _ => i += 1,
            }
        }
        let mut out = String::from(&self.s[start..i]);
        self.pos = i;
        loop {
            let Some(c) = self.s[self.pos..].chars().next() else {
                return Err(self.err("unterminated quoted string"));
            };
            self.pos += c.len_utf8();
            match c {
                '\n' => return Err(self.err("unterminated quoted string")),
                '\\' => self.escape(quote, &mut out)?,
                c if c as u32 == quote as u32 => return Ok(Cow::Owned(out)),
                c => out.push(c),
            }
        }
    }

    fn escape(&mut self, quote: u8, out: &mut String) -> Result<(), LabelError> {
        let c = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
        self.pos += 1;
        match c {
            b'a' => out.push('\x07'),
            b'b' => out.push('\x08'),
            b'f' => out.push('\x0c'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'v' => out.push('\x0b'),
            b'\\' => out.push('\\'),
            c if c == quote => out.push(c as char),
            b'0'..=b'7' => {
                // Exactly three octal digits, as Go's lexer requires.
                let start = self.pos - 1;
                let digits = self
                    .s
                    .get(start..start + 3)
                    .ok_or_else(|| self.err("invalid octal escape"))?;
                let v =
                    u32::from_str_radix(digits, 8).map_err(|_| self.err("invalid octal escape"))?;
                if v > 255 {
                    return Err(self.err("octal escape out of range"));
                }
                self.pos = start + 3;
                push_byte_escape(out, v as u8);
            }
            b'x' => {
                let v = self.hex(2)?;
                push_byte_escape(out, v as u8);
            }
            b'u' => {
                let v = self.hex(4)?;
                out.push(char::from_u32(v).ok_or_else(|| self.err("invalid unicode escape"))?);
            }
            b'U' => {
                let v = self.hex(8)?;
                out.push(char::from_u32(v).ok_or_else(|| self.err("invalid unicode escape"))?);
            }
            _ => return Err(self.err("unknown escape sequence")),
        }
        Ok(())
    }

    fn hex(&mut self, n: usize) -> Result<u32, LabelError> {
        let digits = self
            .s
            .get(self.pos..self.pos + n)
            .ok_or_else(|| self.err("invalid hex escape"))?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| self.err("invalid hex escape"))?;
        self.pos += n;
        Ok(v)
    }
}

/// Byte escapes (`\xHH`, `\NNN`) can produce invalid UTF-8 in Go; we keep ASCII as is and map
/// other bytes to U+FFFD so the value stays a Rust string.
fn push_byte_escape(out: &mut String, b: u8) {
    if b.is_ascii() {
        out.push(b as char);
    } else {
        out.push(char::REPLACEMENT_CHARACTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_promtail_style_labels_sorted() {
        let l = parse_labels(r#"{job="auth", host="vps1", filename="/var/log/auth.log"}"#).unwrap();
        let v: Vec<_> = l.iter().collect();
        assert_eq!(
            v,
            vec![
                ("filename", "/var/log/auth.log"),
                ("host", "vps1"),
                ("job", "auth")
            ]
        );
        assert_eq!(
            l.to_string(),
            r#"{filename="/var/log/auth.log", host="vps1", job="auth"}"#
        );
    }

    #[test]
    fn accepts_no_spaces_trailing_comma_and_empty_set() {
        assert_eq!(parse_labels(r#"{a="1",b="2",}"#).unwrap().len(), 2);
        assert!(parse_labels("{}").unwrap().is_empty());
        assert_eq!(parse_labels(" { a = '1' } ").unwrap().get("a"), Some("1"));
    }

    #[test]
    fn decodes_go_escapes() {
        let l = parse_labels(r#"{a="q\"\\\n\t\x41\101\u00e9\U0001F600"}"#).unwrap();
        assert_eq!(l.get("a"), Some("q\"\\\n\tAAé😀"));
        let raw = parse_labels(r#"{a=`c:\path\n`}"#).unwrap();
        assert_eq!(raw.get("a"), Some(r"c:\path\n"));
    }

    #[test]
    fn rejects_what_loki_rejects() {
        for bad in [
            r#"{a="\0"}"#,
            r#"{a="\u{41}"}"#,
            "{a=\"x\ny\"}",
            r#"{a="x""#,
            r#"{a=x}"#,
            r#"{a!="x"}"#,
            r#"{1a="x"}"#,
            r#"a="x""#,
            r#"{a="1", a="2"}"#,
            r#"{a="1"} trailing"#,
        ] {
            assert!(parse_labels(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn empty_values_are_dropped_and_metric_name_kept() {
        let l = parse_labels(r#"up{a="", b="x"}"#).unwrap();
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            vec![("__name__", "up"), ("b", "x")]
        );
    }

    /// Found by the `labels` fuzz target: a quoted (UTF-8) label name was printed bare.
    #[test]
    fn quoted_names_round_trip() {
        let input = "{\"aa={a\r\r\r0%u\"=\"qut\0\0\x1f\0}\x0009\"}";
        let l = parse_labels(input).unwrap();
        let s = l.to_string();
        assert_eq!(parse_labels(&s).unwrap(), l, "{s}");
        let plain = parse_labels(r#"{job="a"}"#).unwrap();
        assert_eq!(plain.to_string(), r#"{job="a"}"#);
    }

    #[test]
    fn display_round_trips_control_characters() {
        let l = Labels::from_pairs(vec![(Cow::Borrowed("a"), Cow::Borrowed("x\u{1b}\"y\n"))]);
        let s = l.to_string();
        assert_eq!(s, r#"{a="x\u001b\"y\n"}"#);
        assert_eq!(parse_labels(&s).unwrap(), l);
    }
}
