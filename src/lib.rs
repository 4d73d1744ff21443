//! logwarden: a Loki-compatible push proxy with streaming log-threat detection.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod decode;
pub mod detect;
pub mod incident;
pub mod scan;
