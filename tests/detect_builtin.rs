//! Every built-in rule: lines that must match, lines that must not (ordinary traffic, successful
//! logins, static files, a 404 favicon), and the window firing exactly at its threshold.

use std::collections::BTreeMap;
use std::sync::Mutex;

use logwarden::detect::{DetectConfig, Detector};
use logwarden::incident::Incident;

const T0: i64 = 1_714_521_600_000_000_000; // 2024-05-01T00:00:00Z
const SEC: i64 = 1_000_000_000;

fn detector() -> Detector {
    Detector::try_new(&DetectConfig::default(), &prometheus::Registry::new()).unwrap()
}

/// Returns the (rule, key) matches of one line.
fn matches(d: &Detector, line: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut batch = d.batch("t");
    batch.set_stream_map(BTreeMap::from([("job".to_owned(), "test".to_owned())]));
    batch.line(T0, line.as_bytes(), &mut |m| {
        out.push((m.rule.to_owned(), m.key.map(str::to_owned)))
    });
    out
}

fn assert_matches(d: &Detector, rule: &str, key: &str, line: &str) {
    let got = matches(d, line);
    assert!(
        got.iter()
            .any(|(r, k)| r == rule && k.as_deref() == Some(key)),
        "{rule} should match {line:?} with key {key}; got {got:?}"
    );
}

fn assert_no_rule(d: &Detector, rule: &str, line: &str) {
    let got = matches(d, line);
    assert!(
        !got.iter().any(|(r, _)| r == rule),
        "{rule} must not match {line:?}; got {got:?}"
    );
}

/// Feeds `n` lines made by `make(i)`, one second apart, in one batch; returns the incidents.
fn feed(d: &Detector, n: usize, make: &dyn Fn(usize) -> String) -> Vec<Incident> {
    let got = Mutex::new(Vec::new());
    let mut batch = d.batch("t");
    batch.set_stream_map(BTreeMap::from([("job".to_owned(), "test".to_owned())]));
    for i in 0..n {
        batch.line(T0 + i as i64 * SEC, make(i).as_bytes(), &mut |_| {});
    }
    batch.flush(&|i: Incident| got.lock().unwrap().push(i));
    got.into_inner().unwrap()
}

/// The rule fires exactly when the threshold is reached, once, for the right key.
fn assert_fires_at(rule: &str, threshold: usize, key: &str, make: &dyn Fn(usize) -> String) {
    let before = feed(&detector(), threshold - 1, make);
    assert!(
        !before.iter().any(|i| i.rule == rule),
        "{rule} fired below its threshold: {before:#?}"
    );
    let at = feed(&detector(), threshold, make);
    let fired: Vec<_> = at.iter().filter(|i| i.rule == rule).collect();
    assert_eq!(
        fired.len(),
        1,
        "{rule} should fire once at {threshold}: {at:#?}"
    );
    assert_eq!(fired[0].key, key);
    assert_eq!(fired[0].threshold as usize, threshold);
    assert!(!fired[0].samples.is_empty());
}

const ORDINARY: &[&str] = &[
    r#"203.0.113.50 - - [01/May/2024:00:00:00 +0000] "GET /index.html HTTP/1.1" 200 512 "-" "Mozilla/5.0""#,
    r#"203.0.113.50 - - [01/May/2024:00:00:00 +0000] "GET /favicon.ico HTTP/1.1" 404 0 "-" "Mozilla/5.0""#,
    r#"203.0.113.50 - - [01/May/2024:00:00:00 +0000] "GET /static/app.9f1c.js HTTP/1.1" 404 0 "-" "Mozilla/5.0""#,
    r#"203.0.113.50 - - [01/May/2024:00:00:00 +0000] "GET /robots.txt HTTP/1.1" 404 0 "-" "Mozilla/5.0""#,
    r#"203.0.113.50 - - [01/May/2024:00:00:00 +0000] "POST /api/orders?select=id,total HTTP/1.1" 201 88 "-" "okhttp/4.12""#,
    r#"203.0.113.50 - - [01/May/2024:00:00:00 +0000] "GET /blog/how-to-select-a-font-from-a-list HTTP/1.1" 200 9000 "-" "Mozilla/5.0""#,
    "May  1 00:00:00 web1 sshd[100]: Accepted publickey for deploy from 203.0.113.50 port 50000 ssh2: ED25519 SHA256:abc",
    "May  1 00:00:00 web1 sshd[100]: Accepted password for alice from 203.0.113.50 port 50001 ssh2",
    "May  1 00:00:00 web1 sshd[100]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
    "May  1 00:00:00 web1 sshd[100]: Failed publickey for git from 203.0.113.50 port 50002 ssh2: RSA SHA256:x",
    "May  1 00:00:00 web1 systemd[1]: Started Daily apt upgrade and clean activities.",
    "May  1 00:00:00 web1 CRON[222]: (root) CMD (run-parts /etc/cron.hourly)",
    "May  1 00:00:00 web1 kernel: [1.0] EXT4-fs (sda1): mounted filesystem with ordered data mode",
    r#"{"level":"info","msg":"request served","path":"/health","status":200}"#,
];

#[test]
fn ordinary_traffic_matches_no_rule() {
    let d = detector();
    for line in ORDINARY {
        assert_eq!(matches(&d, line), vec![], "ordinary line matched: {line}");
    }
}

#[test]
fn ssh_rules_match_failures_and_key_the_source() {
    let d = detector();
    for rule in [
        "ssh-brute-force",
        "ssh-slow-brute-force",
        "ssh-user-enumeration",
    ] {
        assert_matches(
            &d,
            rule,
            "198.51.100.7",
            "May  1 00:00:01 h sshd[1]: Failed password for root from 198.51.100.7 port 1 ssh2",
        );
        assert_matches(&d, rule, "2001:db8::1", "May  1 00:00:01 h sshd[1]: Failed password for invalid user x from 2001:DB8:0::1 port 1 ssh2");
        assert_matches(
            &d,
            rule,
            "198.51.100.7",
            "h sshd[1]: error: PAM: Authentication failure for bob from 198.51.100.7",
        );
        assert_matches(
            &d,
            rule,
            "198.51.100.7",
            "h sshd[1]: User root from 198.51.100.7 not allowed because not listed in AllowUsers",
        );
        assert_no_rule(
            &d,
            rule,
            "May  1 00:00:01 h sshd[1]: Accepted password for root from 198.51.100.7 port 1 ssh2",
        );
    }
    // The user name cannot choose the key: sshd's own "from <addr> port N sshN" ends the line.
    assert_matches(&d, "ssh-brute-force", "192.0.2.9", "h sshd[1]: Failed password for invalid user x from 10.0.0.1 port 1 ssh2 from 192.0.2.9 port 2 ssh2");
    assert_matches(
        &d,
        "ssh-brute-force",
        "192.0.2.9",
        "h sshd[1]: Failed password for u from 192.0.2.9 port 2 ssh2: from 10.0.0.1 port 1 ssh2",
    );
    assert_matches(
        &d,
        "ssh-brute-force",
        "1.2.3.4",
        "h sshd[1]: ROOT LOGIN REFUSED FROM ::ffff:1.2.3.4",
    );
    assert_matches(
        &d,
        "ssh-brute-force",
        "example.com",
        "h sshd[1]: User x from EXAMPLE.com not allowed because listed in DenyUsers",
    );
    // "Invalid user" duplicates the failure lines of the same attempt: enumeration only.
    assert_matches(
        &d,
        "ssh-user-enumeration",
        "198.51.100.7",
        "h sshd[1]: Invalid user ftp from 198.51.100.7 port 3",
    );
    assert_no_rule(
        &d,
        "ssh-brute-force",
        "h sshd[1]: Invalid user ftp from 198.51.100.7 port 3",
    );
    assert_no_rule(
        &d,
        "ssh-brute-force",
        "h sshd[1]: input_userauth_request: invalid user root [preauth]",
    );
    assert_matches(
        &d,
        "ssh-preauth-scan",
        "198.51.100.8",
        "h sshd[1]: Did not receive identification string from 198.51.100.8 port 5",
    );
    assert_matches(
        &d,
        "ssh-preauth-scan",
        "198.51.100.8",
        "h sshd[1]: Connection closed by 198.51.100.8 port 5 [preauth]",
    );
    assert_no_rule(
        &d,
        "ssh-preauth-scan",
        "h sshd[1]: Connection closed by 198.51.100.8 port 5",
    );
}

#[test]
fn web_access_rules_match_probes_not_ordinary_requests() {
    let d = detector();
    let req = |path: &str, status: &str, ua: &str| {
        format!(
            r#"198.51.100.9 - - [01/May/2024:00:00:00 +0000] "GET {path} HTTP/1.1" {status} 10 "-" "{ua}""#
        )
    };
    assert_matches(
        &d,
        "web-path-probing",
        "198.51.100.9",
        &req("/old-page.php", "404", "x"),
    );
    assert_no_rule(&d, "web-path-probing", &req("/favicon.ico", "404", "x"));
    assert_no_rule(&d, "web-path-probing", &req("/img/logo.png", "404", "x"));
    assert_no_rule(&d, "web-path-probing", &req("/old-page.php", "200", "x"));
    assert_matches(
        &d,
        "web-sensitive-files",
        "198.51.100.9",
        &req("/.env", "404", "x"),
    );
    assert_matches(
        &d,
        "web-sensitive-files",
        "198.51.100.9",
        &req("/.git/config", "200", "x"),
    );
    assert_matches(
        &d,
        "web-sensitive-files",
        "198.51.100.9",
        &req("/backup.tar.gz", "404", "x"),
    );
    assert_no_rule(
        &d,
        "web-sensitive-files",
        &req("/docs/environment.html", "200", "x"),
    );
    assert_matches(
        &d,
        "web-sql-injection",
        "198.51.100.9",
        &req("/item?id=1%27%20UNION%20SELECT%20NULL--", "500", "x"),
    );
    assert_matches(
        &d,
        "web-sql-injection",
        "198.51.100.9",
        &req("/item?id=1+AND+SLEEP(5)", "200", "x"),
    );
    assert_matches(
        &d,
        "web-sql-injection",
        "198.51.100.9",
        &req("/login?u=admin%27%20or%20%271%27=%271", "200", "x"),
    );
    assert_no_rule(
        &d,
        "web-sql-injection",
        &req("/blog/select-from-many-options", "200", "x"),
    );
    assert_no_rule(
        &d,
        "web-sql-injection",
        &req("/search?q=o%27reilly+books", "200", "x"),
    );
    assert_matches(
        &d,
        "web-xss",
        "198.51.100.9",
        &req("/s?q=%3Cscript%3Ealert(1)%3C/script%3E", "200", "x"),
    );
    assert_matches(
        &d,
        "web-xss",
        "198.51.100.9",
        &req("/s?q=%22%3E%3Csvg/onload=alert(1)%3E", "200", "x"),
    );
    assert_no_rule(&d, "web-xss", &req("/js/script.min.js", "200", "x"));
    assert_matches(
        &d,
        "web-path-traversal",
        "198.51.100.9",
        &req("/download?f=..%2F..%2F..%2Fetc%2Fpasswd", "400", "x"),
    );
    assert_no_rule(
        &d,
        "web-path-traversal",
        &req("/docs/../index.html", "200", "x").replace("/docs/../", "/docs/"),
    );
    assert_matches(
        &d,
        "web-admin-probing",
        "198.51.100.9",
        &req("/wp-login.php", "404", "x"),
    );
    assert_matches(
        &d,
        "web-admin-probing",
        "198.51.100.9",
        &req("//phpMyAdmin/scripts/setup.php", "404", "x"),
    );
    assert_no_rule(&d, "web-admin-probing", &req("/wp-login.php", "200", "x"));
    assert_matches(
        &d,
        "web-scanner-user-agent",
        "198.51.100.9",
        &req("/", "200", "sqlmap/1.7.2#stable (https://sqlmap.org)"),
    );
    assert_matches(
        &d,
        "web-scanner-user-agent",
        "198.51.100.9",
        &req("/", "200", "Mozilla/5.00 (Nikto/2.1.6)"),
    );
    assert_no_rule(
        &d,
        "web-scanner-user-agent",
        &req("/nikto-review.html", "200", "Mozilla/5.0"),
    );
    assert_matches(
        &d,
        "web-auth-brute-force",
        "198.51.100.9",
        &req("/admin", "401", "x"),
    );
    assert_matches(
        &d,
        "web-bad-request",
        "198.51.100.9",
        r#"198.51.100.9 - - [01/May/2024:00:00:00 +0000] "\x16\x03\x01" 400 0 "-" "-""#,
    );
}

#[test]
fn web_error_log_rules_match_server_messages() {
    let d = detector();
    assert_matches(
        &d,
        "web-auth-failure",
        "192.0.2.10",
        r#"2024/05/01 00:00:00 [error] 1#1: *1 user "bob": password mismatch, client: 192.0.2.10, server: x, request: "GET / HTTP/1.1", host: "x""#,
    );
    assert_matches(
        &d,
        "web-auth-failure",
        "192.0.2.10",
        r#"2024/05/01 00:00:00 [error] 1#1: *1 user "x" was not found in "/etc/nginx/.htpasswd", client: 192.0.2.10, server: x, request: "GET / HTTP/1.1""#,
    );
    assert_matches(&d, "web-auth-failure", "192.0.2.10", "[Wed May 01 00:00:00.1 2024] [auth_basic:error] [pid 1:tid 2] [client 192.0.2.10:5000] AH01617: user bob: authentication failure for \"/\": Password Mismatch");
    // A path that contains "[client …] user x not found" cannot forge the key.
    assert_no_rule(&d, "web-auth-failure", "[Wed May 01 00:00:00 2024] [error] [client 192.0.2.10] File does not exist: /x/[client 192.0.2.99] user root not found");
    assert_matches(&d, "web-probing-errorlog", "192.0.2.10", "[Wed May 01 00:00:00 2024] [error] [client 192.0.2.10] File does not exist: /var/www/phpmyadmin");
    assert_matches(
        &d,
        "web-probing-errorlog",
        "192.0.2.10",
        r#"2024/05/01 00:00:00 [error] 1#0: *1 open() "/srv/cgi-bin/php4" failed (2: No such file or directory), client: 192.0.2.10, server: x, request: "GET /cgi-bin/php4 HTTP/1.1""#,
    );
    assert_no_rule(&d, "web-probing-errorlog", "[Wed May 01 00:00:00 2024] [error] [client 192.0.2.10] File does not exist: /var/www/favicon.ico");
    assert_matches(
        &d,
        "web-malformed-request",
        "192.0.2.10",
        "[Wed May 01 00:00:00 2024] [error] [client 192.0.2.10] Invalid method in request NOOP",
    );
    assert_matches(
        &d,
        "web-rate-limited",
        "192.0.2.10",
        r#"2024/05/01 00:00:00 [error] 1#1: *9 limiting requests, excess: 1.5 by zone "one", client: 192.0.2.10, server: x, request: "GET / HTTP/1.1""#,
    );
    assert_matches(
        &d,
        "web-upstream-errors",
        "http://127.0.0.1:3000/",
        r#"2024/05/01 00:00:00 [error] 1#1: *9 upstream timed out (110: Connection timed out) while reading response header from upstream, client: 192.0.2.10, server: x, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:3000/", host: "x""#,
    );
}

#[test]
fn system_rules_match_kernel_and_systemd_messages() {
    let d = detector();
    assert_matches(&d, "oom-kill", "db1", "May  1 00:00:00 db1 kernel: [9.1] Out of memory: Killed process 4242 (postgres) total-vm:100kB");
    assert_no_rule(
        &d,
        "oom-kill",
        "May  1 00:00:00 db1 kernel: [9.1] postgres invoked oom-killer: gfp_mask=0x100cca",
    );
    assert_matches(&d, "out-of-memory", "app1", "May  1 00:00:00 app1 java[77]: Exception in thread \"main\" java.lang.OutOfMemoryError: Java heap space");
    assert_no_rule(
        &d,
        "out-of-memory",
        "May  1 00:00:00 app1 app[77]: booked room 12 for zoom call",
    );
    assert_matches(&d, "segfault-burst", "web1,php-fpm", "May  1 00:00:00 web1 kernel: [1.0] php-fpm[123]: segfault at 0 ip 0000 sp 0000 error 4 in libc.so.6");
    assert_matches(
        &d,
        "disk-full",
        "db1",
        "May  1 00:00:00 db1 postgres[1]: could not write to file: No space left on device",
    );
    assert_matches(&d, "syn-flood", "web1,443", "May  1 00:00:00 web1 kernel: [1.0] TCP: request_sock_TCP: Possible SYN flooding on port 443. Sending cookies.");
    assert_matches(&d, "service-crash", "web1,nginx.service", "May  1 00:00:00 web1 systemd[1]: nginx.service: Main process exited, code=killed, status=9/KILL");
    assert_matches(
        &d,
        "service-crash",
        "web1,api.service",
        "May  1 00:00:00 web1 systemd[1]: api.service: Failed with result 'exit-code'.",
    );
    assert_no_rule(
        &d,
        "service-crash",
        "May  1 00:00:00 web1 systemd[1]: api.service: Succeeded.",
    );
    assert_matches(&d, "kernel-bug", "web1", "May  1 00:00:00 web1 kernel: [1.0] INFO: task jbd2/sda1-8:123 blocked for more than 120 seconds.");
    assert_matches(
        &d,
        "connection-refused-burst",
        "app1",
        "May  1 00:00:00 app1 api[9]: dial tcp 10.0.0.5:5432: connect: connection refused",
    );
    assert_matches(
        &d,
        "permission-denied-burst",
        "app1",
        "May  1 00:00:00 app1 api[9]: open /etc/secret: permission denied",
    );
    assert_matches(
        &d,
        "app-rate-limit-exceeded",
        "app1",
        "May  1 00:00:00 app1 api[9]: rate limit exceeded for client 7",
    );
    assert_matches(
        &d,
        "sql-injection-reported",
        "app1",
        "May  1 00:00:00 app1 waf[9]: SQL Injection Attack Detected via libinjection",
    );
}

#[test]
fn every_builtin_rule_has_a_matching_line_above() {
    // Guards this file: a new built-in rule must get tests here.
    let ids = detector().rule_ids();
    let this = include_str!("detect_builtin.rs");
    for id in ids {
        assert!(
            this.contains(&format!("\"{id}\"")),
            "built-in rule {id} has no test in detect_builtin.rs"
        );
    }
}

#[test]
fn windows_fire_exactly_at_threshold() {
    let ssh = |i: usize| {
        format!("May  1 00:00:{:02} h sshd[1]: Failed password for root from 198.51.100.7 port {i} ssh2", i % 60)
    };
    assert_fires_at("ssh-brute-force", 6, "198.51.100.7", &ssh);
    let enumerate = |i: usize| format!("h sshd[1]: Invalid user user{i} from 198.51.100.7 port 1");
    assert_fires_at("ssh-user-enumeration", 6, "198.51.100.7", &enumerate);
    let probe = |i: usize| {
        format!(
            r#"198.51.100.9 - - [01/May/2024:00:00:00 +0000] "GET /p{i}.php HTTP/1.1" 404 1 "-" "x""#
        )
    };
    assert_fires_at("web-path-probing", 11, "198.51.100.9", &probe);
    let sqli = |i: usize| {
        format!(
            r#"198.51.100.9 - - [01/May/2024:00:00:00 +0000] "GET /i?id={i}%20union%20select%201 HTTP/1.1" 200 1 "-" "x""#
        )
    };
    assert_fires_at("web-sql-injection", 5, "198.51.100.9", &sqli);
    let seg = |i: usize| {
        format!("May  1 00:00:00 web1 kernel: [{i}.0] worker[{i}]: segfault at 0 ip 0 sp 0 error 4 in w")
    };
    assert_fires_at("segfault-burst", 5, "web1,worker", &seg);
    let oom = |_| "May  1 00:00:00 db1 kernel: Out of memory: Killed process 1 (java)".to_owned();
    assert_fires_at("oom-kill", 1, "db1", &oom);
    let ua = |i: usize| {
        format!(
            r#"198.51.100.9 - - [01/May/2024:00:00:00 +0000] "GET /{i} HTTP/1.1" 200 1 "-" "sqlmap/1.7""#
        )
    };
    assert_fires_at("web-scanner-user-agent", 2, "198.51.100.9", &ua);
}

#[test]
fn private_sources_are_matched_but_not_counted() {
    let d = detector();
    let ssh = |i: usize| format!("h sshd[1]: Failed password for root from 10.1.2.3 port {i} ssh2");
    assert_matches(&d, "ssh-brute-force", "10.1.2.3", &ssh(1));
    assert!(feed(&d, 50, &ssh).is_empty());
}

#[test]
fn request_flood_counts_every_request_but_lists_no_line() {
    let d = detector();
    let line = |i: usize| {
        format!(
            r#"198.51.100.20 - - [01/May/2024:00:00:00 +0000] "GET /page/{i} HTTP/1.1" 200 1 "-" "x""#
        )
    };
    assert_no_rule(&d, "http-request-flood", &line(0));
    let run = |n: usize| {
        let d = detector();
        let got = Mutex::new(Vec::new());
        let mut batch = d.batch("t");
        for i in 0..n {
            // Ten requests a second.
            batch.line(T0 + i as i64 * SEC / 10, line(i).as_bytes(), &mut |_| {});
        }
        batch.flush(&|i: Incident| got.lock().unwrap().push(i));
        got.into_inner().unwrap()
    };
    assert!(run(599).iter().all(|i| i.rule != "http-request-flood"));
    let fired: Vec<_> = run(600)
        .into_iter()
        .filter(|i| i.rule == "http-request-flood")
        .collect();
    assert_eq!(fired.len(), 1);
    assert_eq!(
        (fired[0].key.as_str(), fired[0].count),
        ("198.51.100.20", 600)
    );
}

#[test]
fn every_builtin_rule_has_a_remediation() {
    let raw: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(logwarden::detect::BUILTIN_RULES).unwrap();
    let rules = raw["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), detector().rule_ids().len());
    for rule in rules {
        let text = rule["remediation"].as_str().unwrap_or_default();
        assert!(
            text.split_whitespace().count() >= 8,
            "rule {:?} needs a concrete remediation, got {text:?}",
            rule["id"]
        );
    }
}

/// One SSH burst is one attack: the fast rule fires, the slow rule defers to it
/// (`suppressed_by`) instead of raising a second incident for the same source.
#[test]
fn one_ssh_burst_raises_one_incident() {
    let ssh = |_: usize| {
        "May  1 00:00:01 h sshd[1]: Failed password for root from 198.51.100.7 port 1 ssh2"
            .to_owned()
    };
    let got = feed(&detector(), 40, &ssh);
    let rules: Vec<&str> = got.iter().map(|i| i.rule.as_str()).collect();
    assert_eq!(rules, vec!["ssh-brute-force"], "{got:#?}");
    assert_eq!(got[0].count, 40);
}
