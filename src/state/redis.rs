//! The Redis client of the shared state: synchronous, bounded, and degrading instead of failing.
//!
//! Called from the inspection worker threads (plain std threads, no async runtime). Each call
//! takes an idle connection from a small pool (or opens one within `state.connect_timeout`),
//! and every socket read and write is bounded by `state.timeout`. A connection that saw a
//! transport error is dropped, never reused: a late reply would otherwise answer the next call.
//!
//! Health is one flag. The first failure turns the layer degraded: the gauge
//! `logwarden_state_degraded` goes to 1 and one WARN is logged. While degraded, calls return
//! [`StateError::Degraded`] at once, without touching the network, except that one caller per
//! backoff interval (`state.reconnect_min`, doubling up to `state.reconnect_max`) makes the
//! real call as a probe. The first success clears the flag (one INFO). No background thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, Registry};
use redis::{Connection, ErrorKind, RedisError, ServerErrorKind, Value};
use tokio::time::Instant;

use super::batch::{BatchDeltas, BatchTotals, EntryDeltas, KeyTotals, SharedSample, WindowKind};
use super::keys::{key_name, KeyKind};
use super::{bucket, redact, StateConfig};
use crate::config::ConfigError;
use crate::metrics;

const WINDOW_SCRIPT: &str = include_str!("window.lua");
const CLAIM_SCRIPT: &str = include_str!("claim.lua");

/// Round-trip latency buckets, seconds: from loopback (~100 µs) to past any sane timeout.
const ROUND_TRIP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Why a shared-state call did not return an answer. The engine uses its local windows instead.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Degraded and not yet time to try again: nothing was sent.
    #[error("shared state degraded; Redis is retried after a backoff")]
    Degraded,
    /// Opening a connection failed or took longer than `state.connect_timeout`.
    #[error("cannot connect to Redis")]
    Connect(#[source] RedisError),
    /// A read or write took longer than `state.timeout`.
    #[error("Redis call timed out")]
    Timeout(#[source] RedisError),
    /// The connection broke.
    #[error("Redis connection failed")]
    Io(#[source] RedisError),
    /// Redis answered with an error (out of memory, read-only replica, script error…).
    #[error("Redis answered with an error")]
    Server(#[source] RedisError),
    /// Redis answered something the script cannot have returned.
    #[error("unexpected reply from Redis: {0}")]
    Reply(String),
}

impl StateError {
    /// Returns the `kind` label of `logwarden_state_redis_errors_total` (or `degraded`).
    pub fn reason(&self) -> &'static str {
        match self {
            StateError::Degraded => "degraded",
            StateError::Connect(_) => "connect",
            StateError::Timeout(_) => "timeout",
            StateError::Io(_) => "io",
            StateError::Server(_) => "server",
            StateError::Reply(_) => "reply",
        }
    }

    fn from_call(e: RedisError) -> Self {
        if e.is_timeout() {
            StateError::Timeout(e)
        } else if e.kind() == ErrorKind::Io || e.is_connection_dropped() {
            StateError::Io(e)
        } else {
            StateError::Server(e)
        }
    }

    /// True when the connection must not be reused.
    fn poisons_connection(&self) -> bool {
        !matches!(self, StateError::Server(_) | StateError::Degraded)
    }
}

/// The outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica holds the claim (taken now, or already held and renewed): it analyses and
    /// notifies.
    Won,
    /// Another replica holds it: this one stays silent.
    Lost,
    /// Redis could not be asked: behave like a single replica (analyse and notify). Duplicate
    /// alerts while Redis is down are preferred to missed ones.
    Degraded,
}

impl Claim {
    /// Returns true when this replica should analyse and notify (won, or no shared state).
    pub fn should_notify(self) -> bool {
        !matches!(self, Claim::Lost)
    }

    fn as_str(self) -> &'static str {
        match self {
            Claim::Won => "won",
            Claim::Lost => "lost",
            Claim::Degraded => "degraded",
        }
    }
}

/// What each call is, for the latency histogram and the round-trip counter.
#[derive(Debug, Clone, Copy)]
enum Op {
    Batch,
    Claim,
    Samples,
    Ping,
    LoadScript,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Batch => "batch",
            Op::Claim => "claim",
            Op::Samples => "samples",
            Op::Ping => "ping",
            Op::LoadScript => "load_script",
        }
    }
}

/// Metrics of the shared state.
#[derive(Clone)]
struct StateMetrics {
    degraded: IntGauge,
    duration: HistogramVec,
    errors: IntCounterVec,
    claims: IntCounterVec,
    round_trips: IntCounterVec,
    batches: IntCounterVec,
    batch_keys: Histogram,
}

impl StateMetrics {
    fn register(registry: &Registry) -> Self {
        StateMetrics {
            degraded: metrics::gauge(
                registry,
                "logwarden_state_degraded",
                "1 while shared state (Redis) is unavailable and detection uses local windows",
            ),
            duration: metrics::histogram_vec(
                registry,
                "logwarden_state_redis_duration_seconds",
                "Duration of Redis round trips by operation",
                &["op"],
                ROUND_TRIP_BUCKETS,
            ),
            errors: metrics::counter_vec(
                registry,
                "logwarden_state_redis_errors_total",
                "Failed Redis calls by kind (connect, timeout, io, server, reply)",
                &["kind"],
            ),
            claims: metrics::counter_vec(
                registry,
                "logwarden_state_claims_total",
                "Incident claims by outcome (won, lost, degraded)",
                &["outcome"],
            ),
            round_trips: metrics::counter_vec(
                registry,
                "logwarden_state_redis_round_trips_total",
                "Requests sent to Redis and answered or failed, by operation",
                &["op"],
            ),
            batches: metrics::counter_vec(
                registry,
                "logwarden_state_batches_total",
                "Batches synchronised with Redis (shared) or left to local windows (local)",
                &["outcome"],
            ),
            batch_keys: metrics::histogram(
                registry,
                "logwarden_state_batch_keys",
                "(tenant, rule, key) windows touched per synchronised batch",
                &[1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0],
            ),
        }
    }
}

/// Backoff state while degraded.
struct Health {
    next_attempt: Instant,
    backoff: Duration,
}

struct Inner {
    client: redis::Client,
    cfg: StateConfig,
    replica_id: String,
    window_sha: String,
    claim_sha: String,
    pool: Mutex<Vec<Connection>>,
    degraded: AtomicBool,
    probing: AtomicBool,
    health: Mutex<Health>,
    metrics: StateMetrics,
}

/// Shared detection state in Redis; cheap to clone (one pool and one health flag per process).
#[derive(Clone)]
pub struct SharedState {
    inner: Arc<Inner>,
}

/// Gives each [`SharedState`] of a process a different replica id.
static INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl SharedState {
    /// Builds the client from a validated `state:` section (with `backend: redis`) and registers
    /// its metrics. Does not connect: the first call does, so a Redis that is down at start-up
    /// degrades detection instead of stopping the proxy.
    ///
    /// # Errors
    /// `state.redis_url` when it cannot be parsed (or any other invalid field).
    pub fn try_new(cfg: &StateConfig, registry: &Registry) -> Result<SharedState, ConfigError> {
        cfg.validate()?;
        let bad_url = |e: redis::RedisError| {
            ConfigError::new(
                "state.redis_url",
                format!("{:?}: {e}", redact(&cfg.redis_url)),
            )
        };
        // TCP_NODELAY: a batch is one write of a big pipeline and one reply; with Nagle's
        // algorithm on, its tail waits for the peer's delayed ACK (tens of ms per batch).
        let info = redis::IntoConnectionInfo::into_connection_info(cfg.redis_url.as_str())
            .map_err(bad_url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(bad_url)?;
        let metrics = StateMetrics::register(registry);
        for kind in ["connect", "timeout", "io", "server", "reply"] {
            metrics.errors.with_label_values(&[kind]);
        }
        for outcome in ["won", "lost", "degraded"] {
            metrics.claims.with_label_values(&[outcome]);
        }
        for outcome in ["shared", "local"] {
            metrics.batches.with_label_values(&[outcome]);
        }
        let now = Instant::now();
        Ok(SharedState {
            inner: Arc::new(Inner {
                client,
                replica_id: default_replica_id(),
                window_sha: redis::Script::new(WINDOW_SCRIPT).get_hash().to_owned(),
                claim_sha: redis::Script::new(CLAIM_SCRIPT).get_hash().to_owned(),
                pool: Mutex::new(Vec::new()),
                degraded: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                health: Mutex::new(Health {
                    next_attempt: now,
                    backoff: cfg.reconnect_min,
                }),
                metrics,
                cfg: cfg.clone(),
            }),
        })
    }

    /// Builds the shared state for `backend: redis`, or returns `None` for `local`.
    ///
    /// # Errors
    /// As [`SharedState::try_new`].
    pub fn from_config(
        cfg: &StateConfig,
        registry: &Registry,
    ) -> Result<Option<SharedState>, ConfigError> {
        match cfg.backend {
            super::Backend::Local => Ok(None),
            super::Backend::Redis => Self::try_new(cfg, registry).map(Some),
        }
    }

    /// Returns this replica's id (stored in claims and samples).
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// Replaces the replica id (e.g. with the pod name); call before sharing the handle.
    #[must_use]
    pub fn with_replica_id(self, id: &str) -> SharedState {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_replica_id is called before the handle is shared"));
        inner.replica_id = id.to_owned();
        SharedState {
            inner: Arc::new(inner),
        }
    }

    /// Returns the `state:` section in force.
    pub fn config(&self) -> &StateConfig {
        &self.inner.cfg
    }

    /// Returns true while Redis is unavailable and detection should use local windows.
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// Returns an empty batch bounded by this configuration.
    pub fn batch(&self) -> BatchDeltas {
        BatchDeltas::new(&self.inner.cfg)
    }

    /// Sends a batch's deltas and returns the cluster-wide totals of every key it touched, in
    /// one round trip: one pipeline of EVALSHA runs (one per `max_keys_per_script` keys). Only
    /// when Redis lost the script (restart, SCRIPT FLUSH) does it take two more (SCRIPT LOAD,
    /// then the pipeline again; the failed runs changed nothing).
    ///
    /// # Errors
    /// [`StateError`] when Redis is degraded, slow or failing; the batch is then not shared.
    pub fn sync(&self, batch: &mut BatchDeltas) -> Result<BatchTotals, StateError> {
        if batch.is_empty() {
            return Ok(BatchTotals::default());
        }
        batch.finish();
        let result = self.call(Op::Batch, |con, st| st.sync_on(con, batch));
        let outcome = if result.is_ok() { "shared" } else { "local" };
        self.inner
            .metrics
            .batches
            .with_label_values(&[outcome])
            .inc();
        if result.is_ok() {
            self.inner.metrics.batch_keys.observe(batch.len() as f64);
        }
        result
    }

    /// Claims the incident of (tenant, rule, key) for `ttl` (the rule's cooldown): atomic
    /// `SET NX PX` with this replica's id. A replica that already holds the claim wins again
    /// and renews it, so its follow-ups go through; after the expiry the next replica to see
    /// the window fire takes over.
    pub fn claim(&self, tenant: &str, rule: &str, key: &str, ttl: Duration) -> Claim {
        let name = key_name(
            &self.inner.cfg.key_prefix,
            tenant,
            KeyKind::Claim,
            rule,
            key,
        );
        let ttl_ms = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
        let claim = match self.call(Op::Claim, |con, st| st.claim_on(con, &name, ttl_ms)) {
            Ok(true) => Claim::Won,
            Ok(false) => Claim::Lost,
            Err(_) => Claim::Degraded,
        };
        self.inner
            .metrics
            .claims
            .with_label_values(&[claim.as_str()])
            .inc();
        claim
    }

    /// Reads the shared samples of (tenant, rule, key), oldest first.
    ///
    /// # Errors
    /// [`StateError`] when Redis is degraded, slow or failing.
    pub fn samples(
        &self,
        tenant: &str,
        rule: &str,
        key: &str,
    ) -> Result<Vec<SharedSample>, StateError> {
        let name = key_name(
            &self.inner.cfg.key_prefix,
            tenant,
            KeyKind::Samples,
            rule,
            key,
        );
        let max = i64::from(self.inner.cfg.samples_per_key) - 1;
        if max < 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<Vec<u8>> = self.call(Op::Samples, |con, _| {
            redis::cmd("LRANGE")
                .arg(&name)
                .arg(0)
                .arg(max)
                .query(con)
                .map_err(StateError::from_call)
        })?;
        let mut out: Vec<SharedSample> = raw
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect();
        out.sort_by_key(|s| s.ts_ns);
        Ok(out)
    }

    /// Checks that Redis answers (PING), going through the same health logic as every call.
    ///
    /// # Errors
    /// [`StateError`] when Redis is degraded, slow or failing.
    pub fn ping(&self) -> Result<(), StateError> {
        self.call(Op::Ping, |con, _| {
            redis::cmd("PING")
                .query::<String>(con)
                .map(drop)
                .map_err(StateError::from_call)
        })
    }

    // === health, pool and timing ===

    /// Runs `f` on a pooled connection, unless degraded and not due for a probe; keeps the
    /// health flag, the pool and the metrics right whatever happens.
    fn call<T>(
        &self,
        op: Op,
        f: impl FnOnce(&mut Connection, &SharedState) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let inner = &*self.inner;
        let probing = if inner.degraded.load(Ordering::Relaxed) {
            let due = inner.health.lock().expect("health lock").next_attempt <= Instant::now();
            if !due
                || inner
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                return Err(StateError::Degraded);
            }
            true
        } else {
            false
        };
        let result = self.checkout().and_then(|mut con| {
            let started = Instant::now();
            let r = f(&mut con, self);
            inner
                .metrics
                .duration
                .with_label_values(&[op.as_str()])
                .observe(started.elapsed().as_secs_f64());
            inner
                .metrics
                .round_trips
                .with_label_values(&[op.as_str()])
                .inc();
            match &r {
                Err(e) if e.poisons_connection() => {}
                _ => self.checkin(con),
            }
            r
        });
        match &result {
            Ok(_) => self.mark_healthy(),
            Err(e) => {
                inner.metrics.errors.with_label_values(&[e.reason()]).inc();
                self.mark_failed(e, probing);
            }
        }
        if probing {
            inner.probing.store(false, Ordering::Release);
        }
        result
    }

    fn checkout(&self) -> Result<Connection, StateError> {
        if let Some(con) = self.inner.pool.lock().expect("pool lock").pop() {
            return Ok(con);
        }
        let cfg = &self.inner.cfg;
        let con = self
            .inner
            .client
            .get_connection_with_timeout(cfg.connect_timeout)
            .map_err(StateError::Connect)?;
        con.set_read_timeout(Some(cfg.timeout))
            .and_then(|()| con.set_write_timeout(Some(cfg.timeout)))
            .map_err(StateError::Connect)?;
        Ok(con)
    }

    fn checkin(&self, con: Connection) {
        let mut pool = self.inner.pool.lock().expect("pool lock");
        if pool.len() < self.inner.cfg.pool_size as usize {
            pool.push(con);
        }
    }

    fn mark_healthy(&self) {
        let inner = &*self.inner;
        if inner.degraded.swap(false, Ordering::AcqRel) {
            inner.health.lock().expect("health lock").backoff = inner.cfg.reconnect_min;
            inner.metrics.degraded.set(0);
            tracing::info!(
                redis = %redact(&inner.cfg.redis_url),
                "shared state resumed, detection counts cluster-wide again"
            );
        }
    }

    /// Turns the layer degraded (one WARN), or after a failed probe doubles the backoff.
    /// Calls that were already in flight when the first one failed change nothing more.
    fn mark_failed(&self, e: &StateError, probing: bool) {
        let inner = &*self.inner;
        if matches!(e, StateError::Degraded) {
            return;
        }
        // Anything learnt over a connection that failed may be stale: start afresh.
        if e.poisons_connection() {
            inner.pool.lock().expect("pool lock").clear();
        }
        let mut health = inner.health.lock().expect("health lock");
        let was_degraded = inner.degraded.swap(true, Ordering::AcqRel);
        if was_degraded {
            if !probing {
                return;
            }
            health.backoff = (health.backoff * 2).min(inner.cfg.reconnect_max);
        } else {
            health.backoff = inner.cfg.reconnect_min;
            inner.metrics.degraded.set(1);
            tracing::warn!(
                redis = %redact(&inner.cfg.redis_url),
                reason = e.reason(),
                error = %crate::error_chain(e),
                "shared state degraded, detection falls back to local windows"
            );
        }
        health.next_attempt = Instant::now() + health.backoff;
    }

    // === the calls themselves ===

    fn sync_on(
        &self,
        con: &mut Connection,
        batch: &BatchDeltas,
    ) -> Result<BatchTotals, StateError> {
        let cfg = &self.inner.cfg;
        let chunk = cfg.max_keys_per_script as usize;
        let mut pipe = redis::pipe();
        for entries in batch.entries.chunks(chunk) {
            pipe.add_command(self.window_command(entries));
        }
        let replies: Vec<Value> = match pipe.query(con) {
            Err(e) if is_noscript(&e) => {
                self.load_script(con, WINDOW_SCRIPT)?;
                self.count_round_trip(Op::Batch);
                pipe.query(con).map_err(StateError::from_call)?
            }
            r => r.map_err(StateError::from_call)?,
        };
        let mut totals = BatchTotals {
            refs: Vec::with_capacity(batch.len()),
            totals: Vec::with_capacity(batch.len()),
        };
        for (entries, reply) in batch.entries.chunks(chunk).zip(replies) {
            let Value::Array(items) = reply else {
                return Err(StateError::Reply(format!("script returned {reply:?}")));
            };
            if items.len() != entries.len() {
                return Err(StateError::Reply(format!(
                    "script returned {} entries for {}",
                    items.len(),
                    entries.len()
                )));
            }
            for (e, item) in entries.iter().zip(items) {
                totals.totals.push(parse_entry(e, item)?);
                totals
                    .refs
                    .push((e.tenant.clone(), e.rule.clone(), e.key.clone()));
            }
        }
        Ok(totals)
    }

    /// One EVALSHA of the window script over `entries` (see `window.lua` for the layout).
    fn window_command(&self, entries: &[EntryDeltas]) -> redis::Cmd {
        let cfg = &self.inner.cfg;
        let prefix = &cfg.key_prefix;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.inner.window_sha).arg(entries.len() * 3);
        for e in entries {
            for kind in [KeyKind::Window, KeyKind::Distinct, KeyKind::Samples] {
                cmd.arg(key_name(prefix, &e.tenant, kind, &e.rule, &e.key));
            }
        }
        cmd.arg(entries.len()).arg(cfg.samples_per_key);
        for e in entries {
            let p = &e.params;
            let window_ms = p.window_ms.max(1);
            let cap = cfg.max_distinct_per_key.max(p.threshold);
            cmd.arg(match p.kind {
                WindowKind::Count => "c",
                WindowKind::Distinct => "d",
            })
            .arg(e.newest_ms)
            .arg(window_ms)
            .arg(e.bucket_ms)
            .arg(bucket::ttl_ms(window_ms, p.tolerance_ms, e.bucket_ms))
            .arg(p.threshold.max(1))
            .arg(cap)
            .arg(e.want_samples.as_arg());
            match p.kind {
                WindowKind::Count => {
                    cmd.arg(e.counts.len());
                    for (b, n) in &e.counts {
                        cmd.arg(*b).arg(*n);
                    }
                }
                WindowKind::Distinct => {
                    cmd.arg(e.distinct.len());
                    for (v, t) in &e.distinct {
                        cmd.arg(format!("{v:016x}")).arg(*t);
                    }
                }
            }
            cmd.arg(e.samples.len());
            for s in &e.samples {
                let mut s = s.clone();
                s.replica.clone_from(&self.inner.replica_id);
                cmd.arg(serde_json::to_string(&s).expect("samples serialise"));
            }
        }
        cmd
    }

    fn claim_on(&self, con: &mut Connection, name: &str, ttl_ms: i64) -> Result<bool, StateError> {
        let evalsha = |con: &mut Connection| {
            redis::cmd("EVALSHA")
                .arg(&self.inner.claim_sha)
                .arg(1)
                .arg(name)
                .arg(&self.inner.replica_id)
                .arg(ttl_ms)
                .query::<i64>(con)
        };
        let code = match evalsha(con) {
            Err(e) if is_noscript(&e) => {
                self.load_script(con, CLAIM_SCRIPT)?;
                self.count_round_trip(Op::Claim);
                evalsha(con).map_err(StateError::from_call)?
            }
            r => r.map_err(StateError::from_call)?,
        };
        Ok(code != 0)
    }

    fn load_script(&self, con: &mut Connection, src: &str) -> Result<(), StateError> {
        self.count_round_trip(Op::LoadScript);
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(src)
            .query::<String>(con)
            .map(drop)
            .map_err(StateError::from_call)
    }

    fn count_round_trip(&self, op: Op) {
        self.inner
            .metrics
            .round_trips
            .with_label_values(&[op.as_str()])
            .inc();
    }
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn int(v: &Value) -> Result<i64, StateError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(StateError::Reply(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

fn parse_entry(e: &EntryDeltas, item: Value) -> Result<KeyTotals, StateError> {
    let Value::Array(parts) = item else {
        return Err(StateError::Reply(format!("entry reply {item:?}")));
    };
    let [newest, total, samples] = <[Value; 3]>::try_from(parts)
        .map_err(|p| StateError::Reply(format!("entry reply has {} parts", p.len())))?;
    let total = u64::try_from(int(&total)?).unwrap_or(0);
    let samples = match samples {
        Value::Array(items) => {
            let mut out: Vec<SharedSample> = items
                .iter()
                .filter_map(|v| match v {
                    Value::BulkString(b) => serde_json::from_slice(b).ok(),
                    _ => None,
                })
                .collect();
            out.sort_by_key(|s| s.ts_ns);
            out
        }
        _ => Vec::new(),
    };
    Ok(KeyTotals {
        newest_ms: int(&newest)?,
        total,
        fires: total >= u64::from(e.params.threshold.max(1)),
        samples,
    })
}

/// `<host>-<pid>-<n>`: unique per process and per [`SharedState`] in it.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() { "logwarden" } else { &host };
    let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
    format!("{host}-{}-{n}", std::process::id())
}
