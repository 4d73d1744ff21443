//! Loki's answer to a push, read by the push client and written on to the agent: arbitrary
//! bytes never panic, and whatever is accepted reaches the agent with Loki's status, its
//! end-to-end header lines as written and its body bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    logwarden::server::check_answer(data);
});
