"""Machine shape and in-place change on real QEMU: data disks attached and detached live,
memory through the balloon, a restart-class change waiting for the next boot or applied by
updatePolicy: restart, UEFI under OVMF, and a boot disk replaced only when allowed.

Boots are the slow part: one BIOS guest goes through every live and restart change.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.images.diskheaders import read_qcow2_snapshots
from reconciler.model.actual import PowerState
from tests.e2e.conftest import E2E, CliRun, wait_for
from tests.guest import guest_image, wait_for_marker
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers

Reconcile = Callable[..., CliRun]
MIB = 1024**2


def write_guest(directory: Path, name: str, *, image_format: str = "qcow2", **spec: object) -> Path:
    spec.setdefault("memory", "128MiB")
    spec.setdefault("shutdownTimeoutSeconds", 120)
    spec.setdefault("networks", [])
    return write_manifest(directory, name, guest_image(image_format), None, image_format, **spec)


def disk(name: str, size: str, **more: str) -> dict[str, str]:
    return {"name": name, "size": size, **more}


def test_a_running_guest_takes_live_changes_and_restart_changes_by_its_policy(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcm")
    paths = e2e.state.instance(name)
    shape: dict[str, Any] = {
        "memory": "192MiB",
        "maxMemory": "256MiB",
        "disks": [disk("a", "64MiB"), disk("b", "32MiB", bus="scsi", format="raw")],
    }
    write_guest(tmp_path, name, **shape)
    assert reconcile("--once", str(tmp_path)).code == 0
    report = wait_for_marker(paths.console_log, "ready")
    assert report.disks == {"vda": 64 * MIB, "vdb": 64 * MIB, "sda": 32 * MIB}

    def definition_targets() -> dict[str, str]:
        record = e2e.driver.lookup(name)
        assert record is not None and record.definition is not None
        return {Path(d.path).name: d.target for d in record.definition.data_disks}

    assert definition_targets() == {"data-a.qcow2": "vdb", "data-b.raw": "sdb"}

    # a third disk while it runs: attached live, the others keep their targets
    shape["disks"] = [*shape["disks"], disk("c", "48MiB", deletionPolicy="delete")]
    write_guest(tmp_path, name, **shape)
    added = reconcile("--once", str(tmp_path))
    assert added.code == 0, added.out + added.err
    assert f"{name}: attached disk vdc (data-c.qcow2) live" in added.out
    wait_for(
        lambda: "disk-added vdc bytes=50331648" in paths.console_log.read_text(errors="replace"),
        60,
        "the guest to see the new disk",
    )
    assert definition_targets() == {
        "data-a.qcow2": "vdb",
        "data-b.raw": "sdb",
        "data-c.qcow2": "vdc",
    }

    # one removed (retain: its file is kept), one removed with deletionPolicy: delete
    shape["disks"] = [disk("b", "32MiB", bus="scsi", format="raw")]
    write_guest(tmp_path, name, **shape)
    removed = reconcile("--once", str(tmp_path))
    assert removed.code == 0, removed.out + removed.err
    assert f"{name}: detached disk vdb live" in removed.out
    assert f"{name}: detached disk vdc live" in removed.out
    wait_for(
        lambda: "disk-removed vdb" in paths.console_log.read_text(errors="replace"),
        60,
        "the guest to lose the disk",
    )
    assert (paths.directory / "data-a.qcow2").exists()
    assert not (paths.directory / "data-c.qcow2").exists()
    assert definition_targets() == {"data-b.raw": "sdb"}

    # memory within the maximum: live, through the balloon, no restart
    shape["memory"] = "160MiB"
    write_guest(tmp_path, name, **shape)
    assert "[live] memory 192MiB -> 160MiB" in reconcile("plan", str(tmp_path)).out
    ballooned = reconcile("--once", str(tmp_path))
    assert ballooned.code == 0, ballooned.out + ballooned.err
    assert f"{name}: set memory to 160MiB live" in ballooned.out
    assert "next restart" not in ballooned.out

    def live_memory() -> int | None:
        record = e2e.driver.lookup(name)
        return (
            None
            if record is None or record.live_definition is None
            else record.live_definition.memory_kib
        )

    # the guest's balloon driver gives the memory back in a moment
    wait_for(lambda: live_memory() == 160 * 1024, 60, "the balloon to reach 160MiB")
    assert e2e.state_of(name) is PowerState.RUNNING
    settled = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert settled.code == 0, settled.out

    # a NIC added at the end, then removed: attached and detached live
    shape["networks"] = [{"type": "user"}]
    write_guest(tmp_path, name, **shape)
    plugged = reconcile("--once", str(tmp_path))
    assert f"{name}: attached network interface 0" in plugged.out, plugged.out + plugged.err

    def live_nics() -> int:
        record = e2e.driver.lookup(name)
        assert record is not None and record.live_definition is not None
        return len(record.live_definition.nics)

    assert live_nics() == 1
    shape["networks"] = []
    write_guest(tmp_path, name, **shape)
    unplugged = reconcile("--once", str(tmp_path))
    assert f"{name}: detached network interface 0" in unplugged.out, unplugged.out
    wait_for(lambda: live_nics() == 0, 60, "the interface to be gone")
    assert reconcile("plan", "--detailed-exitcode", str(tmp_path)).code == 0

    # a new machine type with next-boot: defined, the running domain keeps the old one
    shape["machine"] = "q35"
    write_guest(tmp_path, name, **shape)
    plan = reconcile("plan", str(tmp_path))
    assert "[restart] machine pc -> q35" in plan.out, plan.out
    assert reconcile("--once", str(tmp_path)).code == 0
    record = e2e.driver.lookup(name)
    assert (
        record is not None and record.live_definition is not None and record.definition is not None
    )
    assert (record.live_definition.machine_type, record.definition.machine_type) == ("pc", "q35")
    assert record.state is PowerState.RUNNING
    pending = reconcile("plan", str(tmp_path))
    assert "takes the change at its next restart" in pending.out, pending.out
    # ... which a stop and a start clear
    write_guest(tmp_path, name, state="stopped", **shape)
    assert reconcile("--once", str(tmp_path)).code == 0
    write_guest(tmp_path, name, **shape)
    assert reconcile("--once", str(tmp_path)).code == 0
    wait_for_marker(paths.console_log, "ready")  # a start begins a new console log
    cleared = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert cleared.code == 0 and "next restart" not in cleared.out, cleared.out

    # updatePolicy: restart: an ACPI shutdown and a start with the new definition, one pass
    shape.update(updatePolicy="restart", rng=True)
    write_guest(tmp_path, name, **shape)
    restarted = reconcile("--once", str(tmp_path))
    assert restarted.code == 0, restarted.out + restarted.err
    assert f"{name}: shut down gracefully" in restarted.out
    assert f"{name}: started domain" in restarted.out
    wait_for_marker(paths.console_log, "ready")
    record = e2e.driver.lookup(name)
    assert record is not None and record.live_definition is not None and record.live_definition.rng
    assert reconcile("plan", "--detailed-exitcode", str(tmp_path)).code == 0


@pytest.mark.libvirt_only  # the QMP driver boots BIOS guests only (refused at plan time)
def test_uefi_boots_under_ovmf_with_its_nvram_in_the_instance_directory(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcm")
    paths = e2e.state.instance(name)
    # OVMF keeps a good part of a small guest's memory: SYSLINUX's EFI loader needs 256MiB here
    write_guest(tmp_path, name, firmware="uefi", memory="256MiB")
    started = reconcile("--once", str(tmp_path))
    assert started.code == 0, started.out + started.err
    wait_for_marker(paths.console_log, "ready")
    assert "BdsDxe" in paths.console_log.read_text(errors="replace")  # OVMF's boot manager
    nvram = paths.directory / "nvram.fd"
    assert nvram.is_file()
    write_guest(tmp_path, name, firmware="uefi", memory="256MiB", state="absent")
    assert reconcile("--once", str(tmp_path)).code == 0
    assert e2e.driver.lookup(name) is None
    assert not nvram.exists()
    assert paths.disk.exists()  # the disk is kept


def test_a_new_base_is_refused_then_replaced_when_allowed(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcm")
    paths = e2e.state.instance(name)
    write_guest(tmp_path, name, image_format="qcow2")
    assert reconcile("--once", str(tmp_path)).code == 0
    wait_for_marker(paths.console_log, "ready")
    before = paths.disk.read_bytes()

    write_guest(tmp_path, name, image_format="raw")  # another base image
    refused = reconcile("--once", str(tmp_path))
    assert refused.code == 1
    assert "changing the base image would discard the guest's data" in refused.out
    assert paths.disk.read_bytes() == before
    assert e2e.state_of(name) is PowerState.RUNNING

    write_guest(tmp_path, name, image_format="raw", allowReplace=True)
    plan = reconcile("plan", str(tmp_path))
    assert "REPLACE THE BOOT DISK, DESTROYING THE GUEST'S DISK CONTENTS" in plan.out, plan.out
    replaced = reconcile("--once", str(tmp_path))
    assert replaced.code == 0, replaced.out + replaced.err
    (aside,) = paths.directory.glob("disk.qcow2.replaced-*")
    # the old disk is as it was, but for the restore point taken in it first (the default
    # snapshot policy): the same contents for the guest, and a snapshot of them
    assert "took snapshot before-replace-" in replaced.out, replaced.out
    copy = tmp_path / "before.qcow2"
    copy.write_bytes(before)
    same = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(copy), str(aside)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    labels = [entry.name for entry in read_qcow2_snapshots(str(aside))]
    assert len(labels) == 1 and labels[0].startswith("before-replace-"), labels
    record = e2e.driver.lookup(name)
    assert record is not None and record.state is PowerState.RUNNING
    wait_for_marker(paths.console_log, "ready")
    assert reconcile("plan", "--detailed-exitcode", str(tmp_path)).code == 0
    collected = reconcile("gc", "--grace", "0")
    assert collected.code == 0
    assert not aside.exists()
