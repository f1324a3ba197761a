"""Run policy on real QEMU: what a pass does with a domain that stopped without the manifest
asking, by the stop reason libvirt reports (QEMU killed: a failure; the guest powered off
through ACPI: not one)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from reconciler.drivers.libvirt_driver import is_domain_emulator
from reconciler.model.actual import PowerState
from tests.e2e.conftest import E2E, CliRun, wait_for
from tests.guest import guest_image, wait_for_marker
from tests.helpers import unique_name, write_manifest

Reconcile = Callable[..., CliRun]


def kill_qemu(e2e: E2E, name: str) -> None:
    """SIGKILL the domain's QEMU, after checking it is that domain's emulator."""
    record = e2e.driver.lookup(name)
    assert record is not None
    pid = int((e2e.state.libvirt_root / "run" / "qemu" / f"{name}.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert is_domain_emulator(cmdline, os.readlink(f"/proc/{pid}/exe"), name, record.uuid)
    os.kill(pid, signal.SIGKILL)
    wait_for(stopped(e2e, name), 60, f"{name} to stop")


def stopped(e2e: E2E, name: str) -> Callable[[], bool]:
    return lambda: e2e.state_of(name) is PowerState.SHUTOFF


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
