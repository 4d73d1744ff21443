//! Snappy + protobuf push decoding: arbitrary bodies never panic, and the declared snappy
//! length never drives an allocation past the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logwarden::decode::{parse, with_decoded, BodyFormat, DecodeLimits, PushApi, PushMeta};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits { max_decompressed_bytes: 1 << 20 };
    for encoding in [None, Some("snappy"), Some("gzip"), Some("deflate")] {
        let meta = PushMeta {
            content_type: Some("application/x-protobuf"),
            content_encoding: encoding,
            api: PushApi::V1,
        };
        let _ = with_decoded(data, meta, limits, |v| v.entry_count());
    }
    // The scanner alone, on the raw bytes (as if already decompressed).
    if let Ok(view) = parse(data, BodyFormat::Protobuf) {
        for s in &view.streams {
            let _ = s.labels.to_string();
        }
    }
});
