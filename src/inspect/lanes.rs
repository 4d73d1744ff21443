//! Forwarding first: inspection steps aside while a flood of pushes saturates forwarding.
//!
//! Inspection normally runs niced (`inspect.nice`): under CPU contention forwarding gets the
//! larger share, and inspection keeps a share of its own, so a host kept busy by other work (or
//! by the attack logwarden should report) still has its logs inspected. When the contention
//! comes from forwarding itself (pushes arrive faster than this host can both forward and
//! inspect them) that share is taken from forwarding: a niced thread keeps its core for a
//! scheduler slice while a serving thread waits, and its decoding evicts the serving threads'
//! caches. The rule for that case is that forwarding keeps its rate and inspection
//! sheds, counted.
//!
//! So there are two lanes of inspection threads on the one queue: niced threads, and as many
//! threads in Linux's idle scheduling class (`SCHED_IDLE`), which run only on CPU time no other
//! thread wants. One lane inspects at a time; the other waits, parked. Every
//! [`INTERVAL`] the lane that inspects looks at two things: whether inspection is shedding
//! (pushes were dropped from a full queue since the last look) and how much CPU the serving
//! thread that wanted least wanted: the share of the interval it was runnable, running or
//! waiting for a core (the kernel's per-thread scheduler statistics). When both say forwarding
//! is saturated (shedding, and every serving thread runnable at least [`BUSY_HIGH`] of the
//! time), the idle lane takes over; it hands back once either is no longer true (no drops, or a
//! serving thread runnable less than [`BUSY_LOW`] of the time). Runnable, not merely running:
//! on cores shared with the clients and Loki, a saturated serving thread spends as much time
//! waiting for a core as on it, and how the two split depends on the host (a tenth of the
//! interval either way between two hosts of the same kind), while their sum does not.
//!
//! While it stands aside, inspection also paces itself: after each push the idle-class thread
//! pauses so that it inspects at most `inspect.aside_share` of the time ([`pause_after`]).
//! The idle class alone still took more CPU at saturation than the host had to spare (it runs
//! whenever a core is idle for a moment, between one wake-up and the next, and each such run
//! is preempted, with its cache, when forwarding wants the core back): measured at 64 KiB and
//! concurrency 8 on two cores, 5–6 µs of inspection per forwarded push against the 3.6–7 µs a
//! plain proxy leaves idle, and requests/s stayed under nginx's; paced to a tenth, 0.8 µs.
//! Detection goes on over a sample of the flood; the rest is shed and counted.
//!
//! A busy host with an ordinary push rate never steps aside: its serving threads are mostly
//! idle. Nor do a few clients that keep only some serving threads busy (one Promtail, one
//! connection): forwarding then has threads to spare, a niced inspection thread on another
//! core does not slow it, and measured, the idle class did (64 KiB and 1 MiB pushes at
//! concurrency 1 on two cores, 0.77x the requests/s: with the inspection core counted as idle,
//! the scheduler spread the request's hand-offs over both cores instead of keeping them on
//! one).
//!
//! Two lanes and not one thread that changes its class: an unprivileged process may enter the
//! idle class but not leave it (nor lower a niceness it raised), so a thread switched back and
//! forth works only as root.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

/// The serving threads' load, as the inspection lanes read it.
pub trait ForwardingLoad: Send + Sync {
    /// How long each serving thread has been runnable (running, or waiting for a core) since
    /// it started; empty when that cannot be read.
    fn busy(&self) -> Vec<Duration>;
}

/// How often the inspecting lane looks at forwarding's load and at drops.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
/// Serving threads all runnable this share of an interval, while inspection sheds, are
/// saturated. Measured on two cores shared with the load generator and the sink: 80–95 % at
/// saturation with 64 KiB pushes at concurrency 8, with inspection niced or aside; at
/// concurrency 1 one serving thread has nothing to do (0 %).
pub(crate) const BUSY_HIGH: f64 = 0.6;
/// Below this share (or without drops) inspection takes its niced lane back.
pub(crate) const BUSY_LOW: f64 = 0.3;
/// Longest pause between two paced inspections, so a very large push does not keep an
/// inspection thread asleep for long (shutdown waits for it).
pub(crate) const MAX_PAUSE: Duration = INTERVAL;

/// How long an inspection thread pauses after a push that took `inspected` to inspect, so that
/// it inspects at most `share` of the time (0 < `share` <= 1), and never for longer than
/// [`MAX_PAUSE`].
pub(crate) fn pause_after(inspected: Duration, share: f64) -> Duration {
    if share >= 1.0 || share <= 0.0 {
        return Duration::ZERO;
    }
    inspected.mul_f64((1.0 - share) / share).min(MAX_PAUSE)
}

/// The two lanes of inspection threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Niced threads: inspect unless forwarding is saturated.
    Niced,
    /// Idle-class threads: inspect while forwarding is saturated.
    Idle,
}

/// Whether inspection should stand aside (the idle lane inspects) for the next interval, given
/// whether it does now, the least busy serving thread's share of the last interval and whether
/// pushes were shed in it.
pub(crate) fn stand_aside(aside: bool, least_busy: f64, shedding: bool) -> bool {
    shedding && least_busy >= if aside { BUSY_LOW } else { BUSY_HIGH }
}

struct Look {
    at: Instant,
    busy: Vec<Duration>,
    dropped: u64,
}

/// Which lane inspects, and the threads of both.
pub(crate) struct Lanes {
    /// False: one lane only (idle or niced throughout), nothing ever changes.
    two: bool,
    aside: AtomicBool,
    stopping: AtomicBool,
    threads: Mutex<Vec<(Lane, Thread)>>,
    last: Mutex<Look>,
    load: Mutex<Option<Arc<dyn ForwardingLoad>>>,
    gauge: IntGauge,
}

impl Lanes {
    /// Lanes with both kinds of threads when `two`, else a single lane; `gauge` shows whether
    /// inspection stands aside.
    pub(crate) fn new(two: bool, gauge: IntGauge) -> Lanes {
        gauge.set(0);
        Lanes {
            two,
            aside: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            last: Mutex::new(Look {
                at: Instant::now(),
                busy: Vec::new(),
                dropped: 0,
            }),
            load: Mutex::new(None),
            gauge,
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

    /// Returns whether inspection stands aside now (the idle lane inspects).
    pub(crate) fn aside(&self) -> bool {
        self.aside.load(Ordering::Acquire)
    }

    /// Returns whether `lane`'s threads pace their inspections now (see [`pause_after`]): the
    /// idle lane, while inspection stands aside for forwarding, and not while stopping (the
    /// queue is drained at full speed).
    pub(crate) fn paced(&self, lane: Lane) -> bool {
        self.two && lane == Lane::Idle && self.aside() && !self.stopping.load(Ordering::Acquire)
    }

    fn inspects(&self, lane: Lane) -> bool {
        !self.two || self.stopping.load(Ordering::Acquire) || {
            let aside = self.aside();
            (lane == Lane::Idle) == aside
        }
    }

    /// Waits, parked, while the other lane inspects.
    pub(crate) fn wait_turn(&self, lane: Lane) {
        while !self.inspects(lane) {
            // A hand-over sets the flag, then unparks: a token left before this park makes it
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

    /// Looks at forwarding's load and at the drops (`dropped`, the total so far) at most once
    /// per [`INTERVAL`], and hands inspection to the other lane when [`stand_aside`] says so.
    /// Called by the inspecting lane after each push; cheap when the interval has not passed.
    pub(crate) fn govern(&self, dropped: u64) {
        if !self.two {
            return;
        }
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(last.at);
        if elapsed < INTERVAL {
            return;
        }
        let load = self
            .load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let busy = load.map(|l| l.busy()).unwrap_or_default();
        // The first look (or a changed set of threads, or a load that cannot be read) has
        // nothing to compare with: not busy.
        let least_busy = if busy.is_empty() || busy.len() != last.busy.len() {
            0.0
        } else {
            busy.iter()
                .zip(&last.busy)
                .map(|(now, before)| {
                    now.saturating_sub(*before).as_secs_f64() / elapsed.as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let shedding = dropped > last.dropped;
        *last = Look {
            at: now,
            busy,
            dropped,
        };
        let was = self.aside();
        let next = stand_aside(was, least_busy, shedding);
        if next == was {
            return;
        }
        self.aside.store(next, Ordering::Release);
        self.gauge.set(i64::from(next));
        if next {
            tracing::warn!(
                least_busy_serving_thread = format!("{:.0} %", 100.0 * least_busy),
                "forwarding is saturated and inspection is shedding: inspection runs only on CPU time forwarding leaves, on a sample of the pushes (inspect.aside_share), until it is not"
            );
            self.wake(|lane| lane == Lane::Idle);
        } else {
            tracing::info!(
                least_busy_serving_thread = format!("{:.0} %", 100.0 * least_busy),
                shedding,
                "forwarding has CPU to spare again: inspection back at its niced priority"
            );
            self.wake(|lane| lane == Lane::Niced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspection_stands_aside_only_while_forwarding_is_saturated_and_it_sheds() {
        // Normal: both conditions are needed.
        assert!(stand_aside(false, 0.9, true));
        assert!(
            !stand_aside(false, 0.9, false),
            "no drops: inspection keeps up"
        );
        assert!(
            !stand_aside(false, 0.3, true),
            "forwarding not saturated: the contention comes from elsewhere"
        );
        assert!(stand_aside(false, BUSY_HIGH, true));
        // Aside: it stays while drops go on and forwarding is still busy (hysteresis) ...
        assert!(stand_aside(true, 0.45, true));
        assert!(stand_aside(true, BUSY_LOW, true));
        // ... and hands back when either ends.
        assert!(!stand_aside(true, 0.1, true));
        assert!(!stand_aside(true, 0.9, false));
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

    #[test]
    fn only_the_idle_lane_paces_and_only_while_aside() {
        let registry = prometheus::Registry::new();
        let lanes = Lanes::new(true, crate::metrics::gauge(&registry, "aside", "test"));
        assert!(!lanes.paced(Lane::Idle) && !lanes.paced(Lane::Niced));
        lanes.aside.store(true, Ordering::Release);
        assert!(lanes.paced(Lane::Idle) && !lanes.paced(Lane::Niced));
        // Stopping: the queue is drained at full speed.
        lanes.stop();
        assert!(!lanes.paced(Lane::Idle));
        // A single idle lane (inspect.idle_priority) never paces.
        let single = Lanes::new(false, crate::metrics::gauge(&registry, "aside2", "test"));
        single.aside.store(true, Ordering::Release);
        assert!(!single.paced(Lane::Idle));
    }

    struct Fixed(Mutex<Vec<Duration>>);

    impl ForwardingLoad for Fixed {
        fn busy(&self) -> Vec<Duration> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn the_lanes_hand_over_on_the_serving_threads_load_and_the_drops() {
        let registry = prometheus::Registry::new();
        let gauge = crate::metrics::gauge(&registry, "aside", "test");
        let lanes = Lanes::new(true, gauge.clone());
        let load = Arc::new(Fixed(Mutex::new(vec![Duration::ZERO; 2])));
        lanes.govern(0);
        assert!(!lanes.aside(), "no load to read yet");
        lanes.watch(Arc::clone(&load) as Arc<dyn ForwardingLoad>);
        // First look: takes the serving threads' totals as its starting point.
        std::thread::sleep(INTERVAL);
        lanes.govern(0);
        assert!(!lanes.aside());
        // One serving thread busy throughout the interval, the other idle, and drops: forwarding
        // has a thread to spare (one client), inspection keeps its niced lane.
        let start = Instant::now();
        std::thread::sleep(INTERVAL);
        load.0.lock().unwrap()[1] += start.elapsed();
        lanes.govern(3);
        assert!(!lanes.aside());
        // Both busy throughout, and drops: aside.
        let start = Instant::now();
        std::thread::sleep(INTERVAL);
        for busy in load.0.lock().unwrap().iter_mut() {
            *busy += start.elapsed();
        }
        lanes.govern(5);
        assert!(lanes.aside());
        assert_eq!(gauge.get(), 1);
        assert!(lanes.inspects(Lane::Idle) && !lanes.inspects(Lane::Niced));
        // Within the interval nothing is looked at, not even an idle forwarding path.
        lanes.govern(5);
        assert!(lanes.aside());
        // Busy still, but no more drops: the niced lane takes over again.
        let start = Instant::now();
        std::thread::sleep(INTERVAL);
        for busy in load.0.lock().unwrap().iter_mut() {
            *busy += start.elapsed();
        }
        lanes.govern(5);
        assert!(!lanes.aside());
        assert_eq!(gauge.get(), 0);
        // Shutdown lets both lanes take from the queue.
        lanes.stop();
        assert!(lanes.inspects(Lane::Idle) && lanes.inspects(Lane::Niced));
    }

    #[test]
    fn a_single_lane_never_hands_over() {
        let registry = prometheus::Registry::new();
        let lanes = Lanes::new(false, crate::metrics::gauge(&registry, "aside", "test"));
        let load = Arc::new(Fixed(Mutex::new(vec![Duration::ZERO])));
        lanes.watch(Arc::clone(&load) as Arc<dyn ForwardingLoad>);
        std::thread::sleep(INTERVAL);
        lanes.govern(0);
        let start = Instant::now();
        std::thread::sleep(INTERVAL);
        load.0.lock().unwrap()[0] += start.elapsed();
        lanes.govern(10);
        assert!(!lanes.aside());
        assert!(lanes.inspects(Lane::Niced) && lanes.inspects(Lane::Idle));
    }
}
