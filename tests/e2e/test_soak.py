"""The soak (bench/soak.py) for two minutes with a fixed seed, on every change: a daemon on
the QMP driver managing four test guests and an instance set, all listing one profile, the
guests counting on their data disks, under every fault the tool throws (guests, the daemon,
manifests of every kind, the profile, the set's template and replicas, snapshots and reverts,
a tampered cache, a full file system), with its invariants checked every two seconds; zero
violations, and every instance converged and ready after the last fault. The 30-minute runs
under each driver stay a benchmark (bench/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT

pytestmark = pytest.mark.first  # minutes on one worker: started before the other modules
SEED = 20261207


def test_a_short_soak_finds_no_violation_and_converges(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "soak.py"), "--minutes", "2", "--seed",
         str(SEED), "--driver", "qmp", "--instances", "4", "--fault-every", "6",
         "--report", str(report)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    result = json.loads(report.read_text())
    assert result["violations"] == [], said
    assert result["converged"] and result["seed"] == SEED
    assert sum(result["faults"].values()) >= 8, said
    assert {"counter", "one-qemu-per-disk", "foreign-untouched", "disks-kept"} <= set(
        result["checks"]
    )
    assert result["checks"]["counter"] >= 30
