#!/usr/bin/env python3
"""User-space instructions per push: logwarden's serving threads and inspection against nginx.

    python3 benches/proxy_instructions.py [--batch-bytes 65536] [--concurrency 8]
                                          [--pushes 500,2500] [--config logwarden.yml]
                                          [--baseline-bin OLD/logwarden] [--no-nginx]

Wall-clock figures on a shared machine move by ±15 % from one round to the next; instruction
counts do not (the same build, inputs and environment count the same within a fraction of a
percent, whatever else runs). This runs each proxy under `valgrind --tool=callgrind`, pushes a
fixed number of batches through it with `logwarden loadgen` to a sink (nginx answering 204),
and counts the instructions each thread ran. Two runs per proxy (the two `--pushes` counts);
their difference divided by the difference in pushes is the cost per push, without start-up
and shutdown.

  nginx      one worker process (master_process off), proxy_pass with request buffering on
  logwarden  `serve` with every push inspected: serving threads and inspection threads apart
  baseline   an earlier logwarden build, the same way (with --baseline-bin)

What it does not count: the kernel's share (system calls, TCP, copies), which is most of a
proxy's CPU time for 64 KiB pushes and about the same for both (docs/benchmarks.md), and cache
misses or mispredicted branches, which cost time but no instructions. Needs valgrind and nginx
(Debian packages) and a release build (`cargo build --release`).
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_compare as pc  # noqa: E402  (free_port, wait_port, nginx_conf, BIN)


def thread_counts(prefix):
    """Per thread file of one callgrind run: (instructions, kind), kind serving/inspection/other."""
    out = []
    for path in glob.glob(prefix + "*"):
        text = open(path, errors="replace").read()
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if "logwarden::inspect::inspect_one" in text:
            kind = "inspection"
        elif "logwarden::server::" in text or "ngx_http_" in text:
            kind = "serving"
        else:
            kind = "other"
        out.append((int(total.group(1)) if total else 0, kind))
    return out


def run(kind, binary, config, pushes, args, sink_port, work):
    """Runs one proxy under callgrind for `pushes` pushes; instructions by thread kind."""
    port = pc.free_port()
    prefix = os.path.join(work, f"cg-{kind}-{pushes}")
    if kind == "nginx":
        conf = pc.nginx_conf(work, f"proxy-{pushes}", f"""
  upstream sink {{ server 127.0.0.1:{sink_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_request_buffering on; }} }}""")
        text = open(conf).read().replace("worker_processes auto;", "worker_processes 1;\nmaster_process off;")
        open(conf, "w").write(text)
        cmd = ["nginx", "-c", conf]
    else:
        cmd = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{sink_port}"]
        if config:
            cmd += ["--config", config]
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                             f"--callgrind-out-file={prefix}.%p"] + cmd,
                            env=pc.logwarden_env(), stderr=subprocess.DEVNULL)
    try:
        pc.wait_port(port, timeout=120)
        out = subprocess.run([pc.BIN, "loadgen", "--url", f"http://127.0.0.1:{port}/loki/api/v1/push",
                              "--duration", "3600s", "--batches", str(pushes),
                              "--batch-bytes", str(args.batch_bytes), "--concurrency", str(args.concurrency),
                              "--prebuilt", "16", "--max-retries", "0", "--json"], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"loadgen against {kind} failed: {out.stderr}")
        if kind == "nginx":
            time.sleep(3)
        else:
            # Under valgrind inspection lags far behind: wait until the process is idle (its CPU
            # time stops growing), without requests that the serving threads would count, then
            # check that every acknowledged line was inspected (one /metrics read in every run).
            acked = json.loads(out.stdout.strip().splitlines()[-1])["lines_acked"]
            last = -1.0
            while True:
                time.sleep(2)
                cpu = pc.cpu_seconds([proc.pid])
                if cpu - last < 0.05:
                    break
                last = cpu
            seen = pc.inspected_lines(port)
            if seen < acked:
                sys.exit(f"{kind}: only {seen:.0f} of {acked} lines were inspected (shed?)")
    finally:
        proc.send_signal(signal.SIGQUIT if kind == "nginx" else signal.SIGTERM)
        proc.wait(timeout=300)
    counts = {"serving": 0, "inspection": 0, "other": 0}
    for n, k in thread_counts(prefix):
        counts[k] += n
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-bytes", type=int, default=64 << 10)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--pushes", default="500,2500", help="the two push counts to difference")
    ap.add_argument("--config", help="logwarden config file (default: embedded defaults)")
    ap.add_argument("--baseline-bin", help="an earlier logwarden build to count beside this one")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--keep", action="store_true",
                    help="keep the callgrind files (for callgrind_annotate) and print where")
    args = ap.parse_args()
    for tool in ("valgrind", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (apt-get install {tool})")
    if not os.path.exists(pc.BIN):
        sys.exit("build first: cargo build --release")
    low, high = (int(x) for x in args.pushes.split(","))
    work = tempfile.mkdtemp(prefix="lw-instr-")
    sink_port = pc.free_port()
    sink = subprocess.Popen(["nginx", "-c", pc.nginx_conf(work, "sink", f"""
  server {{ listen 127.0.0.1:{sink_port}; location / {{ return 204; }} }}""")])
    try:
        pc.wait_port(sink_port)
        targets = [("logwarden", pc.BIN)]
        if args.baseline_bin:
            targets.append(("baseline", args.baseline_bin))
        if not args.no_nginx:
            targets.append(("nginx", None))
        per_push = {}
        for kind, binary in targets:
            a = run(kind, binary, args.config, low, args, sink_port, work)
            b = run(kind, binary, args.config, high, args, sink_port, work)
            per_push[kind] = {k: (b[k] - a[k]) / (high - low) for k in a}
        print(f"Instructions per {args.batch_bytes // 1024} KiB push at concurrency {args.concurrency} "
              f"(callgrind, {high} - {low} pushes):\n")
        print("| target | serving | inspection | whole process |")
        print("|---|---|---|---|")
        for kind, c in per_push.items():
            whole = sum(c.values())
            insp = f"{c['inspection']:,.0f}" if kind != "nginx" else "–"
            print(f"| {kind} | {c['serving']:,.0f} | {insp} | {whole:,.0f} |")
        lw = per_push["logwarden"]
        print()
        if "nginx" in per_push:
            print(f"- logwarden / nginx, serving: {lw['serving'] / per_push['nginx']['serving']:.2f}x")
        if "baseline" in per_push:
            b = per_push["baseline"]
            print(f"- logwarden / baseline: serving {lw['serving'] / b['serving']:.2f}x, "
                  f"inspection {lw['inspection'] / max(b['inspection'], 1):.2f}x")
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=10)
        if args.keep:
            print(f"\ncallgrind files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
