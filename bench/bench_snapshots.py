"""Snapshots: what a snapshot of a running guest costs it, and how long a revert takes.

The test guest (its guest agent on, so the file systems are frozen around the snapshot)
runs with a 1 GiB qcow2 data disk written full (1 GiB of data, made before the first pass:
the reconciler takes an existing data disk as it is). Each round, as processes:

  - `reconcile snapshot NAME`: the command's wall time, and from its record the time the
    guest's I/O was held (the QMP transaction over the boot disk and the data disk) and the
    time its file systems were frozen (agent freeze to thaw);
  - `reconcile revert NAME LABEL`: the command's wall time (graceful shutdown, every disk
    brought back, the definition restored, the guest started again), then `reconcile
    resume`;
  - the baseline, in the same round: `reconcile snapshots NAME` (a process that opens the
    driver and reads the disks' tables), so that the ratios say what the snapshot itself adds
    to a command.

    .venv/bin/python bench/bench_snapshots.py [--rounds 5] [--driver libvirt|qmp]
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(PROJECT))

from tests.guest import guest_image  # noqa: E402
from tests.helpers import manifest_document  # noqa: E402

CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
NAME = "rbs-guest"


def run(command: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=CHILD_ENV, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started, done.stdout


def wait_for_agent(reconcile: list[str]) -> None:
    """Until the guest agent answers (the guest has booted that far)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        command = [*reconcile, "wait", NAME, "--timeout", "5s"]
        done = subprocess.run(command, capture_output=True, text=True, env=CHILD_ENV, check=False)
        if done.returncode == 0:
            return
    raise SystemExit("the guest did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--driver", choices=("libvirt", "qmp"), default="libvirt")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rbs-", dir="/tmp"))
    state = root / "s"
    reconcile = [sys.executable, "-m", "reconciler", "--state-dir", str(state), "--driver",
                 args.driver]  # fmt: skip
    try:
        image = guest_image("qcow2")
        manifests = root / "m"
        manifests.mkdir()
        document = manifest_document(
            NAME, image, None, "qcow2", memory="128MiB", networks=[], guestAgent=True,
            shutdownTimeoutSeconds=30, disks=[{"name": "data", "size": "1GiB"}],
            readiness={"guestAgent": "ping", "periodSeconds": 1},
        )  # fmt: skip
        (manifests / f"{NAME}.yaml").write_text(yaml.safe_dump(document))
        directory = state / "instances" / NAME
        directory.mkdir(parents=True)
        data = directory / "data-data.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "1G"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xa5 0 1G", str(data)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        run([*reconcile, "--once", str(manifests), "--image-dir", str(image.parent)])
        wait_for_agent(reconcile)
        snap, revert, listing, pause, frozen = [], [], [], [], []
        for index in range(args.rounds):
            took, _ = run([*reconcile, "snapshots", NAME])
            listing.append(took)
            label = f"bench-{index}"
            took, _ = run([*reconcile, "snapshot", NAME, "--name", label])
            snap.append(took)
            record = json.loads((directory / f"snapshot-{label}.json").read_text())
            pause.append(record["pauseMs"])
            frozen.append(record["frozenMs"] or 0.0)
            took, _ = run([*reconcile, "revert", NAME, label])
            revert.append(took)
            run([*reconcile, "resume", NAME])
            wait_for_agent(reconcile)
        used = int(subprocess.run(["du", "-b", str(data)], capture_output=True, text=True,
                                  check=True).stdout.split()[0])  # fmt: skip
        med = statistics.median
        print(f"driver {args.driver}, {args.rounds} rounds, data disk 1 GiB written full "
              f"({used / 1024**3:.2f} GiB on disk)")  # fmt: skip
        print(f"  snapshot of the running guest: {med(snap):.2f} s (command), guest I/O held "
              f"{med(pause):.1f} ms (min {min(pause):.1f}, max {max(pause):.1f}), file systems "
              f"frozen {med(frozen):.0f} ms")  # fmt: skip
        print(f"  baseline `snapshots` command: {med(listing):.2f} s; snapshot / baseline "
              f"{med(snap) / med(listing):.2f}")  # fmt: skip
        print(f"  revert (shutdown, 2 disks back, definition, start): {med(revert):.2f} s; "
              f"revert / baseline {med(revert) / med(listing):.2f}")  # fmt: skip
    finally:
        gone = manifest_document(NAME, guest_image("qcow2"), None, "qcow2", state="absent",
                                 deletionPolicy="delete")  # fmt: skip
        (root / "m" / f"{NAME}.yaml").write_text(yaml.safe_dump(gone))
        subprocess.run([*reconcile, "--once", str(root / "m"), "--image-dir",
                        str(guest_image().parent)], capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
