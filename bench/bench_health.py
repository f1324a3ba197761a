"""Health: how long `--once --wait` takes to a ready test guest, and what the probes cost an
idle daemon managing 100 ready instances.

  - wait: the test guest (services at once, readiness `http` on its forwarded port 80) from
    nothing to ready with `reconcile --once --wait`, against `reconcile --once` alone (the
    start, without waiting) in the same round; both as processes, a `state: absent` pass (not
    measured) between rounds. The difference is the guest's boot to its service.
  - idle: the daemon's controller (the product's own, in this process) over 100 running
    instances of the in-memory driver, each with a readiness `tcp` probe on its forward to
    port 22 (a real TCP listener on 127.0.0.1 per instance, which speaks first as sshd does)
    and a liveness `exec` probe answered by the driver's scripted guest agent, at Kubernetes'
    default period (10 s); against the same instances without probes. CPU seconds per minute
    of the process and resident memory, after a warm-up minute. No QEMU: what is measured is
    the prober's own cost, not a guest's.

    .venv/bin/python bench/bench_health.py [--rounds 3] [--instances 100] [--seconds 60]
        [--wait-only | --idle-only] [--driver libvirt|qmp]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from reconciler.images.sources import SourcePolicy  # noqa: E402
from reconciler.loop.controller import Controller, DaemonOptions  # noqa: E402
from reconciler.loop.names import Trigger  # noqa: E402
from reconciler.loop.reconcile import Settings  # noqa: E402
from reconciler.statedir import StateDir  # noqa: E402
from reconciler.testing.fake import FakeDriver  # noqa: E402
from tests.guest import guest_image  # noqa: E402
from tests.helpers import free_port, manifest_document, write_base_image  # noqa: E402

CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


# -- wait -------------------------------------------------------------------------------------


def run(command: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=CHILD_ENV, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started, done.stdout


def bench_wait(rounds: int, driver: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="rbh-", dir="/tmp"))
    try:
        image = guest_image("qcow2")
        manifests = root / "m"
        manifests.mkdir()
        port = free_port()

        def write(state: str) -> None:
            document = manifest_document(
                "rbh-guest", image, None, "qcow2", state=state, memory="128MiB",
                networks=[{"type": "user", "ports": [{"host": port, "guest": 80}]}],
                readiness={"http": {"port": 80}, "periodSeconds": 1, "timeoutSeconds": 2},
            )  # fmt: skip
            (manifests / "guest.yaml").write_text(yaml.safe_dump(document))

        base = [sys.executable, "-m", "reconciler", "--state-dir", str(root / "s"),
                "--image-dir", str(image.parent), "--driver", driver]  # fmt: skip
        once, waited, after = [], [], []
        for turn in range(rounds + 1):
            write("running")
            seconds, _out = run([*base, "--once", str(manifests)])
            write("absent")
            run([*base, "--once", str(manifests)])
            write("running")
            total, out = run([*base, "--once", "--wait=5m", str(manifests)])
            write("absent")
            run([*base, "--once", str(manifests)])
            if turn == 0:
                continue  # warm-up: the embedded root's first open, the image cache
            match = re.search(r"ready: rbh-guest \(after ([0-9.]+)s\)", out)
            once.append(seconds)
            waited.append(total)
            after.append(float(match.group(1)) if match else float("nan"))
            print(f"round {turn}: --once {seconds:.2f} s, --once --wait {total:.2f} s "
                  f"(ready {after[-1]:.1f} s after the pass)", flush=True)  # fmt: skip
        median = statistics.median
        print(f"\nwait ({driver}, {rounds} rounds, medians): --once {median(once):.2f} s; "
              f"--once --wait {median(waited):.2f} s; the wait itself {median(after):.1f} s "
              f"(min {min(after):.1f}, max {max(after):.1f})")  # fmt: skip
    finally:
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "from tests.e2e.conftest import destroy_domains; "
                        "from pathlib import Path; destroy_domains(Path(sys.argv[2]))",
                        str(PROJECT), str(root / "s")], check=False, cwd=PROJECT)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


# -- idle -------------------------------------------------------------------------------------


class Banners:
    """A TCP listener per port on 127.0.0.1 that greets each connection and closes it (the
    guests' sshd, as far as a tcp probe can tell)."""

    def __init__(self, ports: list[int]) -> None:
        self._selector = selectors.DefaultSelector()
        self._listeners = []
        for port in ports:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(16)
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ)
            self._listeners.append(listener)
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _events in self._selector.select(0.2):
                listener: Any = key.fileobj
                try:
                    connection, _address = listener.accept()
                except BlockingIOError:
                    continue
                with connection:
                    connection.sendall(b"SSH-2.0-bench\r\n")

    def close(self) -> None:
        self._stop.set()
        for listener in self._listeners:
            listener.close()


def agent(_command: str, _arguments: dict[str, Any] | None) -> Any:
    if _command == "guest-exec":
        return {"pid": 1}
    if _command == "guest-exec-status":
        return {"exited": True, "exitcode": 0}
    return []


def idle_cost(instances: int, seconds: float, probes: bool) -> tuple[float, float, float]:
    """(CPU seconds per minute, resident MiB at the end, checks made) of the controller over
    `instances` running instances of the in-memory driver."""
    root = Path(tempfile.mkdtemp(prefix="rbi-", dir="/tmp"))
    manifests = root / "m"
    manifests.mkdir()
    base, sha = write_base_image(root)
    ports = [free_port() for _ in range(instances)]
    server = Banners(ports) if probes else None
    for index, port in enumerate(ports):
        extra: dict[str, Any] = {
            "networks": [{"type": "user", "ports": [{"host": port, "guest": 22}]}],
            "guestAgent": True,
        }
        if probes:
            extra["readiness"] = {"tcp": {"port": 22}}
            extra["liveness"] = {"exec": {"command": ["systemctl", "is-system-running"]}}
        document = manifest_document(f"rbi-{index:03d}", base, sha, **extra)
        (manifests / f"rbi-{index:03d}.yaml").write_text(yaml.safe_dump(document))
    state = StateDir(root / "s")
    state.create()
    driver = FakeDriver()
    settings = Settings(sources=SourcePolicy((root,)))
    controller = Controller(driver, state, settings, DaemonOptions(manifests))
    controller.attach()
    controller.reload(Trigger.START)
    controller.reconcile_ready()
    for domain in driver.domains.values():
        domain.agent = agent
    stop = threading.Event()
    thread = threading.Thread(target=controller.prober.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(min(60.0, seconds))  # warm-up: every probe checked at least once
    checks_before = _checks(controller)
    cpu_before = _cpu()
    time.sleep(seconds)
    cpu = _cpu() - cpu_before
    checks = _checks(controller) - checks_before
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stop.set()
    thread.join(5)
    if server is not None:
        server.close()
    shutil.rmtree(root, ignore_errors=True)
    return cpu * 60 / seconds, rss, checks


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _checks(controller: Controller) -> int:
    total = 0
    for watched in controller.prober._watched.values():
        total += sum(t.checks for t in watched.trackers.values() if t is not None)
    return total


def bench_idle(instances: int, seconds: float) -> None:
    # each in a process of its own: resident memory is per process
    results = {}
    for probes in (False, True):
        done = subprocess.run(
            [sys.executable, __file__, "--idle-child", str(int(probes)),
             "--instances", str(instances), "--seconds", str(seconds)],
            capture_output=True, text=True, env=CHILD_ENV, check=True, cwd=PROJECT,
        )  # fmt: skip
        results[probes] = [float(word) for word in done.stdout.split()]
    (cpu0, rss0, _), (cpu1, rss1, checks) = results[False], results[True]
    print(f"\nidle daemon, {instances} running instances, {seconds:.0f} s measured:")
    print(f"  without probes: {cpu0:.3f} CPU s/min, {rss0:.1f} MiB resident")
    print(f"  with probes:    {cpu1:.3f} CPU s/min, {rss1:.1f} MiB resident "
          f"({checks:.0f} checks: {checks * 60 / seconds:.0f}/min)")  # fmt: skip
    print(f"  the probes' cost: {cpu1 - cpu0:.3f} CPU s/min "
          f"({(cpu1 - cpu0) / 60 * 100:.2f} % of one core), {rss1 - rss0:+.1f} MiB")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--driver", default="libvirt", choices=("libvirt", "qmp"))
    parser.add_argument("--wait-only", action="store_true")
    parser.add_argument("--idle-only", action="store_true")
    parser.add_argument("--idle-child", type=int, default=None)
    args = parser.parse_args()
    if args.idle_child is not None:
        cpu, rss, checks = idle_cost(args.instances, args.seconds, bool(args.idle_child))
        print(cpu, rss, checks)
        return 0
    if not args.idle_only:
        bench_wait(args.rounds, args.driver)
    if not args.wait_only:
        bench_idle(args.instances, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
