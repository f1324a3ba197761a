"""The product on real QEMU (embedded libvirt) and real qemu-img: manifests to running VMs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.drivers.kvm import probe_local_kvm
from reconciler.drivers.libvirt_driver import LibvirtDriver
from reconciler.images.qemuimg import QemuImg
from reconciler.model.actual import PowerState
from reconciler.model.desired import Accelerator
from reconciler.model.machine import Machine
from tests.e2e.conftest import E2E, CliRun, wait_for
from tests.helpers import free_port, unique_name, write_manifest

pytestmark = pytest.mark.both_drivers

MIB = 1024**2
Reconcile = Callable[..., CliRun]


def qemu_img_virtual_size(path: Path) -> int:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    size: int = json.loads(out)["virtual-size"]
    return size


def test_instance_reaches_running_then_second_pass_does_nothing(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique_name()
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)

    first = reconcile("--once", str(tmp_path))
    assert first.code == 0, first.out + first.err
    assert e2e.state_of(name) is PowerState.RUNNING
    expected = "kvm" if probe_local_kvm().usable else "tcg"
    assert f"{name}: started domain (accelerator {expected})" in first.out
    console = e2e.state.instance(name).console_log
    wait_for(
        lambda: console.exists() and "reconciler-bootsector: booted" in console.read_text(),
        60,
        "the guest's boot line on its serial console",
    )

    # Spy (not mock) on the calls a converged pass must not make.
    calls: list[str] = []

    def spy(method: str, real: Callable[..., object]) -> Callable[..., object]:
        def record(*args: object, **kwargs: object) -> object:
            calls.append(method)
            return real(*args, **kwargs)

        return record

    for owner, method in ((QemuImg, "run"), (LibvirtDriver, "define"), (LibvirtDriver, "start")):
        monkeypatch.setattr(owner, method, spy(method, getattr(owner, method)))
    disk = e2e.state.instance(name).disk
    before = disk.stat().st_mtime_ns
    second = reconcile("--once", str(tmp_path))
    assert second.code == 0
    assert "nothing to do" in second.out
    assert calls == []
    assert disk.stat().st_mtime_ns == before


def test_disk_grows_online_and_never_shrinks(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name()
    write_manifest(tmp_path, name, e2e.base, e2e.sha256, disk={"size": "64MiB"})
    assert reconcile("--once", str(tmp_path)).code == 0
    disk = e2e.state.instance(name).disk
    assert qemu_img_virtual_size(disk) == 64 * MIB

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, disk={"size": "128MiB"})
    plan = reconcile("plan", str(tmp_path))
    assert "grow disk vda 64MiB -> 128MiB (online, the guest sees it now)" in plan.out
    grown = reconcile("--once", str(tmp_path))
    assert grown.code == 0, grown.out + grown.err
    assert qemu_img_virtual_size(disk) == 128 * MIB
    assert e2e.driver.disk_capacity(name, "vda") == 128 * MIB
    assert e2e.state_of(name) is PowerState.RUNNING

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, disk={"size": "32MiB"})
    refused = reconcile("--once", str(tmp_path))
    assert refused.code == 1
    assert "disks never shrink" in refused.out
    assert qemu_img_virtual_size(disk) == 128 * MIB
    assert e2e.state_of(name) is PowerState.RUNNING


def test_stop_start_and_memory_change(e2e: E2E, reconcile: Reconcile, tmp_path: Path) -> None:
    name = unique_name()
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)
    assert reconcile("--once", str(tmp_path)).code == 0

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, state="stopped")
    stopped = reconcile("--once", str(tmp_path))
    assert stopped.code == 0, stopped.out
    assert e2e.state_of(name) is PowerState.SHUTOFF
    # the boot-sector guest ignores ACPI, so the timeout (1 s) ends in a forced stop
    assert f"{name}: forced off (no shutdown within 1s)" in stopped.out

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, state="running")
    assert reconcile("--once", str(tmp_path)).code == 0
    assert e2e.state_of(name) is PowerState.RUNNING

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, memory="96MiB")
    plan = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert plan.code == 2
    assert (
        "redefine domain: [restart] memory 64MiB -> 96MiB "
        "(takes effect at the next restart of the running domain)" in plan.out
    )
    applied = reconcile("--once", str(tmp_path))
    assert applied.code == 0
    record = e2e.driver.lookup(name)
    assert record is not None and record.definition is not None
    assert record.definition.memory_kib == 98304
    assert record.live_definition is not None and record.live_definition.memory_kib == 65536
    again = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert again.code == 0
    assert "running with an older definition" in again.out


def test_foreign_domain_is_left_untouched(e2e: E2E, reconcile: Reconcile, tmp_path: Path) -> None:
    name = unique_name()
    e2e.driver.define(Machine(name, Accelerator.TCG, vcpus=1, memory_kib=32 * 1024))  # no marker
    before = e2e.driver.lookup(name)
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)

    result = reconcile("--once", str(tmp_path))
    assert result.code == 1
    assert "not created by reconciler" in result.out
    after = e2e.driver.lookup(name)
    assert after == before
    paths = e2e.state.instance(name)
    assert not paths.disk.exists() and not list(paths.directory.glob("config-*"))  # nothing made


def test_invalid_manifest_does_not_stop_a_valid_one(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    good, bad = unique_name(), unique_name()
    write_manifest(tmp_path, good, e2e.base, e2e.sha256)
    write_manifest(tmp_path, bad, e2e.base, e2e.sha256, memory="10XB")

    result = reconcile("--once", str(tmp_path))
    assert result.code == 2
    assert f'{tmp_path}/{bad}.yaml:12:11: /spec/memory: "10XB" is not valid' in result.err
    assert "Traceback" not in result.err
    assert e2e.state_of(good) is PowerState.RUNNING
    assert e2e.state_of(bad) is None
    assert not e2e.state.instance(bad).directory.exists()


def test_plan_changes_nothing(e2e: E2E, reconcile: Reconcile, tmp_path: Path) -> None:
    name = unique_name()
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)
    plan = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert plan.code == 2
    assert f"{name}: 3 step(s)" in plan.out or f"{name}: 4 step(s)" in plan.out
    assert e2e.state_of(name) is None
    assert not e2e.state.instance(name).directory.exists()


def test_absent_undefines_but_keeps_the_disk_and_a_new_pass_reuses_it(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name()
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)
    assert reconcile("--once", str(tmp_path)).code == 0
    disk = e2e.state.instance(name).disk
    inode = disk.stat().st_ino

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, state="absent")
    gone = reconcile("--once", str(tmp_path))
    assert gone.code == 0, gone.out
    assert e2e.state_of(name) is None
    assert disk.stat().st_ino == inode
    assert "absent" in gone.out

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, state="running")
    back = reconcile("--once", str(tmp_path))
    assert back.code == 0
    assert "created disk" not in back.out
    assert disk.stat().st_ino == inode
    assert e2e.state_of(name) is PowerState.RUNNING


def test_domain_undefined_by_hand_is_defined_again_on_its_disk(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name()
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)
    assert reconcile("--once", str(tmp_path)).code == 0
    inode = e2e.state.instance(name).disk.stat().st_ino
    e2e.driver.force_stop(name)
    e2e.driver.undefine(name)

    again = reconcile("--once", str(tmp_path))
    assert again.code == 0
    assert f"{name}: defined domain" in again.out
    assert "created disk" not in again.out
    assert e2e.state.instance(name).disk.stat().st_ino == inode
    assert e2e.state_of(name) is PowerState.RUNNING


def test_local_image_without_checksum_converges_and_stays_converged(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name()
    path = write_manifest(tmp_path, name, e2e.base, None)
    assert "sha256" not in path.read_text()
    first = reconcile("--once", str(tmp_path))
    assert first.code == 0, first.out + first.err
    assert e2e.state_of(name) is PowerState.RUNNING
    assert reconcile("plan", "--detailed-exitcode", str(tmp_path)).code == 0


def test_status_without_a_daemon_observes_the_state_directory(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    import json

    port = free_port()
    name, stopped = unique_name(), unique_name()
    forward = [{"type": "user", "ports": [{"host": port, "guest": 22}]}]
    write_manifest(tmp_path, name, e2e.base, e2e.sha256, networks=forward)
    write_manifest(tmp_path, stopped, e2e.base, e2e.sha256, state="stopped")
    assert reconcile("--once", str(tmp_path)).code == 0
    status = reconcile("status")
    assert status.code == 0, status.out + status.err
    assert f"no daemon runs on {e2e.state.root}; observed now with" in status.out
    (line,) = [row for row in status.out.splitlines() if row.split()[:1] == [name]]
    accelerator = "kvm" if probe_local_kvm().usable else "tcg"  # auto, on this host
    # no probe: a running domain is ready, a stopped one is not (and says why)
    assert line.split()[1:6] == ["running", "running", "True", accelerator, "64MiB"]
    assert f"10.0.2.15 (127.0.0.1:{port} -> 22/tcp)" in line  # the address, each forward
    (other,) = [row for row in status.out.splitlines() if row.split()[:1] == [stopped]]
    assert other.split()[1:4] == ["stopped", "shutoff", "False"]
    assert "Ready False since" in status.out and "NotRunning: the domain is shutoff" in status.out
    one = reconcile("status", name, "-o", "json")
    assert one.code == 0, one.err
    (entry,) = json.loads(one.out)["instances"]
    assert entry["observed"] == "running" and entry["disk"]["bytes"] == 64 * 1024**2
    (address,) = entry["addresses"]
    assert (address["type"], address["address"], address["source"]) == (
        "user", "10.0.2.15", "user-mode DHCP",
    )  # fmt: skip
    assert address["forwards"] == [f"127.0.0.1:{port} -> 22/tcp"]
    missing = reconcile("status", "rct-nosuch")
    assert missing.code == 2 and "no instance named 'rct-nosuch'" in missing.err


def test_a_balloon_change_on_a_guest_without_a_balloon_driver_converges(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    """The boot-sector guest has no balloon driver, so the balloon's actual size stays at the
    maximum: the plan compares the target asked for, says no restart is pending, and a live
    memory change converges in one pass."""
    name = unique_name()
    write_manifest(tmp_path, name, e2e.base, e2e.sha256, memory="128MiB", maxMemory="256MiB")
    assert reconcile("--once", str(tmp_path)).code == 0
    created = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert created.code == 0, created.out
    assert "older definition" not in created.out
    write_manifest(tmp_path, name, e2e.base, e2e.sha256, memory="96MiB", maxMemory="256MiB")
    change = reconcile("plan", str(tmp_path))
    assert "[live] memory 128MiB -> 96MiB (takes effect now on the running domain)" in change.out
    assert "set the running domain's memory to 96MiB" in change.out
    assert "older definition" not in change.out
    applied = reconcile("--once", str(tmp_path))
    assert applied.code == 0, applied.out
    assert "older definition" not in applied.out
    settled = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert settled.code == 0, settled.out
