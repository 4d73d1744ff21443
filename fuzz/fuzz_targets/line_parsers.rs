//! Every line parser and extractor, and then the whole built-in rule pack, over one hostile line:
//! never panics, and an access line the parser accepts has a three-digit status.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use logwarden::detect::extract::{
    decode_uri, normalize_ip, normalize_source, parse_access, parse_ip, parse_line_time,
    parse_syslog, TimeContext,
};
use logwarden::detect::{DetectConfig, Detector};

fn detector() -> &'static Detector {
    static DETECTOR: OnceLock<Detector> = OnceLock::new();
    DETECTOR.get_or_init(|| {
        Detector::try_new(&DetectConfig::default(), &prometheus::Registry::new())
            .expect("the built-in pack compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    // The engine takes raw bytes (invalid UTF-8 included), like a push's line.
    let detector = detector();
    let mut batch = detector.batch("fuzz");
    batch.line(1_767_225_600_000_000_000, data, &mut |_| {});
    batch.flush(&|_| {});

    let Ok(line) = std::str::from_utf8(data) else { return };
    if let Some(access) = parse_access(line) {
        let status = access.status.as_bytes();
        assert!(
            status.len() == 3 && status.iter().all(u8::is_ascii_digit),
            "status {:?} of {line:?}",
            access.status
        );
    }
    let _ = parse_syslog(line);
    let _ = parse_ip(line);
    let _ = normalize_ip(line);
    let _ = normalize_source(line);
    let _ = decode_uri(line);
    let _ = parse_line_time(line, TimeContext { now_secs: 1_767_225_600 });
});
