"""Snapshots in the plan, pure: the restore point before a change of a listed class and its
place among the steps, a retry that finds it taken, keep and expiry, the schedule, a revert's
hold, a freeze left behind, raw disks left out; the labels a user may give; the command line."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import pytest

from reconciler.cli.main import build_parser
from reconciler.cli.options import options_from
from reconciler.errors import ConfigError
from reconciler.model.actual import HoldFacts, InstanceActual, PowerState, SnapshotFacts
from reconciler.model.desired import (
    DataDiskSpec,
    ImageFormat,
    InstanceSpec,
    SnapshotPolicy,
    SnapshotTrigger,
    UpdatePolicy,
)
from reconciler.planning.context import InstancePlan
from reconciler.planning.plan import StepKind, plan_instance
from reconciler.planning.snapshots import label_problem
from reconciler.planning.steps import DeleteSnapshots, TakeSnapshot
from tests.planning import STATE
from tests.unit.test_machine_shape import running
from tests.unit.test_plan import RUNNING, context, digest_of

NOW = 1_800_000_000.0
HOUR = 3600
BOTH = SnapshotPolicy(frozenset({SnapshotTrigger.RESTART, SnapshotTrigger.REPLACE}), keep=2)
DISK = str(STATE.instance("web").disk)


def plan(spec: InstanceSpec, actual: InstanceActual, now: float | None = NOW) -> InstancePlan:
    observed = running(replace(spec, memory_bytes=128 * 1024**2))  # defined with 128MiB
    return plan_instance(observed.resolved(spec), actual, context(spec, now=now))


def observed(
    spec: InstanceSpec, state: PowerState = PowerState.RUNNING, **facts: Any
) -> InstanceActual:
    base = running(replace(spec, memory_bytes=128 * 1024**2), state).actual
    return replace(base, **facts)


def kinds(result: InstancePlan) -> list[StepKind]:
    assert result.refusal is None, result.refusal
    return [step.kind for step in result.steps]


def snapshot(label: str, taken: float, files: tuple[str, ...] = (DISK,)) -> SnapshotFacts:
    return SnapshotFacts(label, taken, files)


RESTART_CHANGE = replace(
    RUNNING, memory_bytes=256 * 1024**2, update_policy=UpdatePolicy.RESTART, snapshots=BOTH
)


def test_a_restart_class_change_is_preceded_by_a_snapshot_after_the_shutdown() -> None:
    result = plan(RESTART_CHANGE, observed(RESTART_CHANGE))
    assert kinds(result) == [StepKind.STOP, StepKind.SNAPSHOT, StepKind.DEFINE, StepKind.START]
    step = result.steps[1]
    assert isinstance(step, TakeSnapshot)
    digest = digest_of(RESTART_CHANGE).split(":")[-1]
    assert step.label == f"before-restart-{digest[:12]}" and step.digest == digest_of(
        RESTART_CHANGE
    )
    assert step.disks == (STATE.instance("web").disk,) and "restart-class change" in step.why
    view = result.view().steps[1]
    assert view.kind == "snapshot" and view.disruption.value == "none"


def test_the_default_policy_snapshots_before_a_replace_only() -> None:
    default = replace(RESTART_CHANGE, snapshots=SnapshotPolicy())
    assert StepKind.SNAPSHOT not in kinds(plan(default, observed(default)))
    assert SnapshotPolicy().before_change == {SnapshotTrigger.REPLACE}
    assert SnapshotPolicy().keep == 3


def test_a_retry_of_the_same_change_finds_its_restore_point_and_takes_no_other() -> None:
    first = plan(RESTART_CHANGE, observed(RESTART_CHANGE)).steps[1]
    assert isinstance(first, TakeSnapshot)
    taken = observed(RESTART_CHANGE, snapshots=(snapshot(first.label, NOW - 5),))
    assert kinds(plan(RESTART_CHANGE, taken)) == [StepKind.STOP, StepKind.DEFINE, StepKind.START]


def test_a_snapshot_on_some_disks_only_is_taken_again() -> None:
    spec = replace(RESTART_CHANGE, disks=(DataDiskSpec("data", 1024**2),))
    first = plan(spec, observed(spec)).steps[1]
    assert isinstance(first, TakeSnapshot) and len(first.disks) == 2
    partial = observed(spec, snapshots=(snapshot(first.label, NOW - 5),))  # the boot disk's
    assert StepKind.SNAPSHOT in kinds(plan(spec, partial))


def test_keep_removes_the_oldest_of_each_kind_right_after_the_new_one() -> None:
    held = (
        snapshot("before-restart-aaaaaaaaaaaa", NOW - 3 * HOUR),
        snapshot("mine", NOW - 2.5 * HOUR),  # on request: never removed by the policy
        snapshot("before-restart-bbbbbbbbbbbb", NOW - 2 * HOUR),
    )
    result = plan(RESTART_CHANGE, observed(RESTART_CHANGE, snapshots=held))
    assert kinds(result) == [
        StepKind.STOP, StepKind.SNAPSHOT, StepKind.DELETE_SNAPSHOTS, StepKind.DEFINE,
        StepKind.START,
    ]  # fmt: skip
    removal = result.steps[2]
    assert isinstance(removal, DeleteSnapshots)
    assert removal.labels == ("before-restart-aaaaaaaaaaaa",) and removal.why == "keep: 2"


def test_the_schedule_takes_one_on_a_quiet_pass_of_a_running_guest_and_says_when_next() -> None:
    spec = replace(RUNNING, memory_bytes=128 * 1024**2, snapshots=SnapshotPolicy(
        schedule_seconds=HOUR, keep=2, expiry_seconds=24 * HOUR))  # fmt: skip
    result = plan(spec, observed(spec))
    assert kinds(result) == [StepKind.SNAPSHOT] and result.snapshot_due_in == HOUR
    step = result.steps[0]
    assert isinstance(step, TakeSnapshot) and step.label == "auto-20270115-080000"
    # one taken 20 minutes ago: nothing now, back in 40 minutes
    recent = observed(spec, snapshots=(snapshot("auto-x", NOW - 1200),))
    result = plan(spec, recent)
    assert kinds(result) == [] and result.snapshot_due_in == pytest.approx(2400)
    # a stopped guest's disks do not change: none is taken
    stopped = observed(spec, PowerState.SHUTOFF)
    assert StepKind.SNAPSHOT not in kinds(plan(replace(spec, state=spec.state), stopped))
    # expiry: scheduled ones older than a day go; keep bounds them too
    old = (
        snapshot("auto-a", NOW - 30 * HOUR),
        snapshot("auto-b", NOW - 3 * HOUR),
        snapshot("auto-c", NOW - 2 * HOUR),
    )
    result = plan(spec, observed(spec, snapshots=old))
    assert kinds(result) == [StepKind.SNAPSHOT, StepKind.DELETE_SNAPSHOTS]
    removal = result.steps[1]
    assert isinstance(removal, DeleteSnapshots)
    assert set(removal.labels) == {"auto-a", "auto-b"}


def test_a_revert_holds_the_instance_until_its_manifest_changes() -> None:
    digest = digest_of(RESTART_CHANGE)
    hold = HoldFacts("before-restart-x", digest, NOW - 60)
    result = plan(RESTART_CHANGE, observed(RESTART_CHANGE, hold=hold))
    assert result.steps == () and result.held and result.refusal is None
    assert "held: reverted to snapshot before-restart-x" in result.notes[0]
    assert "reconcile resume web" in result.notes[0]
    # the manifest asks for something else: the hold ends, the change goes ahead
    other = replace(RESTART_CHANGE, memory_bytes=512 * 1024**2)
    result = plan(other, observed(other, hold=hold))
    assert kinds(result)[0] is StepKind.RELEASE_HOLD and StepKind.DEFINE in kinds(result)
    # a revert cut short: a failure that says how to finish it
    cut = plan(RESTART_CHANGE, observed(RESTART_CHANGE, hold=replace(hold, complete=False)))
    assert cut.refusal is not None and "reconcile revert web before-restart-x" in cut.refusal


def test_a_freeze_left_behind_is_thawed_first() -> None:
    spec = replace(RUNNING, memory_bytes=128 * 1024**2)
    assert kinds(plan(spec, observed(spec, frozen=True))) == [StepKind.THAW]


def test_raw_data_disks_are_left_out_and_said_so() -> None:
    spec = replace(
        RESTART_CHANGE, disks=(DataDiskSpec("scratch", 1024**2, format=ImageFormat.RAW),)
    )
    step = plan(spec, observed(spec)).steps[1]
    assert isinstance(step, TakeSnapshot) and step.left_out[0].name == "data-scratch.raw"
    assert "not of the raw disk data-scratch.raw" in step.describe()


def test_an_unreadable_snapshot_table_refuses_the_change_it_would_protect() -> None:
    problem = "the snapshot table of disk.qcow2: a snapshot table entry lies past the end"
    result = plan(RESTART_CHANGE, observed(RESTART_CHANGE, snapshot_problem=problem))
    assert result.refusal is not None and "restore point before the change" in result.refusal


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        ("nightly-1", None),
        ("v1.2_pre", None),
        ("Upper", "is not valid"),
        ("-dash", "is not valid"),
        ("a/b", "is not valid"),
        ("x" * 64, "is not valid"),
        ("before-upgrade", "reconciler's own"),
        ("auto-1", "reconciler's own"),
        ("snap\n", "is not valid"),
    ],
)
def test_labels_given_on_request(label: str, problem: str | None) -> None:
    found = label_problem(label)
    assert (found is None) if problem is None else (found is not None and problem in found)


def options(*argv: str) -> Any:
    _parser, subparsers = build_parser()
    args: argparse.Namespace = subparsers[argv[0]].parse_args(list(argv[1:]))
    return options_from(argv[0], args)


def test_the_snapshot_command_line() -> None:
    taken = options("snapshot", "web", "--name", "pre")
    assert (taken.name, taken.label, taken.action) == ("web", "pre", "take")
    deleted = options("snapshot", "delete", "web", "pre")
    assert (deleted.name, deleted.label, deleted.action) == ("web", "pre", "delete")
    named_delete = options("snapshot", "delete")  # an instance named delete
    assert (named_delete.name, named_delete.action) == ("delete", "take")
    reverted = options("revert", "web", "pre")
    assert (reverted.name, reverted.label) == ("web", "pre")
    with pytest.raises(ConfigError, match="snapshot delete NAME LABEL"):
        options("snapshot", "web", "pre")
    with pytest.raises(ConfigError, match="not --name"):
        options("snapshot", "delete", "web", "pre", "--name", "x")


def test_snapshot_records_follow_the_disks_deletion_policy() -> None:
    from reconciler.model.desired import DeletionPolicy, DesiredState
    from reconciler.planning.steps import RemoveFiles

    files = frozenset({"config-0123456789abcdef.iso", "snapshot-nightly.json", "hold.json"})
    directory = STATE.instance("web").directory
    for policy, removed in (
        (DeletionPolicy.DELETE, {"config-0123456789abcdef.iso", "snapshot-nightly.json"}),
        (DeletionPolicy.RETAIN, {"config-0123456789abcdef.iso"}),
    ):
        spec = replace(RUNNING, memory_bytes=128 * 1024**2, deletion_policy=policy)
        actual = observed(spec, config_drives=frozenset({"config-0123456789abcdef.iso"}),
                          snapshot_records=frozenset({"snapshot-nightly.json"}))  # fmt: skip
        absent = replace(spec, state=DesiredState.ABSENT)
        result = plan_instance(running(spec).resolved(absent), actual, context(absent))
        (removal,) = [s for s in result.steps if isinstance(s, RemoveFiles)]
        names = {p.name for p in removal.paths if p.parent == directory}
        assert {n for n in names if n in files} == removed, policy


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "snapshot"},
        {"op": "snapshot", "action": 3},
        {"op": "snapshot", "action": "take", "name": ["web"]},
        {"op": "snapshot", "action": "revert", "name": "web", "label": {"x": 1}},
    ],
)
def test_the_daemon_refuses_a_snapshot_request_of_the_wrong_shape(request_: dict[str, Any]) -> None:
    from reconciler.loop.control import RequestError
    from reconciler.loop.daemonapi import DaemonApi

    api = DaemonApi(object())  # type: ignore[arg-type]  # never reached: refused first
    with pytest.raises(RequestError, match="must be a string"):
        api.handle(request_, lambda _message: None)


def test_only_the_instances_own_disks_are_snapshotted_whatever_the_definition_says(
    tmp_path: Any,
) -> None:
    """Whoever can edit a domain may add disks to it: a snapshot on request covers the
    instance's own disk files only (those in its directory), qcow2 ones; raw ones are named
    as left out; a CD-ROM is not a disk."""
    from reconciler.layout import StateLayout
    from reconciler.loop.snapshots import disk_files
    from reconciler.model.actual import DomainFacts, StateReason
    from reconciler.model.machine import Disk

    paths = StateLayout(tmp_path).instance("web")
    machine = running(replace(RUNNING, memory_bytes=128 * 1024**2)).domain
    assert machine is not None
    disks = (
        Disk("vdb", "/etc/shadow", "qcow2"),
        Disk("vdc", str(paths.directory / "data-a.qcow2"), "qcow2"),
        Disk("vda", str(paths.disk), "qcow2"),
        Disk("vdd", str(paths.directory / "data-b.raw"), "raw"),
        Disk("vde", f"{paths.directory}/../other/disk.qcow2", "qcow2"),
        Disk("sda", str(paths.directory / "config-0.iso"), "raw", device="cdrom"),
    )
    domain = DomainFacts("web", "u", PowerState.RUNNING, StateReason.BOOTED, True,
                         replace(machine.definition, disks=disks))  # fmt: skip
    qcow2, raw = disk_files(domain, paths)
    assert qcow2 == [paths.disk, paths.directory / "data-a.qcow2"]
    assert raw == [paths.directory / "data-b.raw"]


def test_a_restored_definition_leaves_out_what_is_gone_since(tmp_path: Any) -> None:
    from reconciler.loop.snapshots import _startable
    from reconciler.model.machine import Disk

    machine = running(replace(RUNNING, memory_bytes=128 * 1024**2)).domain
    assert machine is not None
    here = tmp_path / "disk.qcow2"
    here.write_bytes(b"")
    now_iso = tmp_path / "config-new.iso"
    now_iso.write_bytes(b"")
    then = replace(machine.definition, disks=(
        Disk("vda", str(here), "qcow2"),
        Disk("vdb", str(tmp_path / "data-gone.qcow2"), "qcow2"),
        Disk("sda", str(tmp_path / "config-old.iso"), "raw", device="cdrom", read_only=True),
    ))  # fmt: skip
    current = replace(then, disks=(then.disks[0], replace(then.disks[2], path=str(now_iso))))
    notes: list[str] = []
    restored = _startable(then, current, notes)
    assert [d.path for d in restored.disks] == [str(here), str(now_iso)]
    assert len(notes) == 2 and "config-old.iso) is gone" in notes[1]
