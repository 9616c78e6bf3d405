#!/usr/bin/env python3
"""Master-level figures (issue 5): failover, assignment, worker churn.

Runs `crawler master` processes on our embedded store and on a real etcd 3.4 (`/usr/bin/etcd`),
same machine, same run, and prints one Markdown table per scenario. Workers are not processes:
they are go-micro registry entries written with `etcdctl` on their own leases, exactly the keys a
`crawler worker` writes (`/micro/registry/go.micro.server.worker/<node id>`).

Scenarios:
- failover: 3 masters (embedded: each embeds one member of a 3-member store; etcd: 3 masters on
  one etcd), N resources added through the HTTP API, then `--rounds` times: kill -9 the leader
  master, poll the survivors every 50 ms until one says `/health` leader+ready and its
  `/crawler/resources` lists all N; then restart the killed master and wait until it answers.
- assign: 1 master (embedded single-member store, or on one etcd), W workers registered, R
  resources written unassigned straight into `/resources/` (etcdctl txns of 100 puts), then one
  more worker registers (which makes the leader reconcile at once): time until every resource is
  assigned, counted from the master's `resource assigned` log lines, checked against the store.
  Also: the HTTP add rate with an empty store vs with R resources stored (the add path reads the
  whole `/resources/` prefix per add).
- churn (same cluster, after assign): W new workers join (time until the master's worker set has
  them all), then the W old workers leave (their leases revoked): time until the set drops them
  and every resource has been moved to a live worker.

Only processes this script started are stopped (by pid). Usage:
  scripts/bench_master.py [--resources 10000] [--workers 1000] [--failover-resources 1000]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client as httpc
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
WORKER_SERVICE = "go.micro.server.worker"
REG_PREFIX = f"/micro/registry/{WORKER_SERVICE}/"
STARTED: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], logfile: Path) -> subprocess.Popen:
    f = open(logfile, "ab")
    env = dict(os.environ, RUST_LOG="info")
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env)
    STARTED.append(p)
    return p


def stop(p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def http(addr: str, method: str, path: str, body: dict | None = None, timeout: float = 5.0):
    """(status, json or None); None on connection failure."""
    host, port = addr.rsplit(":", 1)
    try:
        c = httpc.HTTPConnection(host, int(port), timeout=timeout)
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        raw = r.read()
        c.close()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, None
    except OSError:
        return None


def health(addr: str):
    r = http(addr, "GET", "/health", timeout=1.0)
    if r is None or r[0] != 200 or not r[1]:
        return None
    return bool(r[1].get("leader")), bool(r[1].get("ready"))


def etcdctl(endpoints: str, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoints}", "--command-timeout=30s", *args],
        input=stdin, capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"),
    )
    if r.returncode != 0:
        raise RuntimeError(f"etcdctl {args[:2]} failed: {r.stderr.strip()}")
    return r.stdout


def wait_until(cond, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def write_config(d: Path) -> Path:
    p = d / "crawler.toml"
    p.write_text('logLevel = "info"\n')  # no tasks, default [MasterServer] (SessionTTL 5 s)
    return p


class Backend:
    """Either an etcd started here, or nothing (masters embed store members)."""

    def __init__(self, kind: str, d: Path):
        self.kind, self.dir, self.proc, self.client = kind, d, None, None

    def start_etcd(self) -> None:
        c, p = free_port(), free_port()
        self.client = f"127.0.0.1:{c}"
        self.proc = spawn([
            ETCD, "--name", "e1", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
            "--listen-peer-urls", f"http://127.0.0.1:{p}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
            "--initial-cluster", f"e1=http://127.0.0.1:{p}", "--heartbeat-interval", "100", "--election-timeout", "1000",
        ], self.dir / "etcd.log")
        wait_until(lambda: subprocess.run([ETCDCTL, f"--endpoints={self.client}", "endpoint", "health"],
                                          capture_output=True).returncode == 0, 30, "etcd health", 0.2)


class Master:
    def __init__(self, i: int, d: Path, config: Path, store_args: list[str], etcd: str | None):
        self.i, self.dir = i, d
        self.http, self.grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.log = d / f"master{i}.log"
        self.args = [str(CRAWLER), "master", f"--id={i}", f"--http={self.http}", f"--grpc={self.grpc}",
                     "--config", str(config)]
        self.args += ["--etcd-endpoints", etcd] if etcd else store_args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = spawn(self.args, self.log)

    def kill9(self) -> None:
        if self.proc:
            stop(self.proc, signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_masters(kind: str, d: Path, n: int) -> tuple[list[Master], str, Backend]:
    """n masters; returns (masters, client endpoints for etcdctl, backend)."""
    config = write_config(d)
    be = Backend(kind, d)
    ms = []
    if kind == "etcd":
        be.start_etcd()
        ms = [Master(i + 1, d, config, [], be.client) for i in range(n)]
        endpoints = be.client
    else:
        ports = [(free_port(), free_port()) for _ in range(n)]
        cluster = ",".join(f"n{i + 1}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
        for i, (c, p) in enumerate(ports):
            ms.append(Master(i + 1, d, config, [
                "--name", f"n{i + 1}", "--data-dir", str(d / f"n{i + 1}"),
                "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
                "--listen-peer-urls", f"http://127.0.0.1:{p}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "bench-master", "--heartbeat-interval", "100", "--election-timeout", "1000",
            ], None))
        endpoints = ",".join(f"127.0.0.1:{c}" for c, _ in ports)
    for m in ms:
        m.start()
    wait_until(lambda: ready_leader(ms), 60, "a ready master leader", 0.1)
    return ms, endpoints, be


def ready_leader(ms: list[Master], skip: int | None = None) -> Master | None:
    for j, m in enumerate(ms):
        if j != skip and m.proc and m.proc.poll() is None and health(m.http) == (True, True):
            return m
    return None


def add_resources(addr: str, names: list[str], threads: int = 8) -> float:
    """POST each name through the HTTP API, `threads` at a time; returns seconds."""
    def one(name: str) -> None:
        for _ in range(20):
            r = http(addr, "POST", "/crawler/resource", {"name": name}, timeout=30)
            if r and r[0] in (200, 409):
                return
            time.sleep(0.2)
        raise RuntimeError(f"adding {name} failed: {r}")
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, names))
    return time.monotonic() - t0


def resource_count(addr: str) -> int:
    r = http(addr, "GET", "/crawler/resources", timeout=5)
    if not r or r[0] != 200 or r[1] is None:
        return -1
    body = r[1]
    items = body.get("resources", body) if isinstance(body, dict) else body
    return len(items) if isinstance(items, list) else -1


# ---------------------------------------------------------------- workers as registry entries


def node_json(node_id: str, port: int) -> str:
    svc = {"name": WORKER_SERVICE, "version": "latest", "metadata": None, "endpoints": [],
           "nodes": [{"id": node_id, "address": f"127.0.0.1:{port}", "metadata": {"registry": "etcd"}}]}
    return json.dumps(svc, separators=(",", ":"))


def txn_puts(endpoints: str, puts: list[tuple[str, str, str | None]], batch: int = 100, threads: int = 4) -> None:
    """Write (key, value, lease hex or None) with etcdctl txns of `batch` puts."""
    def one(chunk):
        lines = []
        for k, v, lease in chunk:
            # etcdctl's txn parser splits on spaces and honours double quotes; JSON has no spaces.
            q = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"put {'--lease=' + lease + ' ' if lease else ''}{k} {q}")
        # Empty compares, the puts as the success branch, an empty failure branch.
        out = etcdctl(endpoints, "txn", stdin="\n" + "\n".join(lines) + "\n\n\n")
        if not out.startswith("SUCCESS") or out.count("OK") != len(chunk):
            raise RuntimeError(f"txn did not write all puts: {out[:200]}")
    chunks = [puts[i:i + batch] for i in range(0, len(puts), batch)]
    with cf.ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, chunks))


def register_workers(endpoints: str, ids: list[str], threads: int = 8) -> dict[str, str]:
    """Each worker as a real one registers: its own lease, then one put on it (one revision per
    worker; see BENCHMARKS.md for why not batched in txns)."""
    def one(k_id):
        k, node_id = k_id
        out = etcdctl(endpoints, "lease", "grant", "900")
        lease = re.search(r"lease ([0-9a-f]+) granted", out).group(1)
        etcdctl(endpoints, "put", f"--lease={lease}", REG_PREFIX + node_id, node_json(node_id, 20000 + k % 40000))
        return lease
    with cf.ThreadPoolExecutor(threads) as ex:
        return dict(zip(ids, ex.map(one, enumerate(ids))))


def revoke(endpoints: str, leases: list[str], threads: int = 8) -> None:
    with cf.ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda l: etcdctl(endpoints, "lease", "revoke", l), leases))


class LogSet:
    """The worker set a master logged (`worker joined: [..], leaved: [..]`) and counters of
    assignment lines, read incrementally from its log file."""

    JOIN = re.compile(r"worker joined: \[([^\]]*)\], leaved: \[([^\]]*)\]")

    def __init__(self, path: Path):
        self.path, self.pos, self.workers = path, 0, set()
        self.assigned = self.reassigned = 0
        self.first_bulk = self.last_bulk = ""
        self.bulk_assigned = 0

    def poll(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.pos += end + 1
        for line in data[:end].decode(errors="replace").splitlines():
            m = self.JOIN.search(line)
            if m:
                self.workers |= set(m.group(1).split())
                self.workers -= set(m.group(2).split())
            elif "resource assigned" in line:
                self.assigned += 1
                if "resource=r" in line:
                    self.bulk_assigned += 1
                    # First and last assignment of the bulk resources (log timestamps, UTC).
                    ts = line.split(" ", 1)[0]
                    self.first_bulk = self.first_bulk or ts
                    self.last_bulk = ts
            elif "resource reassigned" in line:
                self.reassigned += 1


def span(a: str, b: str) -> float:
    """Seconds between two log timestamps like 2026-11-25T10:04:21.330752Z."""
    if not (a and b):
        return float("nan")
    return (datetime.fromisoformat(b.rstrip("Z")[:26]) - datetime.fromisoformat(a.rstrip("Z")[:26])).total_seconds()


def store_assignment(endpoints: str, live: set[str]) -> tuple[int, int, int]:
    """(resources, assigned, assigned to a live worker) read from the store."""
    out = etcdctl(endpoints, "get", "--prefix", "/resources/", "--print-value-only")
    total = assigned = on_live = 0
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        total += 1
        a = json.loads(line).get("AssignedNode", "")
        if a:
            assigned += 1
            if a.split("|", 1)[0] in live:
                on_live += 1
    return total, assigned, on_live


def rss_mib(p: subprocess.Popen) -> float:
    try:
        for line in open(f"/proc/{p.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------- scenarios


def failover(kind: str, n_res: int, rounds: int) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"bench-failover-{kind}-"))
    try:
        ms, endpoints, be = start_masters(kind, d, 3)
        register_workers(endpoints, [f"{WORKER_SERVICE}-f{i}" for i in range(10)])
        leader = ready_leader(ms)
        add_s = add_resources(leader.http, [f"f{i:06d}" for i in range(n_res)])
        log(f"failover/{kind}: {n_res} adds via HTTP in {add_s:.1f}s")
        times = []
        for r in range(rounds):
            leader = wait_until(lambda: ready_leader(ms), 60, "ready leader", 0.05)
            li = ms.index(leader)
            leader.kill9()
            t0 = time.monotonic()

            def done():
                m = ready_leader(ms, li)
                return m if m and resource_count(m.http) == n_res else None
            new = wait_until(done, 60, "failover", 0.05)
            dt = time.monotonic() - t0
            times.append(dt)
            log(f"failover/{kind} round {r + 1}: master{leader.i} killed, master{new.i} ready with all {n_res} in {dt:.2f}s")
            leader.start()
            wait_until(lambda: health(leader.http) is not None, 60, "restarted master", 0.1)
        return {"kind": kind, "resources": n_res, "add_s": add_s, "times": times}
    finally:
        cleanup(d)


def assign_and_churn(kind: str, n_res: int, n_workers: int, api_adds: int) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"bench-assign-{kind}-"))
    out: dict = {"kind": kind, "resources": n_res, "workers": n_workers}
    try:
        ms, endpoints, be = start_masters(kind, d, 1)
        m = ms[0]
        ls = LogSet(m.log)
        # API add rate on an empty store (no workers yet: the add reads /resources/, then writes).
        out["add_empty_s"] = add_resources(m.http, [f"a{i:06d}" for i in range(api_adds)], threads=8)
        log(f"assign/{kind}: {api_adds} HTTP adds on an almost empty store in {out['add_empty_s']:.1f}s")
        # W workers.
        old_ids = [f"{WORKER_SERVICE}-a{i}" for i in range(n_workers)]
        t0 = time.monotonic()
        old = register_workers(endpoints, old_ids)
        out["register_s"] = time.monotonic() - t0

        def all_in():
            ls.poll()
            return ls.workers >= set(old_ids)
        wait_until(all_in, 120, "workers in the master's set", 0.1)
        out["workers_seen_s"] = time.monotonic() - t0
        log(f"assign/{kind}: {n_workers} workers registered in {out['register_s']:.1f}s, all in the master's set after {out['workers_seen_s']:.1f}s")
        # R unassigned resources straight into the store.
        now = time.time_ns()
        t1 = time.monotonic()
        txn_puts(endpoints, [(f"/resources/r{i:07d}", json.dumps(
            {"ID": str(10**15 + i), "Name": f"r{i:07d}", "AssignedNode": "", "CreationTime": now + i},
            separators=(",", ":")), None) for i in range(n_res)])
        out["write_s"] = time.monotonic() - t1
        log(f"assign/{kind}: {n_res} unassigned resources written in {out['write_s']:.1f}s")
        # The extra worker makes the leader reconcile now (it would within the 10 s resync anyway).
        trigger = f"{WORKER_SERVICE}-trigger"
        t2 = time.monotonic()
        register_workers(endpoints, [trigger])

        def assigned():
            ls.poll()
            # Bulk resources only: the 10 s resync may start assigning while they are written.
            return ls.bulk_assigned >= n_res
        wait_until(assigned, 1800, "assignment", 0.2)
        out["assign_s"] = time.monotonic() - t2
        live = set(old_ids) | {trigger}
        out["check_assign"] = store_assignment(endpoints, live)
        out["assign_span_s"] = span(ls.first_bulk, ls.last_bulk)
        log(f"assign/{kind}: {n_res} assigned in {out['assign_s']:.1f}s after the trigger (first to last "
            f"assignment in the log: {out['assign_span_s']:.1f}s); store says {out['check_assign']}")
        # API add rate with R resources stored.
        out["add_full_s"] = add_resources(m.http, [f"b{i:06d}" for i in range(api_adds)], threads=8)
        log(f"assign/{kind}: {api_adds} HTTP adds with {n_res} stored in {out['add_full_s']:.1f}s")
        total = n_res + 2 * api_adds

        # Churn: W new workers join...
        new_ids = [f"{WORKER_SERVICE}-b{i}" for i in range(n_workers)]
        t3 = time.monotonic()
        register_workers(endpoints, new_ids)

        def joined():
            ls.poll()
            return ls.workers >= set(new_ids)
        wait_until(joined, 300, "joined workers", 0.1)
        out["join_s"] = time.monotonic() - t3
        log(f"churn/{kind}: {n_workers} joined, in the set after {out['join_s']:.1f}s")
        # ...then the W old ones leave (the trigger worker stays).
        ls.poll()
        base_re = ls.reassigned
        live = set(new_ids)
        # Resources that must move: those on the workers about to leave.
        expected = total - store_assignment(endpoints, live | {trigger})[2]
        out["to_move"] = expected
        t4 = time.monotonic()
        revoke(endpoints, list(old.values()))
        out["revoke_s"] = time.monotonic() - t4

        def left():
            ls.poll()
            return not (ls.workers & set(old_ids))
        wait_until(left, 300, "left workers", 0.1)
        out["left_seen_s"] = time.monotonic() - t4

        def settled():
            # Count the master's log lines first; read the whole store only once they are in.
            ls.poll()
            if ls.reassigned - base_re < expected:
                return False
            t, a, on = store_assignment(endpoints, live | {trigger})
            return on == t
        wait_until(settled, 1800, "reassignment", 0.2)
        out["leave_settle_s"] = time.monotonic() - t4
        ls.poll()
        out["reassigned"] = ls.reassigned - base_re
        out["check_churn"] = store_assignment(endpoints, live | {trigger})
        out["master_rss_mib"] = rss_mib(m.proc)
        out["etcd_rss_mib"] = rss_mib(be.proc) if be.proc else None
        log(f"churn/{kind}: {n_workers} left; revokes took {out['revoke_s']:.1f}s, set without them after "
            f"{out['left_seen_s']:.1f}s, all {total} on live workers after {out['leave_settle_s']:.1f}s "
            f"({out['reassigned']} reassigned); store says {out['check_churn']}")
        return out
    finally:
        cleanup(d)


def cleanup(d: Path) -> None:
    for p in list(STARTED):
        stop(p)
        STARTED.remove(p)
    keep = os.environ.get("BENCH_KEEP")
    if keep:
        log(f"kept {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    global CRAWLER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crawler", default=str(ROOT / "target/release/crawler"))
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    ap.add_argument("--failover-resources", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resources", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--api-adds", type=int, default=300)
    ap.add_argument("--scenarios", default="failover,assign")
    ap.add_argument("--backends", default="embedded,etcd")
    ap.add_argument("--out", help="write all results as JSON here")
    a = ap.parse_args()
    # SIGTERM runs the cleanup below too (stops only the processes this script started).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.build:
        subprocess.run(["cargo", "build", "--release", "-p", "crawler"], cwd=ROOT, check=True)
    CRAWLER = Path(a.crawler)
    backends = a.backends.split(",")
    res: dict = {"failover": [], "assign": []}
    try:
        for sc in a.scenarios.split(","):
            for kind in backends:
                if sc == "failover":
                    res["failover"].append(failover(kind, a.failover_resources, a.rounds))
                elif sc == "assign":
                    res["assign"].append(assign_and_churn(kind, a.resources, a.workers, a.api_adds))
    finally:
        for p in STARTED:
            stop(p)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    if res["failover"]:
        print("\n| backend | resources | kill -9 → ready with all: median s | max s | rounds |")
        print("|---|---:|---:|---:|---|")
        for f in res["failover"]:
            t = f["times"]
            print(f"| {f['kind']} | {f['resources']} | {statistics.median(t):.2f} | {max(t):.2f} | "
                  f"{', '.join(f'{x:.2f}' for x in t)} |")
    if res["assign"]:
        print("\n| backend | workers | resources | register W s | W in master set s | assign all s | "
              f"first→last assigned s | {a.api_adds} adds empty s | {a.api_adds} adds at R s | W join seen s | W leave: revokes s | "
              "leave seen s | all on live s | master RSS MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in res["assign"]:
            print(f"| {r['kind']} | {r['workers']} | {r['resources']} | {r['register_s']:.1f} | {r['workers_seen_s']:.1f} | "
                  f"{r['assign_s']:.1f} | {r.get('assign_span_s', float('nan')):.1f} | {r['add_empty_s']:.1f} | {r['add_full_s']:.1f} | {r['join_s']:.1f} | "
                  f"{r['revoke_s']:.1f} | {r['left_seen_s']:.1f} | {r['leave_settle_s']:.1f} | {r['master_rss_mib']:.0f} |")


CRAWLER = ROOT / "target/release/crawler"

if __name__ == "__main__":
    main()
