//! Config: the YAML file format (serde) and its validation into a [`Config`] the stages trust.
//!
//! Two stages: [`RawConfig`] mirrors the file (unknown keys rejected); [`Config::from_raw`]
//! validates it, applies command-line and environment overrides, and compiles it (URLs parsed,
//! durations checked). Everything downstream takes `&Config` and never re-checks. Every error
//! names the field, the bad value and what was expected.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default address `serve` listens on (Loki's own port is 3100).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3101";
/// Default Loki base URL.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3100";
/// Loki's default `max_recv_msg_size`: 100 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 << 20;

/// A configuration error: which field, what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `upstream.timeout`.
    pub field: String,
    /// The bad value and what was expected.
    pub message: String,
}

impl ConfigError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The configuration file, as written by the operator.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Address to listen on, `host:port`. Default `0.0.0.0:3101`.
    pub listen: Option<String>,
    /// The Loki that pushes are forwarded to.
    pub upstream: UpstreamConfig,
    /// Size limits on what clients send.
    pub limits: LimitsConfig,
    /// The inspection stage that decodes accepted pushes off the request path.
    pub inspect: InspectConfig,
    /// How clients are served: connection limits and timeouts against slow or hostile clients.
    pub server: ServerConfig,
    /// Detection: rules, windows and their bounds (see docs/rules.md).
    pub detect: crate::detect::DetectConfig,
    /// Incident analysis: template report or an LLM (see docs/analysis.md).
    pub analyze: crate::analyze::AnalyzeConfig,
    /// Where alerts are delivered: Telegram, Slack, webhook, Alertmanager, email
    /// (see docs/alerting.md).
    pub notify: Vec<crate::notify::NotifierConfig>,
    /// Reports written back into Loki (and optionally a JSONL file).
    pub reports: crate::notify::ReportsConfig,
    /// Optional client authentication, each credential mapped to a tenant (docs/security.md).
    pub auth: crate::auth::AuthConfig,
    /// Where detection windows live: this process, or Redis shared by every replica
    /// (docs/scaling.md).
    pub state: crate::state::StateConfig,
}

/// Most serving threads `server.threads` accepts: each holds a runtime and an upstream pool.
pub const MAX_SERVING_THREADS: usize = 1024;

/// Protection against slow, greedy or hostile clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Open client connections at most; past it new connections wait in the kernel's accept
    /// backlog until one closes. Default 4096.
    pub max_connections: usize,
    /// Longest time a client may take to send its request headers (HTTP/1); the connection is
    /// closed after it. Default 10s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest time a client may take to send a request body; past it the request is answered
    /// 408 and nothing is forwarded. Default 60s (Promtail gives up after 10 s).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers); larger heads get 431. Default 64KiB,
    /// at least 8KiB.
    pub max_header_bytes: ByteSize,
    /// Serve HTTPS with this certificate and key (default: plain HTTP). The TLS handshake
    /// counts against `header_read_timeout`.
    pub tls: Option<crate::tls::ServerTlsConfig>,
    /// Serving threads, each a single-threaded runtime serving whole connections with its own
    /// upstream connection pool; 0 means one per CPU. Default 0.
    pub threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_header_bytes: ByteSize(64 << 10),
            tls: None,
            threads: 0,
        }
    }
}

/// Where and how to forward.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base URL of Loki (scheme, host, port; a path prefix is kept). Default `http://127.0.0.1:3100`.
    pub url: String,
    /// Longest wait for Loki's answer (response headers) before answering 504. Default 9s: under
    /// Promtail's and Alloy's 10 s client timeout, so the client gets our 504 (and retries)
    /// rather than timing out itself with the request still in flight.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait to open a TCP connection to Loki before answering 502. Default 2s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Talk HTTP/2 without TLS (h2c, prior knowledge) to Loki. Default false (HTTP/1.1).
    pub http2: bool,
    /// Idle pooled connections kept per upstream host. Default 64.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept. Default 60s.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// CA bundle and client certificate for an `https://` Loki (also used for the report
    /// pushes). Default: the system's roots, no client certificate.
    pub tls: crate::tls::UpstreamTlsConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: DEFAULT_UPSTREAM.to_owned(),
            timeout: Duration::from_secs(9),
            connect_timeout: Duration::from_secs(2),
            http2: false,
            pool_max_idle_per_host: 64,
            pool_idle_timeout: Duration::from_secs(60),
            tls: crate::tls::UpstreamTlsConfig::default(),
        }
    }
}

/// Size limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest push body accepted, as sent (compressed). Over it: 413, nothing forwarded.
    /// A number of bytes or a size such as `100MiB`. Default 100 MiB, like Loki.
    pub max_body_bytes: ByteSize,
    /// Largest push body inspected after decompression; larger pushes are still forwarded but
    /// not inspected (counted as decode error `too_large`). Default 512 MiB.
    pub max_decompressed_bytes: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: ByteSize(DEFAULT_MAX_BODY_BYTES),
            max_decompressed_bytes: ByteSize(512 << 20),
        }
    }
}

/// The inspection hand-off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    /// Pushes waiting for inspection; when full, inspection (never forwarding) is shed and
    /// counted in `logwarden_inspect_queue_dropped_total`. Default 8192: with Promtail-sized
    /// 64 KiB batches (about 12 KiB as sent) `queue_bytes` is reached first, so both small and
    /// large batches get a backlog of about a second or more of inspection work.
    pub queue_capacity: usize,
    /// Body bytes (as sent) waiting for inspection at most; past it inspection is shed like
    /// with a full queue. Bounds the memory a burst of pushes can hold (about twice this: a
    /// queued body keeps the buffers it was read into). Default 64MiB.
    pub queue_bytes: ByteSize,
    /// Inspection worker threads; 0 means one per CPU but one, leaving a core for forwarding.
    /// Default 0.
    pub workers: usize,
    /// Run the inspection threads under Linux's idle scheduling class (`SCHED_IDLE`): they
    /// get a CPU only when no other thread wants it, so a push that wakes a serving thread
    /// does not wait for an inspection to yield the core; under sustained CPU contention
    /// inspection sheds (counted) instead.
    /// Off by default: on a host saturated by an attack (a flood that keeps every core busy)
    /// the idle class would leave inspection almost no CPU exactly when detection matters.
    /// false: normal scheduling, niced by `nice`. Default false.
    pub idle_priority: bool,
    /// Niceness added to the inspection threads (Linux) when `idle_priority` is false, so
    /// that under CPU contention forwarding is served first; 0 keeps normal priority.
    /// Default 5.
    pub nice: i32,
    /// Forwarding first: inspection threads in the idle scheduling class inspect while they
    /// keep up; niced ones (`nice`) take over while other work starves them and forwarding has
    /// CPU to spare; while forwarding is saturated (every serving thread runnable 60 % of the
    /// time or more) and inspection sheds, the idle-class threads inspect for at most
    /// `aside_share` of the time, so forwarding keeps its rate. Default true.
    pub forwarding_first: bool,
    /// With `forwarding_first`, the share of the time inspection runs while it stands aside
    /// for a flood (it pauses between pushes), so the flood is inspected on a sample and
    /// forwarding gets the CPU: above 0, at most 1 (1: no pauses). Default 0.1.
    pub aside_share: f64,
    /// Tenant assumed when a push has no `X-Scope-OrgID` (Loki's `no_auth_tenant`). Default `fake`.
    pub default_tenant: String,
    /// Distinct tenants given their own metric label value; the rest share `_other`. Default 100.
    pub max_metric_tenants: usize,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            queue_capacity: 8192,
            queue_bytes: ByteSize(64 << 20),
            workers: 0,
            idle_priority: false,
            nice: 5,
            forwarding_first: true,
            aside_share: 0.1,
            default_tenant: "fake".to_owned(),
            max_metric_tenants: 100,
        }
    }
}

/// A size in bytes, written as a number or as a string with a unit (`512KiB`, `100MiB`, `1GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct ByteSize(pub u64);

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl ByteSize {
    /// Parses `123`, `64KiB`, `100MiB`, `1GB`, … (binary units for `KiB`/`MiB`/`GiB`, decimal
    /// for `KB`/`MB`/`GB`).
    pub fn parse(s: &str) -> Option<ByteSize> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Int(u64),
            Str(String),
        }
        match Repr::deserialize(d)? {
            Repr::Int(n) => Ok(ByteSize(n)),
            Repr::Str(s) => ByteSize::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a size (expected bytes as a number, or e.g. \"64KiB\", \"100MiB\")"
                ))
            }),
        }
    }
}

/// Values that override the file: command-line flags, then environment variables.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen` / `LOGWARDEN_LISTEN`.
    pub listen: Option<String>,
    /// `--upstream` / `LOGWARDEN_UPSTREAM`.
    pub upstream: Option<String>,
}

/// The validated configuration every stage is built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Loki base URL.
    pub upstream_url: reqwest::Url,
    /// Upstream connection settings.
    pub upstream: UpstreamConfig,
    /// Largest push body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest decompressed body inspected, in bytes.
    pub max_decompressed_bytes: usize,
    /// Inspection settings (workers resolved: never 0).
    pub inspect: InspectConfig,
    /// HTTPS for clients, when `server.tls` is set.
    pub server_tls: Option<crate::tls::ServerTls>,
    /// Trust and identity for the upstream (`upstream.tls`).
    pub upstream_tls: crate::tls::UpstreamTls,
    /// The file as read, for reference.
    pub raw: RawConfig,
}

impl Config {
    /// Returns the embedded default configuration (`serve` with no file).
    pub fn default_config() -> Config {
        Config::from_raw(RawConfig::default(), &Overrides::default())
            .expect("the built-in default configuration is valid")
    }

    /// Reads and validates a YAML file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file or the field at fault.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let raw = parse_yaml(&text)?;
        Config::from_raw(raw, overrides)
    }

    /// Validates a raw configuration with overrides applied.
    ///
    /// # Errors
    /// The first invalid field, with its value and what was expected.
    pub fn from_raw(raw: RawConfig, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (listen_field, listen) = match (&overrides.listen, &raw.listen) {
            (Some(l), _) => ("--listen", l.clone()),
            (None, Some(l)) => ("listen", l.clone()),
            (None, None) => ("listen", DEFAULT_LISTEN.to_owned()),
        };
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::new(
                listen_field,
                format!("{listen:?} is not an address (expected host:port, e.g. \"0.0.0.0:3101\")"),
            )
        })?;

        let (url_field, url) = match &overrides.upstream {
            Some(u) => ("--upstream", u.clone()),
            None => ("upstream.url", raw.upstream.url.clone()),
        };
        let upstream_url = parse_upstream_url(url_field, &url)?;

        let up = &raw.upstream;
        positive("upstream.timeout", up.timeout)?;
        positive("upstream.connect_timeout", up.connect_timeout)?;
        if raw.limits.max_body_bytes.0 == 0 {
            return Err(ConfigError::new(
                "limits.max_body_bytes",
                "0 must be greater than zero",
            ));
        }
        if raw.limits.max_decompressed_bytes.0 == 0 {
            return Err(ConfigError::new(
                "limits.max_decompressed_bytes",
                "0 must be greater than zero",
            ));
        }
        if raw.inspect.queue_capacity == 0 {
            return Err(ConfigError::new(
                "inspect.queue_capacity",
                "0 must be greater than zero",
            ));
        }
        if raw.inspect.default_tenant.is_empty() || raw.inspect.default_tenant.contains(':') {
            return Err(ConfigError::new(
                "inspect.default_tenant",
                format!(
                    "{:?} is not a tenant id (expected a non-empty name without ':')",
                    raw.inspect.default_tenant
                ),
            ));
        }
        let srv = &raw.server;
        if srv.threads > MAX_SERVING_THREADS {
            return Err(ConfigError::new(
                "server.threads",
                format!(
                    "{} is too many (at most {MAX_SERVING_THREADS}; 0 means one per CPU)",
                    srv.threads
                ),
            ));
        }
        if srv.max_connections == 0 {
            return Err(ConfigError::new(
                "server.max_connections",
                "0 must be greater than zero",
            ));
        }
        positive("server.header_read_timeout", srv.header_read_timeout)?;
        positive("server.body_read_timeout", srv.body_read_timeout)?;
        if srv.max_header_bytes.0 < 8192 {
            return Err(ConfigError::new(
                "server.max_header_bytes",
                format!(
                    "{} is too small (expected at least 8KiB)",
                    srv.max_header_bytes.0
                ),
            ));
        }
        if !(0..=19).contains(&raw.inspect.nice) {
            return Err(ConfigError::new(
                "inspect.nice",
                format!("{} is out of range (expected 0 to 19)", raw.inspect.nice),
            ));
        }
        let share = raw.inspect.aside_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(ConfigError::new(
                "inspect.aside_share",
                format!("{share} is out of range (expected above 0, at most 1)"),
            ));
        }
        let rule_ids = raw.detect.rule_ids().map_err(detect_error)?;
        crate::notify::check_rule_filters(&raw.notify, &rule_ids)?;
        raw.state.validate()?;
        raw.analyze.validate()?;
        crate::notify::validate(&raw.notify, &raw.reports)?;
        crate::auth::Authenticator::try_new(&raw.auth)?;
        let mut inspect = raw.inspect.clone();
        if inspect.workers == 0 {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            inspect.workers = cpus.saturating_sub(1).max(1);
        }
        let server_tls = raw
            .server
            .tls
            .as_ref()
            .map(crate::tls::ServerTls::load)
            .transpose()?;
        let upstream_tls = crate::tls::UpstreamTls::load(&raw.upstream.tls)?;
        Ok(Config {
            server_tls,
            upstream_tls,
            listen,
            upstream_url,
            upstream: raw.upstream.clone(),
            max_body_bytes: usize::try_from(raw.limits.max_body_bytes.0).unwrap_or(usize::MAX),
            max_decompressed_bytes: usize::try_from(raw.limits.max_decompressed_bytes.0)
                .unwrap_or(usize::MAX),
            inspect,
            raw,
        })
    }
}

/// Parses YAML into a [`RawConfig`], reporting the dotted path of a bad field.
///
/// # Errors
/// Syntax errors (with line and column), unknown fields and wrongly typed values.
pub fn parse_yaml(text: &str) -> Result<RawConfig, ConfigError> {
    // An empty file means "all defaults".
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "config".to_owned()
        } else {
            path
        };
        // serde_yaml_ng already prefixes some messages with the path; say it once.
        let message = e.into_inner().to_string();
        let message = message
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(&message)
            .to_owned();
        ConfigError::new(field, message)
    })
}

/// Turns a detection error into a config error naming the field or rule at fault.
pub fn detect_error(e: crate::detect::DetectError) -> ConfigError {
    use crate::detect::DetectError;
    match e {
        DetectError::Config { field, message } => {
            ConfigError::new(format!("detect.{field}"), message)
        }
        DetectError::Rule { location, message } => ConfigError::new(location, message),
        DetectError::Io {
            index,
            path,
            source,
        } => ConfigError::new(
            format!("detect.rules[{index}]"),
            format!("couldn't read {}: {source}", path.display()),
        ),
        DetectError::Metrics(e) => ConfigError::new("detect", format!("metrics: {e}")),
    }
}

fn positive(field: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::new(field, "\"0s\" must be greater than zero"));
    }
    Ok(())
}

fn parse_upstream_url(field: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let expected = "(expected a base URL such as \"http://127.0.0.1:3100\")";
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        ConfigError::new(field, format!("{url:?} is not a valid URL: {e} {expected}"))
    })?;
    match parsed.scheme() {
        "http" => {}
        "https" if cfg!(feature = "tls") => {}
        "https" => {
            return Err(ConfigError::new(
                field,
                format!("{url:?}: this binary was built without the `tls` feature {expected}"),
            ))
        }
        other => {
            return Err(ConfigError::new(
                field,
                format!("{url:?}: scheme {other:?} is not http or https {expected}"),
            ))
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(
            field,
            format!("{url:?} has no host {expected}"),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConfigError::new(
            field,
            format!("{url:?} must not have a query or fragment {expected}"),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_raw(parse_yaml(yaml)?, &Overrides::default())
    }

    #[test]
    fn a_notifier_filtering_on_an_unknown_rule_id_is_rejected() {
        let webhook = "notify:\n  - type: webhook\n    url: http://127.0.0.1:9/\n    rules: ";
        assert!(load(&format!("{webhook}[ssh-brute-force, web-path-probing]\n")).is_ok());
        let e = load(&format!("{webhook}[ssh-brute-force, ssh_brute_force]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("notify[0].rules[1]: no loaded rule has the id \"ssh_brute_force\""),
            "{e}"
        );
        assert!(e.contains("ssh-brute-force"), "suggests the real id: {e}");
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.listen, "0.0.0.0:3101".parse().unwrap());
        assert_eq!(c.upstream_url.as_str(), "http://127.0.0.1:3100/");
        assert_eq!(c.max_body_bytes, 100 << 20);
        assert_eq!(c.upstream.timeout, Duration::from_secs(9));
        assert!(c.inspect.workers >= 1);
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        let c = load("upstream:\n  timeout: 1500ms\nlimits:\n  max_body_bytes: 64KiB\n").unwrap();
        assert_eq!(c.upstream.timeout, Duration::from_millis(1500));
        assert_eq!(c.max_body_bytes, 64 << 10);
        assert_eq!(
            load("limits:\n  max_body_bytes: 1000\n")
                .unwrap()
                .max_body_bytes,
            1000
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let e = load("upstream:\n  urll: http://x:1\n").unwrap_err();
        assert_eq!(e.field, "upstream.urll");
        assert!(e.message.contains("unknown field `urll`"), "{e}");
        assert!(e.message.contains("expected one of"), "{e}");
    }

    #[test]
    fn bad_values_name_field_value_and_expectation() {
        let e = load("upstream:\n  url: \"ftp://loki:3100\"\n").unwrap_err();
        assert_eq!(e.field, "upstream.url");
        assert!(
            e.message.contains("\"ftp://loki:3100\"") && e.message.contains("expected"),
            "{e}"
        );

        let e = load("upstream:\n  timeout: 0s\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "upstream.timeout: \"0s\" must be greater than zero"
        );

        for share in ["0", "1.5", "-0.1", ".nan"] {
            let e = load(&format!("inspect:\n  aside_share: {share}\n")).unwrap_err();
            assert_eq!(e.field, "inspect.aside_share", "{share}: {e}");
            assert!(e.message.contains("expected above 0, at most 1"), "{e}");
        }
        // 1, no pauses, is allowed and taken as given.
        let share = load("inspect:\n  aside_share: 1\n")
            .unwrap()
            .inspect
            .aside_share;
        assert!((share - 1.0).abs() < 1e-9, "{share}");

        let e = load("server:\n  threads: 5000\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "server.threads: 5000 is too many (at most 1024; 0 means one per CPU)"
        );
        assert_eq!(
            load("server:\n  threads: 3\n").unwrap().raw.server.threads,
            3
        );

        let e = load("upstream:\n  timeout: soon\n").unwrap_err();
        assert_eq!(e.field, "upstream.timeout");
        assert!(
            e.message
                .starts_with("invalid value: string \"soon\", expected a duration"),
            "{e}"
        );

        let e = load("listen: nowhere\n").unwrap_err();
        assert_eq!(e.field, "listen");
        assert!(e.message.contains("\"nowhere\""), "{e}");

        let e = load("limits:\n  max_body_bytes: lots\n").unwrap_err();
        assert_eq!(e.field, "limits.max_body_bytes");
        assert!(e.message.contains("\"lots\" is not a size"), "{e}");
    }

    #[test]
    fn overrides_beat_the_file() {
        let raw = parse_yaml("listen: 127.0.0.1:1\nupstream:\n  url: http://a:1\n").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            upstream: Some("http://b:2".into()),
        };
        let c = Config::from_raw(raw, &o).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.upstream_url.host_str(), Some("b"));
        let e = Config::from_raw(
            RawConfig::default(),
            &Overrides {
                upstream: Some("nope".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "--upstream");
    }
}
