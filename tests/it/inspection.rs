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
struct Slow;
impl logwarden::inspect::PushInspector for Slow {
    fn inspect(&self, _t: &str, _p: &logwarden::decode::PushView<'_>) {
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test]
async fn full_inspection_queue_sheds_inspection_not_forwarding() {
    let loki = FakeLoki::start().await;
    let proxy = Proxy::start(
        "inspect:\n  workers: 1\n  queue_capacity: 1\n",
        &loki.url(),
        Arc::new(Slow),
    )
    .await;
    let started = std::time::Instant::now();
    for _ in 0..6 {
        assert_eq!(push(&proxy, "t").await, 204);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "pushes waited on inspection"
    );
    assert_eq!(loki.requests().len(), 6);
    let dropped = proxy.app.metrics().inspect_dropped.get();
    // One in the worker, one queued; the rest are shed.
    assert!(dropped >= 3, "dropped {dropped}");
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
    let proxy = Proxy::start(
        "inspect:\n  workers: 1\n  queue_capacity: 100\n  queue_bytes: 8000\n",
        &loki.url(),
        Arc::new(Slow),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(push(&proxy, "t").await, 204);
    }
    let dropped = proxy.app.metrics().inspect_dropped.get();
    assert!((2..=3).contains(&dropped), "dropped {dropped}");
}
