"""Snapshots and revert on real QEMU and real qemu-img, under both drivers, on one test guest
per driver (shared by the assertions, to boot as little as possible): a restart-class change
takes a restore point first; revert brings the data disk and the definition back, and holds
the instance; a resume applies the manifest again; keep prunes the oldest; a snapshot of the
running guest is consistent across two disks; deleting a middle snapshot leaves disks that
boot and read their data. Markers are written and read in the guest through the real guest
agent (`guest-exec`), and read from a snapshot on the host with `qemu-img convert -l`."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.images.diskheaders import read_qcow2_snapshots
from tests.e2e.conftest import E2E, CliRun
from tests.guest import guest_image
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers
SECTOR = 4096  # where the markers are written on the data disks (in 512-byte sectors)
Reconcile = Callable[..., CliRun]


def guest_sh(e2e: E2E, name: str, script: str, timeout: float = 60.0) -> str:
    """Run `sh -c script` in the guest through its agent; its output (it must exit 0)."""
    deadline = time.monotonic() + timeout
    while True:  # the agent answers once the guest has booted that far
        try:
            started = e2e.driver.agent_command(
                name, "guest-exec",
                {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True}, 10,
            )  # fmt: skip
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    while True:
        status = e2e.driver.agent_command(name, "guest-exec-status", {"pid": started["pid"]}, 10)
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
            assert status.get("exitcode") == 0, (script, out, status)
            return out
        assert time.monotonic() < deadline, f"{script} did not finish"
        time.sleep(0.2)


def write_marker(e2e: E2E, name: str, device: str, text: str) -> None:
    guest_sh(e2e, name, f"printf '%-32s' {text} | dd of=/dev/{device} bs=512 seek={SECTOR} "
             "conv=notrunc,fsync 2>/dev/null")  # fmt: skip


def read_marker(e2e: E2E, name: str, device: str) -> str:
    return guest_sh(
        e2e, name, f"dd if=/dev/{device} bs=512 skip={SECTOR} count=1 2>/dev/null | head -c 32"
    ).strip()


def marker_in_snapshot(disk: Path, label: str, tmp: Path) -> str:
    """The marker a data disk held at snapshot `label` (read on the host, the guest running)."""
    out = tmp / f"{disk.name}-{label}.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-l", f"snapshot.name={label}",
         "-O", "raw", str(disk), str(out)],
        check=True,
    )  # fmt: skip
    with open(out, "rb") as stream:
        stream.seek(SECTOR * 512)
        text = stream.read(32).decode(errors="replace").strip("\0 ")
    out.unlink()
    return text


def snapshots_of(reconcile: Reconcile, name: str) -> list[dict[str, Any]]:
    run = reconcile("snapshots", name, "-o", "json")
    assert run.code == 0, run.err
    return list(json.loads(run.out)["snapshots"])


def labels(reconcile: Reconcile, name: str, origin: str | None = None) -> list[str]:
    return [s["label"] for s in snapshots_of(reconcile, name) if origin in (None, s["origin"])]


def chain_is_valid(*disks: Path) -> None:
    """qemu-img check finds no corruption (leaked clusters, which a cut can leave, are
    harmless: exit 3), and the image has no backing chain of our making beyond its base."""
    for disk in disks:
        check = subprocess.run(["qemu-img", "check", "-U", "-f", "qcow2", str(disk)],
                               capture_output=True, text=True, check=False)  # fmt: skip
        assert check.returncode in (0, 3), check.stdout + check.stderr


def test_restore_point_revert_hold_resume_keep_and_delete(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rsn")
    manifests = tmp_path / "m"
    manifests.mkdir()
    spec: dict[str, Any] = {
        "memory": "128MiB", "networks": [], "guestAgent": True, "updatePolicy": "restart",
        "shutdownTimeoutSeconds": 30, "disk": {"size": "256MiB"},
        "disks": [{"name": "one", "size": "16MiB"}, {"name": "two", "size": "16MiB"}],
        "snapshots": {"beforeChange": ["restart", "replace"], "keep": 2},
    }  # fmt: skip

    def apply(memory: str) -> CliRun:
        write_manifest(manifests, name, guest_image("qcow2"), None, "qcow2",
                       **{**spec, "memory": memory})  # fmt: skip
        run = reconcile("--once", str(manifests))
        assert run.code == 0, run.out + run.err
        return run

    apply("128MiB")
    paths = e2e.state.instance(name)
    one, two = paths.directory / "data-one.qcow2", paths.directory / "data-two.qcow2"
    write_marker(e2e, name, "vdb", "before-change")
    assert read_marker(e2e, name, "vdb") == "before-change"

    # a restart-class change: the plan shows the restore point as a step of its own, after
    # the shutdown, and the pass takes it (offline: the guest is down) before redefining
    write_manifest(manifests, name, guest_image("qcow2"), None, "qcow2",
                   **{**spec, "memory": "160MiB"})  # fmt: skip
    plan = reconcile("plan", str(manifests), "-o", "json")
    kinds = [step["kind"] for step in json.loads(plan.out)["instances"][0]["steps"]]
    assert kinds[:3] == ["stop", "snapshot", "define"], kinds
    run = apply("160MiB")
    assert "took snapshot before-restart-" in run.out and "(offline)" in run.out
    (first,) = labels(reconcile, name, "change")
    listed = snapshots_of(reconcile, name)[0]
    assert listed["preceded"].startswith("before the restart-class change") and listed["digest"]
    assert {Path(d).name for d in listed["disks"]} == {"disk.qcow2", one.name, two.name}
    assert marker_in_snapshot(one, first, tmp_path) == "before-change"
    assert e2e.driver.lookup(name).definition.memory_kib == 160 * 1024

    # the guest writes after the change; revert brings the disk and the definition back
    write_marker(e2e, name, "vdb", "after-change")
    run = reconcile("revert", name, first)
    assert run.code == 0, run.err
    assert "[restart] memory 128MiB -> 160MiB" in run.out and "held:" in run.out
    assert read_marker(e2e, name, "vdb") == "before-change"
    assert e2e.driver.lookup(name).definition.memory_kib == 128 * 1024

    # the next pass holds it, and says why; so does status
    run = reconcile("--once", str(manifests))
    assert run.code == 0 and "held: reverted to snapshot " + first in run.out, run.out
    assert e2e.driver.lookup(name).definition.memory_kib == 128 * 1024
    status = reconcile("status", name)
    assert f"held: reverted to snapshot {first}" in status.out, status.out

    # consistency: snapshots of the running guest while it writes a counter to both disks,
    # vdb first: each snapshot holds the same count on both, or vdb one ahead
    guest_sh(e2e, name, "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); "
             f"for d in vdb vdc; do printf '%-32s' $i | dd of=/dev/$d bs=512 seek={SECTOR} "
             "conv=notrunc,fsync 2>/dev/null; done; done >/dev/null 2>&1 &")  # fmt: skip
    counts = []
    for label in ("c1", "c2", "c3"):
        time.sleep(1.5)
        run = reconcile("snapshot", name, "--name", label)
        assert run.code == 0 and "guest I/O held" in run.out, run.out + run.err
        a, b = (marker_in_snapshot(disk, label, tmp_path) for disk in (one, two))
        counts.append((int(a or 0), int(b or 0)))
    assert all(a - b in (0, 1) for a, b in counts), counts
    assert counts[-1][0] > 0, counts

    # resume: the change is applied again (its restore point exists: not taken twice)
    assert reconcile("resume", name).code == 0
    run = apply("160MiB")
    assert "redefined domain" in run.out and e2e.driver.lookup(name).definition.memory_kib == (
        160 * 1024
    )
    assert labels(reconcile, name, "change") == [first]
    # keep: 2 change snapshots: the third change's takes the place of the oldest
    apply("176MiB")
    second = labels(reconcile, name, "change")[-1]
    apply("192MiB")
    kept = labels(reconcile, name, "change")
    assert len(kept) == 2 and first not in kept and second in kept, kept
    assert {"c1", "c2", "c3"} <= set(labels(reconcile, name))  # taken on request: kept

    # delete a middle snapshot (online): the tables shrink, the chain is valid, and the
    # guest boots again (a revert to the newest restarts it) and reads its data
    run = reconcile("snapshot", "delete", name, "c2")
    assert run.code == 0, run.err
    assert "c2" not in {s.name for s in read_qcow2_snapshots(str(one))}
    chain_is_valid(paths.disk, one, two)
    assert reconcile("revert", name, "c3").code == 0
    number = int(read_marker(e2e, name, "vdb"))
    assert number == counts[2][0]
    assert reconcile("resume", name).code == 0
    status = reconcile("status", name)
    assert "snapshots: 4," in status.out, status.out  # two before changes, c1 and c3


def test_a_replace_keeps_its_restore_point_in_the_disk_moved_aside_and_gc_of_gone_instances(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    """A stopped instance (nothing boots): the default policy snapshots the boot disk before a
    replace; revert puts that disk back as the boot disk (the new one moved aside). A raw data
    disk is left out and said so. Once the instance is gone (its disks kept), gc lists the
    snapshots of its disks, and removes them with --snapshots, keeping the disks."""
    name = unique_name("rsr")
    manifests = tmp_path / "m"
    manifests.mkdir()
    spec: dict[str, Any] = {
        "state": "stopped", "networks": [], "allowReplace": True,
        "disks": [{"name": "scratch", "size": "1MiB", "format": "raw"}],
    }  # fmt: skip
    write_manifest(manifests, name, e2e.base, e2e.sha256, **spec)
    assert reconcile("--once", str(manifests)).code == 0
    paths = e2e.state.instance(name)
    old_base = read_overlay_backing(paths.disk)
    run = reconcile("snapshot", name, "--name", "mine")
    assert run.code == 0 and "(offline)" in run.out, run.out + run.err
    listed = snapshots_of(reconcile, name)[0]
    assert listed["leftOut"] == [str(paths.directory / "data-scratch.raw")]

    write_manifest(manifests, name, guest_image("qcow2"), None, "qcow2", **spec)
    run = reconcile("--once", str(manifests))
    assert run.code == 0 and "took snapshot before-replace-" in run.out, run.out + run.err
    before = labels(reconcile, name, "change")[0]
    aside = next(s for s in snapshots_of(reconcile, name) if s["label"] == before)
    assert aside["movedTo"] and Path(aside["disks"][0]).name.startswith("disk.qcow2.replaced-")
    assert read_overlay_backing(paths.disk) != old_base

    run = reconcile("revert", name, before)
    assert run.code == 0, run.err
    assert "the boot disk moved aside by the replace is the boot disk again" in run.out
    assert "raw disks cannot hold a snapshot" in run.out
    assert read_overlay_backing(paths.disk) == old_base
    assert {"mine", before} <= set(labels(reconcile, name))
    assert reconcile("resume", name).code == 0

    # the instance goes, its disks kept: gc lists the snapshots, --snapshots removes them
    write_manifest(manifests, name, e2e.base, e2e.sha256, **{**spec, "state": "absent"})
    assert reconcile("--once", str(manifests)).code == 0
    assert paths.disk.exists()
    listed_gc = reconcile("gc", "--dry-run")
    assert f"kept snapshot mine of instances/{name}/disk.qcow2" in listed_gc.out, listed_gc.out
    removed = reconcile("gc", "--snapshots", "--grace", "999d")
    assert f"removed snapshot mine of instances/{name}/disk.qcow2" in removed.out, removed.out
    assert paths.disk.exists() and read_qcow2_snapshots(str(paths.disk)) == ()
    assert not list(paths.directory.glob("snapshot-*.json"))


def read_overlay_backing(disk: Path) -> str | None:
    from reconciler.images.diskheaders import read_overlay_header

    return read_overlay_header(str(disk)).backing_file
