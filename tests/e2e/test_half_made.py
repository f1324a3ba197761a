"""Half-made instances on real libvirt: a creation that failed half-way (its define refused
after the disk was made; its start refused after the define) is not mistaken for a working
instance by the next pass, which completes it on what the failed attempt made."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import DriverError
from reconciler.model.actual import PowerState
from reconciler.model.machine import Machine
from tests.e2e.conftest import E2E, CliRun
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers

Reconcile = Callable[..., CliRun]


def test_a_define_refused_after_the_disk_was_made_is_completed_by_the_next_pass(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected at the driver seam: libvirt refuses the define once."""
    name = unique_name("rch")
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)
    driver_class = type(e2e.driver)  # the class the command opens its own driver from
    real_define = driver_class.define

    def refuse(self: Any, machine: Machine) -> None:
        if machine.name == name:
            raise DriverError(f"define {name}: injected refusal")
        real_define(self, machine)

    monkeypatch.setattr(driver_class, "define", refuse)
    failed = reconcile("--once", str(tmp_path))
    assert failed.code == 1
    assert "injected refusal" in failed.out
    directory = e2e.state.instance(name).directory
    assert (directory / "disk.qcow2").exists()
    assert e2e.state_of(name) is None
    # the remains are not taken for an instance: the plan still has the define and the start
    assert reconcile("plan", "--detailed-exitcode", str(tmp_path)).code == 2

    monkeypatch.setattr(driver_class, "define", real_define)
    completed = reconcile("--once", str(tmp_path))
    assert completed.code == 0, completed.out + completed.err
    assert "completing the instance: its disk disk.qcow2 exists without a domain" in (completed.out)
    assert "created disk" not in completed.out  # the disk of the failed attempt, as it was
    assert e2e.state_of(name) is PowerState.RUNNING
    assert sorted(p.name for p in directory.glob("disk*")) == ["disk.qcow2"]


def test_a_start_refused_after_the_define_fails_every_pass_until_the_manifest_is_fixed(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    """A setting the schema allows and QEMU rejects at start: an unknown CPU model."""
    name = unique_name("rch")
    bad_cpu = {"mode": "custom", "model": "NoSuchModel99"}
    write_manifest(tmp_path, name, e2e.base, e2e.sha256, cpu=bad_cpu)
    for _ in range(2):  # the defined, never started domain is not taken for a working one
        failed = reconcile("--once", str(tmp_path))
        assert failed.code == 1
        assert "NoSuchModel99" in failed.out
        assert e2e.state_of(name) is PowerState.SHUTOFF
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)
    fixed = reconcile("--once", str(tmp_path))
    assert fixed.code == 0, fixed.out + fixed.err
    assert "created disk" not in fixed.out
    assert e2e.state_of(name) is PowerState.RUNNING
    directory = e2e.state.instance(name).directory
    assert sorted(p.name for p in directory.glob("disk*")) == ["disk.qcow2"]
    assert reconcile("plan", "--detailed-exitcode", str(tmp_path)).code == 0
