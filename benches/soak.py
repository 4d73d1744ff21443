#!/usr/bin/env python3
"""Sustained load: does logwarden's memory stay flat?

Runs `logwarden serve` (release build, built-in rule pack, inspecting every push) in front of an
nginx sink answering 204, and `logwarden loadgen` pushing at a steady rate with SSH brute-force
lines mixed in (--attack-share) for --duration seconds. The attack lines cycle through
--attackers distinct source addresses: the default four are the planted attackers (each trips
its rules, so windows fire and cool down); a large number, such as 1000000, is a brute force
spread so thin that nearly every address is new to the detector, which then keeps as many
(rule, address) windows as `detect.max_keys` allows and evicts the least recently active.

Samples the server's resident memory every --every seconds and prints: RSS after warm-up (first
sample past 20 % of the run), at the end, the peak, the least-squares growth per minute over
the part after warm-up, the detector's tracked keys, evictions and incidents and the lines
inspected and shed (from /metrics, at the end), and the loadgen summary. Exits 1 when the RSS
at the end exceeds the warm-up RSS by more than --max-growth (default 10 %), or the peak RSS
exceeds --max-rss-mib when given.

Needs nginx (Debian package) and `cargo build --release`.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_compare import BIN, free_port, logwarden_env, nginx_conf, wait_port  # noqa: E402


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope_per_minute(samples):
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in samples) / n
    my = sum(m for _, m in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples)
    return 60 * sum((t - mx) * (m - my) for t, m in samples) / den if den else 0.0


def metric_sum(text, name):
    """Sum of every series of metric `name` in a /metrics text."""
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name + "{") or l.startswith(name + " "))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=600, help="seconds of load (default 600)")
    ap.add_argument("--rate", type=int, default=50000, help="lines per second (default 50000)")
    ap.add_argument("--batch-bytes", type=int, default=256 << 10)
    ap.add_argument("--attack-share", type=float, default=0.1)
    ap.add_argument("--attackers", type=int, default=4,
                    help="distinct attacker addresses the attack lines cycle through (default 4)")
    ap.add_argument("--max-rss-mib", type=float, help="fail when the peak RSS exceeds this")
    ap.add_argument("--every", type=int, default=10, help="seconds between RSS samples")
    ap.add_argument("--max-growth", type=float, default=0.10)
    args = ap.parse_args()
    if not shutil.which("nginx"):
        sys.exit("nginx is required (apt-get install nginx)")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="lw-soak-")
    sink_port, lw_port = free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(["nginx", "-c", nginx_conf(work, "sink", f"""
  server {{ listen 127.0.0.1:{sink_port}; location / {{ return 204; }} }}""")]))
        lw = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{lw_port}",
                               "--upstream", f"http://127.0.0.1:{sink_port}"],
                              env=logwarden_env())
        procs.append(lw)
        wait_port(sink_port)
        wait_port(lw_port)
        gen = subprocess.Popen([BIN, "loadgen", "--url", f"http://127.0.0.1:{lw_port}/loki/api/v1/push",
                                "--duration", f"{args.duration}s", "--rate", str(args.rate),
                                "--batch-bytes", str(args.batch_bytes), "--concurrency", "2",
                                "--attack-share", str(args.attack_share),
                                "--attackers", str(args.attackers), "--json"],
                               stdout=subprocess.PIPE, text=True)
        procs.append(gen)
        start = time.time()
        samples = []
        while gen.poll() is None:
            time.sleep(args.every)
            t = time.time() - start
            samples.append((t, rss_mib(lw.pid)))
            print(f"{t:6.0f} s  RSS {samples[-1][1]:7.1f} MiB", file=sys.stderr, flush=True)
        summary = json.loads(gen.stdout.read().strip().splitlines()[-1])
        time.sleep(2)  # let inspection finish the last pushes
        text = urllib.request.urlopen(f"http://127.0.0.1:{lw_port}/metrics", timeout=5).read().decode()
        warm = [s for s in samples if s[0] >= 0.2 * args.duration]
        if not warm:
            sys.exit("run too short for a verdict")
        first, last = warm[0][1], warm[-1][1]
        peak = max(m for _, m in samples)
        growth = (last - first) / first
        result = {
            "duration_s": args.duration, "rate_lines_per_s": args.rate,
            "rss_after_warmup_mib": round(first, 1), "rss_end_mib": round(last, 1),
            "rss_peak_mib": round(peak, 1), "growth": round(growth, 4),
            "slope_mib_per_min": round(slope_per_minute(warm), 3),
            "lines_acked": summary.get("lines_acked"), "requests_per_second": summary.get("requests_per_second"),
            "attackers": args.attackers,
            "detect_keys": metric_sum(text, "logwarden_detect_keys"),
            "detect_evictions": metric_sum(text, "logwarden_detect_evictions_total"),
            "incidents": metric_sum(text, "logwarden_incidents_total"),
            "lines_inspected": metric_sum(text, "logwarden_push_lines_total"),
            "inspections_shed": metric_sum(text, "logwarden_inspect_queue_dropped_total"),
        }
        print(json.dumps(result))
        if growth > args.max_growth:
            print(f"RSS grew {100 * growth:.1f} % after warm-up (limit {100 * args.max_growth:.0f} %)",
                  file=sys.stderr)
            return 1
        if args.max_rss_mib is not None and peak > args.max_rss_mib:
            print(f"peak RSS {peak:.1f} MiB over the limit of {args.max_rss_mib} MiB", file=sys.stderr)
            return 1
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
