#!/usr/bin/env python3
"""Forwarding cost of logwarden against the anchors, measured in one run on this machine.

    python3 benches/proxy_compare.py [--duration 10] [--rounds 3] [--out FILE.md] [--config logwarden.yml]
                                     [--baseline-bin OLD/logwarden] [--baseline-config B.yml]
                                     [--rate LINES_PER_S] [--cells 65536:8,...] [--latencies-dir DIR]
    python3 benches/proxy_compare.py --pool DIR [DIR ...]   (p50/p99 over the runs kept in DIRs)

Targets, all on 127.0.0.1:
  sink       loadgen -> a sink (nginx answering 204 to everything)
  nginx      loadgen -> nginx proxy_pass (request buffering on, upstream keep-alive) -> sink
  logwarden  loadgen -> logwarden serve (inspecting every push) -> sink

For each target, 64 KiB and 1 MiB pushes (line bytes, snappy protobuf) at concurrency 1 and 8:
requests/s, MB/s (line bytes), p50/p99 latency, CPU seconds of the proxy per GB of log lines,
and the proxy's peak RSS. Without `--rate` the load generator sends as fast as each target
answers (throughput); with `--rate N` it offers N log lines/s to every target (latency at a
given load, and whether logwarden inspects every push at that rate). Each cell runs every
target `--rounds` times, interleaved in a rotating order, and reports the median round's
requests/s, latency percentiles over every push of all rounds (pooled, from loadgen's
`--latencies-out`) and the CPU over all rounds: on a shared machine a burst of other work then
lands on one round of one target, not on a whole column.
Needs nginx (Debian package) and a release build
(`cargo build --release`). Prints a Markdown table (and writes it to --out).
"""
import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "logwarden")
TICK = os.sysconf("SC_CLK_TCK")


def logwarden_env():
    """This environment without RUST_LOG: logwarden logs at its default level (info), as it is
    run in production (until the seventeenth session the benchmarks ran it at warn or error,
    which left out the per-push spans the default level then built)."""
    return {k: v for k, v in os.environ.items() if k != "RUST_LOG"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def nginx_conf(work, name, body):
    path = os.path.join(work, f"{name}.conf")
    with open(path, "w") as f:
        f.write(f"""
worker_processes auto;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_max_body_size 200m;
  client_body_buffer_size 2m;
  client_body_temp_path {work}/{name}-body;
  proxy_temp_path {work}/{name}-proxy;
  fastcgi_temp_path {work}/{name}-fcgi;
  uwsgi_temp_path {work}/{name}-uwsgi;
  scgi_temp_path {work}/{name}-scgi;
  keepalive_requests 100000;
  {body}
}}
""")
    return path


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / TICK


def inspection_cpu_seconds(pid):
    """CPU seconds of logwarden's inspection threads (named inspect-N); the rest is forwarding."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            if not open(f"/proc/{pid}/task/{task}/comm").read().startswith("inspect-"):
                continue
            fields = open(f"/proc/{pid}/task/{task}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


def peak_rss_mib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def inspected_lines(port):
    """Sum of logwarden_push_lines_total (lines logwarden decoded and inspected)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("logwarden_push_lines_total{"))


def loadgen(url, batch, conc, duration, rate, latencies_out):
    """One loadgen run; its summary, with the latency of every acknowledged push (µs) as "lat"."""
    cmd = [BIN, "loadgen", "--url", url, "--duration", f"{duration}s", "--batch-bytes", str(batch),
           "--concurrency", str(conc), "--prebuilt", "16", "--json", "--max-retries", "0",
           "--rate", str(rate), "--latencies-out", latencies_out]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"loadgen failed: {out.stderr}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    with open(latencies_out) as f:
        summary["lat"] = [float(line) for line in f]
    return summary


def percentile_ms(latencies_us, p):
    """The p-quantile (nearest rank, as loadgen's) of latencies in µs, in ms."""
    v = sorted(latencies_us)
    return v[int((len(v) - 1) * p + 0.5)] / 1000 if v else 0.0


def push_name(batch):
    """64 KiB, 1 MiB: a push size as the tables name it."""
    return f"{batch >> 20} MiB" if batch >= 1 << 20 and batch % (1 << 20) == 0 else f"{batch >> 10} KiB"


def pool(dirs):
    """p50 and p99 per cell over the latencies several runs kept, each target against nginx's."""
    cells = {}
    for d in dirs:
        for path in glob.glob(os.path.join(d, "*-*-*.txt")):
            batch, conc, target = os.path.basename(path)[:-4].split("-", 2)
            with open(path) as f:
                lat = [float(line) for line in f]
            cells.setdefault((int(batch), int(conc)), {}).setdefault(target, []).extend(lat)
    for (batch, conc), targets in sorted(cells.items()):
        ng = targets.get("nginx")
        for target, lat in sorted(targets.items()):
            if target == "nginx" or not ng:
                continue
            print(f"{push_name(batch)} c{conc} {target} / nginx over {len(dirs)} runs "
                  f"({len(lat)} / {len(ng)} pushes): p50 {percentile_ms(lat, 0.5) / percentile_ms(ng, 0.5):.2f}x, "
                  f"p99 {percentile_ms(lat, 0.99) / percentile_ms(ng, 0.99):.2f}x "
                  f"({percentile_ms(lat, 0.99):.2f} / {percentile_ms(ng, 0.99):.2f} ms)")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10, help="seconds per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (median)")
    ap.add_argument("--out")
    ap.add_argument("--config", help="logwarden config file (default: embedded defaults)")
    ap.add_argument("--baseline-bin", help="an earlier logwarden build to run beside this one (target 'baseline')")
    ap.add_argument("--baseline-config",
                    help="the baseline's config file (default: --config); with it and no --baseline-bin, "
                         "the baseline is this build with another configuration")
    ap.add_argument("--rate", type=int, default=0,
                    help="offered log lines per second in every cell (0: as fast as each target answers)")
    ap.add_argument("--cells", default="65536:1,65536:8,1048576:1,1048576:8",
                    help="push bytes:concurrency pairs to run, comma-separated")
    ap.add_argument("--latencies-dir",
                    help="also keep every push's latency (µs), per cell and target, in this directory")
    ap.add_argument("--pool", nargs="+", metavar="DIR",
                    help="measure nothing: pool the latencies kept by several runs (--latencies-dir) "
                         "and print each cell's p50 and p99 against nginx's over all of them")
    args = ap.parse_args()
    if args.pool:
        return pool(args.pool)
    cells = [tuple(int(x) for x in c.split(":")) for c in args.cells.split(",")]
    if not shutil.which("nginx"):
        sys.exit("nginx is required (apt-get install nginx)")
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="lw-bench-")
    sink_port, nginx_port = free_port(), free_port()
    procs = []
    try:
        sink = subprocess.Popen(["nginx", "-c", nginx_conf(work, "sink", f"""
  server {{ listen 127.0.0.1:{sink_port}; location / {{ return 204; }} }}""")])
        procs.append(sink)
        proxy = subprocess.Popen(["nginx", "-c", nginx_conf(work, "proxy", f"""
  upstream sink {{ server 127.0.0.1:{sink_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{
      proxy_pass http://sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering on;
    }}
  }}""")])
        procs.append(proxy)
        # Each logwarden under test: name -> (port, process). A baseline binary (an earlier
        # build) runs beside the current one, so a change is measured against it in one run.
        logwardens = {}
        bins = [("logwarden", BIN, args.config)]
        if args.baseline_bin or args.baseline_config:
            bins.append(("baseline", args.baseline_bin or BIN, args.baseline_config or args.config))
        for name, binary, config in bins:
            port = free_port()
            cmd = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{sink_port}"]
            if config:
                cmd += ["--config", config]
            # Its log (info level: a few lines) apart from the tables; shown if it does not start.
            log = os.path.join(work, f"{name}.log")
            p = subprocess.Popen(cmd, env=logwarden_env(), stderr=open(log, "wb"))
            procs.append(p)
            logwardens[name] = (port, p)
        for p in [sink_port, nginx_port]:
            wait_port(p)
        for name, (port, _) in logwardens.items():
            try:
                wait_port(port)
            except SystemExit:
                sys.stderr.write(open(os.path.join(work, f"{name}.log"), errors="replace").read())
                raise
        targets = [
            ("sink", f"http://127.0.0.1:{sink_port}/loki/api/v1/push", []),
            ("nginx", f"http://127.0.0.1:{nginx_port}/loki/api/v1/push", [proxy.pid] + children(proxy.pid)),
        ] + [(name, f"http://127.0.0.1:{port}/loki/api/v1/push", [p.pid]) for name, (port, p) in logwardens.items()]
        rows = []
        for batch, conc in cells:
            runs = {name: [] for name, _, _ in targets}
            cpu = {name: 0.0 for name, _, _ in targets}
            cpu_inspect = {name: 0.0 for name, _, _ in targets}
            requests = {name: 0 for name, _, _ in targets}
            gb = {name: 0.0 for name, _, _ in targets}
            counted = {name: [0, 0] for name, _, _ in targets}  # lines inspected, acked
            for r in range(args.rounds):
                for name, url, pids in targets[r % len(targets):] + targets[:r % len(targets)]:
                    lw = logwardens.get(name)
                    cpu0 = cpu_seconds(pids)
                    seen0 = inspected_lines(lw[0]) if lw else 0
                    insp0 = inspection_cpu_seconds(lw[1].pid) if lw else 0
                    s = loadgen(url, batch, conc, args.duration, args.rate, os.path.join(work, "latencies.txt"))
                    if lw:
                        time.sleep(1)  # let queued inspections finish
                        counted[name][0] += inspected_lines(lw[0]) - seen0
                        cpu_inspect[name] += inspection_cpu_seconds(lw[1].pid) - insp0
                    cpu[name] += cpu_seconds(pids) - cpu0
                    gb[name] += s["line_bytes_acked"] / 1e9
                    counted[name][1] += s["lines_acked"]
                    requests[name] += s["batches_acked"]
                    runs[name].append(s)
                    print(json.dumps({"target": name, "batch": batch, "conc": conc, "round": r,
                                      "rps": s["requests_per_second"], "p99": s["latency_p99_ms"]}),
                          file=sys.stderr)
            for name, _, pids in targets:
                lw = name in logwardens
                ordered = sorted(runs[name], key=lambda s: s["requests_per_second"])
                s = ordered[len(ordered) // 2]
                # Latency percentiles over every push of every round (pooled): a round's
                # p99 rests on its few slowest pushes and moves a lot from round to round.
                pooled = [x for run in runs[name] for x in run["lat"]]
                if args.latencies_dir:
                    os.makedirs(args.latencies_dir, exist_ok=True)
                    with open(os.path.join(args.latencies_dir, f"{batch}-{conc}-{name}.txt"), "w") as f:
                        f.write("".join(f"{x:.0f}\n" for x in pooled))
                rows.append({
                    "target": name, "push": push_name(batch), "conc": conc,
                    "rps": s["requests_per_second"], "mbs": s["line_bytes_acked"] / s["elapsed_seconds"] / 1e6,
                    "p50": percentile_ms(pooled, 0.50),
                    "p99": percentile_ms(pooled, 0.99),
                    "cpu_per_gb": (cpu[name] / gb[name]) if pids and gb[name] > 0 else None,
                    # CPU µs per forwarded request, split: forwarding (everything but the
                    # inspection threads) and inspection.
                    "us_fwd": 1e6 * (cpu[name] - cpu_inspect[name]) / max(requests[name], 1) if pids else None,
                    "us_insp": 1e6 * cpu_inspect[name] / max(requests[name], 1) if lw else None,
                    "rss": peak_rss_mib(pids) if pids else None,
                    "inspected": counted[name][0] / max(counted[name][1], 1) if lw else None,
                })
        lines = ["| push | conc | target | req/s | MB/s (lines) | p50 ms | p99 ms | CPU s/GB | CPU µs/req forwarding | CPU µs/req inspection | peak RSS MiB | inspected |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            cpu = f"{r['cpu_per_gb']:.2f}" if r["cpu_per_gb"] is not None else "–"
            rss = f"{r['rss']:.0f}" if r["rss"] is not None else "–"
            lines.append(f"| {r['push']} | {r['conc']} | {r['target']} | {r['rps']:.0f} | {r['mbs']:.0f} | "
                         f"{r['p50']:.2f} | {r['p99']:.2f} | {cpu} | "
                         + (f"{r['us_fwd']:.1f}" if r["us_fwd"] is not None else "–") + " | "
                         + (f"{r['us_insp']:.1f}" if r["us_insp"] is not None else "–") + f" | {rss} | "
                         + (f"{100 * r['inspected']:.0f} %" if r["inspected"] is not None else "–") + " |")
        ratios = []
        for batch, conc in cells:
            push = push_name(batch)
            cell = {r["target"]: r for r in rows if r["push"] == push and r["conc"] == conc}
            lw, ng = cell["logwarden"], cell["nginx"]
            if "baseline" in cell:
                b = cell["baseline"]
                ratios.append(f"{push} c{conc} logwarden / baseline: req/s {lw['rps'] / b['rps']:.2f}x, "
                              f"p99 {lw['p99'] / b['p99']:.2f}x")
            ratios.append(f"{push} c{conc}: req/s {lw['rps'] / ng['rps']:.2f}x, p50 {lw['p50'] / ng['p50']:.2f}x, "
                          f"p99 {lw['p99'] / ng['p99']:.2f}x, inspected {100 * lw['inspected']:.0f} %, "
                          f"forwarding CPU per request {lw['us_fwd'] / ng['us_fwd']:.2f}x")
        offered = f"Offered: {args.rate} lines/s in every cell.\n\n" if args.rate else "Offered: as fast as each target answers.\n\n"
        table = offered + "\n".join(lines) + "\n\nMedian rounds, logwarden / nginx unless named:\n" + "\n".join(f"- {r}" for r in ratios)
        print(table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
