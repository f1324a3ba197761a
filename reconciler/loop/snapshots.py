"""The snapshot commands, here or in the daemon: list, take on request, delete, revert, and
resume a reverted instance. Each works on a domain this state directory manages; the steps
(steps.snapshots) do the work, as a pass would.

A revert: the hold is written first (cut short, it stays and says so), the guest is shut
down (gracefully, then forced), a boot disk a replace moved aside is put back, every disk is
brought back to the snapshot, the recorded definition is defined again, the hold is marked
complete, and the guest is started again if it ran. Until the manifest asks for something
else, or `reconcile resume`, the plan leaves the instance as the revert left it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError, InstanceError
from reconciler.images.diskheaders import HeaderError, snapshot_space
from reconciler.layout import REPLACED_SUFFIX, InstancePaths
from reconciler.loop.observe import directory_names, read_hold, read_snapshots, snapshot_files
from reconciler.loop.reconcile import Reconciler
from reconciler.model.actual import DomainFacts, SnapshotFacts
from reconciler.model.machine import Machine
from reconciler.planning.machine import describe_changes
from reconciler.planning.snapshots import label_problem, origin, request_label, stamp
from reconciler.planning.steps import DeleteSnapshots, StopDomain, TakeSnapshot
from reconciler.steps.apply import apply_step
from reconciler.steps.snapshots import (
    labels_of,
    read_record,
    remove_hold,
    write_hold,
)

REVERT_SHUTDOWN_SECONDS = 60  # when the definition does not say (one made before it did)


@dataclass(frozen=True, slots=True)
class SnapshotView:
    """One snapshot as `reconcile snapshots` shows it."""

    instance: str
    label: str
    taken: float
    origin: str  # change, schedule, request
    files: tuple[str, ...]
    why: str | None  # None: its record is lost (the disks still hold it)
    digest: str | None = None
    online: bool = False
    pause_ms: float | None = None
    left_out: tuple[str, ...] = ()
    moved_to: str | None = None
    size: int | None = None  # bytes only it holds: what deleting it frees (None: unknown)

    def as_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "label": self.label,
            "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.taken)),
            "origin": self.origin,
            "disks": list(self.files),
            "leftOut": list(self.left_out),
            "preceded": self.why,
            "digest": self.digest,
            "online": self.online,
            "pauseMs": self.pause_ms,
            "movedTo": self.moved_to,
            "bytes": self.size,
        }


@dataclass(frozen=True, slots=True)
class RevertReport:
    """What a revert did, and what the manifest asks for beside what was restored."""

    name: str
    label: str
    disks: tuple[str, ...]
    definition_restored: bool
    differences: tuple[str, ...] = ()  # what the definition before the revert had otherwise
    started: bool = False
    notes: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "disks": list(self.disks),
            "definitionRestored": self.definition_restored,
            "differences": list(self.differences),
            "started": self.started,
            "notes": list(self.notes),
        }


def managed_domain(reconciler: Reconciler, name: str) -> DomainFacts:
    """The domain `name` this state directory manages; ConfigError when there is none."""
    for record in reconciler.managed_domains():
        if record.name == name:
            return record
    raise ConfigError(f"no instance named {name!r} in {reconciler.state.root}")


def disk_files(domain: DomainFacts, paths: InstancePaths) -> tuple[list[Path], list[Path]]:
    """The domain's disks in its instance directory that can hold a snapshot (qcow2: the
    boot disk first) and those that cannot (raw)."""
    qcow2: list[Path] = []
    raw: list[Path] = []
    for disk in domain.definition.disks:
        if disk.device != "disk" or os.path.dirname(disk.path) != str(paths.directory):
            continue
        (qcow2 if disk.format == "qcow2" else raw).append(Path(disk.path))
    qcow2.sort(key=lambda p: p != paths.disk)
    return qcow2, raw


def instance_snapshots(paths: InstancePaths, files: list[Path]) -> tuple[SnapshotFacts, ...]:
    """The snapshots the instance's disk files hold (those a replace moved aside too)."""
    names = directory_names(paths)
    found, problem = read_snapshots(snapshot_files(paths, [str(p) for p in files], names))
    if problem is not None:
        raise InstanceError(problem)
    return found


def list_snapshots(reconciler: Reconciler, name: str | None) -> list[SnapshotView]:
    """The snapshots of one managed instance, or of all of them."""
    domains = (
        [managed_domain(reconciler, name)] if name is not None else reconciler.managed_domains()
    )
    views = []
    for domain in sorted(domains, key=lambda d: d.name):
        paths = reconciler.state.instance(domain.name)
        qcow2, _raw = disk_files(domain, paths)
        found = instance_snapshots(paths, qcow2)
        spaces = {}
        for path in {f for snapshot in found for f in snapshot.files}:
            try:
                spaces[path] = snapshot_space(path).exclusive
            except (OSError, HeaderError):
                continue
        for snapshot in found:
            known = [spaces[f].get(snapshot.label, 0) for f in snapshot.files if f in spaces]
            size = sum(known) if len(known) == len(snapshot.files) else None
            views.append(snapshot_view(domain.name, paths, snapshot, size))
    return views


def snapshot_view(
    name: str, paths: InstancePaths, snapshot: SnapshotFacts, size: int | None = None
) -> SnapshotView:
    record = read_record(paths.snapshot_record(snapshot.label))
    return SnapshotView(
        name,
        snapshot.label,
        snapshot.taken,
        origin(snapshot.label),
        snapshot.files,
        record.why if record is not None else None,
        record.digest if record is not None else None,
        record.online if record is not None else False,
        record.pause_ms if record is not None else None,
        record.left_out if record is not None else (),
        record.moved_to if record is not None else None,
        size,
    )


def take(reconciler: Reconciler, name: str, label: str | None) -> str:
    """A snapshot on request (never removed by the policy)."""
    domain = managed_domain(reconciler, name)
    paths = reconciler.state.instance(name)
    label = label or request_label(reconciler.clock.wall())
    problem = label_problem(label)
    if problem is not None:
        raise ConfigError(problem)
    qcow2, raw = disk_files(domain, paths)
    if any(s.label == label for s in instance_snapshots(paths, qcow2)):
        raise ConfigError(f"{name} already has a snapshot {label!r}")
    step = TakeSnapshot(
        name,
        label,
        tuple(qcow2),
        "on request",
        paths.directory,
        left_out=tuple(raw),
        freeze=domain.definition.guest_agent,
    )
    return apply_step(step, reconciler.steps)


@dataclass(frozen=True, slots=True)
class _Found:
    """A managed instance and one of its snapshots, found by label."""

    domain: DomainFacts
    paths: InstancePaths
    qcow2: list[Path]
    raw: list[Path]
    snapshot: SnapshotFacts


def _find(reconciler: Reconciler, name: str, label: str) -> _Found:
    """Snapshot `label` of managed instance `name`; ConfigError when there is none."""
    domain = managed_domain(reconciler, name)
    paths = reconciler.state.instance(name)
    qcow2, raw = disk_files(domain, paths)
    found = {s.label: s for s in instance_snapshots(paths, qcow2)}
    if label not in found:
        raise ConfigError(f"{name} has no snapshot {label!r} (reconcile snapshots {name})")
    return _Found(domain, paths, qcow2, raw, found[label])


def delete(reconciler: Reconciler, name: str, label: str) -> str:
    found = _find(reconciler, name, label)
    files = tuple(Path(f) for f in found.snapshot.files)
    step = DeleteSnapshots(name, (label,), (files,), "on request", found.paths.directory)
    return apply_step(step, reconciler.steps)


def revert(reconciler: Reconciler, name: str, label: str) -> RevertReport:
    """Bring instance `name` back to snapshot `label` (see the module's docstring)."""
    found = _find(reconciler, name, label)
    domain, paths, qcow2, raw = found.domain, found.paths, found.qcow2, found.raw
    record = read_record(paths.snapshot_record(label))
    before = read_hold(paths)
    again = before is not None and before.label == label and not before.complete
    assert domain.marker is not None  # a managed domain carries one
    reverted_digest = before.reverted_digest if again and before else domain.marker.spec_digest
    running = domain.state.active or (again and before is not None and before.running)
    write_hold(paths.hold, label, reverted_digest, complete=False, running=running)
    context = reconciler.steps
    timeout = domain.definition.shutdown_timeout_seconds or REVERT_SHUTDOWN_SECONDS
    notes = [apply_step(StopDomain(name, timeout), context)]
    if record is not None and record.moved_to is not None:
        notes += _put_back_replaced_disk(paths, Path(record.moved_to), label, reconciler)
    reverted = []
    for path in [paths.disk, *qcow2[1:]]:
        if label in labels_of(path):
            context.qemu_img.snapshot("apply", path, label)
            reverted.append(str(path))
    missing = [p for p in qcow2 if str(p) not in reverted]
    if missing:
        notes.append("not in the snapshot, left as they are: " + ", ".join(p.name for p in missing))
    if raw:
        notes.append(
            "raw disks cannot hold a snapshot, left as they are: " + ", ".join(p.name for p in raw)
        )
    restored = record.definition if record is not None else None
    differences: tuple[str, ...] = ()
    if restored is not None:
        restored = _startable(restored, domain.definition, notes)
        reconciler.driver.define(restored)
        differences = tuple(c.describe() for c in describe_changes(restored, domain.definition))
    else:
        notes.append(
            f"the record of snapshot {label} is lost: the disks were reverted, the definition "
            "was left as it is"
        )
    write_hold(paths.hold, label, reverted_digest, complete=True, running=running)
    if running:
        reconciler.driver.start(name)
    return RevertReport(
        name, label, tuple(reverted), restored is not None, differences, running, tuple(notes)
    )


def _startable(restored: Machine, current: Machine, notes: list[str]) -> Machine:
    """The recorded definition, with what has gone since taken out so that it can start: a
    config drive that was replaced (the current one takes its place) and a data disk whose
    file was deleted (left out), each said."""
    disks = []
    for disk in restored.disks:
        if os.path.exists(disk.path):
            disks.append(disk)
            continue
        if disk.device == "cdrom" and current.config_drive_path is not None:
            disks.append(dataclasses.replace(disk, path=current.config_drive_path))
            notes.append(
                f"the config drive of then ({os.path.basename(disk.path)}) is gone: the current "
                f"one ({os.path.basename(current.config_drive_path)}) is used"
            )
        else:
            notes.append(f"{disk.path} is gone: {disk.target} is left out of the definition")
    return dataclasses.replace(restored, disks=tuple(disks))


def _put_back_replaced_disk(
    paths: InstancePaths, aside: Path, label: str, reconciler: Reconciler
) -> list[str]:
    """A snapshot before a replace lives in the boot disk the replace moved aside: that disk
    becomes the boot disk again, and the one made by the replace is moved aside in turn."""
    if label in labels_of(paths.disk) or label not in labels_of(aside):
        return []
    newer = paths.aside(f"reverted-{stamp(reconciler.clock.wall())}")
    if paths.disk.exists():
        os.rename(paths.disk, newer)
    os.rename(aside, paths.disk)
    return [
        f"the boot disk moved aside by the replace is the boot disk again; the one the replace "
        f"made is kept as {newer.name} until the next gc"
    ]


def resume(reconciler: Reconciler, name: str) -> bool:
    """End the hold of a revert; whether there was one."""
    managed_domain(reconciler, name)
    return remove_hold(reconciler.state.instance(name).hold)


ACTIONS = ("list", "take", "delete", "revert", "resume")


def snapshot_request(
    reconciler: Reconciler, action: str, name: str | None, label: str | None
) -> dict[str, Any]:
    """One snapshot command, answered as JSON (the same here and from the daemon)."""
    if action == "list":
        return {"snapshots": [view.as_json() for view in list_snapshots(reconciler, name)]}
    if name is None:
        raise ConfigError(f"snapshot {action} needs an instance name")
    if action == "take":
        return {"outcome": take(reconciler, name, label)}
    if label is None and action in ("delete", "revert"):
        raise ConfigError(f"snapshot {action} needs a snapshot label")
    if action == "delete":
        assert label is not None
        return {"outcome": delete(reconciler, name, label)}
    if action == "revert":
        assert label is not None
        return {"revert": revert(reconciler, name, label).as_json()}
    if action == "resume":
        return {"resumed": resume(reconciler, name)}
    raise ConfigError(f"unknown snapshot action {action!r} (expected {', '.join(ACTIONS)})")


def snapshot_summary(paths: InstancePaths) -> dict[str, Any]:
    """What `status` shows of an instance's snapshots: how many, the space only they hold
    (read from the disks' tables when asked: a pass never walks them), and its hold."""
    names = directory_names(paths)
    files = [
        str(paths.directory / name)
        for name in sorted(names)
        if name.endswith(".qcow2") or f".{REPLACED_SUFFIX}-" in name
    ]
    labels: set[str] = set()
    space = 0
    problem = None
    for path in files:
        try:
            found = snapshot_space(path)
        except FileNotFoundError:
            continue
        except (OSError, HeaderError) as err:
            problem = f"{os.path.basename(path)}: {err}"
            continue
        labels |= set(found.exclusive)
        space += found.total
    hold = read_hold(paths) if paths.hold.name in names else None
    summary: dict[str, Any] = {"count": len(labels), "bytes": space}
    if problem is not None:
        summary["problem"] = problem
    if hold is not None:
        summary["held"] = {
            "label": hold.label,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hold.at)),
            "complete": hold.complete,
        }
    return summary
