"""A domain whose emulator exits as soon as it starts (as QEMU does where /dev/kvm cannot be
opened): the pass fails, and the plan keeps proposing the start, never "up to date".

libvirt's test:/// driver plays the hypervisor; the emulator's exit is the one thing added."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.drivers.libvirt_driver import LibvirtDriver
from reconciler.images.sources import SourcePolicy
from reconciler.layout import StateLayout
from reconciler.loop.once import apply_all, plan_all
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.loop.results import Outcome
from reconciler.manifests.loader import load_manifests
from reconciler.model.actual import DomainFacts
from reconciler.model.desired import Accelerator
from reconciler.planning.plan import StepKind
from reconciler.statedir import StateDir
from tests.helpers import write_base_image, write_manifest


class EmulatorExitsAtOnce(LibvirtDriver):
    """The real test:/// driver, whose domains stop right after they start."""

    def start(self, name: str) -> None:
        super().start(name)
        super().force_stop(name)


@pytest.mark.parametrize("accelerator", ["auto", "kvm"])
def test_a_domain_that_stops_right_after_start_is_a_failure_and_stays_pending(
    tmp_path: Path, accelerator: str
) -> None:
    base, sha = write_base_image(tmp_path)
    write_manifest(tmp_path, "itest-exit", base, sha, accelerator=accelerator)
    load = load_manifests(tmp_path)
    state = StateDir(tmp_path / "state")
    settings = Settings(Accelerator.AUTO, sources=SourcePolicy.from_settings([], tmp_path))
    driver = EmulatorExitsAtOnce.open("test:///default", StateLayout(tmp_path))
    try:
        (result,) = apply_all(load, Reconciler(driver, state, settings))
        assert result.outcome is Outcome.FAILED
        assert result.state is None  # never reported as having reached running
        assert result.message is not None and "shutoff" in result.message
        if accelerator == "kvm":  # KVM forced where it cannot run: the start step watches
            assert "right after start with accelerator kvm" in result.message
        (plan,) = plan_all(load, Reconciler(driver, state, settings))
        assert not plan.converged
        assert [step.kind for step in plan.steps] == [StepKind.START]
    finally:
        driver.close()


def test_autostart_is_set_where_libvirt_keeps_it(tmp_path: Path) -> None:
    base, sha = write_base_image(tmp_path)
    write_manifest(tmp_path, "itest-auto", base, sha, autostart=True, state="stopped")
    state = StateDir(tmp_path / "state")
    settings = Settings(Accelerator.AUTO, sources=SourcePolicy.from_settings([], tmp_path))
    driver = LibvirtDriver.open("test:///default", StateLayout(tmp_path))
    try:
        reconciler = Reconciler(driver, state, settings)
        (result,) = apply_all(load_manifests(tmp_path), reconciler)
        assert result.outcome is Outcome.CHANGED, result.message
        assert "autostart enabled" in result.actions
        record = driver.lookup("itest-auto")
        assert isinstance(record, DomainFacts) and record.autostart is True
        (plan,) = plan_all(load_manifests(tmp_path), reconciler)
        assert plan.converged
        write_manifest(tmp_path, "itest-auto", base, sha, autostart=False, state="stopped")
        (plan,) = plan_all(load_manifests(tmp_path), reconciler)
        assert [step.kind for step in plan.steps] == [StepKind.SET_AUTOSTART]
    finally:
        driver.close()


def test_two_state_directories_on_one_connection_never_prune_each_other(tmp_path: Path) -> None:
    from dataclasses import replace

    base, sha = write_base_image(tmp_path)
    driver = LibvirtDriver.open("test:///default", StateLayout(tmp_path))
    try:
        passes = {}
        for side in ("ours", "theirs"):
            manifests = tmp_path / side
            manifests.mkdir()
            # test:/// has no ACPI shutdown: a prune of it pulls the plug at once
            write_manifest(manifests, f"itest-{side}", base, sha, shutdownTimeoutSeconds=0)
            settings = Settings(
                Accelerator.AUTO, sources=SourcePolicy.from_settings([tmp_path], manifests)
            )
            reconciler = Reconciler(driver, StateDir(tmp_path / f"state-{side}"), settings)
            (result,) = apply_all(load_manifests(manifests), reconciler)
            assert result.outcome is Outcome.CHANGED, result.message
            passes[side] = (manifests, reconciler)
        manifests, reconciler = passes["ours"]
        (manifests / "itest-ours.yaml").unlink()
        write_manifest(manifests, "itest-other", base, sha)
        pruning = Reconciler(driver, reconciler.state, replace(reconciler.settings, prune=True))
        results = {r.name: r for r in apply_all(load_manifests(manifests), pruning)}
        assert results["itest-ours"].outcome is Outcome.CHANGED, results["itest-ours"]
        assert driver.lookup("itest-ours") is None  # our orphan went
        assert "itest-theirs" not in results  # theirs is no orphan of ours
        assert driver.lookup("itest-theirs") is not None
    finally:
        driver.close()
