"""Snapshots under stress, on real QEMU and qemu-img, under both drivers: passes and a revert
killed with SIGKILL part way leave valid disks, and the next run says what it did or how to
finish; the daemon takes scheduled snapshots and runs the snapshot commands for its clients.
(Beside tests/e2e/test_snapshots.py, so that the two modules run on two workers.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import E2E
from tests.e2e.test_snapshots import Reconcile, chain_is_valid, snapshots_of
from tests.guest import guest_image
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers


def test_a_pass_killed_at_any_moment_leaves_valid_disks_and_the_next_says_what_it_did(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rsk")
    manifests = tmp_path / "m"
    manifests.mkdir()
    spec: dict[str, Any] = {
        "memory": "128MiB", "networks": [], "guestAgent": True, "updatePolicy": "restart",
        "shutdownTimeoutSeconds": 30, "disks": [{"name": "one", "size": "16MiB"}],
        "snapshots": {"beforeChange": ["restart"]},
    }  # fmt: skip
    write_manifest(manifests, name, guest_image("qcow2"), None, "qcow2", **spec)
    assert reconcile("--once", str(manifests)).code == 0
    paths = e2e.state.instance(name)
    command = [
        sys.executable, "-m", "reconciler", "--once", str(manifests), "--state-dir",
        str(e2e.state.root), "--driver", e2e.driver_name, "--image-dir", str(guest_image().parent),
    ]  # fmt: skip
    for memory, delay in (("136MiB", 0.6), ("144MiB", 1.5), ("152MiB", 3.0)):
        write_manifest(manifests, name, guest_image("qcow2"), None, "qcow2",
                       **{**spec, "memory": memory})  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()
        process.wait()
        chain_is_valid(paths.disk, paths.directory / "data-one.qcow2")
        run = reconcile("--once", str(manifests))
        assert run.code == 0, run.out + run.err
        assert e2e.driver.lookup(name).definition.memory_kib == int(memory[:-3]) * 1024
        chain_is_valid(paths.disk, paths.directory / "data-one.qcow2")
        # the restore point before the change exists on every disk, with its record
        change = [s for s in snapshots_of(reconcile, name) if s["origin"] == "change"]
        assert change and all(len(s["disks"]) == 2 and s["preceded"] for s in change), change

    # a revert killed part way: the disks stay valid, the next pass says how to finish it
    # (or, killed before it began, goes on as before), and the revert run again finishes it
    label = change[-1]["label"]
    revert = [*command[:3], "revert", name, label, *command[5:]]
    process = subprocess.Popen(revert, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    process.kill()
    process.wait()
    chain_is_valid(paths.disk, paths.directory / "data-one.qcow2")
    run = reconcile("--once", str(manifests))
    if paths.hold.exists() and '"complete": false' in paths.hold.read_text():
        assert run.code == 1 and f"reconcile revert {name} {label}` again" in run.out, run.out
    run = reconcile("revert", name, label)
    assert run.code == 0 and "started again" in run.out, run.out + run.err
    assert '"complete": true' in paths.hold.read_text()
    chain_is_valid(paths.disk, paths.directory / "data-one.qcow2")


def test_the_daemon_takes_scheduled_snapshots_and_runs_the_commands_for_its_clients(
    driver_name: str,
) -> None:
    """The daemon takes a scheduled snapshot of a running guest on its first quiet pass (and
    comes back when the next is due); snapshot, snapshots, revert and resume asked while it
    runs are done by it, between its reconciles of that instance."""
    from tests.e2e.test_daemon import daemon_of_its_own, wait_until

    with daemon_of_its_own("rsd-", driver_name) as daemon:
        name = unique_name("rsd")
        daemon.write(name, networks=[], snapshots={"schedule": "hourly", "keep": 2})

        def scheduled() -> list[str]:
            listed = daemon.cli("snapshots", name, "-o", "json")
            if listed.returncode != 0:
                return []
            found = json.loads(listed.stdout)["snapshots"]
            return [s["label"] for s in found if s["origin"] == "schedule"]

        (label,) = wait_until(scheduled, "a scheduled snapshot", daemon, timeout=120)
        assert label.startswith("auto-")
        taken = daemon.cli("snapshot", name, "--name", "d1")
        assert taken.returncode == 0 and "guest I/O held" in taken.stdout, taken.stderr
        reverted = daemon.cli("revert", name, "d1")
        assert reverted.returncode == 0, reverted.stderr
        assert "started again" in reverted.stdout

        def held() -> bool:
            item = daemon.instance(name) or {}
            return (
                bool((item.get("snapshots") or {}).get("held"))
                and item.get("observed") == "running"
            )

        wait_until(held, "the hold in the daemon's status", daemon, timeout=60)
        status = daemon.cli("status")
        assert "held: reverted to snapshot d1" in status.stdout, status.stdout
        assert "snapshots: 2," in status.stdout, status.stdout
        assert daemon.cli("resume", name).returncode == 0
        wait_until(lambda: not held(), "the hold to end", daemon, timeout=60)
        assert scheduled() == [label]  # due again in an hour, not before
        missing = daemon.cli("revert", name, "no-such-label")
        assert missing.returncode != 0 and "has no snapshot 'no-such-label'" in missing.stderr
        assert "Traceback" not in daemon.log_text()
