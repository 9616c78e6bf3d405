#!/usr/bin/env python3
"""Side-by-side benchmark: real etcd vs our store (`crawler store`), same load tool (`crawler bench`).

For each round and topology (1 node, 3 nodes) it starts both servers on loopback free ports in temp
dirs (each with its default durability: etcd fsyncs its WAL before acking, ours flushes its raft
log before acking), runs every workload against one then the other (the order alternates between
rounds), records each server's peak RSS (VmHWM from /proc/<pid>/status, summed over the members of
a cluster) after every workload, stops both, and finally prints one Markdown table of the medians
over the rounds with the ratio ours/etcd.

Only processes started by this script are signalled; its temp dirs are removed at exit. Every
server listens on 127.0.0.1 only.

Examples:
    scripts/bench.py                          # 3 rounds x 10 s, 1 and 3 nodes, all workloads
    scripts/bench.py --duration 2 --rounds 1  # quick look
    scripts/bench.py --nodes 1 --workloads put-c100,range-l
"""

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (arguments of `crawler bench` before the workload, workload and its arguments).
WORKLOADS = {
    "put-c100": "--conns 10 --clients 100 put --key-size 8 --val-size 256 --key-space 100000",
    "put-c1": "--conns 1 --clients 1 put --key-size 8 --val-size 256 --key-space 100000",
    "range-l": "--conns 10 --clients 100 range --consistency l --prefill --key-space 1000",
    "range-s": "--conns 10 --clients 100 range --consistency s --prefill --key-space 1000",
    "txn-cas": "--conns 10 --clients 100 txn-cas --key-space 1000",
    "watch-w100": "--conns 10 --clients 1 watch-latency --watchers 100 --put-rate 100",
    "lease-k100": "--conns 10 --clients 100 lease-keepalive --ttl 60",
    # The target load; not in the default set (slow on 2 cores).
    "put-c1000": "--conns 100 --clients 1000 put --key-size 8 --val-size 256 --key-space 100000",
}
DEFAULT_WORKLOADS = [w for w in WORKLOADS if w != "put-c1000"]

STARTED = []  # Popen objects of the servers this script started
TEMP_DIRS = []
USED_PORTS = set()


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in USED_PORTS:
            USED_PORTS.add(port)
            return port


def stop_process(p, grace=10.0):
    """SIGTERM one process we started, SIGKILL it if it lingers."""
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)


def cleanup():
    for p in STARTED:
        try:
            stop_process(p, grace=5.0)
        except Exception as e:  # keep cleaning the rest
            log(f"cannot stop pid {p.pid}: {e}")
    STARTED.clear()
    for d in TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)
    TEMP_DIRS.clear()


def vm_hwm_kib(pid):
    """Peak resident set size of a live process in KiB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Cluster:
    """One etcd or crawler cluster of n members on loopback."""

    def __init__(self, kind, n, crawler_bin, etcd_bin, tmp_root):
        self.kind, self.n = kind, n
        self.dir = tempfile.mkdtemp(prefix=f"bench-{kind}{n}-", dir=tmp_root)
        TEMP_DIRS.append(self.dir)
        self.procs = []
        names = [f"m{i + 1}" for i in range(n)]
        peers = {name: f"http://127.0.0.1:{free_port()}" for name in names}
        clients = {name: f"http://127.0.0.1:{free_port()}" for name in names}
        initial = ",".join(f"{name}={peers[name]}" for name in names)
        self.endpoints = [clients[name][len("http://"):] for name in names]
        for name in names:
            args = [
                "--name", name,
                "--data-dir", os.path.join(self.dir, f"{name}.data"),
                "--listen-client-urls", clients[name],
                "--advertise-client-urls", clients[name],
                "--listen-peer-urls", peers[name],
                "--initial-advertise-peer-urls", peers[name],
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"bench-{kind}",
                "--heartbeat-interval", "100",
                "--election-timeout", "1000",
            ]
            if kind == "etcd":
                cmd = [etcd_bin] + args
            else:
                cmd = [crawler_bin, "store"] + args + ["--log-level", "warn"]
            out = open(os.path.join(self.dir, f"{name}.log"), "wb")
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            out.close()
            STARTED.append(p)
            self.procs.append(p)

    def wait_healthy(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        env = dict(os.environ, ETCDCTL_API="3")
        last = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{self.kind} member exited early ({p.returncode}):\n{self.log_tail()}")
            r = subprocess.run(
                ["etcdctl", "--endpoints", ",".join(self.endpoints), "--command-timeout=2s",
                 "endpoint", "health"],
                env=env, capture_output=True, text=True)
            if r.returncode == 0:
                return
            last = r.stdout + r.stderr
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind}x{self.n} not healthy in {timeout}s: {last}\n{self.log_tail()}")

    def log_tail(self):
        tails = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".log"):
                with open(os.path.join(self.dir, name), "rb") as f:
                    tails.append(f"--- {name}\n" + f.read()[-2000:].decode(errors="replace"))
        return "\n".join(tails)

    def peak_rss_mib(self):
        vals = [vm_hwm_kib(p.pid) for p in self.procs]
        if any(v is None for v in vals):
            return None
        return sum(vals) / 1024.0

    def stop(self):
        for p in self.procs:
            stop_process(p)
            STARTED.remove(p)
        shutil.rmtree(self.dir, ignore_errors=True)
        TEMP_DIRS.remove(self.dir)


def run_bench(crawler_bin, endpoints, duration, spec):
    cmd = [crawler_bin, "bench", "--endpoints", ",".join(endpoints), "--duration", f"{duration}s"]
    cmd += spec.split()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 180)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        log(f"bench failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")
        return None
    return json.loads(lines[-1])


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return "-" if x is None else f"{x:,.{digits}f}"


def ratio(ours, etcd):
    if ours is None or etcd is None or etcd == 0:
        return "-"
    return f"{ours / etcd:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10, help="seconds per workload run (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--nodes", default="1,3", help="cluster sizes (default 1,3)")
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                    help="comma-separated list (default: all but put-c1000) of: " + ",".join(WORKLOADS))
    ap.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd", help="etcd binary")
    ap.add_argument("--crawler", default=str(ROOT / "target/release/crawler"), help="crawler binary")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    ap.add_argument("--tmp", default=None, help="parent of the servers' temp dirs (default: system temp)")
    ap.add_argument("--out", default=None, help="also write every raw result as JSON to this file")
    args = ap.parse_args()

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}")
    sizes = [int(n) for n in args.nodes.split(",")]
    servers = ["etcd", "ours"]

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))

    if not args.no_build:
        log("cargo build --release -p crawler --bin crawler")
        subprocess.run(["cargo", "build", "--release", "-p", "crawler", "--bin", "crawler"], cwd=ROOT, check=True)
    if not os.access(args.crawler, os.X_OK):
        sys.exit(f"no crawler binary at {args.crawler}")

    # results[(n, workload, server)] = list of (report or None, rss MiB after the workload)
    results = {}
    raw = []
    t0 = time.monotonic()
    for rnd in range(args.rounds):
        for n in sizes:
            order = servers if rnd % 2 == 0 else servers[::-1]
            clusters = {}
            try:
                for s in order:
                    clusters[s] = Cluster("etcd" if s == "etcd" else "crawler", n, args.crawler, args.etcd, args.tmp)
                for s in order:
                    clusters[s].wait_healthy()
                for w in workloads:
                    for s in order:
                        rep = run_bench(args.crawler, clusters[s].endpoints, args.duration, WORKLOADS[w])
                        rss = clusters[s].peak_rss_mib()
                        results.setdefault((n, w, s), []).append((rep, rss))
                        raw.append({"round": rnd + 1, "nodes": n, "workload": w, "server": s,
                                    "rss_mib": rss, "report": rep})
                        if rep:
                            log(f"round {rnd + 1} n={n} {w:<11} {s:<4}: {rep['qps']:>10.1f} qps "
                                f"p99 {rep['p99_ms']:.3f} ms errors {rep['errors']} rss {fmt(rss)} MiB")
            finally:
                for c in clusters.values():
                    c.stop()
    log(f"done in {time.monotonic() - t0:.0f} s")

    if args.out:
        with open(args.out, "w") as f:
            json.dump(raw, f, indent=1)

    print(f"\nMedians of {args.rounds} round(s), {args.duration:g} s per run. Ratio = ours/etcd "
          "(QPS: higher is better; p99 and RSS: lower is better). RSS = VmHWM after the workload, "
          "summed over members (cumulative peak of the session).\n")
    print("| nodes | workload | etcd QPS | ours QPS | QPS ratio | etcd p99 ms | ours p99 ms | p99 ratio "
          "| etcd RSS MiB | ours RSS MiB | RSS ratio | errors etcd/ours |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for w in workloads:
            row = {}
            for s in servers:
                runs = results.get((n, w, s), [])
                reps = [r for r, _ in runs if r]
                row[s] = {
                    "qps": median([r["qps"] for r in reps]),
                    "p99": median([r["p99_ms"] for r in reps]),
                    "rss": median([rss for _, rss in runs]),
                    "errors": sum(r["errors"] for r in reps),
                    "failed": sum(1 for r, _ in runs if not r),
                }
            e, o = row["etcd"], row["ours"]
            errs = f"{e['errors']}/{o['errors']}"
            if e["failed"] or o["failed"]:
                errs += f" (failed runs {e['failed']}/{o['failed']})"
            print(f"| {n} | {w} | {fmt(e['qps'])} | {fmt(o['qps'])} | {ratio(o['qps'], e['qps'])} "
                  f"| {fmt(e['p99'], 2)} | {fmt(o['p99'], 2)} | {ratio(o['p99'], e['p99'])} "
                  f"| {fmt(e['rss'])} | {fmt(o['rss'])} | {ratio(o['rss'], e['rss'])} | {errs} |")


if __name__ == "__main__":
    main()
