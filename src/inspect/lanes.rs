//! Which inspection threads inspect: idle-class ones while they keep up, niced ones when other
//! work on the host starves them, and idle-class ones on a sample while a flood of pushes
//! saturates forwarding.
//!
//! There are two lanes of inspection threads on the one queue: threads in Linux's idle
//! scheduling class (`SCHED_IDLE`), which run only on CPU time no other thread wants, and as
//! many niced threads (`inspect.nice`). One lane inspects at a time; the other waits, parked.
//! A governor thread looks every [`INTERVAL`] at the queue (pushes dropped from a full queue,
//! how long the pushes waiting represent) and at forwarding's load (the share of the interval
//! each serving thread was runnable, running or waiting for a core, from the kernel's
//! per-thread scheduler statistics), and picks one of three [`Mode`]s:
//!
//! - [`Mode::Calm`], the idle lane, as long as it keeps up. A push that wakes a serving thread
//!   on the core an inspection runs on then never waits for the inspection to give the core
//!   up: the idle class is preempted at once. (Not so a thread already waiting for that core
//!   when the inspection starts: Linux's EEVDF scheduler can run the inspection ahead of it
//!   until the next tick; `queue.rs` keeps inspections from starting at the moment that makes
//!   this likely.) Measured at the engine's target rate (2 M
//!   lines/s, every push inspected) on two cores, 64 KiB pushes at concurrency 1: p99 1.06x
//!   nginx's with the idle lane, 1.35x with the niced one, 1.03x with no inspection at all.
//! - [`Mode::Contended`], the niced lane, when the idle lane falls behind (pushes shed, or
//!   waiting longer than [`LAG_BEHIND`]) while forwarding has CPU to spare: the contention
//!   comes from other work on the host (or from the attack logwarden should report), and
//!   inspection keeps a share of its own. Every [`RETRY_CALM`] without a backlog the idle lane
//!   is tried again. One client sending as fast as it is answered also lands here: one serving
//!   thread has nothing to do, and measured, the idle class slowed forwarding there (0.77x the
//!   requests/s at concurrency 1: with the inspection core counted as idle, the scheduler
//!   spread each request's hand-offs over both cores instead of keeping them on one).
//! - [`Mode::Aside`], the idle lane, paced, while inspection sheds and every serving thread was
//!   runnable at least [`RUNNABLE_HIGH`] of the interval (forwarding itself saturates the host):
//!   forwarding keeps its rate, and the idle-class threads pause after each push so that they
//!   inspect at most `inspect.aside_share` of the time ([`pause_after`]). The idle class alone
//!   still took more than the host had to spare (it runs whenever a core is idle for a moment,
//!   and each such run is preempted, with its cache, when forwarding wants the core back):
//!   measured at 64 KiB and concurrency 8 on two cores, 5–6 µs of inspection per forwarded push
//!   against the 3.6–7 µs a plain proxy leaves idle; paced to a tenth, 0.8–1.3 µs. Detection goes
//!   on over a sample of the flood; the rest is shed and counted. It ends, calm, when drops
//!   stop or a serving thread is runnable less than [`RUNNABLE_LOW`] of the time.
//!
//! Runnable, not merely running: on cores shared with the clients and Loki, a saturated
//! serving thread spends as much time waiting for a core as on it, and how the two split
//! depends on the host, while their sum does not.
//!
//! Two lanes and not one thread that changes its class: an unprivileged process may enter the
//! idle class but not leave it (nor lower a niceness it raised), so a thread switched back and
//! forth works only as root. And a governor thread of its own, at normal priority: a starved
//! idle-class thread could not notice that it is starved.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

/// The serving threads' load, as the inspection lanes read it.
pub trait ForwardingLoad: Send + Sync {
    /// How long each serving thread has been runnable (running, or waiting for a core) since
    /// it started; empty when that cannot be read.
    fn runnable(&self) -> Vec<Duration>;
}

/// How often the governor looks at the queue and at forwarding's load.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
/// Serving threads all runnable this share of an interval, while inspection sheds, are
/// saturated. Measured on two cores shared with the load generator and the sink: 80–95 % at
/// saturation with 64 KiB pushes at concurrency 8, with inspection niced or aside; at
/// concurrency 1 one serving thread has nothing to do (0 %).
pub(crate) const RUNNABLE_HIGH: f64 = 0.6;
/// Below this share (or without drops) inspection stops standing aside.
pub(crate) const RUNNABLE_LOW: f64 = 0.3;
/// Pushes waiting for inspection that represent this much time (at the rate they arrive) mean
/// the inspecting lane has fallen behind.
pub(crate) const LAG_BEHIND: Duration = Duration::from_millis(500);
/// How long the niced lane inspects before the idle lane is tried again (when nothing is shed
/// and the queue holds less than [`LAG_CALM`]).
pub(crate) const RETRY_CALM: Duration = Duration::from_secs(10);
/// A backlog this short counts as none, for going back to the idle lane.
pub(crate) const LAG_CALM: Duration = Duration::from_millis(50);
/// Longest pause between two paced inspections, so a very large push does not keep an
/// inspection thread asleep for long (shutdown waits for it).
pub(crate) const MAX_PAUSE: Duration = INTERVAL;

/// The two lanes of inspection threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Niced threads: inspect while the idle class is starved by other work.
    Niced,
    /// Idle-class threads: inspect otherwise.
    Idle,
}

/// Which lane inspects, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The idle lane, unpaced: it keeps up.
    Calm = 0,
    /// The niced lane: the idle lane fell behind while forwarding had CPU to spare.
    Contended = 1,
    /// The idle lane, paced: forwarding is saturated and inspection sheds.
    Aside = 2,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Contended,
            2 => Mode::Aside,
            _ => Mode::Calm,
        }
    }

    /// The lane that inspects in this mode.
    pub(crate) fn lane(self) -> Lane {
        match self {
            Mode::Contended => Lane::Niced,
            Mode::Calm | Mode::Aside => Lane::Idle,
        }
    }
}

/// What the governor saw over the last interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look {
    /// The least runnable serving thread's share of the interval (0 when unknown).
    pub least_runnable: f64,
    /// Pushes were dropped from a full queue.
    pub shedding: bool,
    /// How long the pushes waiting represent, at the rate they arrived.
    pub backlog: Duration,
    /// How long the current mode has lasted.
    pub in_mode: Duration,
}

/// The next mode, given the current one and the last interval's [`Look`].
pub(crate) fn next_mode(mode: Mode, look: Look) -> Mode {
    let saturated = look.least_runnable
        >= if mode == Mode::Aside {
            RUNNABLE_LOW
        } else {
            RUNNABLE_HIGH
        };
    if look.shedding && saturated {
        return Mode::Aside;
    }
    let behind = look.shedding || look.backlog >= LAG_BEHIND;
    match mode {
        // The end of a flood: its drops and its backlog are the flood's, not other work's.
        Mode::Aside => Mode::Calm,
        Mode::Calm if behind => Mode::Contended,
        Mode::Calm => Mode::Calm,
        Mode::Contended
            if !look.shedding && look.backlog < LAG_CALM && look.in_mode >= RETRY_CALM =>
        {
            Mode::Calm
        }
        Mode::Contended => Mode::Contended,
    }
}

/// How long an inspection thread pauses after a push that took `inspected` to inspect, so that
/// it inspects at most `share` of the time (0 < `share` <= 1), and never for longer than
/// [`MAX_PAUSE`].
pub(crate) fn pause_after(inspected: Duration, share: f64) -> Duration {
    if share >= 1.0 || share <= 0.0 {
        return Duration::ZERO;
    }
    inspected.mul_f64((1.0 - share) / share).min(MAX_PAUSE)
}

/// The queue's counters, as the governor reads them each interval.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QueueReading {
    /// Pushes dropped from a full queue, in all.
    pub dropped: u64,
    /// Pushes inspected, in all.
    pub inspected: u64,
    /// Pushes waiting now.
    pub depth: usize,
}

/// How long `now.depth` waiting pushes represent, given the reading an `elapsed` ago: the depth
/// over the rate pushes arrived at (dropped, inspected or still waiting). When none arrived, a
/// queue that holds pushes and inspected none is stuck (the lane is starved): [`Duration::MAX`].
pub(crate) fn backlog(before: QueueReading, now: QueueReading, elapsed: Duration) -> Duration {
    if now.depth == 0 {
        return Duration::ZERO;
    }
    let arrived = (now.dropped.saturating_sub(before.dropped)
        + now.inspected.saturating_sub(before.inspected)) as f64
        + now.depth as f64
        - before.depth as f64;
    if arrived <= 0.0 {
        return if now.inspected > before.inspected {
            Duration::ZERO
        } else {
            Duration::MAX
        };
    }
    Duration::try_from_secs_f64(now.depth as f64 * elapsed.as_secs_f64() / arrived)
        .unwrap_or(Duration::MAX)
}

struct Last {
    at: Instant,
    runnable: Vec<Duration>,
    queue: QueueReading,
    mode_since: Instant,
}

/// Which lane inspects, and the threads of both.
pub(crate) struct Lanes {
    /// False: one lane only (idle or niced throughout), nothing ever changes.
    two: bool,
    mode: AtomicU8,
    stopping: AtomicBool,
    threads: Mutex<Vec<(Lane, Thread)>>,
    last: Mutex<Last>,
    load: Mutex<Option<Arc<dyn ForwardingLoad>>>,
    aside_gauge: IntGauge,
    niced_gauge: IntGauge,
}

impl Lanes {
    /// Lanes with both kinds of threads when `two`, else a single lane; the gauges show whether
    /// inspection stands aside and whether the niced lane inspects.
    pub(crate) fn new(two: bool, aside_gauge: IntGauge, niced_gauge: IntGauge) -> Lanes {
        aside_gauge.set(0);
        niced_gauge.set(0);
        let now = Instant::now();
        Lanes {
            two,
            mode: AtomicU8::new(Mode::Calm as u8),
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            last: Mutex::new(Last {
                at: now,
                runnable: Vec::new(),
                queue: QueueReading::default(),
                mode_since: now,
            }),
            load: Mutex::new(None),
            aside_gauge,
            niced_gauge,
        }
    }

    /// Records the calling thread as one of `lane`'s, so a hand-over can wake it.
    pub(crate) fn register(&self, lane: Lane) {
        self.threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((lane, std::thread::current()));
    }

    /// Reads forwarding's load from `load` from now on (the serving threads, once started).
    pub(crate) fn watch(&self, load: Arc<dyn ForwardingLoad>) {
        *self
            .load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(load);
    }

    /// The current mode.
    pub(crate) fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Returns whether inspection stands aside now (the idle lane inspects, paced).
    pub(crate) fn aside(&self) -> bool {
        self.mode() == Mode::Aside
    }

    /// Returns whether the governor stops (shutdown).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Returns whether `lane`'s threads pace their inspections now (see [`pause_after`]): while
    /// inspection stands aside for forwarding, and not while stopping (the queue is drained at
    /// full speed).
    pub(crate) fn paced(&self, lane: Lane) -> bool {
        self.two && lane == Lane::Idle && self.aside() && !self.stopping()
    }

    fn inspects(&self, lane: Lane) -> bool {
        !self.two || self.stopping() || self.mode().lane() == lane
    }

    /// Waits, parked, while the other lane inspects.
    pub(crate) fn wait_turn(&self, lane: Lane) {
        while !self.inspects(lane) {
            // A hand-over sets the mode, then unparks: a token left before this park makes it
            // return at once, and the loop looks again.
            std::thread::park();
        }
    }

    /// Lets both lanes take from the queue (shutdown: stop markers follow the waiting pushes).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake(|_| true);
    }

    fn wake(&self, which: impl Fn(Lane) -> bool) {
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (lane, thread) in threads.iter() {
            if which(*lane) {
                thread.unpark();
            }
        }
    }

    /// Looks at forwarding's load and at the queue (`queue`, read now), and changes the mode
    /// when [`next_mode`] says so. Called by the governor thread every [`INTERVAL`].
    pub(crate) fn govern(&self, queue: QueueReading) {
        if !self.two {
            return;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.duration_since(last.at);
        if elapsed.is_zero() {
            return;
        }
        let load = self
            .load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let runnable = load.map(|l| l.runnable()).unwrap_or_default();
        // The first look (or a changed set of threads, or a load that cannot be read) has
        // nothing to compare with: not runnable.
        let least_runnable = if runnable.is_empty() || runnable.len() != last.runnable.len() {
            0.0
        } else {
            runnable
                .iter()
                .zip(&last.runnable)
                .map(|(now, before)| {
                    now.saturating_sub(*before).as_secs_f64() / elapsed.as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let look = Look {
            least_runnable,
            shedding: queue.dropped > last.queue.dropped,
            backlog: backlog(last.queue, queue, elapsed),
            in_mode: now.duration_since(last.mode_since),
        };
        last.at = now;
        last.runnable = runnable;
        last.queue = queue;
        let was = self.mode();
        let next = next_mode(was, look);
        if next == was {
            return;
        }
        last.mode_since = now;
        drop(last);
        self.mode.store(next as u8, Ordering::Release);
        self.aside_gauge.set(i64::from(next == Mode::Aside));
        self.niced_gauge.set(i64::from(next == Mode::Contended));
        let least_runnable_serving_thread = format!("{:.0} %", 100.0 * look.least_runnable);
        let backlog = if look.backlog == Duration::MAX {
            "stuck".to_owned()
        } else {
            format!("{} ms", look.backlog.as_millis())
        };
        match next {
            Mode::Aside => tracing::warn!(
                least_runnable_serving_thread,
                "forwarding is saturated and inspection is shedding: inspection runs only on CPU time forwarding leaves, on a sample of the pushes (inspect.aside_share), until it is not"
            ),
            Mode::Contended => tracing::info!(
                least_runnable_serving_thread,
                shedding = look.shedding,
                backlog,
                "inspection fell behind on the CPU time nothing else wants while forwarding has CPU to spare: the niced inspection threads take over"
            ),
            Mode::Calm => tracing::info!(
                least_runnable_serving_thread,
                backlog,
                "inspection runs on the CPU time nothing else wants again"
            ),
        }
        self.wake(|lane| lane == next.lane());
    }
}

/// Runs the governor on the calling thread until `lanes` stop or `read` has nothing to read
/// (the inspector is gone): every [`INTERVAL`], `read` the queue's counters and
/// [`Lanes::govern`].
pub(crate) fn run_governor(lanes: &Lanes, read: impl Fn() -> Option<QueueReading>) {
    while !lanes.stopping() {
        std::thread::park_timeout(INTERVAL);
        if lanes.stopping() {
            break;
        }
        let Some(reading) = read() else {
            break;
        };
        lanes.govern(reading);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(least_runnable: f64, shedding: bool, backlog_ms: u64, in_mode_s: u64) -> Look {
        Look {
            least_runnable,
            shedding,
            backlog: Duration::from_millis(backlog_ms),
            in_mode: Duration::from_secs(in_mode_s),
        }
    }

    #[test]
    fn the_idle_lane_inspects_unless_starved_by_other_work_and_paces_only_for_a_flood() {
        use Mode::{Aside, Calm, Contended};
        // Calm: stays while it keeps up, whatever forwarding does.
        assert_eq!(next_mode(Calm, look(0.9, false, 0, 0)), Calm);
        assert_eq!(next_mode(Calm, look(0.1, false, 100, 0)), Calm);
        // Behind (a backlog, or drops) while forwarding has CPU to spare: the niced lane.
        assert_eq!(next_mode(Calm, look(0.1, false, 600, 0)), Contended);
        assert_eq!(next_mode(Calm, look(0.1, true, 0, 0)), Contended);
        // One client flooding: one serving thread idle, so not saturated.
        assert_eq!(next_mode(Calm, look(0.0, true, 0, 0)), Contended);
        // Drops while every serving thread is saturated: aside, from any mode.
        for mode in [Calm, Contended, Aside] {
            assert_eq!(
                next_mode(mode, look(RUNNABLE_HIGH, true, 0, 0)),
                Aside,
                "{mode:?}"
            );
        }
        // A backlog alone with forwarding saturated is not a flood to stand aside for.
        assert_eq!(next_mode(Calm, look(0.9, false, 600, 0)), Contended);
        // Aside: stays while drops go on and forwarding is still busy (hysteresis) ...
        assert_eq!(next_mode(Aside, look(0.45, true, 0, 0)), Aside);
        assert_eq!(next_mode(Aside, look(RUNNABLE_LOW, true, 0, 0)), Aside);
        // ... and ends when either does, calm: the drops and the backlog of the interval a
        // flood ends in are the flood's (other work starving it shows in the next ones).
        assert_eq!(next_mode(Aside, look(0.9, false, 0, 0)), Calm);
        assert_eq!(next_mode(Aside, look(0.1, true, 0, 0)), Calm);
        assert_eq!(next_mode(Aside, look(0.9, false, 600, 0)), Calm);
        // Contended: the idle lane is tried again after a while without a backlog.
        assert_eq!(next_mode(Contended, look(0.1, false, 0, 1)), Contended);
        assert_eq!(next_mode(Contended, look(0.1, false, 0, 10)), Calm);
        assert_eq!(next_mode(Contended, look(0.1, false, 100, 10)), Contended);
        assert_eq!(next_mode(Contended, look(0.1, true, 0, 10)), Contended);
    }

    #[test]
    fn the_backlog_is_the_waiting_pushes_at_the_rate_they_arrive() {
        let r = |dropped, inspected, depth| QueueReading {
            dropped,
            inspected,
            depth,
        };
        let s = Duration::from_secs(1);
        // 100 arrived in a second (90 inspected, 10 more waiting); 20 waiting = 0.2 s.
        assert_eq!(
            backlog(r(0, 0, 10), r(0, 90, 20), s),
            Duration::from_millis(200)
        );
        // Drops count as arrivals.
        assert_eq!(
            backlog(r(0, 0, 0), r(50, 0, 50), s),
            Duration::from_millis(500)
        );
        // Empty: none.
        assert_eq!(backlog(r(0, 0, 5), r(0, 5, 0), s), Duration::ZERO);
        // Nothing arrived: draining is fine, stuck is not.
        assert_eq!(backlog(r(0, 0, 10), r(0, 5, 5), s), Duration::ZERO);
        assert_eq!(backlog(r(0, 0, 10), r(0, 0, 10), s), Duration::MAX);
    }

    #[test]
    fn a_paced_thread_inspects_at_most_its_share_of_the_time() {
        let ms = Duration::from_millis;
        // A tenth: 2 ms of inspection, then 18 ms of pause.
        assert_eq!(pause_after(ms(2), 0.1), ms(18));
        assert_eq!(pause_after(ms(2), 0.5), ms(2));
        // The whole time, or a nonsensical share: no pause.
        assert_eq!(pause_after(ms(2), 1.0), Duration::ZERO);
        assert_eq!(pause_after(ms(2), 0.0), Duration::ZERO);
        // A very large push: the pause is capped, so shutdown never waits long.
        assert_eq!(pause_after(ms(50), 0.1), MAX_PAUSE);
    }

    fn lanes(two: bool) -> (Lanes, IntGauge, IntGauge) {
        let registry = prometheus::Registry::new();
        let aside = crate::metrics::gauge(&registry, "aside", "test");
        let niced = crate::metrics::gauge(&registry, "niced", "test");
        (Lanes::new(two, aside.clone(), niced.clone()), aside, niced)
    }

    #[test]
    fn only_the_idle_lane_paces_and_only_while_aside() {
        let (lanes, _, _) = lanes(true);
        assert!(!lanes.paced(Lane::Idle) && !lanes.paced(Lane::Niced));
        lanes.mode.store(Mode::Aside as u8, Ordering::Release);
        assert!(lanes.paced(Lane::Idle) && !lanes.paced(Lane::Niced));
        // Stopping: the queue is drained at full speed.
        lanes.stop();
        assert!(!lanes.paced(Lane::Idle));
        // A single idle lane (inspect.idle_priority) never paces.
        let (single, _, _) = self::lanes(false);
        single.mode.store(Mode::Aside as u8, Ordering::Release);
        assert!(!single.paced(Lane::Idle));
    }

    #[test]
    fn the_governor_ends_when_the_lanes_stop_or_the_inspector_is_gone() {
        let (lanes, _, _) = lanes(true);
        // Nothing to read (the inspector was dropped): it returns after one interval.
        let started = Instant::now();
        run_governor(&lanes, || None);
        assert!(started.elapsed() < 20 * INTERVAL);
        // Stopped: it returns without reading.
        lanes.stop();
        run_governor(&lanes, || panic!("read after the lanes stopped"));
    }

    struct Fixed(Mutex<Vec<Duration>>);

    impl ForwardingLoad for Fixed {
        fn runnable(&self) -> Vec<Duration> {
            self.0.lock().unwrap().clone()
        }
    }

    /// Waits an interval with the serving threads runnable throughout where `busy` says so.
    fn interval(load: &Fixed, busy: [bool; 2]) {
        let start = Instant::now();
        std::thread::sleep(INTERVAL);
        for (total, busy) in load.0.lock().unwrap().iter_mut().zip(busy) {
            if busy {
                *total += start.elapsed();
            }
        }
    }

    #[test]
    fn the_lanes_hand_over_on_the_serving_threads_load_and_the_queue() {
        let (lanes, aside, niced) = lanes(true);
        let load = Arc::new(Fixed(Mutex::new(vec![Duration::ZERO; 2])));
        let q = |dropped, inspected, depth| QueueReading {
            dropped,
            inspected,
            depth,
        };
        assert_eq!(lanes.mode(), Mode::Calm);
        assert!(lanes.inspects(Lane::Idle) && !lanes.inspects(Lane::Niced));
        lanes.govern(q(0, 0, 0));
        lanes.watch(Arc::clone(&load) as Arc<dyn ForwardingLoad>);
        // First look at the load: takes the serving threads' totals as its starting point.
        std::thread::sleep(INTERVAL);
        lanes.govern(q(0, 0, 0));
        assert_eq!(lanes.mode(), Mode::Calm);
        // Both serving threads runnable throughout, and drops: aside, paced.
        interval(&load, [true, true]);
        lanes.govern(q(5, 10, 8));
        assert_eq!(lanes.mode(), Mode::Aside);
        assert_eq!((aside.get(), niced.get()), (1, 0));
        assert!(lanes.paced(Lane::Idle));
        // Busy still, but no more drops and the queue drains: calm again.
        interval(&load, [true, true]);
        lanes.govern(q(5, 20, 0));
        assert_eq!(lanes.mode(), Mode::Calm);
        assert_eq!((aside.get(), niced.get()), (0, 0));
        // One serving thread idle (forwarding has CPU to spare) and the queue stuck: the idle
        // lane is starved by other work, and the niced lane takes over.
        interval(&load, [true, false]);
        lanes.govern(q(5, 20, 3));
        interval(&load, [true, false]);
        lanes.govern(q(5, 20, 3));
        assert_eq!(lanes.mode(), Mode::Contended);
        assert_eq!((aside.get(), niced.get()), (0, 1));
        assert!(lanes.inspects(Lane::Niced) && !lanes.inspects(Lane::Idle));
        // Shutdown lets both lanes take from the queue.
        lanes.stop();
        assert!(lanes.inspects(Lane::Idle) && lanes.inspects(Lane::Niced));
    }

    #[test]
    fn a_single_lane_never_hands_over() {
        let (lanes, _, _) = lanes(false);
        let load = Arc::new(Fixed(Mutex::new(vec![Duration::ZERO; 2])));
        lanes.watch(Arc::clone(&load) as Arc<dyn ForwardingLoad>);
        std::thread::sleep(INTERVAL);
        lanes.govern(QueueReading::default());
        interval(&load, [true, true]);
        lanes.govern(QueueReading {
            dropped: 10,
            inspected: 0,
            depth: 8,
        });
        assert_eq!(lanes.mode(), Mode::Calm);
        assert!(lanes.inspects(Lane::Niced) && lanes.inspects(Lane::Idle));
    }
}
