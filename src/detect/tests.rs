//! Engine tests: windows through the detector, cooldown and follow-up, out-of-order entries,
//! determinism, bounded keys, reload, metrics, and the decoded-push entry point.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Mutex;

use super::*;
use crate::decode::{EntryView, StreamView};

const T0: i64 = 1_714_521_600_000_000_000;
const SEC: i64 = 1_000_000_000;

/// One count rule: 3 "fail from <ip>" within 10s, cooldown 60s, tolerance 5s.
const RULES: &str = r#"
rules:
  - id: test-fail
    severity: high
    match:
      any: ["fail from"]
      regex: ['fail from (?P<ip>\S+)']
    key: ip
    aggregate: { threshold: 3, window: 10s, cooldown: 60s }
"#;

fn rules_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn config(file: &tempfile::NamedTempFile) -> DetectConfig {
    DetectConfig {
        builtin: false,
        rules: vec![file.path().to_owned()],
        out_of_order_tolerance: Duration::from_secs(5),
        ..DetectConfig::default()
    }
}

struct Harness {
    detector: Detector,
    registry: prometheus::Registry,
    _file: tempfile::NamedTempFile,
}

fn harness(rules: &str) -> Harness {
    let file = rules_file(rules);
    let registry = prometheus::Registry::new();
    let detector = Detector::try_new(&config(&file), &registry).unwrap();
    Harness {
        detector,
        registry,
        _file: file,
    }
}

/// Feeds (seconds after T0, line) pairs as one batch and returns the incidents.
fn run(d: &Detector, lines: &[(i64, &str)]) -> Vec<Incident> {
    let out = Mutex::new(Vec::new());
    let mut b = d.batch("tenant-a");
    b.set_stream_map(BTreeMap::from([("job".to_owned(), "auth".to_owned())]));
    for (s, l) in lines {
        b.line(T0 + s * SEC, l.as_bytes(), &mut |_| {});
    }
    b.flush(&|i: Incident| out.lock().unwrap().push(i));
    out.into_inner().unwrap()
}

const A: &str = "fail from 203.0.113.7";
const B: &str = "fail from 198.51.100.1";

#[test]
fn fires_exactly_at_threshold_not_before() {
    let h = harness(RULES);
    assert!(run(&h.detector, &[(0, A), (1, A)]).is_empty());
    let inc = run(&h.detector, &[(2, A)]);
    assert_eq!(inc.len(), 1);
    let i = &inc[0];
    assert_eq!(
        (i.rule.as_str(), i.key.as_str(), i.key_kind.as_str()),
        ("test-fail", "203.0.113.7", "ip")
    );
    assert_eq!(
        (i.count, i.new_count, i.sequence, i.follow_up),
        (3, 3, 0, false)
    );
    assert_eq!(i.first_seen, EventTime(T0));
    assert_eq!(i.last_seen, EventTime(T0 + 2 * SEC));
    assert_eq!(i.window_end, EventTime(T0 + 2 * SEC));
    assert_eq!(i.window_start, EventTime(T0 - 8 * SEC));
    assert_eq!(i.tenant, "tenant-a");
    assert_eq!(i.samples.len(), 3);
    assert_eq!(
        i.samples[0].labels.get("job").map(String::as_str),
        Some("auth")
    );
    assert_eq!(i.logql, r#"{job="auth"} |= "203.0.113.7""#);
}

#[test]
fn keys_are_counted_separately() {
    let h = harness(RULES);
    assert!(run(&h.detector, &[(0, A), (0, B), (1, A), (1, B)]).is_empty());
    let inc = run(&h.detector, &[(2, B)]);
    assert_eq!(
        inc.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        vec!["198.51.100.1"]
    );
}

#[test]
fn events_outside_the_window_expire() {
    let h = harness(RULES);
    // (t - 10s, t]: the events at 0 and 1 are out of the window at 11.
    assert!(run(&h.detector, &[(0, A), (1, A), (11, A), (12, A)]).is_empty());
    assert_eq!(run(&h.detector, &[(13, A)]).len(), 1);
}

#[test]
fn late_entries_within_tolerance_count_and_beyond_do_not() {
    let h = harness(RULES);
    // Newest is 20; 16 is 4s late (tolerance 5s) and inside the window.
    assert_eq!(run(&h.detector, &[(20, A), (19, A), (16, A)]).len(), 1);
    let h = harness(RULES);
    // 14 is 6s late: beyond the tolerance, not counted although inside the window.
    assert!(run(&h.detector, &[(20, A), (19, A), (14, A)]).is_empty());
}

#[test]
fn cooldown_updates_the_incident_and_a_long_attack_gets_a_follow_up() {
    let h = harness(RULES);
    let first = run(&h.detector, &[(0, A), (1, A), (2, A), (3, A), (4, A)]);
    assert_eq!(
        first.len(),
        1,
        "one incident per batch, carrying the whole batch"
    );
    assert_eq!((first[0].count, first[0].new_count), (5, 5));
    // Inside the cooldown (until 62s): counted, not emitted.
    assert!(run(&h.detector, &[(30, A), (31, A), (32, A)]).is_empty());
    // After the cooldown, the window holds again: a follow-up with the new totals.
    let follow = run(&h.detector, &[(60, A), (61, A), (62, A)]);
    assert_eq!(follow.len(), 1);
    let f = &follow[0];
    assert_eq!(
        (f.follow_up, f.sequence, f.count, f.new_count),
        (true, 1, 11, 6)
    );
    assert_eq!(f.id, first[0].id, "follow-ups share the incident id");
    assert_eq!(f.first_seen, EventTime(T0));
}

#[test]
fn an_attack_that_stops_ends_its_incident() {
    let h = harness(RULES);
    let first = run(&h.detector, &[(0, A), (1, A), (2, A)]);
    // One stray event after the cooldown does not satisfy the window: no follow-up...
    assert!(run(&h.detector, &[(100, A)]).is_empty());
    // ...and a new burst later is a new incident, not a follow-up.
    let again = run(&h.detector, &[(101, A), (102, A)]);
    assert_eq!(again.len(), 1);
    assert!(!again[0].follow_up);
    assert_ne!(again[0].id, first[0].id);
}

#[test]
fn same_input_yields_same_incidents() {
    let lines: Vec<(i64, &str)> = (0..50)
        .map(|i| (i, if i % 2 == 0 { A } else { B }))
        .collect();
    let a = run(&harness(RULES).detector, &lines);
    let b = run(&harness(RULES).detector, &lines);
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn keys_are_bounded_and_evictions_counted() {
    let file = rules_file(RULES);
    let registry = prometheus::Registry::new();
    let cfg = DetectConfig {
        max_keys: 100,
        ..config(&file)
    };
    let d = Detector::try_new(&cfg, &registry).unwrap();
    let lines: Vec<String> = (0..1000)
        .map(|i| format!("fail from 198.18.{}.{}", i / 250, i % 250))
        .collect();
    let mut b = d.batch("t");
    for (i, l) in lines.iter().enumerate() {
        b.line(T0 + i as i64 * 1_000_000, l.as_bytes(), &mut |_| {});
        assert!(
            d.total_keys.load(Ordering::Relaxed) <= 100,
            "bound exceeded at {i}"
        );
    }
    b.flush(&|_: Incident| {});
    let text = render(&registry);
    let evicted: u64 = metric(&text, "logwarden_detect_evictions_total");
    assert!(evicted >= 900, "{text}");
    assert!(metric(&text, "logwarden_detect_keys") <= 100);
}

#[test]
fn keys_stay_bounded_and_counted_while_two_threads_add_them() {
    // Two inspection threads (the calm and the contended lane overlap while they hand over)
    // adding new keys at once: one sweeps while the other adds. Every key is accounted for, and
    // neither thread adds past the bound while the other makes room.
    let file = rules_file(RULES);
    let cfg = DetectConfig {
        max_keys: 1000,
        ..config(&file)
    };
    let d = Detector::try_new(&cfg, &prometheus::Registry::new()).unwrap();
    let peak = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..2u32 {
            let (d, peak) = (&d, &peak);
            scope.spawn(move || {
                for round in 0..40u32 {
                    let mut b = d.batch("t");
                    for i in 0..2000u32 {
                        let n = (t << 24) | (round << 12) | i;
                        let line = format!(
                            "fail from {}.{}.{}.{}",
                            1 + (n >> 24),
                            (n >> 16) & 255,
                            (n >> 8) & 255,
                            n & 255
                        );
                        b.line(T0 + i64::from(round) * SEC, line.as_bytes(), &mut |_| {});
                    }
                    b.flush(&|_: Incident| {});
                    peak.fetch_max(d.current().states[0].len(), Ordering::Relaxed);
                }
            });
        }
    });
    let live = d.current().states[0].len();
    assert_eq!(d.total_keys.load(Ordering::Relaxed), live);
    // The bound, plus at most one key per thread added while the other evicts.
    assert!(
        peak.load(Ordering::Relaxed) <= 1002,
        "peak {}",
        peak.load(Ordering::Relaxed)
    );
}

#[test]
fn idle_keys_expire_on_event_time() {
    let h = harness(RULES);
    run(&h.detector, &[(0, A), (0, B)]);
    assert_eq!(h.detector.total_keys.load(Ordering::Relaxed), 2);
    // Horizon: window 10s + tolerance 5s + cooldown 60s; an hour later both are idle.
    run(&h.detector, &[(3600, "nothing to see")]);
    run(&h.detector, &[(3700, A)]);
    assert_eq!(h.detector.total_keys.load(Ordering::Relaxed), 1);
}

#[test]
fn metrics_count_matches_and_incidents() {
    let h = harness(RULES);
    run(&h.detector, &[(0, A), (1, A), (2, A), (3, B)]);
    let text = render(&h.registry);
    assert!(
        text.contains(r#"logwarden_rule_matches_total{rule="test-fail"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"logwarden_incidents_total{rule="test-fail",severity="high"} 1"#),
        "{text}"
    );
    assert!(text.contains("logwarden_detect_keys 2"), "{text}");
}

#[test]
fn process_reads_a_decoded_push() {
    let h = harness(RULES);
    let entries = (0..4)
        .map(|i| EntryView {
            timestamp_ns: T0 + i * SEC,
            line: Cow::Borrowed(A.as_bytes()),
            structured_metadata: vec![],
        })
        .collect();
    let labels = crate::decode::parse_labels(r#"{job="auth", host="vps1"}"#).unwrap();
    let push = PushView {
        streams: vec![StreamView { labels, entries }],
    };
    let out = Mutex::new(Vec::new());
    h.detector
        .process("t1", &push, &|i: Incident| out.lock().unwrap().push(i));
    let out = out.into_inner().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].count, 4);
    assert_eq!(
        out[0].logql,
        r#"{host="vps1", job="auth"} |= "203.0.113.7""#
    );
    assert!(render(&h.registry).contains("logwarden_detect_duration_seconds_count 1"));
}

#[test]
fn selectors_restrict_rules_to_streams() {
    let h = harness(&RULES.replace(
        "severity: high",
        "severity: high\n    selector: '{job=~\"auth|sshd\"}'",
    ));
    let out = Mutex::new(Vec::new());
    let mut b = h.detector.batch("t");
    b.set_stream_map(BTreeMap::from([("job".to_owned(), "nginx".to_owned())]));
    let mut n = 0;
    for i in 0..5 {
        b.line(T0 + i * SEC, A.as_bytes(), &mut |_| n += 1);
    }
    b.flush(&|i: Incident| out.lock().unwrap().push(i));
    assert_eq!(n, 0);
    assert!(out.into_inner().unwrap().is_empty());
}

#[test]
fn reload_swaps_rules_and_a_bad_file_keeps_the_old_ones() {
    let h = harness(RULES);
    run(&h.detector, &[(0, A), (1, A)]);
    let bad = rules_file("rules:\n  - id: broken\n    severity: high\n    match: {any: [x]}\n    aggregate: {threshold: 1, window: 0s, cooldown: 1s}\n");
    let err = h.detector.reload(&config(&bad)).unwrap_err();
    assert!(
        err.to_string()
            .contains("window: \"0s\" must be greater than zero"),
        "{err}"
    );
    assert_eq!(h.detector.rule_ids(), vec!["test-fail"]);
    // An unchanged rule keeps its windows across a reload.
    let same = rules_file(RULES);
    h.detector.reload(&config(&same)).unwrap();
    assert_eq!(run(&h.detector, &[(2, A)]).len(), 1);
}

#[test]
fn validation_names_field_value_and_expectation() {
    let file = rules_file(RULES);
    let err = DetectConfig {
        max_keys: 0,
        ..config(&file)
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "detect.max_keys: 0 must be greater than zero"
    );
    let err = DetectConfig {
        disable: vec!["nope".into()],
        ..config(&file)
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"detect.disable[0]: no rule has the id "nope""#
    );
    let bad = rules_file("rules:\n  - id: ssh-x\n    severity: high\n    match: {any: [x]}\n    aggregate: {threshold: 1, window: 0s, cooldown: 1s}\n");
    let err = config(&bad).validate().unwrap_err().to_string();
    assert!(err.starts_with("detect.rules[0] ("), "{err}");
    assert!(err.ends_with(r#"rules[0]: rule "ssh-x" aggregate.window: "0s" must be greater than zero (at least 1ms)"#), "{err}");
    let unknown: Result<DetectConfig, _> = serde_yaml_ng::from_str("max_keyz: 3");
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("unknown field `max_keyz`"));
    let bad_cidr: Result<DetectConfig, _> = serde_yaml_ng::from_str("allowlist: [10.0.0.0/33]");
    assert!(bad_cidr
        .unwrap_err()
        .to_string()
        .contains("\"10.0.0.0/33\" is not a CIDR"));
    DetectConfig::default()
        .validate()
        .expect("the built-in pack compiles");
}

#[test]
fn hostile_lines_never_panic() {
    let d = Detector::try_new(&DetectConfig::default(), &prometheus::Registry::new()).unwrap();
    let mut b = d.batch("t");
    let long = "a".repeat(100_000) + " Failed password for root from 1.2.3.4 port 1 ssh2";
    let lines: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, b'F', b'a', b'i', b'l', b'e', b'd', b' ', b'p'],
        b"\" 404 ".to_vec(),
        b"1.2.3.4 - - [ \"GET".to_vec(),
        b"x [client [::1 user not found".to_vec(),
        long.into_bytes(),
        "Failed password for \u{202e} from \u{1F600} port 1"
            .as_bytes()
            .to_vec(),
        vec![],
    ];
    for (i, l) in lines.iter().enumerate() {
        b.line(i as i64, l, &mut |_| {});
        b.line(i64::MIN, l, &mut |_| {});
        b.line(i64::MAX, l, &mut |_| {});
    }
    b.flush(&|_: Incident| {});
}

fn render(registry: &prometheus::Registry) -> String {
    let mut buf = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut buf)
        .unwrap();
    buf
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Regression: idle keys expired against the newest event time of any entry, so one entry
/// stamped years ahead expired every key at once. Event times beyond the wall clock plus
/// `MAX_FUTURE_SKEW_MS` no longer advance that clock.
#[test]
fn a_far_future_entry_does_not_expire_other_keys() {
    let mut h = harness(RULES);
    h.detector.set_wall_clock(|| T0 / 1_000_000 + 2_000);
    run(&h.detector, &[(0, A), (1, A)]);
    let ten_years = 10 * 365 * 24 * 3600;
    run(&h.detector, &[(ten_years, B)]);
    assert_eq!(h.detector.total_keys.load(Ordering::Relaxed), 2);
    let fired = run(&h.detector, &[(2, A)]);
    assert_eq!(fired.len(), 1, "A's window survived: {fired:#?}");
    assert_eq!(fired[0].count, 3);
    // Time that really passes still expires idle keys.
    h.detector.set_wall_clock(|| T0 / 1_000_000 + 7_200_000);
    run(&h.detector, &[(3600, "nothing to see")]);
    run(&h.detector, &[(3700, B)]);
    assert_eq!(h.detector.total_keys.load(Ordering::Relaxed), 1);
}

const SUPPRESSED: &str = r#"
rules:
  - id: fast
    severity: high
    match: { any: ["fail from"], regex: ['fail from (?P<ip>\S+)'] }
    key: ip
    aggregate: { threshold: 3, window: 10s, cooldown: 60s }
  - id: slow
    severity: medium
    suppressed_by: [fast]
    match: { any: ["fail from"], regex: ['fail from (?P<ip>\S+)'] }
    key: ip
    aggregate: { threshold: 5, window: 200s, cooldown: 60s }
"#;

#[test]
fn suppressed_by_keeps_one_incident_per_attack() {
    let h = harness(SUPPRESSED);
    // A burst: the fast rule fires at 3; the slow one reaches 5 while that incident is open.
    let burst: Vec<(i64, &str)> = (0..8).map(|s| (s, A)).collect();
    let got = run(&h.detector, &burst);
    let rules: Vec<&str> = got.iter().map(|i| i.rule.as_str()).collect();
    assert_eq!(rules, vec!["fast"], "{got:#?}");
    // A slow attack from another source never fires the fast rule: the slow one fires.
    let spread: Vec<(i64, &str)> = (0..5).map(|i| (i * 30, B)).collect();
    let got = run(&h.detector, &spread);
    let rules: Vec<(&str, &str)> = got
        .iter()
        .map(|i| (i.rule.as_str(), i.key.as_str()))
        .collect();
    assert_eq!(rules, vec![("slow", "198.51.100.1")], "{got:#?}");
}

#[test]
fn suppressed_by_must_name_another_rule() {
    for (list, bad) in [("[nope]", "nope"), ("[slow]", "slow")] {
        let text = SUPPRESSED.replace("suppressed_by: [fast]", &format!("suppressed_by: {list}"));
        let file = rules_file(&text);
        let err = Detector::try_new(&config(&file), &prometheus::Registry::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "rule \"slow\" suppressed_by: \"{bad}\" must be the id of another rule"
            )),
            "{err}"
        );
    }
}

/// `process` scans several lines at once; it must find exactly what `line` finds one by one.
#[test]
fn pushes_and_single_lines_give_the_same_incidents() {
    let mut lines: Vec<String> = Vec::new();
    for i in 0..700 {
        lines.push(match i % 7 {
            0 => format!("May  1 00:00:00 h sshd[{i}]: Failed password for root from 203.0.113.{} port 22 ssh2", i % 3),
            1 => format!(r#"192.0.2.{} - - [01/May/2024:00:00:00 +0000] "GET /p{i}.php?id=1%27%20union%20select%201 HTTP/1.1" 404 1 "-" "sqlmap/1.7""#, i % 2),
            2 => String::new(),
            3 => "x".repeat(i),
            4 => format!("May  1 00:00:00 h kernel: w[{i}]: segfault at 0 ip 0 sp 0 error 4 in w"),
            5 => "oom".to_owned(),
            _ => format!("May  1 00:00:00 h sshd[{i}]: Invalid user u{i} from 198.51.100.{} port 1", i % 2),
        });
    }
    let entries = lines
        .iter()
        .enumerate()
        .map(|(i, l)| EntryView {
            timestamp_ns: T0 + i as i64 * 100_000_000,
            line: Cow::Borrowed(l.as_bytes()),
            structured_metadata: vec![],
        })
        .collect();
    let labels = crate::decode::parse_labels(r#"{job="varlogs"}"#).unwrap();
    let push = PushView {
        streams: vec![StreamView { labels, entries }],
    };
    let builtin = || {
        let registry = prometheus::Registry::new();
        (
            Detector::try_new(&DetectConfig::default(), &registry).unwrap(),
            registry,
        )
    };
    let (d1, r1) = builtin();
    let by_push = Mutex::new(Vec::new());
    d1.process("t", &push, &|i: Incident| by_push.lock().unwrap().push(i));
    let (d2, r2) = builtin();
    let by_line = Mutex::new(Vec::new());
    let mut batch = d2.batch("t");
    batch.set_stream_labels(&push.streams[0].labels);
    for e in &push.streams[0].entries {
        batch.line(e.timestamp_ns, &e.line, &mut |_| {});
    }
    batch.flush(&|i: Incident| by_line.lock().unwrap().push(i));
    let json = |v: Mutex<Vec<Incident>>| serde_json::to_string(&v.into_inner().unwrap()).unwrap();
    let (a, b) = (json(by_push), json(by_line));
    assert!(a.len() > 1000, "the mix fires incidents: {a}");
    assert_eq!(a, b);
    let matches = |r: &prometheus::Registry| {
        render(r)
            .lines()
            .filter(|l| l.starts_with("logwarden_rule_matches_total"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(matches(&r1), matches(&r2));
    assert!(matches(&r1).len() >= 5, "{:?}", matches(&r1));
}

/// A count rule whose threshold is far above the sample ring (as the request-flood rule's).
const HIGH_THRESHOLD: &str = r#"
rules:
  - id: test-many
    severity: medium
    match:
      any: ["hit from"]
      regex: ['hit from (?P<ip>\S+)']
    key: ip
    aggregate: { threshold: 12, window: 10s, cooldown: 15s }
"#;

proptest::proptest! {
    /// Lines that cannot be among an incident's samples are not copied into the ring (the
    /// window is too far below the threshold for them to survive until it fires), yet every
    /// incident still carries exactly the newest `samples_per_key` matching lines.
    #[test]
    fn incidents_carry_the_newest_lines_whatever_the_window_skipped(
        gaps_ms in proptest::collection::vec(
            proptest::prop_oneof![4 => 0i64..900, 1 => 900i64..6_000], 1..120),
        batch_every in 1usize..9,
    ) {
        let file = rules_file(HIGH_THRESHOLD);
        let cfg = DetectConfig { samples_per_key: 4, ..config(&file) };
        let d = Detector::try_new(&cfg, &prometheus::Registry::new()).unwrap();
        let mut t = T0;
        let mut fed: Vec<String> = Vec::new();
        for chunk in gaps_ms.chunks(batch_every) {
            let out = Mutex::new(Vec::new());
            let mut b = d.batch("tenant-a");
            for gap in chunk {
                t += gap * 1_000_000;
                let line = format!("hit from 203.0.113.9 seq={}", fed.len());
                b.line(t, line.as_bytes(), &mut |_| {});
                fed.push(line);
            }
            b.flush(&|i: Incident| out.lock().unwrap().push(i));
            for inc in out.into_inner().unwrap() {
                let got: Vec<&str> = inc.samples.iter().map(|s| s.line.as_str()).collect();
                let want: Vec<&str> = fed[fed.len().saturating_sub(4)..].iter().map(String::as_str).collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}

/// The hand-written matchers name their groups by kind as well as by name: the two agree, so a
/// field found by its kind is the field of that name.
#[test]
fn fast_capture_kinds_are_the_kinds_of_their_names() {
    for (names, kinds) in [SSH_GROUPS, SEGFAULT_GROUPS] {
        for (name, kind) in names.iter().zip(kinds) {
            let want = if name.is_empty() {
                rule::FieldKind::Other
            } else {
                rule::FieldKind::of(name)
            };
            assert_eq!(kind, want, "{name:?}");
        }
    }
}

/// Rules that key by the same field on one line share the key only when they read it from the
/// same place: a rule without the syslog parser, before one with it, keys by `host` as "-" (no
/// such field for it), and the next rule still gets the parsed host; a regex's own `ip` and the
/// access log's client address stay apart too (both rules parse the line as an access log).
#[test]
fn rules_with_the_same_key_fields_read_them_from_their_own_sources() {
    let h = harness(
        r#"
rules:
  - id: a-no-parser
    severity: low
    match: { any: ["disk full"] }
    key: host
    aggregate: { threshold: 1, window: 10s, cooldown: 60s }
  - id: b-syslog
    severity: low
    parser: syslog
    match: { any: ["disk full"] }
    key: host
    aggregate: { threshold: 1, window: 10s, cooldown: 60s }
  - id: c-regex-ip
    severity: low
    parser: access
    match:
      any: ["forwarded-for"]
      regex: ['forwarded-for (?P<ip>[0-9.]+)']
    key: ip
    aggregate: { threshold: 1, window: 10s, cooldown: 60s }
  - id: d-access-ip
    severity: low
    parser: access
    match: { any: ["forwarded-for"] }
    key: ip
    aggregate: { threshold: 1, window: 10s, cooldown: 60s }
"#,
    );
    let mut keys = Vec::new();
    let mut b = h.detector.batch("t");
    b.set_stream_map(BTreeMap::new());
    for line in [
        "May 14 09:00:00 web7 kernel: disk full on /var",
        r#"198.51.100.4 - - [14/May/2024:09:00:00 +0000] "GET /?forwarded-for 203.0.113.9 HTTP/1.1" 200 1 "-" "x""#,
    ] {
        b.line(T0, line.as_bytes(), &mut |m| {
            keys.push((m.rule.to_owned(), m.key.map(str::to_owned)))
        });
    }
    let key = |s: &str| Some(s.to_owned());
    assert_eq!(
        keys,
        vec![
            ("a-no-parser".to_owned(), key("-")),
            ("b-syslog".to_owned(), key("web7")),
            ("c-regex-ip".to_owned(), key("203.0.113.9")),
            ("d-access-ip".to_owned(), key("198.51.100.4")),
        ]
    );
}

/// Two words that must both be on a line (each found by the literal prefilter).
const BOTH: &str = r#"
rules:
  - id: test-both
    severity: high
    match:
      all: ["alpha", "omega"]
      regex: ['at (?P<ip>\S+)']
    key: ip
    aggregate: { threshold: 1, window: 10s, cooldown: 1s }
"#;

#[test]
fn a_batch_on_what_the_thread_s_last_batch_left_sees_none_of_its_lines() {
    let h = harness(BOTH);
    let d = &h.detector;
    // Each batch below is built on what the one before left on this thread. Stamps from an
    // earlier batch's lines must neither make a line match (one word per line, each in its own
    // batch) nor hide a match (the last batch; with the line counter restarted per batch, a
    // stale stamp marked the rule as already looked at, and it was skipped).
    assert!(run(d, &[(0, "alpha at 203.0.113.7")]).is_empty());
    assert!(run(d, &[(1, "omega at 203.0.113.7")]).is_empty());
    // A batch dropped before its flush hands none of its firings on.
    {
        let mut b = d.batch("tenant-a");
        b.line(T0 + 2 * SEC, b"alpha omega at 203.0.113.8", &mut |_| {});
    }
    assert!(run(d, &[]).is_empty());
    // Both words on one line fire.
    let fired = run(d, &[(3, "omega alpha at 203.0.113.9")]);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].key, "203.0.113.9");
}

#[test]
fn batches_for_two_rule_sets_on_one_thread_each_keep_to_their_own() {
    // One rule, then two (the second with a regex of its own), then one again, on this thread:
    // a batch is never built on what a batch for another rule set left.
    let one = harness(RULES);
    let two = harness(&format!("{RULES}{}", &BOTH[BOTH.find("  - id").unwrap()..]));
    let three_fails = [(0, A), (1, A), (2, A)];
    let fired = run(&one.detector, &three_fails);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].rule, "test-fail");
    let fired = run(&two.detector, &[(0, "omega alpha at 203.0.113.9")]);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].rule, "test-both");
    assert_eq!(fired[0].key, "203.0.113.9");
    let fired = run(&one.detector, &[(20, B), (21, B), (22, B)]);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].key, "198.51.100.1");
}

#[test]
fn sample_rings_hold_room_for_no_more_lines_than_they_keep() {
    // A flood of addresses seen once each is held at one line of room per key, and a busy key
    // at `samples_per_key`: with a million keys the difference is hundreds of megabytes.
    let file = rules_file(RULES);
    let cfg = DetectConfig {
        samples_per_key: 5,
        ..config(&file)
    };
    let d = Detector::try_new(&cfg, &prometheus::Registry::new()).unwrap();
    let mut lines: Vec<(i64, String)> = (0..12).map(|s| (s, A.to_owned())).collect();
    lines.extend((0..50).map(|i| (i, format!("fail from 198.18.0.{i}"))));
    let refs: Vec<(i64, &str)> = lines.iter().map(|(t, l)| (*t, l.as_str())).collect();
    run(&d, &refs);
    let compiled = d.current();
    let mut rooms: Vec<(usize, usize)> = compiled.states[0]
        .iter()
        .map(|e| (e.value().samples.len(), e.value().samples.capacity()))
        .collect();
    rooms.sort_unstable();
    assert_eq!(rooms.len(), 51);
    assert_eq!(rooms[0], (1, 1));
    assert_eq!(rooms[49], (1, 1));
    assert_eq!(rooms[50], (5, 5));
}
