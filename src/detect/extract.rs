//! Field extraction from one log line: the built-in parsers (combined access log, syslog header),
//! address normalisation, URL decoding, and event time parsed from a line (for `scan`).
//!
//! Everything here works on attacker-controlled bytes: no panics, no allocation sized by the input
//! beyond the line itself, and every scan is linear.

use std::net::IpAddr;

/// Normalises an address as keys use it: IPv4 dotted quad; IPv6 compressed lower case;
/// `::ffff:a.b.c.d` becomes the IPv4 address; brackets and a trailing `:port` are removed.
/// Returns `None` when `s` is not an address.
pub fn normalize_ip(s: &str) -> Option<String> {
    parse_ip(s).map(|ip| ip.to_string())
}

/// Parses an address in the forms logs print (see [`normalize_ip`]).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    // The common case, a plain dotted quad, without the general parsers.
    if let Some(v4) = parse_dotted_quad(s.as_bytes()) {
        return Some(IpAddr::V4(v4));
    }
    let s = s.trim_matches(|c: char| c == ',' || c == ';' || c == ')' || c == '(');
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let ip = if let Some(rest) = s.strip_prefix('[') {
        // [v6]:port or [v6]
        let end = rest.find(']')?;
        rest[..end].parse::<IpAddr>().ok()?
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else {
        // a.b.c.d:port
        let (host, port) = s.rsplit_once(':')?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => IpAddr::V4(v4),
            _ => return None,
        }
    };
    Some(match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    })
}

/// Parses `a.b.c.d` exactly as `Ipv4Addr`'s parser does (1 to 3 digits per part, no leading
/// zero, at most 255), or returns `None` (then the general path decides).
fn parse_dotted_quad(s: &[u8]) -> Option<std::net::Ipv4Addr> {
    if s.len() < 7 || s.len() > 15 {
        return None;
    }
    let digit = |i: usize| s.get(i).map(|b| b.wrapping_sub(b'0')).filter(|&d| d <= 9);
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let first = digit(i)?;
        i += 1;
        let mut value = u32::from(first);
        // A part that starts with 0 is that 0 alone.
        if first != 0 {
            for _ in 0..2 {
                let Some(d) = digit(i) else { break };
                value = value * 10 + u32::from(d);
                i += 1;
            }
        }
        *octet = u8::try_from(value).ok()?;
    }
    (i == s.len()).then(|| std::net::Ipv4Addr::from(octets))
}

/// The first `needle` in `hay`, eight bytes per step: the fields of a log line are short, and
/// a `memchr` call costs more than such a search.
fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = LOW * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word) ^ pattern;
        // The lowest byte of `v` that is zero sets the lowest flagged bit (bytes above a zero
        // byte may be flagged too, never below it).
        let zero = v.wrapping_sub(LOW) & !v & HIGH;
        if zero != 0 {
            return Some(at + zero.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| at + i)
}

/// A set of networks (CIDRs) with a membership test that costs a mask and a compare per
/// network: the allowlist, checked for every keyed match.
#[derive(Debug, Clone, Default)]
pub struct NetSet {
    /// (network, mask) of the IPv4 networks.
    v4: Vec<(u32, u32)>,
    /// (network, mask) of the IPv6 networks.
    v6: Vec<(u128, u128)>,
}

impl NetSet {
    /// Builds the set from networks as configured.
    pub fn new(nets: &[ipnet::IpNet]) -> Self {
        let mut set = NetSet::default();
        for net in nets {
            match net {
                ipnet::IpNet::V4(n) => {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(n.prefix_len()))
                        .unwrap_or(0);
                    set.v4.push((u32::from(n.network()) & mask, mask));
                }
                ipnet::IpNet::V6(n) => {
                    let mask = u128::MAX
                        .checked_shl(128 - u32::from(n.prefix_len()))
                        .unwrap_or(0);
                    set.v6.push((u128::from(n.network()) & mask, mask));
                }
            }
        }
        set
    }

    /// Returns true when a network of the set contains `ip` (IPv4 networks hold IPv4 addresses
    /// only, IPv6 networks IPv6 addresses only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let a = u32::from(v4);
                self.v4.iter().any(|&(net, mask)| a & mask == net)
            }
            IpAddr::V6(v6) => {
                let a = u128::from(v6);
                self.v6.iter().any(|&(net, mask)| a & mask == net)
            }
        }
    }
}

/// Normalises a source that may be an address or a host name: addresses as [`normalize_ip`],
/// host names (sshd with `UseDNS yes` logs them) lower-cased. Returns `None` for anything that is
/// neither (empty, too long, or characters no host name has).
pub fn normalize_source(s: &str) -> Option<String> {
    if let Some(ip) = normalize_ip(s) {
        return Some(ip);
    }
    let s = s.trim_end_matches(['.', ',', ';', ':']);
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.contains('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then(|| s.to_ascii_lowercase())
}

/// The fields of one line in the nginx/apache combined (or common) access-log format, optionally
/// preceded by a virtual host: `[vhost] ip ident user [time] "request" status bytes "ref" "ua"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessLine<'a> {
    /// The virtual host, when the line starts with one.
    pub vhost: Option<&'a str>,
    /// The client address as printed.
    pub ip: &'a str,
    /// The authenticated user (`-` when none).
    pub user: &'a str,
    /// The time field without brackets.
    pub time: &'a str,
    /// The whole request line, as printed (may be empty or garbage for bad requests).
    pub request: &'a str,
    /// The request method, when the request line has the usual three parts.
    pub method: &'a str,
    /// The request target's path (before `?`).
    pub path: &'a str,
    /// The request target's query (after `?`, without it).
    pub query: &'a str,
    /// The three-digit status.
    pub status: &'a str,
    /// The referer (`-` when none).
    pub referer: &'a str,
    /// The user agent (`-` when none).
    pub user_agent: &'a str,
}

/// Parses a combined/common access-log line. Returns `None` for lines of another shape.
pub fn parse_access(line: &str) -> Option<AccessLine<'_>> {
    let (mut a, tail) = parse_access_head(line)?;
    (a.referer, a.user_agent) = parse_access_tail(tail);
    Some(a)
}

/// Parses an access-log line up to its status: the [`AccessLine`] without `referer` and
/// `user_agent` (left `-`), and the rest of the line, for [`parse_access_tail`]. Returns `None`
/// for lines of another shape (exactly when [`parse_access`] does).
pub fn parse_access_head(line: &str) -> Option<(AccessLine<'_>, &str)> {
    let bytes = line.as_bytes();
    // The first " [".
    let mut from = 1;
    let open = loop {
        let at = from + find_byte(b'[', bytes.get(from..)?)?;
        if bytes[at - 1] == b' ' {
            break at - 1;
        }
        from = at + 1;
    };
    if open > 300 {
        return None;
    }
    // The words before it (separated by one or more spaces): `ip ident user`, or a virtual
    // host and those three.
    let mut words = [""; 4];
    let mut count = 0;
    let mut at = 0;
    while at < open {
        if bytes[at] == b' ' {
            at += 1;
            continue;
        }
        // A few bytes to the next space: a plain loop costs less than a `memchr` call here.
        let mut end = at;
        while end < open && bytes[end] != b' ' {
            end += 1;
        }
        if count == words.len() {
            return None;
        }
        words[count] = &line[at..end];
        count += 1;
        at = end;
    }
    let (vhost, ip, user) = match count {
        3 => (None, words[0], words[2]),
        4 => (Some(words[0]), words[1], words[3]),
        _ => return None,
    };
    let rest = &line[open + 2..];
    // The first `] "` after it.
    let rb = rest.as_bytes();
    let mut from = 0;
    let close = loop {
        let at = from + find_byte(b']', rb.get(from..)?)?;
        if rb.get(at + 1..at + 3) == Some(b" \"") {
            break at;
        }
        from = at + 1;
    };
    let time = &rest[..close];
    let after_time = &rest[close + 3..];
    // The request ends at the first `" NNN ` (a status); the request itself may contain quotes.
    let bytes = after_time.as_bytes();
    let mut end = None;
    let mut from = 0;
    while let Some(off) = find_byte(b'"', &bytes[from..]) {
        let at = from + off;
        let tail = &bytes[at + 1..];
        if tail.len() >= 4
            && tail[0] == b' '
            && tail[1..4].iter().all(u8::is_ascii_digit)
            && (tail.len() == 4 || tail[4] == b' ')
        {
            end = Some(at);
            break;
        }
        from = at + 1;
    }
    let end = end?;
    let request = &after_time[..end];
    let status = &after_time[end + 2..end + 5];
    let tail = &after_time[(end + 5).min(after_time.len())..];
    // `METHOD target …`: the method, then the target up to the next space.
    let (mut method, mut path, mut query) = ("", "", "");
    if let Some(sp) = find_byte(b' ', request.as_bytes()) {
        let m = &request[..sp];
        if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
            let rest = &request[sp + 1..];
            let target = &rest[..find_byte(b' ', rest.as_bytes()).unwrap_or(rest.len())];
            method = m;
            match find_byte(b'?', target.as_bytes()) {
                Some(q) => (path, query) = (&target[..q], &target[q + 1..]),
                None => path = target,
            }
        }
    }
    let line = AccessLine {
        vhost,
        ip,
        user,
        time,
        request,
        method,
        path,
        query,
        status,
        referer: "-",
        user_agent: "-",
    };
    Some((line, tail))
}

/// Parses the referer and user agent from the rest of an access-log line after its status (see
/// [`parse_access_head`]); `-` for each one missing.
pub fn parse_access_tail(tail: &str) -> (&str, &str) {
    let mut quoted = QuotedIter { s: tail };
    let referer = quoted.next().unwrap_or("-");
    let user_agent = quoted.next().unwrap_or("-");
    (referer, user_agent)
}

/// Iterates over `"…"` strings, honouring `\"` escapes (apache) inside them.
struct QuotedIter<'a> {
    s: &'a str,
}

impl<'a> Iterator for QuotedIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let b = self.s.as_bytes();
        let start = memchr::memchr(b'"', b)? + 1;
        let mut i = start;
        while let Some(off) = memchr::memchr2(b'\\', b'"', &b[i.min(b.len())..]) {
            i += off;
            if b[i] == b'\\' {
                i += 2;
                continue;
            }
            let out = &self.s[start..i];
            self.s = &self.s[i + 1..];
            return Some(out);
        }
        let out = &self.s[start..];
        self.s = "";
        Some(out)
    }
}

/// The header of a syslog line: `[time] host program[pid]: message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyslogHeader<'a> {
    /// The host name.
    pub host: &'a str,
    /// The program (tag) name, without the pid.
    pub program: &'a str,
    /// The pid, when printed.
    pub pid: &'a str,
    /// The message after `: `.
    pub message: &'a str,
}

/// Parses the syslog header (RFC 3164 with or without its timestamp, RFC 3339 timestamps,
/// RFC 5424). Returns `None` when the line has no recognisable `host program[pid]:` part.
pub fn parse_syslog(line: &str) -> Option<SyslogHeader<'_>> {
    let mut s = line;
    // <PRI> and RFC 5424 version.
    if s.starts_with('<') {
        let close = find_byte(b'>', s.as_bytes())?;
        s = &s[close + 1..];
        if let Some(rest) = s.strip_prefix("1 ") {
            return parse_rfc5424(rest);
        }
    }
    s = skip_timestamp(s);
    let sp = find_byte(b' ', s.as_bytes())?;
    let host = &s[..sp];
    let rest = s[sp + 1..].trim_start();
    // The tag runs to the first `: ` (or a `:` that ends the line) and holds no space.
    let rb = rest.as_bytes();
    let mut colon = None;
    for (i, &c) in rb.iter().enumerate() {
        match c {
            b' ' => return None,
            b':' if rb.get(i + 1).is_none_or(|&n| n == b' ') => {
                colon = Some(i);
                break;
            }
            _ => {}
        }
    }
    let colon = colon?;
    let tag = &rest[..colon];
    if tag.is_empty() || host.is_empty() {
        return None;
    }
    let (program, pid) = match find_byte(b'[', tag.as_bytes()) {
        Some(open) => (&tag[..open], tag[open + 1..].trim_end_matches(']')),
        None => (tag, ""),
    };
    let message = rest.get(colon + 2..).unwrap_or("");
    Some(SyslogHeader {
        host,
        program,
        pid,
        message,
    })
}

fn parse_rfc5424(s: &str) -> Option<SyslogHeader<'_>> {
    let mut it = s.splitn(6, ' ');
    let _time = it.next()?;
    let host = it.next()?;
    let program = it.next()?;
    let pid = it.next()?;
    let _msgid = it.next()?;
    let rest = it.next().unwrap_or("");
    // Structured data: `-` or one or more `[...]` elements (values may hold `]` escaped as `\]`).
    let message = if let Some(m) = rest.strip_prefix("- ") {
        m
    } else {
        let b = rest.as_bytes();
        let (mut i, mut depth, mut end) = (0, 0i32, 0);
        let mut in_quote = false;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 1,
                b'"' => in_quote = !in_quote,
                b'[' if !in_quote => depth += 1,
                b']' if !in_quote => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        if b.get(i + 1) != Some(&b'[') {
                            break;
                        }
                    }
                }
                _ => {}
            }
            i += 1;
        }
        rest.get(end..).unwrap_or("").trim_start()
    };
    Some(SyslogHeader {
        host,
        program,
        pid: if pid == "-" { "" } else { pid },
        message,
    })
}

/// Skips an RFC 3164 (`Mmm dd hh:mm:ss `) or RFC 3339 timestamp at the start of `s`.
fn skip_timestamp(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() > 16 && month_index(&b[..3]).is_some() && b[3] == b' ' {
        // "Mmm dd hh:mm:ss " or "Mmm  d hh:mm:ss " or "Mmm d hh:mm:ss "
        let rest = s[4..].trim_start();
        if let Some(day) = find_byte(b' ', rest.as_bytes()) {
            let rest = &rest[day + 1..];
            if let Some(end) = find_byte(b' ', rest.as_bytes()) {
                if end >= 8 && rest.as_bytes()[2] == b':' {
                    return &rest[end + 1..];
                }
            }
        }
        return s;
    }
    if b.len() > 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' {
        if let Some(sp) = find_byte(b' ', b) {
            return &s[sp + 1..];
        }
    }
    s
}

fn month_index(b: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    if b.len() < 3 {
        return None;
    }
    let lower = [
        b[0].to_ascii_lowercase(),
        b[1].to_ascii_lowercase(),
        b[2].to_ascii_lowercase(),
    ];
    MONTHS
        .iter()
        .position(|m| **m == lower)
        .map(|i| i as u32 + 1)
}

/// Percent-decodes `s` (and `+` as space), twice so that double-encoded probes decode too,
/// lower-cases the result and collapses SQL comments (`/**/`) to spaces. Invalid escapes stay.
pub fn decode_uri(s: &str) -> String {
    let mut out = String::new();
    decode_uri_into(s, &mut UriScratch::default(), &mut out);
    out
}

/// The buffers [`decode_uri_into`] decodes through, kept between lines.
#[derive(Debug, Default)]
pub struct UriScratch {
    once: Vec<u8>,
    twice: Vec<u8>,
}

impl UriScratch {
    /// Frees a buffer that has grown past `capacity` bytes (kept for the next batch otherwise).
    pub fn bound(&mut self, capacity: usize) {
        for buf in [&mut self.once, &mut self.twice] {
            if buf.capacity() > capacity {
                *buf = Vec::new();
            }
        }
    }
}

/// [`decode_uri`] into `out` (cleared first), through buffers that are reused.
pub fn decode_uri_into(s: &str, scratch: &mut UriScratch, out: &mut String) {
    scratch.once.clear();
    percent_decode(s.as_bytes(), &mut scratch.once);
    let decoded = if scratch.once.contains(&b'%') {
        scratch.twice.clear();
        percent_decode(&scratch.once, &mut scratch.twice);
        &scratch.twice
    } else {
        &scratch.once
    };
    out.clear();
    match std::str::from_utf8(decoded) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(decoded)),
    }
    out.make_ascii_lowercase();
    if out.contains("/*") {
        *out = out.replace("/**/", " ");
    }
}

/// Appends the percent-decoding of `s` to `out`.
fn percent_decode(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// === event time from a line ===

/// Context for parsing event times from lines: the reference "now" (for syslog lines without a
/// year) in seconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct TimeContext {
    /// Now, in seconds since the epoch; a year-less syslog time later than now + 1 day is
    /// taken to be from the previous year.
    pub now_secs: i64,
}

impl TimeContext {
    /// Uses the system clock.
    pub fn now() -> Self {
        TimeContext {
            now_secs: chrono::Utc::now().timestamp(),
        }
    }
}

/// Parses the event time of a line, in nanoseconds since the epoch. Recognises, at the start of
/// the line (after an optional `<PRI>`/`<PRI>1 `): RFC 3339 / ISO 8601, syslog `Mmm dd hh:mm:ss`,
/// nginx error-log `yyyy/mm/dd hh:mm:ss`, apache error-log `[Www Mmm dd hh:mm:ss(.us) yyyy]`;
/// anywhere in the first 200 bytes: the access-log `[dd/Mmm/yyyy:hh:mm:ss ±zzzz]`, and an nginx
/// error-log time after a syslog tag; in JSON lines: `"time"`, `"timestamp"`, `"@timestamp"`,
/// `"ts"` as RFC 3339 text or epoch seconds/milliseconds.
pub fn parse_line_time(line: &str, ctx: TimeContext) -> Option<i64> {
    let mut s = line.trim_start();
    if s.starts_with('{') {
        return json_time(s);
    }
    if s.starts_with('<') {
        if let Some(close) = s.get(..6).and_then(|h| h.find('>')) {
            s = &s[close + 1..];
            s = s.strip_prefix("1 ").unwrap_or(s);
        }
    }
    if let Some(t) = rfc3339(s) {
        return Some(t);
    }
    if let Some(t) = syslog_time(s, ctx) {
        return Some(t);
    }
    if let Some(t) = slash_time(s) {
        return Some(t);
    }
    if let Some(t) = s.strip_prefix('[').and_then(apache_error_time) {
        return Some(t);
    }
    let head = &s[..floor_char_boundary(s, 200)];
    if let Some(at) = head.find('[') {
        if let Some(t) = access_time(&head[at + 1..]) {
            return Some(t);
        }
    }
    // "host nginx[1]: 2015/01/21 10:56:10 [error] …"
    if let Some(at) = head.find(": ") {
        return slash_time(head[at + 2..].trim_start());
    }
    None
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn digits(s: &str, from: usize, len: usize) -> Option<i64> {
    let part = s.get(from..from + len)?;
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

fn civil_to_ns(y: i64, mo: u32, d: u32, h: i64, mi: i64, sec: i64, frac_ns: i64) -> Option<i64> {
    let date = chrono::NaiveDate::from_ymd_opt(y as i32, mo, d)?;
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = date
        .signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?)
        .num_days();
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// Parses `.ffffff` at `s[at..]`; returns (nanoseconds, bytes consumed).
fn fraction(s: &str, at: usize) -> (i64, usize) {
    let b = s.as_bytes();
    if b.get(at) != Some(&b'.') && b.get(at) != Some(&b',') {
        return (0, 0);
    }
    let mut ns = 0i64;
    let mut n = 0;
    let mut i = at + 1;
    while i < b.len() && b[i].is_ascii_digit() {
        if n < 9 {
            ns = ns * 10 + i64::from(b[i] - b'0');
            n += 1;
        }
        i += 1;
    }
    for _ in n..9 {
        ns *= 10;
    }
    (ns, i - at)
}

fn rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    let y = digits(s, 0, 4)?;
    let mo = digits(s, 5, 2)? as u32;
    let d = digits(s, 8, 2)? as u32;
    let h = digits(s, 11, 2)?;
    let mi = digits(s, 14, 2)?;
    let sec = digits(s, 17, 2)?;
    let (frac, used) = fraction(s, 19);
    let mut t = civil_to_ns(y, mo, d, h, mi, sec, frac)?;
    let zone_at = 19 + used;
    match b.get(zone_at) {
        Some(b'+') | Some(b'-') => {
            let zh = digits(s, zone_at + 1, 2)?;
            let zm = if b.get(zone_at + 3) == Some(&b':') {
                digits(s, zone_at + 4, 2)?
            } else {
                digits(s, zone_at + 3, 2).unwrap_or(0)
            };
            let off = (zh * 3600 + zm * 60) * 1_000_000_000;
            t = if b[zone_at] == b'+' { t - off } else { t + off };
        }
        _ => {}
    }
    Some(t)
}

fn syslog_time(s: &str, ctx: TimeContext) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 15 || b[3] != b' ' {
        return None;
    }
    let mo = month_index(&b[..3])?;
    let rest = s[4..].trim_start();
    let (day, rest) = rest.split_once(' ')?;
    let d: u32 = day.parse().ok()?;
    let h = digits(rest, 0, 2)?;
    let mi = digits(rest, 3, 2)?;
    let sec = digits(rest, 6, 2)?;
    let (frac, _) = fraction(rest, 8);
    let year = chrono::DateTime::from_timestamp(ctx.now_secs, 0)
        .map(|t| chrono::Datelike::year(&t) as i64)
        .unwrap_or(1970);
    let t = civil_to_ns(year, mo, d, h, mi, sec, frac)?;
    if t / 1_000_000_000 > ctx.now_secs + 86_400 {
        return civil_to_ns(year - 1, mo, d, h, mi, sec, frac);
    }
    Some(t)
}

/// `yyyy/mm/dd hh:mm:ss` (nginx error log).
fn slash_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'/' || b[7] != b'/' || b[10] != b' ' {
        return None;
    }
    civil_to_ns(
        digits(s, 0, 4)?,
        digits(s, 5, 2)? as u32,
        digits(s, 8, 2)? as u32,
        digits(s, 11, 2)?,
        digits(s, 14, 2)?,
        digits(s, 17, 2)?,
        0,
    )
}

/// `Www Mmm dd hh:mm:ss(.us) yyyy]` (apache error log, after the `[`).
fn apache_error_time(s: &str) -> Option<i64> {
    let end = s.find(']')?;
    let mut it = s[..end].split_whitespace();
    let _wd = it.next()?;
    let mo = month_index(it.next()?.as_bytes())?;
    let d: u32 = it.next()?.parse().ok()?;
    let hms = it.next()?;
    let y: i64 = it.next()?.parse().ok()?;
    let (frac, _) = fraction(hms, 8);
    civil_to_ns(
        y,
        mo,
        d,
        digits(hms, 0, 2)?,
        digits(hms, 3, 2)?,
        digits(hms, 6, 2)?,
        frac,
    )
}

/// `dd/Mmm/yyyy:hh:mm:ss ±zzzz]` (access log, after the `[`).
fn access_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' {
        return None;
    }
    let d = digits(s, 0, 2)? as u32;
    let mo = month_index(&b[3..6])?;
    let y = digits(s, 7, 4)?;
    let t = civil_to_ns(
        y,
        mo,
        d,
        digits(s, 12, 2)?,
        digits(s, 15, 2)?,
        digits(s, 18, 2)?,
        0,
    )?;
    let sign = b[21];
    let zh = digits(s, 22, 2)?;
    let zm = digits(s, 24, 2)?;
    let off = (zh * 3600 + zm * 60) * 1_000_000_000;
    match sign {
        b'+' => Some(t - off),
        b'-' => Some(t + off),
        _ => None,
    }
}

fn json_time(s: &str) -> Option<i64> {
    for key in ["\"time\"", "\"timestamp\"", "\"@timestamp\"", "\"ts\""] {
        let Some(at) = s.find(key) else { continue };
        let rest = s[at + key.len()..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        if let Some(text) = rest.strip_prefix('"') {
            if let Some(t) = rfc3339(text) {
                return Some(t);
            }
            continue;
        }
        let num: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        if let Ok(v) = num.parse::<f64>() {
            // Epoch seconds (< year 5138 in seconds) or milliseconds.
            let ns = if v > 1e11 { v * 1e6 } else { v * 1e9 };
            if ns.is_finite() && ns.abs() < 9.2e18 {
                return Some(ns as i64);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    /// The header parser as it was written first, with `str` searches: the oracle for the
    /// byte-level one.
    fn parse_syslog_before(line: &str) -> Option<SyslogHeader<'_>> {
        let mut s = line;
        // <PRI> and RFC 5424 version.
        if s.starts_with('<') {
            let close = s.find('>')?;
            s = &s[close + 1..];
            if let Some(rest) = s.strip_prefix("1 ") {
                return parse_rfc5424(rest);
            }
        }
        s = skip_timestamp_before(s);
        let (host, rest) = s.split_once(' ')?;
        let rest = rest.trim_start();
        let colon = rest
            .find(": ")
            .or_else(|| rest.strip_suffix(':').map(|r| r.len()))?;
        let tag = &rest[..colon];
        if tag.is_empty() || tag.contains(' ') || host.is_empty() {
            return None;
        }
        let (program, pid) = match tag.split_once('[') {
            Some((p, pid)) => (p, pid.trim_end_matches(']')),
            None => (tag, ""),
        };
        let message = rest.get(colon + 2..).unwrap_or("");
        Some(SyslogHeader {
            host,
            program,
            pid,
            message,
        })
    }

    fn skip_timestamp_before(s: &str) -> &str {
        let b = s.as_bytes();
        if b.len() > 16 && month_index(&b[..3]).is_some() && b[3] == b' ' {
            // "Mmm dd hh:mm:ss " or "Mmm  d hh:mm:ss " or "Mmm d hh:mm:ss "
            let rest = s[4..].trim_start();
            if let Some((_day, rest)) = rest.split_once(' ') {
                if let Some((hms, rest)) = rest.split_once(' ') {
                    if hms.len() >= 8 && hms.as_bytes()[2] == b':' {
                        return rest;
                    }
                }
            }
            return s;
        }
        if b.len() > 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' {
            if let Some((_, rest)) = s.split_once(' ') {
                return rest;
            }
        }
        s
    }
    use super::*;

    /// Pieces of syslog headers and of what goes wrong in them, for the header properties.
    const SYSLOG_PIECES: &[&str] = &[
        "<13>",
        "<7",
        "1 ",
        "Mar",
        "may",
        "Jan ",
        " ",
        "  ",
        "\t",
        "7",
        "17 ",
        "18:53:20",
        "18:53",
        "2015-04-16T18:02:50.3Z",
        "2024-05-14 ",
        "host",
        "web-1",
        "sshd",
        "[1556]",
        "[",
        "]",
        ":",
        ": ",
        "::",
        "kernel",
        "Failed password",
        "é",
        "-",
        "x",
    ];

    proptest::proptest! {
        /// The byte-level header parser gives exactly what the first, `str`-based one gave.
        #[test]
        fn syslog_header_parser_agrees_with_the_first_one(
            pieces in proptest::collection::vec(proptest::sample::select(SYSLOG_PIECES), 0..14),
        ) {
            let line: String = pieces.concat();
            let got = parse_syslog(&line).map(|h| (h.host, h.program, h.pid, h.message));
            let want = parse_syslog_before(&line).map(|h| (h.host, h.program, h.pid, h.message));
            proptest::prop_assert_eq!(got, want, "{:?}", line);
        }

        /// The dotted-quad fast path accepts only what the standard parser accepts, with the
        /// same address, and every dotted quad the standard parser accepts.
        #[test]
        fn dotted_quad_fast_path_is_the_standard_parser(
            s in "[0-9.a: ]{0,16}|(25[0-9]|2[0-4][0-9]|[01]?[0-9]{1,2})(\\.[0-9]{1,3}){3}"
        ) {
            let std = s.parse::<std::net::Ipv4Addr>().ok();
            proptest::prop_assert_eq!(parse_dotted_quad(s.as_bytes()), std);
        }

        /// Text of digits and dots that parses as an IPv4 address is that address's canonical
        /// form (keys copy such text instead of printing the address again).
        #[test]
        fn digits_and_dots_that_parse_are_canonical(
            s in "[0-9.]{0,18}|(25[0-9]|2[0-4][0-9]|[01]?[0-9]{1,2})(\\.0?[0-9]{1,3}){3}"
        ) {
            if let Some(ip @ IpAddr::V4(_)) = parse_ip(&s) {
                proptest::prop_assert_eq!(ip.to_string(), s);
            }
        }

        /// `find_byte` is `memchr`.
        #[test]
        fn find_byte_is_memchr(
            hay in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"ab[ ".to_vec()),
                    proptest::prelude::any::<u8>(),
                ],
                0..100,
            ),
        ) {
            for needle in [b'a', b'[', b' ', 0, 0x80, 0xff] {
                proptest::prop_assert_eq!(find_byte(needle, &hay), memchr::memchr(needle, &hay));
            }
        }
    }

    #[test]
    fn net_sets_contain_what_ipnet_contains() {
        let nets: Vec<ipnet::IpNet> = [
            "127.0.0.0/8",
            "10.1.2.3/32",
            "0.0.0.0/0",
            "fc00::/7",
            "::1/128",
            "2001:db8::/128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for take in 0..nets.len() {
            let set = NetSet::new(&nets[..take]);
            for ip in [
                "127.1.2.3",
                "128.0.0.1",
                "10.1.2.3",
                "10.1.2.4",
                "fd00::1",
                "fe00::1",
                "::1",
                "::2",
                "2001:db8::",
                "2001:db8::1",
                "1.2.3.4",
            ] {
                let ip: IpAddr = ip.parse().unwrap();
                let want = nets[..take].iter().any(|n| n.contains(&ip));
                assert_eq!(set.contains(ip), want, "{ip} in {:?}", &nets[..take]);
            }
        }
    }

    #[test]
    fn normalizes_addresses() {
        assert_eq!(normalize_ip("::ffff:1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(
            normalize_ip("AAAA:bbbb:0:0::1").as_deref(),
            Some("aaaa:bbbb::1")
        );
        assert_eq!(
            normalize_ip("127.0.0.1:51380").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            normalize_ip("[2001:db8::1]:51548").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(normalize_ip("192.030.0.6"), None);
        assert_eq!(normalize_ip("example.com"), None);
        assert_eq!(
            normalize_source("Example.COM").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_source("<x>"), None);
    }

    #[test]
    fn parses_combined_access_lines() {
        let l = r#"203.0.113.9 - bob [10/Oct/2024:13:55:36 +0000] "GET /a/b.php?id=1%27 HTTP/1.1" 404 153 "-" "curl/8.0""#;
        let a = parse_access(l).unwrap();
        assert_eq!(
            (a.ip, a.user, a.method, a.path, a.query),
            ("203.0.113.9", "bob", "GET", "/a/b.php", "id=1%27")
        );
        assert_eq!((a.status, a.user_agent), ("404", "curl/8.0"));
        let v = r#"www.site.com 192.0.2.222 - - [18/Aug/2024:21:08:39 +0100] "GET /f.jpg HTTP/1.1" 403 332 "-" "TrackBack/1.02""#;
        let a = parse_access(v).unwrap();
        assert_eq!(
            (a.vhost, a.ip, a.status),
            (Some("www.site.com"), "192.0.2.222", "403")
        );
        let bad = r#"12.34.56.78 - - [20/Jan/2015:19:53:28 +0100] "" 400 47 "-" "-" "-""#;
        let a = parse_access(bad).unwrap();
        assert_eq!((a.request, a.method, a.status), ("", "", "400"));
        assert!(parse_access("Jan  1 00:00:00 host sshd[1]: hello [x] \"y\" 200 ").is_none());
        // Words separated by several spaces; too few or too many words; odd request lines.
        let a = parse_access(r#" 1.2.3.4  -   - [t] "POST  /x?a?b HTTP/1.0" 200 1"#).unwrap();
        assert_eq!((a.vhost, a.ip, a.user), (None, "1.2.3.4", "-"));
        assert_eq!((a.method, a.path, a.query), ("POST", "", ""));
        let a = parse_access(r#"h 1.2.3.4 - u [t] "GET /x?a?b" 200 1"#).unwrap();
        assert_eq!(
            (a.vhost, a.user, a.path, a.query),
            (Some("h"), "u", "/x", "a?b")
        );
        let a = parse_access(r#"1.2.3.4 - - [t] "get /x HTTP/1.1" 200 1"#).unwrap();
        assert_eq!((a.method, a.path), ("", ""));
        let a = parse_access(r#"1.2.3.4 - - [t] "GET" 200 1"#).unwrap();
        assert_eq!((a.method, a.path, a.request), ("", "", "GET"));
        assert!(parse_access(r#"1.2.3.4 - [t] "GET / HTTP/1.1" 200 1"#).is_none());
        assert!(parse_access(r#"a b c d e [t] "GET / HTTP/1.1" 200 1"#).is_none());
    }

    #[test]
    fn parses_syslog_headers() {
        let h = parse_syslog("Mar  7 18:53:20 bar sshd[1556]: Accepted password").unwrap();
        assert_eq!(
            (h.host, h.program, h.pid, h.message),
            ("bar", "sshd", "1556", "Accepted password")
        );
        let h = parse_syslog("srv sshd[1]: x").unwrap();
        assert_eq!((h.host, h.program), ("srv", "sshd"));
        let h =
            parse_syslog("2015-04-16T18:02:50.321974+00:00 host kernel: Out of memory").unwrap();
        assert_eq!(
            (h.host, h.program, h.message),
            ("host", "kernel", "Out of memory")
        );
        let h = parse_syslog(
            "<38>1 2019-07-08T17:40:16.95-04:00 h.example.com sshd 57915 - [a b=\"[x]\"] Failed",
        )
        .unwrap();
        assert_eq!(
            (h.host, h.program, h.pid, h.message),
            ("h.example.com", "sshd", "57915", "Failed")
        );
    }

    #[test]
    fn decodes_uris() {
        assert_eq!(
            decode_uri("id=1%27%20UNION/**/SELECT+1"),
            "id=1' union select 1"
        );
        assert_eq!(decode_uri("%252e%252e%252f"), "../");
        assert_eq!(decode_uri("100%"), "100%");
        assert_eq!(decode_uri("%4"), "%4");
    }

    #[test]
    fn parses_line_times() {
        let ctx = TimeContext {
            now_secs: 1_767_225_600,
        }; // 2026-01-01
        let t = |s| parse_line_time(s, ctx).map(|ns| ns / 1_000_000_000);
        assert_eq!(t("2024-05-01T00:00:00Z x"), Some(1_714_521_600));
        assert_eq!(t("2024-05-01T02:00:00.5+02:00 x"), Some(1_714_521_600));
        assert_eq!(
            t(r#"1.2.3.4 - - [01/May/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1"#),
            Some(1_714_521_600)
        );
        assert_eq!(t("2024/05/01 00:00:00 [error] 1#1: x"), Some(1_714_521_600));
        assert_eq!(
            t("[Wed May 01 00:00:00.123 2024] [error] x"),
            Some(1_714_521_600)
        );
        assert_eq!(
            t(r#"{"log":"x","time":"2024-05-01T00:00:00Z"}"#),
            Some(1_714_521_600)
        );
        assert_eq!(t(r#"{"ts":1714521600123,"msg":"x"}"#), Some(1_714_521_600));
        // Syslog without year: current year, or the previous one when that is in the future.
        assert_eq!(t("Jan  1 00:00:00 h p: x"), Some(1_767_225_600));
        assert_eq!(t("Dec 31 00:00:00 h p: x"), Some(1_767_139_200));
        assert_eq!(t("no time here"), None);
    }
}
