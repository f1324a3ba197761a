"""Machine shape, pure: manifest fields, data disk targets, change classes, the live steps,
updatePolicy and replacement in the plan; the steps on the fake driver."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reconciler.manifests.loader import load_manifests
from reconciler.model.actual import DiskFacts, DomainFacts, PowerState, StateReason
from reconciler.model.desired import (
    BootDevice,
    DataDiskSpec,
    DeletionPolicy,
    DiskBus,
    Firmware,
    ImageFormat,
    InstanceSpec,
    MachineType,
    UpdatePolicy,
)
from reconciler.model.machine import Disk, Machine
from reconciler.planning.disks import data_disk_devices
from reconciler.planning.machine import ChangeClass, describe_changes
from reconciler.planning.plan import StepKind
from reconciler.planning.steps import DefineDomain, MoveDiskAside, TakeSnapshot
from tests.planning import BASE, STATE, Observed, planned
from tests.unit.test_manifests import VALID
from tests.unit.test_plan import RUNNING, context, overlay

MIB = 1024**2
DIRECTORY = STATE.instance("web").directory


def kinds_of(spec: InstanceSpec, actual: Observed) -> list[StepKind] | str:
    plan = planned(spec, actual, context(spec))
    return plan.refusal if plan.refusal is not None else [step.kind for step in plan.steps]


def defined(spec: InstanceSpec) -> Machine:
    """The machine the plan defines for `spec` on a host where nothing exists yet."""
    plan = planned(spec, Observed(None, None, None, True), context(spec))
    define = next(step for step in plan.steps if isinstance(step, DefineDomain))
    return define.machine


def running(spec: InstanceSpec, state: PowerState = PowerState.RUNNING) -> Observed:
    """`spec`'s domain as the plan made it, running, with its data disk files there."""
    machine = defined(spec)
    live = machine if state.active else None
    facts = DomainFacts(
        spec.name, machine.uuid or "", state, StateReason.BOOTED, True, machine, live
    )
    disks = tuple(
        DiskFacts(str(DIRECTORY / d.file_name), d.format.value, d.size_bytes, None, None)
        for d in spec.disks
    )
    return Observed(facts, overlay(spec), None, True, data_disks=disks)


# -- manifests ---------------------------------------------------------------------------------


def test_machine_settings_are_read(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        VALID
        + """\
  machine: q35
  firmware: uefi
  boot: [cdrom, hd]
  description: "front end"
  graphics: vnc
  rng: true
  guestAgent: true
  autostart: true
  updatePolicy: restart
  maxMemory: 1GiB
  maxVcpus: 4
  disks:
    - {name: data, size: 10GiB}
    - {name: logs, size: 1GiB, bus: scsi, format: raw, deletionPolicy: delete}
"""
    )
    result = load_manifests(tmp_path)
    assert result.errors == ()
    (spec,) = result.instances
    assert (spec.machine, spec.firmware, spec.boot) == (
        MachineType.Q35,
        Firmware.UEFI,
        (BootDevice.CDROM, BootDevice.HD),
    )
    assert spec.update_policy is UpdatePolicy.RESTART
    assert (spec.max_memory_bytes, spec.max_vcpus) == (1024 * MIB, 4)
    assert spec.disks == (
        DataDiskSpec("data", 10 * 1024 * MIB),
        DataDiskSpec("logs", 1024 * MIB, DiskBus.SCSI, ImageFormat.RAW, DeletionPolicy.DELETE),
    )


def test_impossible_machine_settings_are_located_errors(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        VALID
        + """\
  maxMemory: 128MiB
  maxVcpus: 1
  disks:
    - {name: data, size: 1GiB}
    - {name: data, size: 2GiB}
"""
    )
    errors = [str(e).split("m.yaml:", 1)[1] for e in load_manifests(tmp_path).errors]
    assert errors == [
        "14:14: /spec/maxMemory: '128MiB' is less than memory '256MiB'",
        "15:13: /spec/maxVcpus: 1 is less than vcpus 2",
        "18:14: /spec/disks/1/name: disk name 'data' is given twice",
    ]
    (tmp_path / "m.yaml").write_text(VALID + "  disks: [{name: Bad_Name, size: 1GiB}]\n")
    (error,) = [str(e).split("m.yaml:", 1)[1] for e in load_manifests(tmp_path).errors]
    assert error == (
        '14:18: /spec/disks/0/name: "Bad_Name" is not valid (expected 1 to 32 lowercase '
        "letters, digits and '-')"
    )


# -- targets and classes --------------------------------------------------------------------


def test_data_disks_keep_their_targets_when_others_come_and_go() -> None:
    a, b, c = DataDiskSpec("a", MIB), DataDiskSpec("b", MIB, DiskBus.SCSI), DataDiskSpec("c", MIB)
    first = data_disk_devices((a, b), DIRECTORY, None)
    assert [d.target for d in first] == ["vdb", "sdb"]
    boot = defined(RUNNING).disks

    def targets(disks: tuple[DataDiskSpec, ...], current: tuple[Disk, ...]) -> tuple[Disk, ...]:
        return data_disk_devices(disks, DIRECTORY, replace(defined(RUNNING), disks=boot + current))

    grown = targets((a, c, b), first)  # one added in the middle of the list
    assert [d.target for d in grown] == ["vdb", "vdc", "sdb"]
    shrunk = targets((c, b), grown)  # the first removed
    assert [(Path(d.path).name, d.target) for d in shrunk] == [
        ("data-c.qcow2", "vdc"),
        ("data-b.qcow2", "sdb"),
    ]


def test_every_change_has_its_class() -> None:
    base = defined(replace(RUNNING, max_memory_bytes=512 * MIB))
    wanted = replace(base, memory_kib=256 * 1024, machine_type="q35", rng=True)
    classes = {change.what.split()[0]: change.kind for change in describe_changes(base, wanted)}
    assert classes == {
        "memory": ChangeClass.LIVE,
        "machine": ChangeClass.RESTART,
        "rng": ChangeClass.RESTART,
    }
    # beyond the maximum, memory takes a restart too
    beyond = replace(base, memory_kib=1024 * 1024)
    (change,) = describe_changes(base, beyond)
    assert change.kind is ChangeClass.RESTART


# -- the plan --------------------------------------------------------------------------------


def test_live_changes_are_applied_to_the_running_domain_without_a_restart() -> None:
    spec = replace(RUNNING, max_memory_bytes=512 * MIB, disks=(DataDiskSpec("a", 64 * MIB),))
    actual = running(spec)
    assert kinds_of(spec, actual) == []
    more = replace(
        spec,
        memory_bytes=256 * MIB,
        disks=(DataDiskSpec("a", 128 * MIB), DataDiskSpec("b", 32 * MIB)),
    )
    plan = planned(more, actual, context(more))
    assert [s.kind for s in plan.steps] == [
        StepKind.RESIZE_DISK,
        StepKind.CREATE_DATA_DISK,
        StepKind.DEFINE,
        StepKind.SET_MEMORY,
        StepKind.ATTACH_DISK,
    ]
    assert not plan.pending_restart
    define = plan.steps[2]
    assert isinstance(define, DefineDomain)
    assert define.classes() == {ChangeClass.LIVE}
    assert "[live] attach disk vdc (data-b.qcow2)" in define.describe()


def test_a_restart_change_waits_for_the_next_boot_or_restarts_by_policy() -> None:
    actual = running(RUNNING)
    q35 = replace(RUNNING, machine=MachineType.Q35)
    waiting = planned(q35, actual, context(q35))
    assert [s.kind for s in waiting.steps] == [StepKind.DEFINE]
    assert waiting.pending_restart
    assert "[restart] machine pc -> q35" in waiting.steps[0].describe()
    # once defined, the running domain still differs: pending until it restarts
    define = waiting.steps[0]
    assert isinstance(define, DefineDomain)
    assert actual.domain is not None
    redefined = replace(actual.domain, definition=define.machine)
    after = replace(actual, domain=redefined)
    again = planned(q35, after, context(q35))
    assert again.steps == () and again.pending_restart
    restarted = replace(redefined, live_definition=define.machine)  # as after a restart by hand
    assert not planned(q35, replace(after, domain=restarted), context(q35)).pending_restart

    now = replace(q35, update_policy=UpdatePolicy.RESTART)
    assert kinds_of(now, actual) == [StepKind.STOP, StepKind.DEFINE, StepKind.START]


def test_removed_disks_are_detached_and_deleted_only_by_their_policy() -> None:
    keep = DataDiskSpec("keep", MIB)
    drop = DataDiskSpec("drop", MIB, deletion_policy=DeletionPolicy.DELETE)
    spec = replace(RUNNING, disks=(keep, drop))
    actual = running(spec)
    plan = planned(replace(spec, disks=()), actual, context(spec))
    assert [s.kind for s in plan.steps] == [
        StepKind.DEFINE,
        StepKind.DETACH_DISK,
        StepKind.DETACH_DISK,
        StepKind.REMOVE_FILES,
    ]
    directory = context(spec).paths.directory
    assert plan.steps[-1].describe() == (
        f"remove data disk (deletionPolicy: delete) {directory}/data-drop.qcow2"
    )


def test_a_new_base_is_refused_unless_replacement_is_allowed() -> None:
    actual = running(RUNNING)
    moved = replace(actual, overlay=overlay(RUNNING, backing="/state/images/sha256-other.raw"))
    refusal = kinds_of(RUNNING, moved)
    assert isinstance(refusal, str) and "allowReplace: true replaces the disk" in refusal
    # the safe way for the same bytes at another path, with the check that says so
    assert "sha256sum /state/images/sha256-other.raw prints " in refusal
    assert "qemu-img rebase -u -F raw -b " in refusal
    allowed = replace(RUNNING, allow_replace=True)
    plan = planned(allowed, moved, context(allowed))
    assert [s.kind for s in plan.steps] == [
        StepKind.STOP,
        StepKind.SNAPSHOT,  # the default policy: a restore point before a replace
        StepKind.MOVE_DISK_ASIDE,
        StepKind.CREATE_OVERLAY,
        StepKind.START,
    ]
    snapshot, aside = plan.steps[1], plan.steps[2]
    assert isinstance(snapshot, TakeSnapshot) and isinstance(aside, MoveDiskAside)
    assert snapshot.label.startswith("before-replace-") and snapshot.moved_to == aside.aside
    assert aside.describe().startswith("REPLACE THE BOOT DISK, DESTROYING")
    assert str(BASE) not in aside.describe()


def test_nics_added_or_removed_at_the_end_change_live_others_take_a_restart() -> None:
    from reconciler.model.desired import NetworkSpec

    one = replace(RUNNING, networks=(NetworkSpec(),))
    two = replace(RUNNING, networks=(NetworkSpec(), NetworkSpec(mac="52:54:00:00:00:02")))
    actual = running(one)
    plan = planned(two, actual, context(two))
    assert [s.kind for s in plan.steps] == [StepKind.DEFINE, StepKind.ATTACH_NIC]
    assert not plan.pending_restart
    back = planned(one, running(two), context(one))
    assert [s.kind for s in back.steps] == [StepKind.DEFINE, StepKind.DETACH_NIC]
    # one put in front moves the others' slots: a restart
    front = replace(RUNNING, networks=(NetworkSpec(mac="52:54:00:00:00:02"), NetworkSpec()))
    moved = planned(front, actual, context(front))
    assert [s.kind for s in moved.steps] == [StepKind.DEFINE]
    assert moved.pending_restart


def test_a_hand_edit_that_keeps_the_marker_is_drift_and_is_repaired() -> None:
    actual = running(RUNNING)
    assert actual.domain is not None
    edited = replace(actual.domain.definition, memory_kib=256 * 1024)  # the marker kept
    drifted = replace(actual, domain=replace(actual.domain, definition=edited))
    plan = planned(RUNNING, drifted, context(RUNNING))
    (define,) = plan.steps
    assert isinstance(define, DefineDomain)
    assert "[restart] drift: memory 256MiB (manifest 128MiB)" in define.describe()
    assert not plan.pending_restart  # the running domain never took the edit


def test_every_difference_is_named_never_just_definition_updated() -> None:
    base = defined(RUNNING)
    other_console = replace(base, console_log="/var/log/hand-made.log")
    (change,) = describe_changes(other_console, base)
    assert change.describe().startswith("[restart] serial console /var/log/hand-made.log -> ")
    boot = base.disk("vda")
    assert boot is not None
    other_bus = replace(base, disks=(replace(boot, bus="sata"), *base.disks[1:]))
    (change,) = describe_changes(other_bus, base)
    assert "boot disk qcow2 on sata -> qcow2 on virtio" in change.describe()
