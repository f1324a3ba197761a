"""The test guest on real QEMU: it boots, reports its disk, and shuts down through ACPI."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.drivers.kvm import probe_local_kvm
from reconciler.model.actual import PowerState
from reconciler.sizes import format_size
from tests.e2e.conftest import E2E, CliRun, wait_for
from tests.guest import guest_image, parse_markers, wait_for_marker
from tests.helpers import unique_name, write_manifest
from tests.httpserver import Behaviour, image_server

pytestmark = pytest.mark.both_drivers

MIB = 1024**2
Reconcile = Callable[..., CliRun]


def write_guest_manifest(directory: Path, name: str, **spec: object) -> Path:
    image = guest_image("qcow2")
    spec.setdefault("memory", "128MiB")
    spec.setdefault("shutdownTimeoutSeconds", 120)
    return write_manifest(directory, name, image, None, "qcow2", **spec)


def test_guest_boots_reports_its_disk_and_shuts_down_through_acpi(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name()
    console = e2e.state.instance(name).console_log
    write_guest_manifest(tmp_path, name, disk={"size": "256MiB"})
    started = reconcile("--once", str(tmp_path))
    assert started.code == 0, started.out + started.err
    expected = "kvm" if probe_local_kvm().usable else "tcg"
    assert f"{name}: started domain (accelerator {expected})" in started.out

    report = wait_for_marker(console, "ready")
    assert report.booted
    assert report.disk == "vda"
    assert report.disk_bytes == 256 * MIB
    assert report.config_drive == "none"
    assert report.power_button not in (None, "none")

    write_guest_manifest(tmp_path, name, disk={"size": "384MiB"})
    assert reconcile("--once", str(tmp_path)).code == 0

    write_guest_manifest(tmp_path, name, disk={"size": "384MiB"}, state="stopped")
    stopped = reconcile("--once", str(tmp_path))
    assert stopped.code == 0, stopped.out
    assert f"{name}: shut down gracefully" in stopped.out
    assert parse_markers(console.read_text()).shutdown
    record = e2e.driver.lookup(name)
    assert record is not None and record.state is PowerState.SHUTOFF

    write_guest_manifest(tmp_path, name, disk={"size": "384MiB"}, state="running")
    assert reconcile("--once", str(tmp_path)).code == 0
    rebooted = wait_for_marker(console, "ready")
    assert rebooted.disk_bytes == 384 * MIB


def test_kvm_where_it_cannot_run_guests_is_a_failure_not_running(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name()
    write_guest_manifest(tmp_path, name, accelerator="kvm")
    result = reconcile("--once", str(tmp_path))
    if probe_local_kvm().usable:
        assert result.code == 0, result.out
        wait_for_marker(e2e.state.instance(name).console_log, "ready")
        return
    # No usable KVM. Where /dev/kvm is a pseudo-virtualisation the guest faults at its
    # bootloader and the domain stays paused on the error; where /dev/kvm cannot be opened at
    # all, QEMU exits at once and the domain is shut off (libvirt may even refuse the
    # definition). On every such host: the pass fails, the instance is never reported running,
    # and the plan never calls it up to date.
    assert result.code == 1, result.out
    # the summary pads every name to the longest it shows (the session's other domains too)
    line = re.search(rf"^  {re.escape(name)} +(\w+) +(.*)$", result.out, re.MULTILINE)
    assert line is not None and line[1] == "failed", result.out
    assert "running" not in line[2], result.out
    # the pass watched the guest until it had used some CPU time, however loaded the host:
    # by then it has faulted (paused) or QEMU has gone, and it stays so
    wait_for(lambda: e2e.state_of(name) is not PowerState.RUNNING, 60, f"{name} to settle")
    plan = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert plan.code in (1, 2), plan.out  # a refusal (paused on error), or a start pending
    assert f"{name}: up to date" not in plan.out


def test_guest_from_an_http_source_boots(e2e: E2E, reconcile: Reconcile, tmp_path: Path) -> None:
    image = guest_image("qcow2")
    data = image.read_bytes()
    name = unique_name()
    with image_server() as server:
        server.serve("/guest.qcow2", Behaviour(data))
        url = server.url("/guest.qcow2")
        write_manifest(
            tmp_path, name, image, hashlib.sha256(data).hexdigest(), "qcow2",
            memory="128MiB", image_convert_to="raw",
        )  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(path.read_text().replace(str(image), url))
        plan = reconcile("plan", str(tmp_path))
        assert f"fetch base image {url} into the cache" in plan.out
        assert f"stored as raw, {format_size(len(data))})" in plan.out
        result = reconcile("--once", str(tmp_path))
    assert result.code == 0, result.out + result.err
    assert f"{name}: fetched base image into the cache" in result.out
    report = wait_for_marker(e2e.state.instance(name).console_log, "ready")
    assert report.disk_bytes == 64 * MIB
    (cached,) = e2e.state.images.glob(f"sha256-{hashlib.sha256(data).hexdigest()}.qcow2.raw")
    assert cached.stat().st_size == guest_image("raw").stat().st_size
