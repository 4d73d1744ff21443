//! The push reader's request heads: arbitrary bytes never panic; a request it does not serve
//! keeps every byte for hyper, and a push's head is taken out whole with its headers as sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    logwarden::server::check_head(data);
});
