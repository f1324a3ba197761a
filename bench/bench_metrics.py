"""The cost of monitoring (`--metrics-address`).

- scrape: the time and size of one GET /metrics for N instances (default 1,000). The
  daemon's own status book is filled with N instances as the daemon fills it (a reconcile
  each, Ready and Live conditions), served by the daemon's listener over HTTP on
  127.0.0.1, and scraped --scrapes times; median and worst. A baseline in the same run: one
  GET /healthz on the same listener (what any HTTP answer costs here).
- idle CPU: a daemon managing --idle-instances defined (stopped) instances, idle for
  --idle-seconds, with metrics off, then with metrics on and scraped every 15 s (what
  Prometheus does); CPU seconds per idle minute of each, and their ratio. The two run one
  after the other on the same machine, in turns (off, on, off, on) for --rounds rounds.

  .venv/bin/python bench/bench_metrics.py [--instances 1000] [--scrapes 50]
      [--idle-instances 100] [--idle-seconds 60] [--rounds 2] [--scrape-only]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(HERE))

from bench_daemon import Daemon, _cpu_seconds  # noqa: E402

from reconciler.loop.results import InstanceResult, Outcome  # noqa: E402
from reconciler.loop.status import StatusBook  # noqa: E402
from reconciler.monitoring.metrics import DaemonMetrics, DaemonView, InstanceView  # noqa: E402
from reconciler.monitoring.server import MonitoringServer  # noqa: E402
from tests.helpers import free_port, manifest_document, write_base_image  # noqa: E402


def scrape_cost(count: int, scrapes: int) -> None:
    book = StatusBook(Path(tempfile.mkdtemp()) / "status.json", {})
    for index in range(count):
        name = f"web-{index}"
        book.set_desired(name, f"{name}.yaml", "running")
        result = InstanceResult(name, Outcome.CHANGED, actions=("started domain",))
        book.record_result(result, started=time.time(), triggers={"start"}, observed="running",
                           failures=0, next_retry=None, pending_restart=False)  # fmt: skip
        conditions = [{"type": kind, "status": "True", "reason": "ProbeSucceeded"}
                      for kind in ("Ready", "Live")]  # fmt: skip
        book.set_health(name, conditions)

    def view() -> DaemonView:  # as loop.monitor builds it from the book
        rows, errors = book.metrics_rows()
        return DaemonView(instances=tuple(InstanceView(*row) for row in rows),
                          manifest_errors=errors, first_pass_done=True)  # fmt: skip

    metrics = DaemonMetrics(view)
    for _ in range(count):
        metrics.reconciled("changed", "start", 0.3, None)
    port = free_port()
    server = MonitoringServer(("127.0.0.1", port), metrics, lambda: None, lambda: None)
    server.start()
    try:
        scraped = b""
        timings: dict[str, list[float]] = {"/metrics": [], "/healthz": []}
        for _round in range(scrapes + 1):
            for path, taken in timings.items():
                start = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as answer:
                    body = answer.read()
                taken.append(time.perf_counter() - start)
                if path == "/metrics":
                    scraped = body
        for path, taken in timings.items():
            taken = taken[1:]  # the first (warm-up) not counted
            median, worst = statistics.median(taken) * 1000, max(taken) * 1000
            print(f"GET {path:<9} {count} instances: median {median:7.2f} ms"
                  f"   worst {worst:7.2f} ms")  # fmt: skip
        lines = scraped.decode().splitlines()
        series = sum(1 for line in lines if line and line[0] != "#")
        size = len(scraped)
        print(f"/metrics for {count} instances: {size / 1024:.1f} KiB, {series} series "
              f"({size / count:.0f} bytes per instance)")  # fmt: skip
    finally:
        server.stop()


def idle_cpu(count: int, seconds: float, rounds: int) -> None:
    per_minute: dict[str, list[float]] = {"off": [], "on": []}
    for _round in range(rounds):
        for mode in ("off", "on"):
            per_minute[mode].append(_idle_once(count, seconds, mode == "on"))
    off, on = (statistics.median(per_minute[m]) for m in ("off", "on"))
    print(f"idle daemon, {count} defined instances, CPU s per idle minute: metrics off "
          f"{off:.3f} {per_minute['off']}, on and scraped every 15 s {on:.3f} "
          f"{per_minute['on']}; ratio on/off {on / off:.2f}")  # fmt: skip


def _idle_once(count: int, seconds: float, metrics: bool) -> float:
    root = Path(tempfile.mkdtemp(prefix="rcb-", dir="/tmp"))
    manifests, images = root / "m", root / "src"
    manifests.mkdir()
    images.mkdir()
    base, sha = write_base_image(images)
    documents = [
        manifest_document(f"rcb-idle-{i}", base, sha, state="stopped", accelerator="tcg")
        for i in range(count)
    ]
    (manifests / "idle.yaml").write_text(yaml.safe_dump_all(documents))
    port = free_port()
    extra = ["--driver", "qmp", "--resync", "10m"]
    if metrics:
        extra += ["--metrics-address", f"127.0.0.1:{port}"]
    daemon = Daemon(root, manifests, images, *extra)
    try:
        daemon.wait(lambda: _all_shutoff(daemon, count), 600, f"{count} instances defined")
        time.sleep(2)
        pid = daemon.process.pid
        before = _cpu_seconds(pid)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if metrics:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
                    answer.read()
            time.sleep(min(15.0, max(0.0, end - time.monotonic())))
        return (_cpu_seconds(pid) - before) / seconds * 60
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def _all_shutoff(daemon: Any, count: int) -> bool:
    instances = daemon.instances() or {}
    return len([i for i in instances.values() if i["observed"] == "shutoff"]) == count


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--idle-instances", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scrape-only", action="store_true")
    args = parser.parse_args()
    scrape_cost(args.instances, args.scrapes)
    if not args.scrape_only:
        idle_cpu(args.idle_instances, args.idle_seconds, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
