"""Cold start of N instances from one cached base: reconciler vs the hand-written path.

Measured in the same run, alternating, median of --repeat rounds:
  - hand-written: a thread per instance, qemu-img create + defineXML + create (handwritten.py)
  - reconcile --once, cold (overlays, defines and starts everything)
  - reconcile --once again, no-op (must write nothing: checked by file mtimes and domain XML)
  - the hand-written no-op floor: list the domains with their XML, check each, exit
  - teardown: the hand-written clean-up (destroy, undefine, remove the disks) against
    reconcile --once with every instance `state: absent`, `deletionPolicy: delete`
    (shutdownTimeoutSeconds 0: powered off at once, as the hand-written path does)
The two no-ops run once every guest has booted (and halted), in turns: each goes first in
every other round.

    .venv/bin/python bench/bench_cold_start.py [-n 10] [--repeat 3] [--connect URI | --driver qmp]

With `--driver qmp` the reconciler runs QEMU itself (the QMP driver), and so does the
hand-written path: one thread per instance runs `qemu-img create`, then `qemu-system-x86_64
-daemonize` on the same machine; its no-op reads each pid file and checks the process's
command line; its clean-up kills each QEMU by its pid file.

With `--connect qemu:///system` and no libvirt daemon answering there (no systemd here), the
bench starts one the way the tests do (tests/libvirtd.py: its own root, QEMU as root, no
security driver) and both paths reach it at its socket: a daemon URI, with no embedded open.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))
from tests.libvirtd import Libvirtd  # noqa: E402

PYTHON = sys.executable
RECONCILE = [PYTHON, "-m", "reconciler"]
# Both paths run as installed programs do: with Python's bytecode cache (some sandboxes set
# PYTHONDONTWRITEBYTECODE, which recompiles every module on every run).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def write_manifests(
    directory: Path, prefix: str, count: int, base: Path, sha: str, absent: bool = False
) -> None:
    """`count` instances in one file (their disks go with them: the deletion policy the
    domain records when it is defined is the one that counts); `absent`: the same ones asked
    to go, powered off at once (shutdownTimeoutSeconds 0), as the hand-written clean-up does."""
    gone = {"state": "absent", "shutdownTimeoutSeconds": 0}
    documents = [
        {
            "apiVersion": "reconciler/v1alpha1",
            "kind": "Instance",
            "metadata": {"name": f"{prefix}-{index}"},
            "spec": {
                "vcpus": 1,
                "memory": "128MiB",
                "accelerator": "tcg",
                "image": {"source": str(base), "sha256": sha, "format": "raw"},
                "disk": {"size": "2GiB"},
                "deletionPolicy": "delete",
                **(gone if absent else {}),
            },
        }
        for index in range(count)
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.yaml").write_text(yaml.safe_dump_all(documents))


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=PROJECT, env=CHILD_ENV
    )
    elapsed = time.perf_counter() - start
    if "--debug" in command and elapsed > 1:  # a no-op pass should never take this long
        print(f"slow ({elapsed:.2f}s): {command}\n{done.stderr}", file=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def snapshot(state: Path) -> dict[str, int]:
    """mtime of every file under the state's instances and images (domain XML is in libvirt/)."""
    files = {}
    for top in ("instances", "images", "libvirt/etc"):
        for path in (state / top).rglob("*"):
            if path.is_file() and not path.name.endswith(".log"):
                files[str(path)] = path.stat().st_mtime_ns
    return files


def wait_for_boots(state: Path, prefix: str, count: int, timeout: float = 120.0) -> None:
    """Until every guest's console says it booted (then it halts: no CPU taken from a run)."""
    deadline = time.monotonic() + timeout
    logs = [state / "instances" / f"{prefix}-{i}" / "console.log" for i in range(count)]
    while not all(log.exists() and b"booted" in log.read_bytes() for log in logs):
        if time.monotonic() > deadline:
            raise SystemExit(f"the guests did not all boot within {timeout:.0f}s")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10, help="instances (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--connect", default=None, help="libvirt URI (default: embedded)")
    parser.add_argument(
        "--driver", choices=("libvirt", "qmp"), default="libvirt", help="(default: libvirt)"
    )
    args = parser.parse_args()
    if args.driver == "qmp" and args.connect:
        parser.error("--connect names a libvirt URI: not with --driver qmp")

    state = Path(tempfile.mkdtemp(prefix="rcb-", dir="/tmp"))
    daemon = None
    if args.connect == "qemu:///system" and not answers(args.connect):
        daemon = Libvirtd(state / "libvirtd")
        daemon.prepare()
        daemon.start()
        args.connect = daemon.uri
        print(f"no libvirt daemon at qemu:///system: started one at {daemon.uri}")
    try:
        return measure(args, state)
    finally:
        if daemon is not None:
            daemon.destroy_all()
            daemon.kill()
        for pidfile in state.glob("*/*/qemu.pid"):  # what either path left running (qmp)
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)


def answers(uri: str) -> bool:
    done = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, check=False)
    return done.returncode == 0


def measure(args: argparse.Namespace, state: Path) -> int:
    uri = args.connect or f"qemu:///embed?root={state}/libvirt"
    connect = ["--connect", args.connect] if args.connect else []
    if args.driver == "qmp":
        uri, connect = "qemu", ["--driver", "qmp"]  # handwritten.py runs QEMU itself
    connect += ["--image-dir", str(state)]
    base = state / "base.raw"
    subprocess.run(
        [PYTHON, str(PROJECT / "tools" / "make-bootsector-image.py"), str(base)],
        check=True,
        capture_output=True,
    )
    sha = hashlib.sha256(base.read_bytes()).hexdigest()
    cached = state / "images" / f"sha256-{sha}.raw"
    manifests = state / "manifests"
    write_manifests(manifests, "rcb", args.n, base, sha)

    # Warm-up (not measured): prepares the embedded root, probes QEMU, caches the base.
    warm = state / "warm"
    write_manifests(warm, "rcw", 1, base, sha)
    timed([*RECONCILE, "--once", str(warm), "--state-dir", str(state), *connect])
    write_manifests(warm, "rcw", 1, base, sha, absent=True)
    timed([*RECONCILE, "--once", str(warm), "--state-dir", str(state), *connect])
    cleanup = [PYTHON, str(HERE / "handwritten.py"), "cleanup", uri, str(state)]

    hand, cold, noop, floor, hand_down, down = [], [], [], [], [], []
    for _round in range(args.repeat):
        elapsed, _ = timed(
            [
                PYTHON,
                str(HERE / "handwritten.py"),
                "create",
                uri,
                str(state),
                str(cached),
                "hwb",
                str(args.n),
            ]
        )
        hand.append(elapsed)
        hand_down.append(timed([*cleanup, "hwb"])[0])
        elapsed, out = timed(
            [*RECONCILE, "--once", str(manifests), "--state-dir", str(state), *connect]
        )
        assert out.count("started domain") == args.n, out
        cold.append(elapsed)
        # both no-ops on quiet guests (booted and halted), in turns: first one, then the other
        wait_for_boots(state, "rcb", args.n)
        before = snapshot(state)
        check = [PYTHON, str(HERE / "handwritten.py"), "noop", uri, str(state), "rcb"]
        noop_command = [
            *RECONCILE, "--once", str(manifests), "--state-dir", str(state), *connect, "--debug"
        ]  # fmt: skip
        for first in ("noop", "floor") if _round % 2 == 0 else ("floor", "noop"):
            if first == "noop":
                elapsed, out = timed(noop_command)
                assert "nothing to do" in out, out
                assert snapshot(state) == before, "the no-op pass touched files"
                noop.append(elapsed)
            else:
                floor.append(timed([*check, str(args.n)])[0])
        # teardown: the same manifests asked to go (state: absent, deletionPolicy: delete)
        write_manifests(manifests, "rcb", args.n, base, sha, absent=True)
        elapsed, out = timed(
            [*RECONCILE, "--once", str(manifests), "--state-dir", str(state), *connect]
        )
        assert not list((state / "instances").glob("rcb-*/disk.qcow2")), out
        down.append(elapsed)
        write_manifests(manifests, "rcb", args.n, base, sha)
        timed([*cleanup, "rcb"])

    hand_s, cold_s, noop_s, floor_s, hand_down_s, down_s = (
        statistics.median(x) for x in (hand, cold, noop, floor, hand_down, down)
    )

    def rounds(values: list[float]) -> str:
        return ", ".join(f"{value:.2f}" for value in values)

    where = "QEMU run by each path itself" if uri == "qemu" else f"uri: {uri}"
    print(f"instances: {args.n} (1 vCPU, 128 MiB, 2 GiB overlay, TCG), {where}")
    print(f"hand-written threaded path: {hand_s:6.2f} s   (rounds: {rounds(hand)})")
    print(f"reconcile --once, cold:     {cold_s:6.2f} s   (rounds: {rounds(cold)})")
    print(f"ratio cold / hand-written:  {cold_s / hand_s:6.2f}")
    print(f"reconcile --once, no-op:    {noop_s:6.2f} s   (rounds: {rounds(noop)})")
    print(f"hand-written no-op floor:   {floor_s:6.2f} s   (rounds: {rounds(floor)})")
    print(f"ratio no-op / floor:        {noop_s / floor_s:6.2f}")
    print(f"hand-written teardown:      {hand_down_s:6.2f} s   (rounds: {rounds(hand_down)})")
    print(f"reconcile --once, absent:   {down_s:6.2f} s   (rounds: {rounds(down)})")
    print(f"ratio teardown / hand:      {down_s / hand_down_s:6.2f}")
    return 0


if __name__ == "__main__":
    os.chdir(PROJECT)
    sys.exit(main())
