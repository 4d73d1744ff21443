//! Redis for the tests: the shared server on 127.0.0.1:6379 (CI starts it), private
//! `redis-server`s on loopback ports of their own for outage tests, and per-test key prefixes
//! so tests run in parallel against one Redis. Included with `#[path]` by the test binaries
//! that need it; not every one uses every helper.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SHARED_REDIS: &str = "127.0.0.1:6379";

/// Says loudly why a test that needs Redis is skipped; under CI (`CI=true`) it fails instead.
pub fn require_redis() -> bool {
    let up =
        TcpStream::connect_timeout(&SHARED_REDIS.parse().unwrap(), Duration::from_secs(1)).is_ok();
    if !up {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("Redis is required under CI on {SHARED_REDIS} but is not reachable (.ci/run starts it)");
        }
        eprintln!(
            "\n!!! SKIPPED: no Redis on {SHARED_REDIS}; start redis-server to run this test !!!\n"
        );
    }
    up
}

/// Like `require_redis` for the `redis-server` binary the outage test starts itself.
pub fn require_redis_server() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v redis-server"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "redis-server is required under CI but was not found on PATH (.ci/run installs it)"
            );
        }
        eprintln!(
            "\n!!! SKIPPED: redis-server not found on PATH; install it to run this test !!!\n"
        );
    }
    found
}

/// A key prefix no other test (or run) uses.
pub fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("lwtest-{test}-{}-{nanos}", std::process::id())
}

/// Deletes every key under `prefix` (keys expire anyway; this keeps a shared Redis tidy).
pub fn cleanup(prefix: &str) {
    let Ok(client) = redis::Client::open(format!("redis://{SHARED_REDIS}")) else {
        return;
    };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut con)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut con);
    }
}

/// A private `redis-server` on a loopback port of its own, killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
}

impl PrivateRedis {
    pub fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { port, child }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
