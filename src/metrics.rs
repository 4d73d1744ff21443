//! Metrics: one Prometheus registry per running instance, and the metric groups of each stage.
//!
//! Names follow Prometheus conventions (`logwarden_<noun>_<unit>_total`, base units, bounded label
//! values). Each stage owns a `*Metrics` struct built with `register(&Registry)`; `/metrics`
//! renders the registry in the text exposition format that `promtool check metrics` accepts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets for proxy and upstream durations, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registers a collector, panicking only on a programming error (a duplicate name).
pub fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique within one registry");
    c
}

/// Builds an `IntCounterVec` and registers it.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// Builds an `IntCounter` and registers it.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

/// Builds an `IntGauge` and registers it.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

/// Builds a `HistogramVec` with the given buckets and registers it.
pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid metric"),
    )
}

/// Builds a `Histogram` with the given buckets and registers it.
pub fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid metric"))
}

/// Renders a registry in the Prometheus text exposition format (0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("encoding metrics into memory cannot fail");
    String::from_utf8(buf).expect("the text encoder writes UTF-8")
}

/// The content type of [`render`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Maps client-chosen tenant ids to bounded metric label values: the first `max` distinct
/// tenants get their own value, later ones share `_other`.
#[derive(Debug, Clone)]
pub struct TenantLabels {
    known: Arc<DashMap<String, ()>>,
    len: Arc<AtomicUsize>,
    max: usize,
}

impl TenantLabels {
    /// The label value used once the bound is reached.
    pub const OTHER: &'static str = "_other";

    /// Creates a mapper that admits at most `max` distinct tenants.
    pub fn new(max: usize) -> Self {
        TenantLabels {
            known: Arc::new(DashMap::new()),
            len: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Returns the label value to use for `tenant`.
    pub fn label<'t>(&self, tenant: &'t str) -> &'t str {
        if self.known.contains_key(tenant) {
            return tenant;
        }
        // Reserve a slot first so concurrent callers cannot overshoot the bound.
        if self.len.fetch_add(1, Ordering::Relaxed) < self.max {
            if self.known.insert(tenant.to_owned(), ()).is_some() {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            tenant
        } else {
            self.len.fetch_sub(1, Ordering::Relaxed);
            Self::OTHER
        }
    }
}

/// Metrics of the push path, the forwarder and the inspection stage.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// `logwarden_push_requests_total{status}`: pushes answered, by HTTP status sent to the client.
    pub push_requests: IntCounterVec,
    /// `logwarden_push_bytes_total{tenant}`: push body bytes received (as sent, compressed).
    pub push_bytes: IntCounterVec,
    /// `logwarden_push_lines_total{tenant}`: entries decoded by inspection.
    pub push_lines: IntCounterVec,
    /// `logwarden_push_streams_total{tenant}`: streams decoded by inspection.
    pub push_streams: IntCounterVec,
    /// `logwarden_push_rejected_total{reason}`: pushes answered by logwarden itself, not by Loki.
    pub push_rejected: IntCounterVec,
    /// `logwarden_decode_errors_total{reason}`.
    pub decode_errors: IntCounterVec,
    /// `logwarden_upstream_request_duration_seconds{route}`: time to Loki's response headers.
    pub upstream_duration: HistogramVec,
    /// `logwarden_upstream_errors_total{reason}`: requests to Loki that got no answer.
    pub upstream_errors: IntCounterVec,
    /// `logwarden_proxy_requests_total{status}`: non-push requests proxied to Loki.
    pub proxy_requests: IntCounterVec,
    /// `logwarden_inspect_queue_dropped_total`: inspections shed because the queue was full.
    pub inspect_dropped: IntCounter,
    /// `logwarden_inspect_queue_depth`: pushes waiting for inspection.
    pub inspect_depth: IntGauge,
    /// 1 while inspection stands aside for a saturated forwarding path.
    pub inspect_stepped_aside: IntGauge,
    /// 1 while the niced inspection threads inspect (the idle-class ones fell behind).
    pub inspect_niced: IntGauge,
    /// `logwarden_inspect_duration_seconds`: decode + detection time per push.
    pub inspect_duration: Histogram,
    /// `logwarden_connections_open`: client connections being served.
    pub connections: IntGauge,
    /// Bounded tenant label values.
    pub tenants: TenantLabels,
}

impl ProxyMetrics {
    /// Registers the proxy metrics into `registry`.
    pub fn register(registry: &Registry, max_tenants: usize) -> Self {
        let m = ProxyMetrics {
            push_requests: counter_vec(
                registry,
                "logwarden_push_requests_total",
                "Push requests answered, by HTTP status code returned to the client.",
                &["status"],
            ),
            push_bytes: counter_vec(
                registry,
                "logwarden_push_bytes_total",
                "Push body bytes received from clients, as sent (before decompression).",
                &["tenant"],
            ),
            push_lines: counter_vec(
                registry,
                "logwarden_push_lines_total",
                "Log entries decoded by inspection from pushes the client will not resend.",
                &["tenant"],
            ),
            push_streams: counter_vec(
                registry,
                "logwarden_push_streams_total",
                "Streams decoded by inspection from pushes the client will not resend.",
                &["tenant"],
            ),
            push_rejected: counter_vec(
                registry,
                "logwarden_push_rejected_total",
                "Pushes answered by logwarden instead of Loki, by reason.",
                &["reason"],
            ),
            decode_errors: counter_vec(
                registry,
                "logwarden_decode_errors_total",
                "Pushes that inspection could not decode, by reason (forwarding is unaffected).",
                &["reason"],
            ),
            upstream_duration: histogram_vec(
                registry,
                "logwarden_upstream_request_duration_seconds",
                "Time from sending a request to Loki until its response headers arrive.",
                &["route"],
                LATENCY_BUCKETS,
            ),
            upstream_errors: counter_vec(
                registry,
                "logwarden_upstream_errors_total",
                "Requests to Loki that got no response, by reason.",
                &["reason"],
            ),
            proxy_requests: counter_vec(
                registry,
                "logwarden_proxy_requests_total",
                "Non-push requests reverse-proxied to Loki, by HTTP status code returned.",
                &["status"],
            ),
            inspect_dropped: counter(
                registry,
                "logwarden_inspect_queue_dropped_total",
                "Pushes not inspected because the inspection queue was full (they were forwarded).",
            ),
            inspect_depth: gauge(
                registry,
                "logwarden_inspect_queue_depth",
                "Pushes waiting in the inspection queue.",
            ),
            inspect_stepped_aside: gauge(
                registry,
                "logwarden_inspect_stepped_aside",
                "1 while forwarding is saturated and inspection sheds: inspection then runs only on CPU time forwarding leaves, on a sample of the pushes (inspect.forwarding_first, inspect.aside_share).",
            ),
            inspect_niced: gauge(
                registry,
                "logwarden_inspect_niced",
                "1 while the niced inspection threads inspect: on the CPU time nothing else wants, inspection fell behind while forwarding had CPU to spare (inspect.forwarding_first).",
            ),
            inspect_duration: histogram(
                registry,
                "logwarden_inspect_duration_seconds",
                "Time to decode and inspect one push.",
                LATENCY_BUCKETS,
            ),
            connections: gauge(
                registry,
                "logwarden_connections_open",
                "Client connections being served.",
            ),
            tenants: TenantLabels::new(max_tenants),
        };
        for reason in crate::decode::DecodeError::REASONS {
            m.decode_errors.with_label_values(&[reason]).reset();
        }
        m
    }
}

/// Registers `logwarden_build_info{version}` = 1.
pub fn register_build_info(registry: &Registry) {
    let g = register(
        registry,
        IntGaugeVec::new(
            Opts::new(
                "logwarden_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("valid metric"),
    );
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_bounded() {
        let t = TenantLabels::new(2);
        assert_eq!(t.label("a"), "a");
        assert_eq!(t.label("b"), "b");
        assert_eq!(t.label("a"), "a");
        assert_eq!(t.label("c"), TenantLabels::OTHER);
        assert_eq!(t.label("b"), "b");
    }

    #[test]
    fn render_contains_registered_families() {
        let r = Registry::new();
        let m = ProxyMetrics::register(&r, 10);
        m.push_requests.with_label_values(&["204"]).inc();
        let text = render(&r);
        assert!(
            text.contains("logwarden_push_requests_total{status=\"204\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("logwarden_decode_errors_total{reason=\"snappy\"} 0"),
            "{text}"
        );
    }
}
