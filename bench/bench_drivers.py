"""Cold start of N instances under each driver, in the same run: libvirt's embedded driver
and the QMP driver (QEMU run by the reconciler itself). Rounds alternate between the drivers;
each round starts N instances from one cached base with `reconcile --once`, then removes
them with a `state: absent` pass (not measured). Medians of --repeat rounds.

    .venv/bin/python bench/bench_drivers.py [-n 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
RECONCILE = [sys.executable, "-m", "reconciler"]
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
DRIVERS = ("libvirt", "qmp")
sys.path.insert(0, str(PROJECT))

from tests.helpers import manifest_document  # noqa: E402


def write_manifests(directory: Path, count: int, base: Path, sha: str, state: str) -> None:
    documents = [
        manifest_document(
            f"rcd-{index}",
            base,
            sha,
            state=state,
            memory="128MiB",
            accelerator="tcg",
            disk={"size": "2GiB"},
            networks=[],
            deletionPolicy="delete",
        )
        for index in range(count)
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.yaml").write_text(yaml.safe_dump_all(documents))


def run(driver: str, state: Path, manifests: Path, image_dir: Path) -> tuple[float, str]:
    command = [
        *RECONCILE, "--once", str(manifests), "--driver", driver, "--state-dir", str(state),
        "--image-dir", str(image_dir),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, env=CHILD_ENV)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10, help="instances (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="rcbd-", dir="/tmp"))
    base = root / "base.raw"
    subprocess.run(
        [sys.executable, str(PROJECT / "tools" / "make-bootsector-image.py"), str(base)],
        check=True,
        capture_output=True,
    )
    sha = hashlib.sha256(base.read_bytes()).hexdigest()
    up, down = root / "up", root / "down"
    write_manifests(up, args.n, base, sha, "running")
    write_manifests(down, args.n, base, sha, "absent")
    states = {driver: root / driver for driver in DRIVERS}
    for driver, state in states.items():  # warm-up: the embedded root's probe, the cache
        run(driver, state, up, root)
        run(driver, state, down, root)
    times: dict[str, list[float]] = {driver: [] for driver in DRIVERS}
    try:
        for _round in range(args.repeat):
            for driver, state in states.items():
                elapsed, out = run(driver, state, up, root)
                assert out.count("started domain") == args.n, out
                times[driver].append(elapsed)
                run(driver, state, down, root)
    finally:
        for driver, state in states.items():  # nothing may keep running
            run(driver, state, down, root)
        shutil.rmtree(root, ignore_errors=True)
    medians = {driver: statistics.median(values) for driver, values in times.items()}
    print(
        f"instances: {args.n} (1 vCPU, 128 MiB, 2 GiB overlay, TCG, no NIC), rounds: {args.repeat}"
    )
    for driver in DRIVERS:
        rounds = ", ".join(f"{value:.2f}" for value in times[driver])
        print(f"{driver:8} cold start: {medians[driver]:6.2f} s   (rounds: {rounds})")
    print(f"ratio qmp / libvirt:  {medians['qmp'] / medians['libvirt']:6.2f}")
    return 0


if __name__ == "__main__":
    os.chdir(PROJECT)
    sys.exit(main())
