//! Black-box tests of `logwarden serve` through real sockets on 127.0.0.1.

mod support;

/// The delivery tests' fakes (webhook and Telegram capture servers), shared here.
#[path = "../notify/support.rs"]
mod notify_support;

mod abuse;
mod faults;
mod forwarding;
mod inspection;
mod loadgen;
mod metrics;
mod pipeline;
mod process;
mod scaling;
mod security;
#[cfg(feature = "tls")]
mod tls;
