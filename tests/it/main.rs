//! Black-box tests of `logwarden serve` through real sockets on 127.0.0.1.

mod support;

mod abuse;
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
