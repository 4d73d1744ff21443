//! The label-string parser: never panics, and whatever it accepts prints in the canonical form
//! that parses back to the same label set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logwarden::decode::parse_labels;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(labels) = parse_labels(text) {
        let canonical = labels.to_string();
        let again = parse_labels(&canonical).expect("canonical label strings parse");
        assert_eq!(again, labels, "round trip of {text:?} via {canonical:?}");
    }
});
