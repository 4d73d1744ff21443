//! The inspection queue: bounded, many producers (the serving threads), a few consumers (the
//! inspection threads), and a producer never waits for a consumer.
//!
//! The consumers run at a lower priority than the producers (`inspect.nice`, or the idle class),
//! so under CPU contention a consumer is routinely preempted in the middle of taking an item.
//! A queue whose producer can wait on that (a lock the consumer holds, or a ring slot the
//! consumer has claimed but not yet released, as in a bounded array channel) turns the lower
//! priority into a priority inversion: the serving thread spins or sleeps until the consumer
//! gets a core back. Measured with `crossbeam_channel::bounded` here (docs/benchmarks.md, eighth
//! session): 42 % of logwarden's CPU was serving threads spinning in `try_send` behind a
//! preempted inspection thread, with 64 KiB pushes at concurrency 8 on two saturated cores.
//!
//! So: items go into a lock-free segmented list (`crossbeam_queue::SegQueue`, whose `push` waits
//! at most for another producer installing a block, never for a consumer); the bound is an
//! atomic count reserved before the push; an idle consumer sleeps with `std::thread::park`, and
//! a producer wakes one with `unpark`, which never blocks.
//!
//! Waking a parked thread is a system call and, on a virtual machine, an interrupt to another
//! CPU, paid by the serving thread on a push's path. A consumer that finds the queue empty
//! therefore first takes [`NAPS`] short timed naps without saying it sleeps: while pushes keep
//! coming (more than one per [`NAP`]) it finds them when it wakes by itself, and no producer
//! pays for a wake-up. Only when the naps find nothing does it park until a producer wakes it,
//! so an idle process does not keep waking up. An inspection starts at most one nap late.
//!
//! A consumer a producer woke waits [`WAKE_DELAY`] before it takes the item. The producer is a
//! serving thread that has just written a push's answer, so it wakes the client (or, behind a
//! gateway, the thread that reads the answer) at the same moment. Linux's scheduler (EEVDF,
//! 6.6 and later) picks among the threads waiting for a core the "eligible" ones, those that
//! have had less than their share; a client thread that ran its share is not, a just-woken
//! low-priority consumer is, and the consumer then keeps the core until the next tick while
//! the client waits (seen with `perf sched`: 0.6–0.7 ms delays of the client and of serving
//! threads while an idle-class inspection ran on their core). Started a little later, the
//! consumer finds those threads running, and a low-priority thread never preempts a running
//! one. Measured with 1 MiB pushes at 218/s over 8 connections: p99 1.20× nginx's without the
//! delay, 0.89× with it (docs/benchmarks.md, thirteenth session).

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

use crossbeam_queue::SegQueue;

/// How long one nap of a consumer that found the queue empty lasts.
const NAP: Duration = Duration::from_millis(1);
/// Naps a consumer takes before it parks until a producer wakes it.
const NAPS: u32 = 2;
/// How long a consumer a producer woke waits before it takes the item (see the module notes).
/// 50 µs and 200 µs measured the same.
const WAKE_DELAY: Duration = Duration::from_micros(100);

/// A consumer's parking place.
struct Sleeper {
    /// Set by the consumer before it parks; whoever swaps it back to false unparks it.
    asleep: AtomicBool,
    /// The consumer's thread, set when it first pops.
    thread: OnceLock<Thread>,
}

/// A bounded queue whose [`Queue::try_push`] never waits for a consumer.
pub(crate) struct Queue<T> {
    items: SegQueue<T>,
    /// Items in the queue, counting pushes that have reserved their place.
    len: AtomicUsize,
    capacity: usize,
    sleepers: Box<[Sleeper]>,
    /// Consumers a producer has woken.
    wakes: AtomicUsize,
}

impl<T> Queue<T> {
    /// A queue of at most `capacity` items (at least one) for `consumers` consumers, numbered
    /// from 0.
    pub(crate) fn new(capacity: usize, consumers: usize) -> Queue<T> {
        Queue {
            items: SegQueue::new(),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            sleepers: (0..consumers.max(1))
                .map(|_| Sleeper {
                    asleep: AtomicBool::new(false),
                    thread: OnceLock::new(),
                })
                .collect(),
            wakes: AtomicUsize::new(0),
        }
    }

    /// Adds `item` unless the queue is full, in which case it is handed back.
    pub(crate) fn try_push(&self, item: T) -> Result<(), T> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(item);
        }
        self.push_reserved(item);
        Ok(())
    }

    /// Adds `item` even past the capacity (the stop markers of a shutdown, one per consumer).
    pub(crate) fn push_always(&self, item: T) {
        self.len.fetch_add(1, Ordering::AcqRel);
        self.push_reserved(item);
    }

    fn push_reserved(&self, item: T) {
        self.items.push(item);
        // Pairs with the consumer's fence between announcing its sleep and looking again: either
        // this load sees `asleep`, or that look sees the item.
        fence(Ordering::SeqCst);
        for s in &*self.sleepers {
            if s.asleep.load(Ordering::Relaxed) && s.asleep.swap(false, Ordering::AcqRel) {
                if let Some(t) = s.thread.get() {
                    t.unpark();
                }
                self.wakes.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Takes the oldest item, sleeping while there is none. `consumer` is this consumer's number
    /// (below the `consumers` given to [`Queue::new`]); each number is used by one thread.
    pub(crate) fn pop(&self, consumer: usize) -> T {
        let me = &self.sleepers[consumer];
        me.thread.get_or_init(std::thread::current);
        let mut naps = 0;
        loop {
            if let Some(item) = self.items.pop() {
                self.len.fetch_sub(1, Ordering::AcqRel);
                return item;
            }
            if naps < NAPS {
                // Not announced: producers do not wake a napping consumer.
                naps += 1;
                std::thread::park_timeout(NAP);
                continue;
            }
            me.asleep.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Some(item) = self.items.pop() {
                me.asleep.store(false, Ordering::Relaxed);
                self.len.fetch_sub(1, Ordering::AcqRel);
                return item;
            }
            // A producer that saw `asleep` unparks us (a token left by an earlier unpark only
            // makes this return at once, and the loop looks again).
            std::thread::park();
            // A producer swaps `asleep` back to false before it unparks; still true: a token
            // left by an earlier unpark, or a spurious wake-up.
            if !me.asleep.swap(false, Ordering::Relaxed) {
                std::thread::sleep(WAKE_DELAY);
            }
        }
    }

    /// Items in the queue now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the queue is empty now.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items [`Queue::try_push`] admits.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many times a producer has woken a parked consumer.
    #[cfg(test)]
    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_full_queue_hands_the_item_back_and_takes_again_once_one_is_taken() {
        let q = Queue::new(2, 1);
        assert_eq!(q.try_push(1), Ok(()));
        assert_eq!(q.try_push(2), Ok(()));
        assert_eq!(q.try_push(3), Err(3));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(0), 1, "oldest first");
        assert_eq!(q.try_push(4), Ok(()));
        q.push_always(5);
        assert_eq!(q.len(), 3, "stop markers go past the capacity");
        assert_eq!((q.pop(0), q.pop(0), q.pop(0)), (2, 4, 5));
        assert!(q.is_empty());
    }

    /// Sleeping consumers are woken for every item: nothing pushed is left behind, whatever the
    /// interleaving of pushes with consumers going to sleep.
    #[test]
    fn every_pushed_item_reaches_a_sleeping_consumer() {
        const PRODUCERS: usize = 3;
        const PER_PRODUCER: usize = 20_000;
        const CONSUMERS: usize = 2;
        let q = Arc::new(Queue::<usize>::new(64, CONSUMERS));
        let (done, results) = std::sync::mpsc::channel();
        for c in 0..CONSUMERS {
            let q = Arc::clone(&q);
            let done = done.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match q.pop(c) {
                        usize::MAX => break,
                        n => got.push(n),
                    }
                }
                let _ = done.send(got);
            });
        }
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    let mut shed = 0;
                    for i in 0..PER_PRODUCER {
                        let mut n = p * PER_PRODUCER + i;
                        // Retry a full queue, so every item must come out; now and then pause
                        // so consumers go to sleep and must be woken.
                        while let Err(back) = q.try_push(n) {
                            n = back;
                            shed += 1;
                            assert!(
                                std::time::Instant::now() < deadline,
                                "the queue stayed full: its consumers were not woken"
                            );
                            std::thread::yield_now();
                        }
                        if i % 997 == 0 {
                            std::thread::sleep(NAP * (NAPS + 1));
                        }
                    }
                    shed
                })
            })
            .collect();
        for p in producers {
            p.join().expect("a producer gave up");
        }
        for _ in 0..CONSUMERS {
            q.push_always(usize::MAX);
        }
        // A consumer left asleep with items queued never answers: fail instead of hanging.
        let mut all: Vec<usize> = (0..CONSUMERS)
            .flat_map(|_| {
                results
                    .recv_timeout(std::time::Duration::from_secs(20))
                    .expect("a consumer was not woken for the items left in the queue")
            })
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..PRODUCERS * PER_PRODUCER).collect::<Vec<_>>());
        assert!(q.is_empty());
    }

    /// A consumer that had to be woken takes its item only after [`WAKE_DELAY`], so it does not
    /// start on the core of the client its producer has just answered (module notes).
    #[test]
    fn a_consumer_woken_by_a_producer_waits_before_it_takes_the_item() {
        use std::time::{Duration, Instant};
        let q = Arc::new(Queue::<Instant>::new(4, 1));
        let consumer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.pop(0).elapsed())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !q.sleepers[0].asleep.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "the consumer never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        q.try_push(Instant::now()).unwrap();
        let waited = consumer.join().unwrap();
        assert_eq!(q.wakes(), 1, "the producer woke the parked consumer");
        assert!(
            waited >= WAKE_DELAY,
            "the consumer took the item {waited:?} after it was pushed"
        );
    }

    /// Items that keep coming, one every 0.2 ms, are taken by a consumer that naps between
    /// them: the producer does not pay a wake-up for each (only the consumer's first sleep, and
    /// any nap a loaded machine stretches past the naps, end in one).
    #[test]
    fn a_steady_stream_is_taken_without_waking_the_consumer_for_each_item() {
        const ITEMS: usize = 300;
        let q = Arc::new(Queue::<usize>::new(1024, 1));
        let consumer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || (0..ITEMS).map(|_| q.pop(0)).collect::<Vec<_>>())
        };
        for i in 0..ITEMS {
            q.try_push(i).unwrap();
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let got = consumer.join().unwrap();
        assert_eq!(got, (0..ITEMS).collect::<Vec<_>>());
        assert!(
            q.wakes() * 4 < ITEMS,
            "{} of {ITEMS} pushes woke the consumer",
            q.wakes()
        );
    }
}
