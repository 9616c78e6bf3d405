#!/usr/bin/env python3
"""Crawl benchmark (issue 12): our engine and Scrapy on the same generated site, same run.

`crawler site` serves a generated site on 127.0.0.1 (every page links to `--fanout` new pages;
page size and per-request latency configurable). Then, for each page count in `--pages`:
- ours: `crawler dev` (single-node embedded store + master + worker in one process) with one
  task on the site: `Concurrency` and `ConcurrencyPerHost` = `--concurrency`, no delay, no
  robots.txt, `MaxPages` = the page count, one item per page (title and number) to JSONL,
  checkpoints at the defaults (every 20 pages or 10 s, incremental);
- Scrapy (installed from PyPI into a venv by this script): a spider extracting the same item and
  following the same links, `CONCURRENT_REQUESTS` and `_PER_DOMAIN` = `--concurrency`, no delay,
  `ROBOTSTXT_OBEY = False`, breadth-first FIFO queues, `CLOSESPIDER_PAGECOUNT` = the page count,
  items to a JSON lines feed.

Printed per run: pages, wall seconds and pages/s (from process start until the crawl is done),
CPU seconds (user + system, from wait4), peak RSS (ru_maxrss), bytes the process wrote to disk
(/proc/<pid>/io write_bytes, results included) per page, and for ours the bytes its checkpoints
handed to the store per page (`checkpoint_bytes` of the worker's `GET /tasks`), the store's db size
(`etcdctl endpoint status`) and the data dir's size on disk (du) when the crawl is done.

Only processes this script started are stopped (by pid). Usage:
  scripts/bench_crawl.py [--pages 10000,100000] [--concurrency 16] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_master import free_port, log  # the same helpers as the master benchmark

ROOT = Path(__file__).resolve().parent.parent
ETCDCTL = "/usr/bin/etcdctl"
STARTED: list[subprocess.Popen] = []

SPIDER = '''
import scrapy

class Bench(scrapy.Spider):
    name = "bench"

    def __init__(self, seed, **kw):
        super().__init__(**kw)
        self.start_urls = [seed]

    def parse(self, response):
        yield {
            "title": response.css("h1.title::text").get(),
            "n": response.css("span.n::text").get(),
        }
        for href in response.css("ul a::attr(href)").getall():
            yield response.follow(href, self.parse)
'''


def wait_line(p: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    assert p.stdout is not None
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {prefix!r}")
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"no {prefix!r} within {timeout} s")


def write_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reap(p: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> tuple[float, int]:
    """Stop `p` with `sig`, wait for it; (cpu seconds, peak RSS bytes)."""
    if p.poll() is None:
        p.send_signal(sig)
    deadline = time.time() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = status
            return ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024
        if time.time() > deadline:
            p.kill()
            deadline = time.time() + 10
        time.sleep(0.05)


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def http_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def run_ours(binary: Path, seed: str, pages: int, conc: int, work: Path) -> dict:
    data = work / "ours"
    data.mkdir()
    cfg = data / "bench.toml"
    cfg.write_text(
        f'logLevel = "warn"\nDataDir = "{data / "results"}"\n\n'
        f'[[Tasks]]\nName = "bench"\nURLs = ["{seed}"]\nRobots = false\nRetries = 0\n'
        f"Concurrency = {conc}\nConcurrencyPerHost = {conc}\nMaxPages = {pages}\n\n"
        '[[Tasks.Rules]]\nFollow = ["ul a"]\n'
        'Items = [{ Name = "page", Fields = [{ Name = "title", Selector = "h1.title" }, '
        '{ Name = "n", Selector = "span.n" }] }]\n'
    )
    client = free_port()
    worker_http = free_port()
    args = [
        str(binary), "dev", "--config", str(cfg), "--data-dir", str(data / "store"),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{free_port()}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{free_port()}",
        "--master-http", f"127.0.0.1:{free_port()}", "--master-grpc", f"127.0.0.1:{free_port()}",
        "--worker-http", f"127.0.0.1:{worker_http}", "--worker-grpc", f"127.0.0.1:{free_port()}",
    ]
    t0 = time.time()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    STARTED.append(p)
    while True:
        time.sleep(0.2)
        if p.poll() is not None:
            raise RuntimeError("crawler dev exited early")
        try:
            rows = http_json(f"http://127.0.0.1:{worker_http}/tasks")
        except OSError:
            continue
        row = next((r for r in rows if r.get("name") == "bench"), None)
        if row and row.get("status") == "finished":
            break
        if row and row.get("status") == "failed":
            raise RuntimeError(f"crawl failed: {row}")
    wall = time.time() - t0
    stats = row.get("stats", {})
    wrote = write_bytes(p.pid)
    status = subprocess.run(
        [ETCDCTL, f"--endpoints=127.0.0.1:{client}", "endpoint", "status", "-w", "json"],
        capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"},
    )
    db = json.loads(status.stdout)[0]["Status"]["dbSize"] if status.returncode == 0 else None
    disk = du(data / "store")
    cpu, rss = reap(p)
    got = stats.get("pages_fetched", 0)
    return {
        "who": "ours", "pages": got, "wall": wall, "cpu": cpu, "rss": rss,
        "wrote": wrote, "db": db, "disk": disk, "ckpt": stats.get("checkpoint_bytes"),
    }


def scrapy_python(work: Path) -> str:
    venv = work.parent / "scrapy-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        log("installing scrapy into a venv")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "scrapy"], check=True)
    return str(py)


def run_scrapy(py: str, seed: str, pages: int, conc: int, work: Path) -> dict:
    d = work / "scrapy"
    d.mkdir()
    spider = d / "spider.py"
    spider.write_text(SPIDER)
    feed = d / "items.jsonl"
    settings = {
        "CONCURRENT_REQUESTS": conc, "CONCURRENT_REQUESTS_PER_DOMAIN": conc,
        "DOWNLOAD_DELAY": 0, "ROBOTSTXT_OBEY": False, "CLOSESPIDER_PAGECOUNT": pages,
        "LOG_LEVEL": "WARNING", "TELNETCONSOLE_ENABLED": False, "RETRY_TIMES": 0,
        "DEPTH_PRIORITY": 1,
        "SCHEDULER_DISK_QUEUE": "scrapy.squeues.PickleFifoDiskQueue",
        "SCHEDULER_MEMORY_QUEUE": "scrapy.squeues.FifoMemoryQueue",
        "FEEDS": json.dumps({str(feed): {"format": "jsonlines"}}),
    }
    args = [py, "-m", "scrapy", "runspider", str(spider), "-a", f"seed={seed}"]
    for k, v in settings.items():
        args += ["-s", f"{k}={v}"]
    t0 = time.time()
    p = subprocess.Popen(args, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(p)
    wrote = 0
    while p.poll() is None:
        wrote = max(wrote, write_bytes(p.pid))
        time.sleep(0.2)
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = status
            break
    else:
        ru = None
    wall = time.time() - t0
    if ru is None:
        _, _, ru = os.wait4(p.pid, 0)
    got = sum(1 for _ in feed.open()) if feed.exists() else 0
    return {
        "who": "scrapy", "pages": got, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime,
        "rss": ru.ru_maxrss * 1024, "wrote": wrote, "db": None, "disk": None, "ckpt": None,
    }


def mib(b) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", default="10000,100000")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--fanout", type=int, default=10)
    ap.add_argument("--page-bytes", type=int, default=4096)
    ap.add_argument("--latency-ms", type=int, default=0)
    ap.add_argument("--only", choices=["ours", "scrapy"], default=None)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "crawler"))
    a = ap.parse_args()
    binary = Path(a.binary)
    if not binary.exists():
        log("building the release binary")
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    counts = [int(x) for x in a.pages.split(",")]
    site_port = free_port()
    site = subprocess.Popen(
        [str(binary), "site", "--listen", f"127.0.0.1:{site_port}", "--fanout", str(a.fanout),
         "--pages", str(max(counts) * 20), "--page-bytes", str(a.page_bytes),
         "--latency-ms", str(a.latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    STARTED.append(site)
    seed = wait_line(site, "synthetic site ready:").split(": ", 1)[1]
    rows = []
    try:
        py = None if a.only == "ours" else scrapy_python(Path(tempfile.gettempdir()) / "x")
        for n in counts:
            for who in ("ours", "scrapy"):
                if a.only and who != a.only:
                    continue
                with tempfile.TemporaryDirectory() as w:
                    log(f"{who}: {n} pages")
                    if who == "ours":
                        r = run_ours(binary, seed, n, a.concurrency, Path(w))
                    else:
                        r = run_scrapy(py, seed, n, a.concurrency, Path(w))
                    r["target"] = n
                    rows.append(r)
                    log(f"  {r}")
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.kill()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    print(f"\nCrawl benchmark at {commit}: fan-out {a.fanout}, {a.page_bytes}-byte pages, "
          f"{a.latency_ms} ms latency, concurrency {a.concurrency}\n")
    print("| pages | crawler | pages/s | wall s | CPU s | peak RSS MiB | disk written/page | "
          "checkpoint bytes/page | store db MiB | data dir MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_page = r["wrote"] / r["pages"] if r["pages"] else 0
        ckpt = "–" if r["ckpt"] is None else f"{r['ckpt'] / r['pages']:.0f} B"
        print(f"| {r['pages']} | {r['who']} | {r['pages'] / r['wall']:.0f} | {r['wall']:.1f} | "
              f"{r['cpu']:.1f} | {mib(r['rss'])} | {per_page / 1024:.1f} KiB | {ckpt} | "
              f"{mib(r['db'])} | {mib(r['disk'])} |")


if __name__ == "__main__":
    main()
