"""The daemon's reaction times and idle cost, on the embedded driver with the base cached.

  - manifest saved -> domain running: a new manifest is written the way editors save (temporary
    file, rename) and the time until the daemon reports the domain running is taken;
  - QEMU killed -> running again: SIGKILL to the domain's QEMU, then the time until a new QEMU
    runs and the daemon reports it running;
  - the daemon idle while managing N defined (stopped) instances: resident memory, and CPU
    seconds over an idle period.

Median and worst of --repeat repetitions. Readiness is polled on the daemon's control socket
every 10 ms (what `reconcile status` asks), so the figures include at most that much polling.

    .venv/bin/python bench/bench_daemon.py [--repeat 10] [--idle-instances 100] [--idle-seconds 60]
        [--idle-resync 1m] [--idle-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from reconciler.errors import DaemonUnavailable  # noqa: E402
from reconciler.loop.control import request  # noqa: E402
from tests.helpers import manifest_document, write_base_image  # noqa: E402

CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
POLL = 0.01


class Daemon:
    def __init__(self, root: Path, manifests: Path, images: Path, *extra: str) -> None:
        self.root = root
        self.state = root / "s"
        self.log = (root / "daemon.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", str(manifests), "--state-dir", str(self.state),
             "--image-dir", str(images), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=PROJECT, env=CHILD_ENV,
        )  # fmt: skip
        self.socket = self.state / "control.sock"
        self.wait(lambda: self.instances() is not None, 120, "the daemon to listen")

    def instances(self) -> dict[str, dict[str, Any]] | None:
        try:
            answer = request(self.socket, {"op": "status"}, timeout=5)
        except (DaemonUnavailable, FileNotFoundError):
            return None
        return {item["name"]: item for item in answer["status"]["instances"]}

    def observed(self, name: str) -> str | None:
        entry = (self.instances() or {}).get(name)
        return None if entry is None else entry["observed"]

    def wait(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                raise SystemExit(f"daemon exited: see {self.root / 'daemon.log'}")
            time.sleep(POLL)
        raise SystemExit(f"timed out waiting for {what}")

    def qemu_pid(self, name: str) -> int | None:
        try:
            return int((self.state / "libvirt" / "run" / "qemu" / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        self.log.close()
        shutil.copy(
            self.root / "daemon.log", Path(tempfile.gettempdir()) / "reconciler-bench-daemon.log"
        )
        uri = f"qemu:///embed?root={self.state / 'libvirt'}"
        names = subprocess.run(
            ["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True, text=True,
            check=False,
        ).stdout.split()  # fmt: skip
        for name in names:
            subprocess.run(["virsh", "-c", uri, "destroy", name], capture_output=True, check=False)
            subprocess.run(["virsh", "-c", uri, "undefine", name], capture_output=True, check=False)


def save(directory: Path, document: dict[str, Any]) -> None:
    name = document["metadata"]["name"]
    temporary = directory / f".{name}.yaml.swp"
    temporary.write_text(yaml.safe_dump(document))
    os.replace(temporary, directory / f"{name}.yaml")


def summary(label: str, values: list[float]) -> str:
    runs = " ".join(f"{value:.3f}" for value in values)
    return (
        f"{label:<40} median {statistics.median(values):6.3f} s   worst {max(values):6.3f} s"
        f"   (runs: {runs})"
    )


def reaction_times(repeat: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="rcb-", dir="/tmp"))
    manifests, images = root / "m", root / "src"
    manifests.mkdir()
    images.mkdir()
    base, sha = write_base_image(images)
    daemon = Daemon(root, manifests, images)
    try:
        # warm-up (not measured): QEMU probe of the new root, base into the cache
        save(manifests, manifest_document("rcb-warm", base, sha, accelerator="tcg"))
        daemon.wait(lambda: daemon.observed("rcb-warm") == "running", 120, "warm-up")
        saved, killed = [], []
        for index in range(repeat):
            name = f"rcb-{index}"
            start = time.perf_counter()
            save(manifests, manifest_document(name, base, sha, accelerator="tcg"))
            daemon.wait(lambda name=name: daemon.observed(name) == "running", 60, name)
            saved.append(time.perf_counter() - start)
        for index in range(repeat):
            name = f"rcb-{index}"
            old = daemon.qemu_pid(name)
            assert old is not None
            before = (daemon.instances() or {})[name]["reconciles"]
            start = time.perf_counter()
            os.kill(old, signal.SIGKILL)

            def repaired(name: str = name, old: int = old, before: int = before) -> bool:
                # done when the reconcile that started the new QEMU has reported
                entry = (daemon.instances() or {}).get(name) or {}
                return (
                    entry.get("reconciles", 0) > before
                    and entry.get("observed") == "running"
                    and daemon.qemu_pid(name) not in (None, old)
                )

            daemon.wait(repaired, 60, f"{name} running again")
            killed.append(time.perf_counter() - start)
        print(summary("manifest saved -> domain running", saved))
        print(summary("QEMU SIGKILLed -> domain running again", killed))
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def idle_cost(count: int, seconds: float, resync: str) -> None:
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
    daemon = Daemon(root, manifests, images, "--resync", resync)
    try:
        daemon.wait(
            lambda: (
                len([i for i in (daemon.instances() or {}).values() if i["observed"] == "shutoff"])
                == count
            ),
            600,
            f"{count} instances defined",
        )
        time.sleep(2)  # let the last status writes and events settle
        pid = daemon.process.pid
        files_before = _state_files(root / "s")
        resyncs_before = _resync_reconciles(daemon)
        before = _cpu_seconds(pid)
        time.sleep(seconds)
        used = _cpu_seconds(pid) - before
        rss = _rss_kib(pid)
        files_after = _state_files(root / "s")
        rewritten = sorted(p for p, m in files_after.items() if files_before.get(p) != m)
        print(
            f"idle daemon, {count} defined instances, --resync {resync}: RSS "
            f"{rss / 1024:.1f} MiB, CPU {used:.3f} s over {seconds:.0f} s "
            f"({used / seconds * 60:.3f} s per minute); "
            f"{_resync_reconciles(daemon) - resyncs_before} reconciles by resync; "
            f"files rewritten under the state directory (status.json and logs aside): "
            f"{len(rewritten)} {rewritten[:5]}"
        )
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def _state_files(state: Path) -> dict[str, int]:
    """Every file under the state directory, by modification time: what a resync must leave."""
    return {
        str(path): path.stat().st_mtime_ns
        for path in state.rglob("*")
        if path.is_file() and path.name != "status.json" and not path.name.endswith(".log")
    }


def _resync_reconciles(daemon: Daemon) -> int:
    instances = daemon.instances() or {}
    return sum(int(i.get("triggers", {}).get("resync", 0)) for i in instances.values())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--idle-instances", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--idle-resync", default="1m", help="the idle daemon's --resync")
    parser.add_argument("--idle-only", action="store_true", help="skip the reaction times")
    args = parser.parse_args()
    if not args.idle_only:
        reaction_times(args.repeat)
    idle_cost(args.idle_instances, args.idle_seconds, args.idle_resync)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
