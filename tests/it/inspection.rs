//! Inspection sees each batch exactly once: not when the client will resend it (429, 5xx, our
//! own 502/504), once when it is finally accepted — and never delays the answer.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{FakeLoki, Proxy, Recorder, Reply};

const ONE_WORKER: &str = "inspect:\n  workers: 1\n";

async fn push(proxy: &Proxy, tenant: &str) -> u16 {
    proxy
        .push_fixture()
        .header("x-scope-orgid", tenant)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn retried_batch_is_inspected_once_when_finally_accepted() {
    let loki = FakeLoki::start().await;
    let recorder = Arc::new(Recorder::default());
    let proxy = Proxy::start(ONE_WORKER, &loki.url(), recorder.clone()).await;
    loki.script([
        Reply::status(429),
        Reply::status(500),
        Reply::status(503),
        Reply::status(204),
    ]);
    assert_eq!(push(&proxy, "acme").await, 429);
    assert_eq!(push(&proxy, "acme").await, 500);
    assert_eq!(push(&proxy, "acme").await, 503);
    assert_eq!(push(&proxy, "acme").await, 204);
    assert_eq!(recorder.wait_for(1).await, 1);
    // Give a wrongly queued earlier attempt time to show up before asserting there is none.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *recorder.pushes.lock().unwrap(),
        vec![("acme".to_owned(), 3, 220)]
    );
    assert_eq!(loki.requests().len(), 4, "every attempt was forwarded");
}

#[tokio::test]
async fn rejected_for_good_batches_are_inspected() {
    // A 400 is final for the client (and may be a partial success in Loki): inspect it.
    let loki = FakeLoki::start().await;
    let recorder = Arc::new(Recorder::default());
    let proxy = Proxy::start(ONE_WORKER, &loki.url(), recorder.clone()).await;
    loki.script([Reply::text(400, "bad\n")]);
    assert_eq!(push(&proxy, "t1").await, 400);
    assert_eq!(recorder.wait_for(1).await, 1);
}

#[tokio::test]
async fn our_own_504_is_not_inspected_and_the_retry_is() {
    let loki = FakeLoki::start().await;
    let recorder = Arc::new(Recorder::default());
    let proxy = Proxy::start(
        "upstream:\n  timeout: 200ms\ninspect:\n  workers: 1\n",
        &loki.url(),
        recorder.clone(),
    )
    .await;
    loki.script([Reply::Stall]);
    assert_eq!(push(&proxy, "t").await, 504);
    assert_eq!(push(&proxy, "t").await, 204);
    assert_eq!(recorder.wait_for(1).await, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recorder.count(), 1);
}

/// An inspector that takes far longer than a push: the answer must not wait for it.
/// An inspector that blocks every inspection until the test opens it: the worker stays busy
/// with the first push for as long as the test needs, whatever the machine's speed.
#[derive(Default)]
struct Gate {
    state: std::sync::Mutex<(bool, usize)>,
    changed: std::sync::Condvar,
}

impl Gate {
    /// Waits until `n` inspections have started.
    async fn entered(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.state.lock().unwrap().1 < n {
            assert!(
                std::time::Instant::now() < deadline,
                "inspection never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }
}

/// Opens the gate when dropped, so a failing assertion cannot leave the worker blocked.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl logwarden::inspect::PushInspector for Gate {
    fn inspect(&self, _t: &str, _p: &logwarden::decode::PushView<'_>) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        while !state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }
}

/// Pushes with a deadline far beyond any forwarding time: a push that waited on the blocked
/// inspection would never be answered.
async fn push_not_waiting_on_inspection(proxy: &Proxy) -> u16 {
    tokio::time::timeout(Duration::from_secs(10), push(proxy, "t"))
        .await
        .expect("the push waited on inspection")
}

/// Waits until each of `pushes` answered pushes beyond the one held in the worker has been
/// handed over (queued or shed): the hand-off runs just after the answer is written.
async fn handed_over(proxy: &Proxy, pushes: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let queued = proxy.app.inspector().depth() as u64;
        if queued + proxy.app.metrics().inspect_dropped.get() >= pushes - 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queued} queued and {} shed of {pushes} pushes after 5 s",
            proxy.app.metrics().inspect_dropped.get()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn full_inspection_queue_sheds_inspection_not_forwarding() {
    let loki = FakeLoki::start().await;
    let gate = Arc::new(Gate::default());
    let proxy = Proxy::start(
        // One inspection thread: with `forwarding_first` the governor would hand the stuck
        // queue to the niced thread, which the gate then holds too (by design: a starved idle
        // lane gives way), and the count below would depend on when it looked.
        "inspect:\n  workers: 1\n  queue_capacity: 1\n  forwarding_first: false\n",
        &loki.url(),
        gate.clone(),
    )
    .await;
    let _open = OpenOnDrop(gate.clone());
    assert_eq!(push_not_waiting_on_inspection(&proxy).await, 204);
    gate.entered(1).await;
    for _ in 0..5 {
        assert_eq!(push_not_waiting_on_inspection(&proxy).await, 204);
    }
    assert_eq!(loki.requests().len(), 6);
    handed_over(&proxy, 6).await;
    let dropped = proxy.app.metrics().inspect_dropped.get();
    // One in the worker, one queued; the other four are shed.
    assert_eq!(dropped, 4);
    let text = proxy.app.render_metrics();
    assert!(
        text.contains(&format!("logwarden_inspect_queue_dropped_total {dropped}")),
        "{text}"
    );
}

#[tokio::test]
async fn queued_body_bytes_are_bounded() {
    let loki = FakeLoki::start().await;
    // Room for one fixture (7317 bytes) waiting; the worker is busy with the first.
    let gate = Arc::new(Gate::default());
    let proxy = Proxy::start(
        // One inspection thread, as above.
        "inspect:\n  workers: 1\n  queue_capacity: 100\n  queue_bytes: 8000\n  forwarding_first: false\n",
        &loki.url(),
        gate.clone(),
    )
    .await;
    let _open = OpenOnDrop(gate.clone());
    assert_eq!(push_not_waiting_on_inspection(&proxy).await, 204);
    gate.entered(1).await;
    for _ in 0..4 {
        assert_eq!(push_not_waiting_on_inspection(&proxy).await, 204);
    }
    // One fixture fits in the byte budget; the other three are shed although the queue has
    // room for 100 pushes.
    handed_over(&proxy, 5).await;
    let dropped = proxy.app.metrics().inspect_dropped.get();
    assert_eq!(dropped, 3);
}
