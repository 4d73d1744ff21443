//! Inspect: the hand-off from the request path to decoding and detection.
//!
//! Receives a copy (a reference-counted `Bytes`, no copy of the data) of each push that Loki
//! accepted for good (the client will not resend it). Owns a bounded queue and a pool of worker
//! threads that decode each push, count lines, bytes and streams per tenant, and hand the decoded
//! view to the [`PushInspector`] (the detection engine). A full queue sheds the inspection, never
//! the forwarding, and counts it. The request path never waits here: [`Inspector::offer`] is a
//! `try_push` on a queue whose producers never wait for a consumer ([`queue`]).

mod lanes;
mod queue;

pub use lanes::ForwardingLoad;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use lanes::{Lane, Lanes, QueueReading};
use queue::Queue;

use crate::body::Chunks;
use crate::decode::{self, DecodeLimits, PushApi, PushMeta, PushView};
use crate::metrics::ProxyMetrics;

/// What a worker does with each decoded push, after counting it: the detection engine.
pub trait PushInspector: Send + Sync + 'static {
    /// Inspects one decoded push of `tenant`. Runs on a worker thread; must not block on IO.
    fn inspect(&self, tenant: &str, push: &PushView<'_>);
}

/// An inspector that only counts (used when detection is off, and in tests).
pub struct CountOnly;

impl PushInspector for CountOnly {
    fn inspect(&self, _tenant: &str, _push: &PushView<'_>) {}
}

/// One accepted push waiting for inspection.
pub struct Inspection {
    /// Tenant (`X-Scope-OrgID`, or the configured default).
    pub tenant: String,
    /// `Content-Type` as sent (shares the request head's bytes).
    pub content_type: Option<http::HeaderValue>,
    /// `Content-Encoding` as sent.
    pub content_encoding: Option<http::HeaderValue>,
    /// Which push API the request came in on.
    pub api: PushApi,
    /// The body exactly as forwarded, in the chunks it was read in (joined by the worker).
    pub body: Chunks,
    /// The push's span, so the inspection is traced as its child.
    pub span: tracing::Span,
}

enum Job {
    Inspect(Box<Inspection>),
    Stop,
}

/// Shortest time between two WARN lines about shed inspections.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Rate-limits the WARN about shed inspections: the first drop is logged at once, then at most
/// one line per interval, carrying how many were shed since the last line. Under sustained
/// overload the queue frees a slot per finished inspection, so a log line per burst of drops
/// would be a line per push; the exact count is always in `logwarden_inspect_queue_dropped_total`.
struct ShedLog {
    started: std::time::Instant,
    interval_ms: u64,
    /// Milliseconds since `started` of the last line; `u64::MAX` before the first.
    last_ms: AtomicU64,
    /// Drops not yet reported in a line.
    pending: AtomicU64,
}

impl ShedLog {
    fn new(interval: Duration) -> ShedLog {
        ShedLog {
            started: std::time::Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last_ms: AtomicU64::new(u64::MAX),
            pending: AtomicU64::new(0),
        }
    }

    /// Counts one drop; returns the number to report when a line is due now.
    fn record(&self) -> Option<u64> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.record_at(now)
    }

    fn record_at(&self, now_ms: u64) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now_ms >= last.saturating_add(self.interval_ms);
        // One caller wins the line; the others' drops are reported in it or the next one.
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.pending.swap(0, Ordering::Relaxed));
        }
        None
    }
}

/// The bounded queue plus its worker threads.
pub struct Inspector {
    queue: Arc<Queue<Job>>,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
    metrics: ProxyMetrics,
    shed_log: ShedLog,
    /// Body bytes waiting in the queue, bounded by `max_queued_bytes`.
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    lanes: Arc<Lanes>,
    /// Held only here: the governor thread ends once the inspector is gone.
    _alive: Arc<()>,
}

impl Inspector {
    /// Starts `workers` threads at `priority` (Linux), reading a queue of at most `capacity`
    /// pushes and `max_queued_bytes` body bytes. With [`Priority::forwarding_first`] there are
    /// `workers` threads in each lane ([`lanes`]), idle-class ones that inspect while they keep
    /// up or while forwarding is saturated, and niced ones that inspect when other work starves
    /// the idle class, and a governor thread that picks the lane.
    pub fn start(
        capacity: usize,
        max_queued_bytes: usize,
        workers: usize,
        priority: Priority,
        limits: DecodeLimits,
        metrics: ProxyMetrics,
        inspector: Arc<dyn PushInspector>,
    ) -> Arc<Self> {
        let workers = workers.max(1);
        let two = priority.forwarding_first && !priority.idle;
        let lanes: Vec<Lane> = if two {
            [Lane::Niced, Lane::Idle].repeat(workers)
        } else if priority.idle {
            vec![Lane::Idle; workers]
        } else {
            vec![Lane::Niced; workers]
        };
        let queue = Arc::new(Queue::new(capacity, lanes.len()));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let shared_lanes = Arc::new(Lanes::new(
            two,
            metrics.inspect_stepped_aside.clone(),
            metrics.inspect_niced.clone(),
        ));
        let handles = lanes
            .iter()
            .enumerate()
            .map(|(i, &lane)| {
                let queue = Arc::clone(&queue);
                let metrics = metrics.clone();
                let inspector = Arc::clone(&inspector);
                let queued_bytes = Arc::clone(&queued_bytes);
                let lanes = Arc::clone(&shared_lanes);
                let (name, idle) = match lane {
                    Lane::Niced => (format!("inspect-{}", i / 2), false),
                    Lane::Idle if two => (format!("inspect-idle-{}", i / 2), true),
                    Lane::Idle => (format!("inspect-{i}"), true),
                };
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || {
                        Priority { idle, ..priority }.apply_to_current_thread();
                        lanes.register(lane);
                        let consumer = Consumer {
                            queue: &queue,
                            index: i,
                            lane,
                            lanes: &lanes,
                            aside_share: priority.aside_share,
                        };
                        worker(&consumer, limits, metrics, inspector, &queued_bytes);
                    })
                    .expect("spawning an inspection thread")
            })
            .collect();
        let alive = Arc::new(());
        if two {
            let lanes = Arc::clone(&shared_lanes);
            let queue = Arc::clone(&queue);
            let metrics = metrics.clone();
            let inspector_alive = Arc::downgrade(&alive);
            // Not joined: it ends within an interval of the lanes stopping or the inspector
            // being dropped.
            std::thread::Builder::new()
                .name("inspect-govern".to_owned())
                .spawn(move || {
                    lanes::run_governor(&lanes, || {
                        inspector_alive.upgrade()?;
                        Some(QueueReading {
                            dropped: metrics.inspect_dropped.get(),
                            inspected: metrics.inspect_duration.get_sample_count(),
                            depth: queue.len(),
                        })
                    });
                })
                .expect("spawning the inspection governor");
        }
        Arc::new(Inspector {
            queue,
            workers: std::sync::Mutex::new(handles),
            metrics,
            shed_log: ShedLog::new(SHED_LOG_INTERVAL),
            queued_bytes,
            max_queued_bytes,
            lanes: shared_lanes,
            _alive: alive,
        })
    }

    /// Reads forwarding's load from `load` (the serving threads) from now on, so inspection
    /// can stand aside while forwarding is saturated ([`Priority::forwarding_first`]).
    pub fn watch_forwarding(&self, load: Arc<dyn ForwardingLoad>) {
        self.lanes.watch(load);
    }

    /// Returns whether inspection stands aside for forwarding now.
    pub fn stands_aside(&self) -> bool {
        self.lanes.aside()
    }

    /// Queues a push for inspection without waiting; a full queue sheds it and counts the drop.
    pub fn offer(&self, inspection: Inspection) {
        let n = inspection.body.len();
        let over_budget = self.queued_bytes.fetch_add(n, Ordering::Relaxed) + n > self.max_queued_bytes
            // An empty queue always takes one push, however large, so big pushes are not starved.
            && !self.queue.is_empty();
        let sent = !over_budget
            && self
                .queue
                .try_push(Job::Inspect(Box::new(inspection)))
                .is_ok();
        if !sent {
            self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            self.metrics.inspect_dropped.inc();
            if let Some(shed) = self.shed_log.record() {
                tracing::warn!(
                    shed,
                    capacity = self.queue.capacity(),
                    "inspection queue full, shedding inspection (pushes were forwarded)"
                );
            }
        }
    }

    /// Returns the number of pushes waiting.
    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    /// Drains the queue and stops the workers, waiting at most `grace`. Returns true when every
    /// queued push was inspected in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let handles: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        // Stop jobs queue behind the pushes already waiting, so those are inspected first; both
        // lanes take from the queue now.
        self.lanes.stop();
        for _ in 0..handles.len() {
            self.queue.push_always(Job::Stop);
        }
        let joined = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        });
        matches!(tokio::time::timeout_at(deadline, joined).await, Ok(Ok(())))
    }
}

/// How the inspection threads are scheduled against the serving threads (Linux; elsewhere
/// they keep normal priority).
#[derive(Debug, Clone, Copy)]
pub struct Priority {
    /// `SCHED_IDLE`: run only on a CPU no other thread wants.
    pub idle: bool,
    /// Niceness when not idle; 0 keeps normal priority.
    pub nice: i32,
    /// When not idle: two lanes of threads, idle-class ones that inspect while they keep up
    /// (paced while forwarding is saturated) and niced ones that take over when other work
    /// starves the idle class ([`lanes`]).
    pub forwarding_first: bool,
    /// With `forwarding_first`, the share of the time the idle-class threads inspect while
    /// forwarding is saturated (they pause between pushes); 1 inspects as much as the idle
    /// class lets.
    pub aside_share: f64,
}

impl Priority {
    /// Lowers the calling thread's priority, so forwarding threads win under contention. A
    /// failure is logged and the thread runs at normal priority.
    pub fn apply_to_current_thread(self) {
        #[cfg(target_os = "linux")]
        {
            if self.idle {
                use thread_priority::unix::{
                    set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
                    ThreadSchedulePolicy,
                };
                let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
                match set_thread_priority_and_policy(
                    thread_native_id(),
                    thread_priority::ThreadPriority::Min,
                    idle,
                ) {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(
                        error = ?e,
                        "could not put the inspection thread in the idle scheduling class, using inspect.nice"
                    ),
                }
            }
            if self.nice == 0 {
                return;
            }
            // On Linux, niceness is per thread: setpriority(PRIO_PROCESS, tid) changes this thread.
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(tid), self.nice) {
                tracing::warn!(error = %e, nice = self.nice, "could not lower the inspection thread's priority");
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = self;
    }
}

/// One inspection thread's place: its number on the queue and its lane.
struct Consumer<'a> {
    queue: &'a Queue<Job>,
    index: usize,
    lane: Lane,
    lanes: &'a Lanes,
    aside_share: f64,
}

impl Consumer<'_> {
    /// The next push to inspect, once this thread's lane inspects; `None` when stopping.
    fn next(&self) -> Option<Box<Inspection>> {
        self.lanes.wait_turn(self.lane);
        match self.queue.pop(self.index) {
            Job::Inspect(job) => Some(job),
            Job::Stop => None,
        }
    }
}

fn worker(
    consumer: &Consumer<'_>,
    limits: DecodeLimits,
    metrics: ProxyMetrics,
    inspector: Arc<dyn PushInspector>,
    queued_bytes: &AtomicUsize,
) {
    while let Some(job) = consumer.next() {
        metrics.inspect_depth.set(consumer.queue.len() as i64);
        let _guard =
            tracing::debug_span!(parent: &job.span, "inspect", bytes = job.body.len()).entered();
        let started = Instant::now();
        inspect_one(&job, limits, &metrics, inspector.as_ref());
        queued_bytes.fetch_sub(job.body.len(), Ordering::Relaxed);
        metrics
            .inspect_duration
            .observe(started.elapsed().as_secs_f64());
        if consumer.lanes.paced(consumer.lane) {
            std::thread::sleep(lanes::pause_after(started.elapsed(), consumer.aside_share));
        }
    }
}

/// Decodes one push, counts it and runs the inspector; a decode failure is counted and logged.
pub fn inspect_one(
    job: &Inspection,
    limits: DecodeLimits,
    metrics: &ProxyMetrics,
    inspector: &dyn PushInspector,
) {
    let meta = PushMeta {
        content_type: job.content_type.as_ref().and_then(|v| v.to_str().ok()),
        content_encoding: job.content_encoding.as_ref().and_then(|v| v.to_str().ok()),
        api: job.api,
    };
    let tenant_label = metrics.tenants.label(&job.tenant);
    let body = job.body.to_contiguous();
    let result = decode::with_decoded(&body, meta, limits, |view| {
        metrics
            .push_streams
            .with_label_values(&[tenant_label])
            .inc_by(view.streams.len() as u64);
        metrics
            .push_lines
            .with_label_values(&[tenant_label])
            .inc_by(view.entry_count() as u64);
        inspector.inspect(&job.tenant, view);
    });
    if let Err(e) = result {
        metrics.decode_errors.with_label_values(&[e.reason()]).inc();
        tracing::debug!(tenant = %job.tenant, reason = e.reason(), error = %e, "push not decoded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread, from `/proc` (field 41 of `stat`).
    #[cfg(target_os = "linux")]
    fn current_policy_and_nice() -> (u32, i32) {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // After the command: state is field 3, so field n is fields[n - 3].
        (
            fields[41 - 3].parse().unwrap(),
            fields[19 - 3].parse().unwrap(),
        )
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn inspection_threads_run_in_the_idle_class_or_niced() {
        const SCHED_IDLE: u32 = 5;
        let idle = std::thread::spawn(|| {
            Priority {
                idle: true,
                nice: 5,
                forwarding_first: true,
                aside_share: 0.1,
            }
            .apply_to_current_thread();
            current_policy_and_nice()
        })
        .join()
        .unwrap();
        assert_eq!(idle.0, SCHED_IDLE, "policy {idle:?}");
        let niced = std::thread::spawn(|| {
            Priority {
                idle: false,
                nice: 7,
                forwarding_first: true,
                aside_share: 0.1,
            }
            .apply_to_current_thread();
            current_policy_and_nice()
        })
        .join()
        .unwrap();
        assert_eq!(niced, (0, 7), "SCHED_OTHER at nice 7");
        assert_eq!(
            current_policy_and_nice().0,
            0,
            "the calling thread is untouched"
        );
    }

    /// Records which thread (its name and scheduling policy) inspected each push, slowly, and
    /// when it finished.
    #[cfg(target_os = "linux")]
    struct Recorder(std::sync::Mutex<Vec<(String, u32, std::time::Instant)>>);

    #[cfg(target_os = "linux")]
    impl PushInspector for Recorder {
        fn inspect(&self, _tenant: &str, _push: &PushView<'_>) {
            std::thread::sleep(Duration::from_millis(2));
            let name = std::thread::current().name().unwrap_or("").to_owned();
            self.0.lock().unwrap().push((
                name,
                current_policy_and_nice().0,
                std::time::Instant::now(),
            ));
        }
    }

    /// Two serving threads that report being busy all the time while `busy` is set.
    struct Load {
        busy: std::sync::atomic::AtomicBool,
        total: std::sync::Mutex<(std::time::Instant, Duration)>,
    }

    impl ForwardingLoad for Load {
        fn runnable(&self) -> Vec<Duration> {
            let mut t = self.total.lock().unwrap();
            let now = std::time::Instant::now();
            if self.busy.load(Ordering::Relaxed) {
                let since = now - t.0;
                t.1 += since;
            }
            t.0 = now;
            vec![t.1, t.1]
        }
    }

    fn push() -> Inspection {
        Inspection {
            tenant: "t".into(),
            content_type: Some(http::HeaderValue::from_static("application/json")),
            content_encoding: None,
            api: PushApi::V1,
            body: std::iter::once(bytes::Bytes::from_static(
                br#"{"streams":[{"stream":{"job":"x"},"values":[["1","line"]]}]}"#,
            ))
            .collect(),
            span: tracing::Span::none(),
        }
    }

    /// Offers a push every `every` until at least four have been inspected since the call, and
    /// returns who inspected them.
    #[cfg(target_os = "linux")]
    async fn inspected(
        inspector: &Inspector,
        recorder: &Recorder,
        every: Duration,
    ) -> Vec<(String, u32, std::time::Instant)> {
        recorder.0.lock().unwrap().clear();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while recorder.0.lock().unwrap().len() < 4 {
            assert!(std::time::Instant::now() < until, "nothing inspected");
            inspector.offer(push());
            tokio::time::sleep(every).await;
        }
        recorder.0.lock().unwrap().drain(..).collect()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inspection_runs_idle_paced_for_a_flood_and_niced_when_other_work_starves_it() {
        const SCHED_IDLE: u32 = 5;
        let registry = prometheus::Registry::new();
        let metrics = ProxyMetrics::register(&registry, 10);
        let recorder = Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
        let inspector = Inspector::start(
            2,
            usize::MAX,
            1,
            Priority {
                idle: false,
                nice: 3,
                forwarding_first: true,
                aside_share: 0.1,
            },
            DecodeLimits {
                max_decompressed_bytes: 1 << 20,
            },
            metrics.clone(),
            Arc::clone(&recorder) as Arc<dyn PushInspector>,
        );
        let load = Arc::new(Load {
            busy: std::sync::atomic::AtomicBool::new(false),
            total: std::sync::Mutex::new((std::time::Instant::now(), Duration::ZERO)),
        });
        inspector.watch_forwarding(Arc::clone(&load) as Arc<dyn ForwardingLoad>);
        // Two looks of the governor: the first only takes the load's starting point.
        tokio::time::sleep(3 * lanes::INTERVAL).await;
        let by = |seen: &[(String, u32, std::time::Instant)], thread: &str, policy: u32| {
            seen.iter()
                .filter(|(name, p, _)| name == thread && *p == policy)
                .count()
        };
        // Calm: the idle-class thread inspects (a push never waits for it to yield a core).
        let calm = inspected(&inspector, &recorder, Duration::from_millis(20)).await;
        assert_eq!(
            by(&calm, "inspect-idle-0", SCHED_IDLE),
            calm.len(),
            "{calm:?}"
        );
        assert_eq!(metrics.inspect_niced.get(), 0);

        // A flood: more pushes than a 2 ms inspection takes, into a queue of two, with the
        // serving threads busy throughout.
        load.busy.store(true, Ordering::Relaxed);
        let flood_until = std::time::Instant::now() + Duration::from_secs(10);
        while !inspector.stands_aside() {
            assert!(std::time::Instant::now() < flood_until, "never stood aside");
            inspector.offer(push());
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        assert_eq!(metrics.inspect_stepped_aside.get(), 1);
        assert!(metrics.inspect_dropped.get() > 0);
        let during = inspected(&inspector, &recorder, Duration::from_micros(200)).await;
        // One push may have gone to the niced thread: a flood's first interval, with the
        // serving threads not yet counted saturated, shows as drops with CPU to spare.
        let idle: Vec<_> = during
            .iter()
            .filter(|(name, policy, _)| name == "inspect-idle-0" && *policy == SCHED_IDLE)
            .collect();
        assert!(
            idle.len() + 1 >= during.len() && idle.len() >= 2,
            "{during:?}"
        );
        // ... paced: after each 2 ms inspection it pauses 18 ms (a tenth of the time), though
        // pushes keep coming every 0.2 ms.
        for pair in idle.windows(2) {
            assert!(
                pair[1].2 - pair[0].2 >= Duration::from_millis(15),
                "inspections while aside {:?} apart",
                pair[1].2 - pair[0].2
            );
        }

        // The flood ends: forwarding idle, nothing shed; calm again, unpaced.
        load.busy.store(false, Ordering::Relaxed);
        let calm_until = std::time::Instant::now() + Duration::from_secs(10);
        while inspector.stands_aside() {
            assert!(std::time::Instant::now() < calm_until, "never came back");
            inspector.offer(push());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.inspect_stepped_aside.get(), 0);
        let after = inspected(&inspector, &recorder, Duration::from_millis(20)).await;
        assert_eq!(
            by(&after, "inspect-idle-0", SCHED_IDLE),
            after.len(),
            "{after:?}"
        );

        // Other work takes every core (forwarding idle): the idle-class thread is starved,
        // pushes wait, and the niced thread takes over while that work goes on.
        let spinning = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let spinners: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
            .map(|_| {
                let spinning = Arc::clone(&spinning);
                std::thread::spawn(move || {
                    while spinning.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let starved_until = std::time::Instant::now() + Duration::from_secs(20);
        while metrics.inspect_niced.get() == 0 {
            assert!(std::time::Instant::now() < starved_until, "never niced");
            inspector.offer(push());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let starved = inspected(&inspector, &recorder, Duration::from_millis(20)).await;
        spinning.store(false, Ordering::Relaxed);
        for s in spinners {
            s.join().unwrap();
        }
        // One push may still go to the idle-class thread that had taken it before the switch.
        let niced = by(&starved, "inspect-0", 0);
        assert!(
            niced + 1 >= starved.len() && niced > 0,
            "inspected while other work ran: {starved:?}"
        );
        assert!(
            inspector.shutdown(Duration::from_secs(5)).await,
            "both lanes stop"
        );
    }

    #[test]
    fn shed_warnings_are_one_per_interval_and_carry_the_count() {
        let log = ShedLog::new(Duration::from_secs(10));
        assert_eq!(
            log.record_at(5),
            Some(1),
            "the first drop is reported at once"
        );
        for t in [6, 100, 9_000] {
            assert_eq!(log.record_at(t), None);
        }
        assert_eq!(
            log.record_at(10_005),
            Some(4),
            "three silent drops and this one"
        );
        assert_eq!(log.record_at(10_006), None);
        assert_eq!(log.record_at(25_000), Some(2));
    }
}
