"""Run policy on real QEMU: what a pass does with a domain that stopped without the manifest
asking, by the stop reason the driver reports (QEMU killed: a failure; the guest powered off
through ACPI: not one). Under both drivers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers.host import is_domain_emulator
from reconciler.model.actual import PowerState
from tests.e2e.conftest import E2E, CliRun, destroy_domains, wait_for
from tests.e2e.test_daemon import launch, stop_daemon, wait_until
from tests.guest import guest_image, wait_for_marker
from tests.helpers import unique_name, write_manifest

Reconcile = Callable[..., CliRun]


def kill_qemu(e2e: E2E, name: str) -> None:
    """SIGKILL the domain's QEMU, after checking it is that domain's emulator."""
    record = e2e.driver.lookup(name)
    assert record is not None
    pid = e2e.qemu_pid(name)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert is_domain_emulator(cmdline, os.readlink(f"/proc/{pid}/exe"), name, record.uuid)
    os.kill(pid, signal.SIGKILL)
    wait_for(stopped(e2e, name), 60, f"{name} to stop")


def stopped(e2e: E2E, name: str) -> Callable[[], bool]:
    return lambda: e2e.state_of(name) is PowerState.SHUTOFF


@pytest.mark.both_drivers
def test_each_run_policy_after_a_killed_qemu_and_a_guest_poweroff(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    names = {policy: unique_name("rcr") for policy in ("Always", "RerunOnFailure", "Manual")}
    for policy, name in names.items():
        write_manifest(
            tmp_path, name, guest_image("qcow2"), None, "qcow2", memory="128MiB",
            networks=[], runPolicy=policy, shutdownTimeoutSeconds=120,
        )  # fmt: skip
    assert reconcile("--once", str(tmp_path)).code == 0
    for name in names.values():
        wait_for_marker(e2e.state.instance(name).console_log, "ready")

    # QEMU killed: a failure. Always and RerunOnFailure start again, Manual stays off
    for name in names.values():
        kill_qemu(e2e, name)
    after_kill = reconcile("--once", str(tmp_path))
    assert after_kill.code == 0, after_kill.out + after_kill.err
    assert e2e.state_of(names["Always"]) is PowerState.RUNNING
    assert e2e.state_of(names["RerunOnFailure"]) is PowerState.RUNNING
    assert e2e.state_of(names["Manual"]) is PowerState.SHUTOFF
    assert "runPolicy Manual: the domain stopped" in after_kill.out

    # the guest powers itself off (ACPI): Always starts again, RerunOnFailure and Manual not
    for policy in ("Always", "RerunOnFailure"):
        name = names[policy]
        wait_for_marker(e2e.state.instance(name).console_log, "ready")
        assert e2e.driver.request_shutdown(name)
        wait_for(stopped(e2e, name), 60, f"{name} to power off")
    after_poweroff = reconcile("--once", str(tmp_path))
    assert after_poweroff.code == 0, after_poweroff.out + after_poweroff.err
    assert e2e.state_of(names["Always"]) is PowerState.RUNNING
    assert e2e.state_of(names["RerunOnFailure"]) is PowerState.SHUTOFF
    assert "runPolicy RerunOnFailure: the domain stopped without a failure (shutdown)" in (
        after_poweroff.out
    )
    assert e2e.state_of(names["Manual"]) is PowerState.SHUTOFF
    settled = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert settled.code == 0, settled.out  # kept off by their policy is converged


PANIC_AT_BOOT = "#cloud-config\nreconciler_test: 'reconciler-guest: panic'\n"  # tools/guest


@pytest.mark.both_drivers
def test_a_guest_that_fails_at_once_every_boot_backs_off_with_growing_delays(
    driver_name: str,
) -> None:
    """The daemon, a guest whose kernel panics at every boot (pvpanic reports it; libvirt
    destroys the domain, shut off as crashed): each restart in a row waits twice as long, and
    `status` shows the count and the next attempt."""
    root = Path(tempfile.mkdtemp(prefix="rcl-", dir="/tmp"))  # short: libvirt's sockets
    manifests = root / "m"
    manifests.mkdir()
    image = guest_image("qcow2")
    name = unique_name("rcl")
    write_manifest(
        manifests, name, image, None, "qcow2", memory="128MiB", networks=[],
        runPolicy="RerunOnFailure", cloudInit={"userData": PANIC_AT_BOOT},
    )  # fmt: skip
    daemon = launch(root, manifests, image, "", driver=driver_name)
    # restarts in a row -> the hold's whole wait, from when the stop was first seen (what
    # the status says: later reconciles inside the same hold do not change it). A hold of a
    # second can pass between two looks at the status on a loaded host: any three will do,
    # each must be its own step of the doubling
    held: dict[int, float] = {}

    def third_hold() -> bool:
        try:
            snapshot = json.loads((daemon.state.root / "status.json").read_text())
        except (OSError, ValueError):
            return False
        entry: dict[str, Any] = next((i for i in snapshot["instances"] if i["name"] == name), {})
        loop = entry.get("crashLoop")
        if loop and loop["nextStart"] and loop.get("delaySeconds") is not None:
            held[loop["restarts"]] = loop["delaySeconds"]
        return len(held) >= 3

    try:
        wait_until(third_hold, "three restarts held back", daemon, timeout=300)
        assert all(held[n] == 2.0 ** (n - 1) for n in held), held  # 1 s, 2 s, 4 s, 8 s...
        shown = daemon.cli("status")
        assert "crash loop:" in shown.stdout, shown.stdout
        log = daemon.log_text()
        assert "event lifecycle stopped: crashed" in log
        assert "crash loop: the domain stopped again (crashed) after 3 restart(s) in a row" in log
    finally:
        stop_daemon(daemon.process)
        destroy_domains(root / "s")
        shutil.rmtree(root, ignore_errors=True)
