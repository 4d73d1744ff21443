//! Several `serve` replicas sharing windows and claims through a real Redis: one attack spread
//! over the replicas by a real nginx (round robin) is counted cluster-wide and alerted once,
//! and a Redis outage never touches forwarding (detection falls back to local windows, then
//! shares again once Redis is back).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{auth_push, require_tool, FakeLoki, Service};

#[path = "../common/redis.rs"]
mod redis_support;

use crate::notify_support::{self, FakeHttp};
use redis_support::{
    cleanup, free_port, prefix, require_redis, require_redis_server, PrivateRedis, SHARED_REDIS,
};

const ATTACKER: &str = "203.0.113.42";

fn failed_logins(ip: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Nov 26 01:00:{i:02} vps1 sshd[{}]: Failed password for root from {ip} port {} ssh2",
                2000 + i,
                40000 + i
            )
        })
        .collect()
}

/// `lines` cut into pushes of `per_push` lines, one second apart from `start_s`.
fn pushes(lines: &[String], per_push: usize, start_s: i64) -> Vec<Vec<u8>> {
    lines
        .chunks(per_push)
        .enumerate()
        .map(|(i, chunk)| auth_push(chunk, start_s + (i * per_push) as i64))
        .collect()
}

fn config(hook: &FakeHttp, state: &str) -> String {
    format!(
        "inspect:\n  workers: 1\nreports:\n  loki: false\nnotify:\n  - type: webhook\n    url: {}/hook\n    min_severity: info\n{state}",
        hook.url()
    )
}

fn redis_state(url: &str, prefix: &str, timeout: &str) -> String {
    format!(
        "state:\n  backend: redis\n  redis_url: {url}\n  key_prefix: {prefix}\n  timeout: {timeout}\n  connect_timeout: {timeout}\n  reconnect_min: 100ms\n  reconnect_max: 200ms\n"
    )
}

use crate::support::push_as_acme as push_to;

/// The value of the sample whose line starts with `series` (name and labels), 0 if absent.
fn metric(svc: &Service, series: &str) -> f64 {
    svc.app
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the sum of `series` over `replicas` reaches `want`.
async fn wait_metric(replicas: &[&Service], series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: f64 = replicas.iter().map(|s| metric(s, series)).sum();
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} reached {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for `n` webhook calls, then a little longer to see that no more arrive.
async fn alerts(hook: &FakeHttp, n: usize) -> Vec<serde_json::Value> {
    hook.wait_for(n, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    hook.requests().iter().map(|r| r.json()).collect()
}

/// nginx (the Debian package) balancing round robin over `upstreams`, on a loopback port,
/// with a generated configuration in a private directory; stopped on drop.
struct Nginx {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[SocketAddr]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a};\n"))
            .collect();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_max_body_size 16m;\n  client_body_buffer_size 16m;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream replicas {{\n{servers}  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://replicas;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            port,
            child,
            _dir: dir,
        }
    }

    fn push_url(&self) -> String {
        format!("http://127.0.0.1:{}/loki/api/v1/push", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SSH brute force of 8 failed logins in 4 pushes of 2, balanced round robin over two
/// replicas: each sees 4 lines, below the rule's threshold of 6, and together they see 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_split_over_two_replicas_is_one_alert_with_the_cluster_count() {
    if !require_tool("nginx") || !require_redis() {
        return;
    }
    let prefix = prefix("two-replicas");
    let url = format!("redis://{SHARED_REDIS}");
    let loki = FakeLoki::start().await;
    let hook = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let state = redis_state(&url, &prefix, "1s");
    let a = Service::start(&config(&hook, &state), &loki.url(), &[]).await;
    let b = Service::start(&config(&hook, &state), &loki.url(), &[]).await;
    let lb = Nginx::start(&[a.addr, b.addr]);

    let start_s = chrono::Utc::now().timestamp();
    let bodies = pushes(&failed_logins(ATTACKER, 8), 2, start_s);
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(push_to(&lb.push_url(), body).await, 204);
        // Detection runs after the answer: let each push be shared before the next, so the
        // cluster-wide count at each step is known.
        wait_metric(
            &[&a, &b],
            "logwarden_state_batches_total{outcome=\"shared\"}",
            (i + 1) as f64,
        )
        .await;
    }

    // Every push reached Loki once, unchanged.
    let got: Vec<_> = loki.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(got.len(), bodies.len());
    for body in &bodies {
        assert!(got.iter().any(|g| g.as_ref() == body.as_slice()));
    }
    // Neither replica alone reached the threshold.
    let matches = "logwarden_rule_matches_total{rule=\"ssh-brute-force\"}";
    assert_eq!(metric(&a, matches), 4.0);
    assert_eq!(metric(&b, matches), 4.0);

    let sent = alerts(&hook, 1).await;
    assert_eq!(sent.len(), 1, "one alert for the attack: {sent:#?}");
    let incident = &sent[0]["incident"];
    assert_eq!(incident["rule"], "ssh-brute-force");
    assert_eq!(incident["key"], ATTACKER);
    assert_eq!(incident["tenant"], "acme");
    // The window fired cluster-wide on the 6th line (the third push).
    assert_eq!(incident["count"], 6, "{incident:#}");
    // The evidence holds the lines of both replicas.
    let lines: Vec<&str> = incident["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_str().unwrap())
        .collect();
    let expected = failed_logins(ATTACKER, 6);
    assert_eq!(
        lines,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let won = "logwarden_state_claims_total{outcome=\"won\"}";
    let lost = "logwarden_state_claims_total{outcome=\"lost\"}";
    assert_eq!(metric(&a, won) + metric(&b, won), 1.0);
    // The other replica saw the window fire (on the 4th push) and stayed silent.
    assert_eq!(metric(&a, lost) + metric(&b, lost), 1.0);
    let incidents = "logwarden_incidents_total{rule=\"ssh-brute-force\",severity=\"high\"}";
    assert_eq!(metric(&a, incidents) + metric(&b, incidents), 1.0);

    // One replica with local state, given every push, reports the same incident.
    let hook1 = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let single = Service::start(&config(&hook1, ""), &loki.url(), &[]).await;
    for body in &bodies {
        assert_eq!(push_to(&single.url("/loki/api/v1/push"), body).await, 204);
    }
    let local = alerts(&hook1, 1).await;
    assert_eq!(local.len(), 1, "{local:#?}");
    assert_eq!(&local[0]["incident"], incident);

    drop(lb);
    a.stop().await;
    b.stop().await;
    single.stop().await;
    cleanup(&prefix);
}

/// Redis killed while pushes flow: every push is still forwarded and answered, detection goes
/// on locally (an attack during the outage is still alerted), and once Redis is back the
/// windows are shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_detection_to_local_and_never_touches_forwarding() {
    if !require_redis_server() {
        return;
    }
    let port = free_port();
    let redis = PrivateRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = prefix("outage");
    let loki = FakeLoki::start().await;
    let hook = FakeHttp::start(notify_support::Reply::text(200, "ok"), None).await;
    let svc = Service::start(
        &config(&hook, &redis_state(&url, &prefix, "200ms")),
        &loki.url(),
        &[],
    )
    .await;
    let push_url = svc.url("/loki/api/v1/push");
    let start_s = chrono::Utc::now().timestamp();
    let shared = "logwarden_state_batches_total{outcome=\"shared\"}";
    let local = "logwarden_state_batches_total{outcome=\"local\"}";
    let degraded = "logwarden_state_degraded";
    let mut sent = 0;

    // Shared while Redis is up.
    assert_eq!(
        push_to(
            &push_url,
            &auth_push(&failed_logins("198.51.100.1", 2), start_s)
        )
        .await,
        204
    );
    sent += 1;
    wait_metric(&[&svc], shared, 1.0).await;
    assert_eq!(metric(&svc, degraded), 0.0);

    // Redis dies: pushes are answered as before; detection counts locally and still alerts.
    redis.kill();
    for body in pushes(&failed_logins("198.51.100.2", 6), 2, start_s + 10) {
        let t = Instant::now();
        assert_eq!(push_to(&push_url, &body).await, 204);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        sent += 1;
    }
    wait_metric(&[&svc], local, 3.0).await;
    assert_eq!(metric(&svc, degraded), 1.0);
    let during = alerts(&hook, 1).await;
    assert_eq!(during.len(), 1, "{during:#?}");
    assert_eq!(during[0]["incident"]["key"], "198.51.100.2");
    assert_eq!(during[0]["incident"]["count"], 6);
    assert_eq!(
        metric(&svc, "logwarden_state_claims_total{outcome=\"degraded\"}"),
        1.0
    );

    // Redis is back (empty): the next pushes share again once the backoff lets a call through.
    let _redis = PrivateRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = metric(&svc, shared);
    let mut i = 0;
    while metric(&svc, degraded) != 0.0 || metric(&svc, shared) <= before {
        assert!(Instant::now() < deadline, "shared state did not resume");
        let line = failed_logins("198.51.100.3", 1);
        assert_eq!(
            push_to(&push_url, &auth_push(&line, start_s + 30 + i)).await,
            204
        );
        sent += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The window of the address pushed after the recovery is in Redis.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut con)
        .unwrap();
    assert!(keys.iter().any(|k| k.contains("198.51.100.3")), "{keys:?}");
    assert_eq!(loki.requests().len(), sent, "every push was forwarded");
    svc.stop().await;
}
