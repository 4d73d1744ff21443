//! `logwarden scan` end to end: the examples give the incidents a user expects, `--emit matches`
//! prints one object per (line, rule), stdin works, and bad rules fail with a clear message.

use std::io::Write;
use std::process::{Command, Stdio};

fn scan(args: &[&str], stdin: Option<&str>) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_logwarden"))
        .arg("scan")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

fn incidents(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn examples_give_the_expected_incidents_and_nothing_about_ordinary_traffic() {
    let (out, err, ok) = scan(&["--format", "json", "examples/"], None);
    assert!(ok, "{err}");
    let got: Vec<(String, String)> = incidents(&out)
        .iter()
        .map(|i| {
            (
                i["rule"].as_str().unwrap().to_owned(),
                i["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("ssh-brute-force", "203.0.113.42"),
        ("ssh-user-enumeration", "203.0.113.42"),
        ("web-path-probing", "192.0.2.55"),
        ("web-sensitive-files", "192.0.2.55"),
        ("web-sql-injection", "203.0.113.99"),
        ("oom-kill", "db1"),
    ] {
        assert!(
            got.iter()
                .any(|(r, k)| (r.as_str(), k.as_str()) == expected),
            "missing {expected:?} in {got:?}"
        );
    }
    // Ordinary clients (198.51.100.x in the examples) never appear as a key.
    assert!(
        got.iter().all(|(_, k)| !k.starts_with("198.51.100.")),
        "{got:?}"
    );
    let first = &incidents(&out)[0];
    for field in [
        "id",
        "rule",
        "severity",
        "key",
        "count",
        "first_seen",
        "last_seen",
        "labels",
        "samples",
        "logql",
    ] {
        assert!(!first[field].is_null(), "incident lacks {field}: {first}");
    }
    assert!(first["labels"]["filename"]
        .as_str()
        .unwrap()
        .starts_with("examples/"));
    assert!(err.contains("scanned 1378 lines in 6 file(s)"), "{err}");
}

#[test]
fn text_report_is_readable() {
    let (out, _, ok) = scan(&["examples/auth.log"], None);
    assert!(ok);
    assert!(
        out.contains("[HIGH] ssh-brute-force: Repeated failed SSH logins from one source"),
        "{out}"
    );
    assert!(out.contains("key 203.0.113.42 (ip), 24 events"), "{out}");
    assert!(
        out.contains(r#"logql: {filename="examples/auth.log"} |= "203.0.113.42""#),
        "{out}"
    );
}

#[test]
fn emit_matches_prints_one_object_per_line_and_rule() {
    let log = "May  1 00:00:00 h sshd[1]: Accepted password for a from 192.0.2.1 port 1 ssh2\n\
               May  1 00:00:01 h sshd[1]: Failed password for root from 192.0.2.9 port 2 ssh2\n\
               May  1 00:00:02 h sshd[1]: Disconnecting: Too many authentication failures [preauth]\n";
    let (out, err, ok) = scan(&["--emit", "matches", "--format", "json", "-"], Some(log));
    assert!(ok, "{err}");
    let rows = incidents(&out);
    assert!(rows.iter().all(|r| r["source"] == "-"));
    assert!(rows
        .iter()
        .any(|r| r["line"] == 2 && r["rule"] == "ssh-brute-force" && r["key"] == "192.0.2.9"));
    assert!(rows
        .iter()
        .any(|r| r["line"] == 3 && r["rule"] == "ssh-brute-force" && r["key"].is_null()));
    assert!(!rows.iter().any(|r| r["line"] == 1), "{out}");
}

#[test]
fn no_builtin_with_user_rules_and_bad_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("r.yml");
    std::fs::write(&rules, "rules:\n  - id: teapot\n    severity: low\n    match: {any: [teapot]}\n    aggregate: {threshold: 1, window: 1s, cooldown: 1s}\n").unwrap();
    let r = rules.to_str().unwrap();
    let (out, _, ok) = scan(
        &[
            "--no-builtin",
            "--rules",
            r,
            "--emit",
            "matches",
            "--format",
            "json",
            "-",
        ],
        Some("I am a teapot\nFailed password for root from 192.0.2.9 port 2 ssh2\n"),
    );
    assert!(ok);
    assert_eq!(
        out.trim(),
        r#"{"key":"","line":1,"rule":"teapot","source":"-"}"#
    );
    std::fs::write(&rules, "rules:\n  - id: teapot\n    severity: urgent\n").unwrap();
    let (_, err, ok) = scan(&["--rules", r, "-"], Some(""));
    assert!(!ok);
    assert!(
        err.contains("detect.rules[0]") && err.contains("severity"),
        "{err}"
    );
}
