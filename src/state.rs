//! State: where detection windows live when several replicas share one attack.
//!
//! Receives, once per inspected batch, the batch's locally aggregated deltas for each touched
//! (tenant, rule, key): event counts per time bucket, distinct values with their newest time,
//! and the newest sample lines ([`BatchDeltas`]). Emits the cluster-wide totals over each key's
//! window and, for keys at their threshold, the samples every replica contributed
//! ([`BatchTotals`]). Also hands out incident claims ([`Claim`]) so one replica alone analyses
//! and notifies an attack.
//!
//! With `backend: local` nothing here runs and detection keeps its in-process windows. With
//! `backend: redis`, [`SharedState`] talks to Redis 6+ or Valkey over plain synchronous
//! connections from the inspection worker threads: one pipelined round trip per batch (a Lua
//! script run with EVALSHA, see `state/window.lua`), every call bounded by `state.timeout`.
//! It must never block forwarding: Redis trouble makes calls fail fast and the layer report
//! itself degraded, so the engine falls back to its local windows until Redis answers again.
//! The design and its error bounds are in docs/scaling.md.

pub mod batch;
pub mod bucket;
pub mod keys;
pub mod redis;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::batch::{
    BatchDeltas, BatchTotals, EntryDeltas, KeyTotals, SampleMode, SharedSample, WindowKind,
    WindowParams, WindowRef,
};
pub use self::redis::{Claim, SharedState, StateError};
use crate::config::ConfigError;

/// Where detection windows are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process only: each replica counts what it sees (the default; one replica).
    #[default]
    Local,
    /// In Redis (or Valkey), shared by every replica that uses the same `redis_url` and
    /// `key_prefix`.
    Redis,
}

/// The `state:` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `local` (each replica alone) or `redis` (windows, claims and samples shared through
    /// Redis/Valkey). Default `local`.
    pub backend: Backend,
    /// Redis URL: `redis://[user:password@]host:port[/db]`, or `unix:///path/to/redis.sock`.
    /// Used only with `backend: redis`. Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Prefix of every key, so several deployments can share one Redis. Letters, digits and
    /// `-_.`; at most 64 characters. Default `logwarden`.
    pub key_prefix: String,
    /// Longest wait for each read or write of one Redis call; a call that takes longer fails
    /// and the layer turns degraded. Default 50ms; at most 1s (far below the push timeout,
    /// though detection never runs on the request path anyway).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait to open a connection to Redis. Default 100ms; at most 5s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First wait before trying Redis again after a failure; doubles on each failure in a row.
    /// Default 250ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest wait between attempts while Redis stays down. Default 10s.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Buckets a `count` window is cut into; the shared window may reach back up to one bucket
    /// (window / buckets) further than the exact one. 1 to 600. Default 30 (2 s buckets for a
    /// 1 minute window, at most 3.4 % longer).
    pub buckets_per_window: u32,
    /// Different values kept per `distinct` window (at least the rule's threshold is kept);
    /// counts saturate at this bound. Default 1024.
    pub max_distinct_per_key: u32,
    /// Sample lines shared per (rule, key): the last ones received from any replica. 0 to 1000.
    /// Default 20.
    pub samples_per_key: u32,
    /// Longest shared sample line in bytes (longer lines are cut at a character boundary).
    /// Default 1024.
    pub max_sample_bytes: u32,
    /// Keys one script run handles at most; a batch touching more is sent as several script
    /// runs in the same pipeline (still one round trip), so Redis can serve others between
    /// them. Default 500.
    pub max_keys_per_script: u32,
    /// Idle connections kept for reuse (one is in use per inspection worker at a time).
    /// Default 8.
    pub pool_size: u32,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: Backend::Local,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "logwarden".to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(100),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            buckets_per_window: 30,
            max_distinct_per_key: 1024,
            samples_per_key: 20,
            max_sample_bytes: 1024,
            max_keys_per_script: 500,
            pool_size: 8,
        }
    }
}

impl StateConfig {
    /// Checks every field; the Redis settings only matter (and are only checked) with
    /// `backend: redis`.
    ///
    /// # Errors
    /// The first invalid field, named `state.<field>`, with its value and what was expected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backend == Backend::Local {
            return Ok(());
        }
        let info = ::redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str())
            .map_err(|e| {
                ConfigError::new(
                    "state.redis_url",
                    format!(
                        "{:?} is not a Redis URL ({e}); expected e.g. \"redis://127.0.0.1:6379\"",
                        redact(&self.redis_url)
                    ),
                )
            })?;
        if !matches!(
            info.addr(),
            ::redis::ConnectionAddr::Tcp(..) | ::redis::ConnectionAddr::Unix(_)
        ) {
            return Err(ConfigError::new(
                "state.redis_url",
                format!(
                    "{:?}: TLS (rediss://) is not built in; use redis:// on a private network \
                     or a unix socket",
                    redact(&self.redis_url)
                ),
            ));
        }
        let prefix_ok = !self.key_prefix.is_empty()
            && self.key_prefix.len() <= 64
            && self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !prefix_ok {
            return Err(ConfigError::new(
                "state.key_prefix",
                format!(
                    "{:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                    self.key_prefix
                ),
            ));
        }
        within("state.timeout", self.timeout, Duration::from_secs(1))?;
        within(
            "state.connect_timeout",
            self.connect_timeout,
            Duration::from_secs(5),
        )?;
        within(
            "state.reconnect_max",
            self.reconnect_max,
            Duration::from_secs(600),
        )?;
        within(
            "state.reconnect_min",
            self.reconnect_min,
            self.reconnect_max,
        )
        .map_err(|_| {
            ConfigError::new(
                "state.reconnect_min",
                format!(
                    "{} must be greater than zero and at most state.reconnect_max ({})",
                    humantime::format_duration(self.reconnect_min),
                    humantime::format_duration(self.reconnect_max)
                ),
            )
        })?;
        range("state.buckets_per_window", self.buckets_per_window, 1, 600)?;
        range(
            "state.max_distinct_per_key",
            self.max_distinct_per_key,
            1,
            100_000,
        )?;
        range("state.samples_per_key", self.samples_per_key, 0, 1000)?;
        range("state.max_sample_bytes", self.max_sample_bytes, 64, 65_536)?;
        range(
            "state.max_keys_per_script",
            self.max_keys_per_script,
            1,
            10_000,
        )?;
        range("state.pool_size", self.pool_size, 1, 1024)?;
        Ok(())
    }
}

fn within(field: &str, value: Duration, max: Duration) -> Result<(), ConfigError> {
    if value.is_zero() || value > max {
        return Err(ConfigError::new(
            field,
            format!(
                "{} must be greater than zero and at most {}",
                humantime::format_duration(value),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

fn range(field: &str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            field,
            format!("{value} must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Returns `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{}{masked}{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_cfg() -> StateConfig {
        StateConfig {
            backend: Backend::Redis,
            ..StateConfig::default()
        }
    }

    fn parse(yaml: &str) -> Result<StateConfig, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn defaults_are_local_and_valid() {
        let cfg = parse("{}").unwrap();
        assert_eq!(cfg, StateConfig::default());
        assert_eq!(cfg.backend, Backend::Local);
        cfg.validate().unwrap();
        redis_cfg().validate().unwrap();
    }

    #[test]
    fn a_full_section_parses() {
        let cfg = parse(
            "backend: redis\nredis_url: redis://:pw@10.0.0.5:6380/2\nkey_prefix: prod-eu\n\
             timeout: 20ms\nconnect_timeout: 200ms\nreconnect_min: 100ms\nreconnect_max: 30s\n\
             buckets_per_window: 60\nmax_distinct_per_key: 256\nsamples_per_key: 5\n\
             max_sample_bytes: 512\nmax_keys_per_script: 100\npool_size: 4\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.timeout, Duration::from_millis(20));
        assert_eq!(cfg.buckets_per_window, 60);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = parse("backend: redis\nredis_uri: redis://x\n").unwrap_err();
        assert!(err.to_string().contains("redis_uri"), "{err}");
        assert!(parse("backend: memcached\n").is_err());
    }

    #[test]
    fn every_rejection_names_its_field() {
        let cases: Vec<(StateConfig, &str, &str)> = vec![
            (
                StateConfig {
                    redis_url: "http://127.0.0.1:6379".into(),
                    ..redis_cfg()
                },
                "state.redis_url",
                "not a Redis URL",
            ),
            (
                StateConfig {
                    redis_url: "rediss://:secret@db:6379".into(),
                    ..redis_cfg()
                },
                "state.redis_url",
                "TLS",
            ),
            (
                StateConfig {
                    key_prefix: "a:{b}".into(),
                    ..redis_cfg()
                },
                "state.key_prefix",
                "letters, digits",
            ),
            (
                StateConfig {
                    key_prefix: String::new(),
                    ..redis_cfg()
                },
                "state.key_prefix",
                "1 to 64",
            ),
            (
                StateConfig {
                    timeout: Duration::ZERO,
                    ..redis_cfg()
                },
                "state.timeout",
                "greater than zero",
            ),
            (
                StateConfig {
                    timeout: Duration::from_secs(3),
                    ..redis_cfg()
                },
                "state.timeout",
                "at most 1s",
            ),
            (
                StateConfig {
                    connect_timeout: Duration::from_secs(6),
                    ..redis_cfg()
                },
                "state.connect_timeout",
                "at most 5s",
            ),
            (
                StateConfig {
                    reconnect_min: Duration::from_secs(20),
                    ..redis_cfg()
                },
                "state.reconnect_min",
                "at most state.reconnect_max",
            ),
            (
                StateConfig {
                    buckets_per_window: 0,
                    ..redis_cfg()
                },
                "state.buckets_per_window",
                "between 1 and 600",
            ),
            (
                StateConfig {
                    samples_per_key: 1001,
                    ..redis_cfg()
                },
                "state.samples_per_key",
                "between 0 and 1000",
            ),
            (
                StateConfig {
                    max_sample_bytes: 10,
                    ..redis_cfg()
                },
                "state.max_sample_bytes",
                "between 64",
            ),
            (
                StateConfig {
                    pool_size: 0,
                    ..redis_cfg()
                },
                "state.pool_size",
                "between 1",
            ),
        ];
        for (cfg, field, needle) in cases {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(needle), "{err}");
            assert!(!err.message.contains("secret"), "password leaked: {err}");
        }
    }

    #[test]
    fn local_backend_ignores_redis_settings() {
        let cfg = StateConfig {
            redis_url: "not a url".into(),
            ..StateConfig::default()
        };
        cfg.validate().unwrap();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://app:hunter2@db:6379"),
            "redis://app:***@db:6379"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }
}
