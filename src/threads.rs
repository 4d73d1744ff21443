//! Serving threads: one single-threaded Tokio runtime per core, each serving whole connections.
//!
//! A request that crosses threads pays for every hand-off: the accepted connection, the handler,
//! the upstream connection's task and the answer each wake another thread through the kernel.
//! On a multi-threaded runtime a forwarded push hops like that three or four times, which cost
//! more than the forwarding itself (measured in docs/benchmarks.md). Here a connection is handed
//! once, when it is accepted, to the thread serving the fewest connections; everything it does
//! after that (its requests, the upstream request, the pooled upstream connection's task, the
//! answer) runs on that one thread. Each thread has its own upstream connection pool
//! ([`current`] tells the forwarder which), so pooled connections never cross threads either.
//! This is how nginx's worker processes serve, in one process.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Returns the index of the serving thread this code runs on, `None` off the serving threads.
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// Picks from per-thread resources laid out as one per serving thread plus a last, shared one
/// (`len` in all, at least one): this serving thread's, or the shared one off them.
pub fn own_or_shared(len: usize) -> usize {
    let shared = len - 1;
    current().map_or(shared, |i| i.min(shared))
}

struct Worker {
    handle: tokio::runtime::Handle,
    /// The thread's kernel id (Linux), to read its scheduler statistics.
    tid: Option<i32>,
    /// Connections this thread serves now.
    live: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The serving threads. Stopping them (on drop, or [`ServingThreads::shutdown`]) drops what
/// they still run: stop them after the connections they serve have finished.
pub struct ServingThreads {
    workers: Vec<Worker>,
    next: AtomicUsize,
}

/// Decrements a thread's connection count when the connection's task ends, however it ends.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServingThreads {
    /// Starts `n` serving threads (at least one).
    ///
    /// # Errors
    /// When a thread or its runtime cannot be created.
    pub fn start(n: usize) -> std::io::Result<ServingThreads> {
        let mut workers = Vec::with_capacity(n.max(1));
        for index in 0..n.max(1) {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("serve-{index}"))
                .spawn(move || {
                    // Sockets and timers only: with the process and signal drivers too, every
                    // turn of the event loop also looked for exited child processes to reap.
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    INDEX.with(|i| i.set(Some(index)));
                    #[cfg(target_os = "linux")]
                    let tid = Some(rustix::thread::gettid().as_raw_nonzero().get());
                    #[cfg(not(target_os = "linux"))]
                    let tid = None;
                    let _ = ready_tx.send(Ok((runtime.handle().clone(), tid)));
                    runtime.block_on(async {
                        let _ = stopped.await;
                        // Let the tasks that are ready run once more, among them the hand-offs
                        // of pushes answered just before the stop (see `ingest::push`).
                        tokio::task::yield_now().await;
                    });
                    // Dropping the runtime here (outside any async context) cancels what is left.
                })?;
            let (handle, tid) = ready_rx
                .recv()
                .map_err(|_| std::io::Error::other("serving thread exited while starting"))??;
            workers.push(Worker {
                handle,
                tid,
                live: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(ServingThreads {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// Returns how many serving threads there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Returns false: there is always at least one serving thread.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Returns how many connections each thread serves now.
    pub fn load(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.live.load(Ordering::Relaxed))
            .collect()
    }

    /// Returns a probe of how long each serving thread has been runnable (running or waiting
    /// for a core, from the kernel's scheduler statistics), for inspection to step aside while
    /// forwarding is saturated. Where the kernel does not report it, the probe reads nothing and
    /// inspection never steps aside.
    pub fn runnable_probe(&self) -> Arc<dyn crate::inspect::ForwardingLoad> {
        Arc::new(Runnable(self.workers.iter().map(|w| w.tid).collect()))
    }

    /// Runs one connection's task on the thread serving the fewest connections (ties go round
    /// robin, so idle threads take turns).
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let worker = (0..n)
            .map(|k| &self.workers[(start + k) % n])
            .min_by_key(|w| w.live.load(Ordering::Relaxed))
            .expect("at least one serving thread");
        worker.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(Arc::clone(&worker.live));
        worker.handle.spawn(async move {
            let _live = live;
            connection.await;
        });
    }

    /// Stops the threads and waits for them to end, without blocking the async caller.
    pub async fn shutdown(mut self) {
        let threads = self.stop_all();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }

    fn stop_all(&mut self) -> Vec<std::thread::JoinHandle<()>> {
        self.workers
            .iter_mut()
            .filter_map(|w| {
                if let Some(stop) = w.stop.take() {
                    let _ = stop.send(());
                }
                w.thread.take()
            })
            .collect()
    }
}

impl Drop for ServingThreads {
    fn drop(&mut self) {
        // Signalled, not joined: a drop may happen inside an async context.
        let _ = self.stop_all();
    }
}

/// The serving threads (their kernel ids), read for the time they were runnable.
struct Runnable(Vec<Option<i32>>);

impl crate::inspect::ForwardingLoad for Runnable {
    fn runnable(&self) -> Vec<std::time::Duration> {
        self.0
            .iter()
            .map(|tid| {
                let stat =
                    std::fs::read_to_string(format!("/proc/self/task/{}/schedstat", (*tid)?));
                runnable_time(&stat.ok()?)
            })
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default()
    }
}

/// Reads a thread's `schedstat` (nanoseconds on a core, nanoseconds waiting for one, and the
/// number of slices) as the time it has been runnable, running or waiting.
fn runnable_time(schedstat: &str) -> Option<std::time::Duration> {
    let mut fields = schedstat.split_ascii_whitespace().map(str::parse::<u64>);
    let running = fields.next()?.ok()?;
    let waiting = fields.next()?.ok()?;
    Some(std::time::Duration::from_nanos(
        running.saturating_add(waiting),
    ))
}

/// Resolves `server.threads`: 0 means one per CPU.
pub fn resolve(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_connection_runs_wholly_on_the_thread_serving_the_fewest_connections() {
        let threads = ServingThreads::start(2).unwrap();
        assert_eq!(threads.len(), 2);
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let seen = seen_tx.clone();
            let mut release = release_rx.clone();
            threads.spawn(async move {
                let before = (current(), std::thread::current().id());
                // A task spawned from a connection stays on its thread too.
                let inner = tokio::spawn(async { (current(), std::thread::current().id()) });
                let spawned = inner.await.unwrap();
                let _ = release.wait_for(|r| *r).await;
                let after = (current(), std::thread::current().id());
                seen.send((before, spawned, after)).unwrap();
            });
        }
        // Four open connections spread two and two.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while threads.load() != vec![2, 2] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "load {:?}",
                threads.load()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release_tx.send(true).unwrap();
        let mut indices = Vec::new();
        for _ in 0..4 {
            let (before, spawned, after) = seen_rx.recv().await.unwrap();
            assert!(before.0.is_some());
            assert_eq!(before, spawned);
            assert_eq!(before, after);
            indices.push(before.0.unwrap());
        }
        indices.sort_unstable();
        assert_eq!(indices, vec![0, 0, 1, 1]);
        assert_eq!(
            current(),
            None,
            "the test's own thread is not a serving thread"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while threads.load() != vec![0, 0] {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        threads.shutdown().await;
    }

    #[test]
    fn schedstat_reads_as_time_running_plus_time_waiting() {
        assert_eq!(
            runnable_time("1500000000 250000000 4321\n"),
            Some(Duration::from_millis(1750))
        );
        assert_eq!(runnable_time(""), None);
        assert_eq!(runnable_time("12 x 3"), None);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_probe_sees_which_serving_thread_wants_the_cpu() {
        let threads = ServingThreads::start(2).unwrap();
        let probe = threads.runnable_probe();
        let before = probe.runnable();
        assert_eq!(before.len(), 2, "one reading per serving thread");
        // One thread spins for 300 ms (a connection that keeps it busy); the other has nothing.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        threads.spawn(async move {
            let until = std::time::Instant::now() + Duration::from_millis(300);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            let _ = done_tx.send(current());
        });
        let spun = done_rx.await.unwrap().unwrap();
        let after = probe.runnable();
        let grown: Vec<Duration> = after.iter().zip(&before).map(|(a, b)| *a - *b).collect();
        assert!(grown[spun] >= Duration::from_millis(290), "{grown:?}");
        assert!(grown[1 - spun] < Duration::from_millis(100), "{grown:?}");
        threads.shutdown().await;
    }

    #[test]
    fn zero_threads_means_one_per_cpu() {
        assert_eq!(resolve(3), 3);
        assert!(resolve(0) >= 1);
    }
}
