//! JSON push decoding (Loki v1 and legacy v0): arbitrary bodies never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logwarden::decode::{parse, BodyFormat, PushApi};

fuzz_target!(|data: &[u8]| {
    for api in [PushApi::V1, PushApi::Legacy] {
        if let Ok(view) = parse(data, BodyFormat::Json(api)) {
            let _ = view.entry_count();
        }
    }
});
