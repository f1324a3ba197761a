"""Snapshots: taking, deleting and reverting to internal qcow2 snapshots of an instance's
disks, and the record kept beside each.

The disks are the snapshots' only store: each qcow2 file's snapshot table holds them (a
running guest's disks through one QMP transaction, consistent across them; a stopped guest's
with qemu-img), so a snapshot outlives any metadata of libvirt's. Beside each, the instance
directory keeps `snapshot-<label>.json`: what it preceded, and the definition the domain had,
which a revert restores. Without that file a snapshot is still listed and can still be
reverted to (its disks only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.drivers.definition import DefinitionError, machine_from_json, machine_to_json
from reconciler.errors import DriverError, StepError
from reconciler.fileops import write_atomically
from reconciler.images.diskheaders import HeaderError, read_qcow2_snapshots
from reconciler.model.actual import DomainFacts
from reconciler.model.machine import Machine
from reconciler.planning.steps import (
    DeleteSnapshots,
    ReleaseHold,
    TakeSnapshot,
    ThawFilesystems,
)

if TYPE_CHECKING:
    from reconciler.steps.apply import StepContext

LOG = logging.getLogger(__name__)
RECORD_VERSION = 1
FREEZE_TIMEOUT_SECONDS = 10.0  # qemu-ga's own limit for a freeze is the guest's I/O


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """What the instance directory keeps beside a snapshot."""

    label: str
    taken: float
    why: str
    disks: tuple[str, ...]
    left_out: tuple[str, ...] = ()
    digest: str | None = None  # the manifest digest of the change it preceded
    definition: Machine | None = None  # the persistent definition the domain had then
    moved_to: str | None = None  # where the replace after it moved the boot disk
    online: bool = False
    pause_ms: float | None = None  # how long the guest's I/O was held (running guests)
    frozen_ms: float | None = None  # how long its file systems were frozen (with an agent)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "label": self.label,
            "taken": self.taken,
            "why": self.why,
            "disks": list(self.disks),
            "leftOut": list(self.left_out),
            "digest": self.digest,
            "definition": None if self.definition is None else machine_to_json(self.definition),
            "movedTo": self.moved_to,
            "online": self.online,
            "pauseMs": self.pause_ms,
            "frozenMs": self.frozen_ms,
        }


def read_record(path: Path) -> SnapshotRecord | None:
    """The record at `path` (None when there is none, or it cannot be read: the snapshot is
    then known by its disks alone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        definition = data.get("definition")
        return SnapshotRecord(
            label=str(data["label"]),
            taken=float(data["taken"]),
            why=str(data["why"]),
            disks=tuple(str(d) for d in data["disks"]),
            left_out=tuple(str(d) for d in data.get("leftOut") or ()),
            digest=data.get("digest"),
            definition=None if definition is None else machine_from_json(str(definition)),
            moved_to=data.get("movedTo"),
            online=bool(data.get("online")),
            pause_ms=data.get("pauseMs"),
            frozen_ms=data.get("frozenMs"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, DefinitionError) as err:
        LOG.warning("the snapshot record %s cannot be read: %s", path, err)
        return None


def labels_of(path: Path) -> set[str]:
    """The snapshot labels the qcow2 file's table holds (empty when the file is gone)."""
    try:
        return {entry.name for entry in read_qcow2_snapshots(str(path))}
    except FileNotFoundError:
        return set()
    except (OSError, HeaderError) as err:
        raise StepError(f"cannot read the snapshot table of {path}: {err}") from err


def _running(context: StepContext, name: str) -> DomainFacts | None:
    record = context.driver.lookup(name)
    if isinstance(record, DomainFacts) and record.state.active:
        return record
    return None


def take_snapshot(step: TakeSnapshot, context: StepContext) -> str:
    """Take the step's snapshot of every disk, consistent across them; a retry after a cut
    completes or redoes it (a label on some disks only is removed and taken again)."""
    if not step.disks:
        return "no disk to snapshot"
    holding = [path for path in step.disks if step.label in labels_of(path)]
    record_path = step.directory / f"snapshot-{step.label}.json"
    domain = context.driver.lookup(step.instance)
    definition = domain.definition if isinstance(domain, DomainFacts) else None
    if len(holding) == len(step.disks):
        if read_record(record_path) is None:  # taken before a cut, its record not written
            _write_record(record_path, _record(step, definition, time.time(), False))
        return f"snapshot {step.label} already taken"
    redone = ""
    if holding:  # a cut between the disks of an offline snapshot: taken again, all at once
        _delete(context, step.instance, step.label, tuple(holding))
        redone = f"; removed it from {', '.join(p.name for p in holding)} first (a cut short one)"
    running = _running(context, step.instance)
    taken = time.time()
    if running is None:
        for path in step.disks:
            context.qemu_img.snapshot("create", path, step.label)
        record = _record(step, definition, taken, False)
        how = "offline"
    else:
        pause_ms, frozen_ms, note = _snapshot_running(step, context)
        record = _record(step, definition, taken, True, pause_ms, frozen_ms)
        how = f"guest I/O held {pause_ms:.0f} ms" + (
            f", file systems frozen {frozen_ms:.0f} ms" if frozen_ms is not None else ""
        )
        if note:
            how += f"; {note}"
    _write_record(record_path, record)
    disks = ", ".join(p.name for p in step.disks)
    return f"took snapshot {step.label} of {disks} ({how}){redone}"


def _snapshot_running(step: TakeSnapshot, context: StepContext) -> tuple[float, float | None, str]:
    """One transaction over every disk, inside a file-system freeze where the guest has an
    agent (its marker file exists for as long as the guest may be frozen). The time the
    guest's I/O was held, the time it was frozen, and a note (why it was not frozen)."""
    driver, name, marker = context.driver, step.instance, step.directory / "fs-frozen"
    frozen_at = None
    note = ""
    if step.freeze:
        marker.touch()
        try:
            frozen_at = time.monotonic()
            driver.agent_command(name, "guest-fsfreeze-freeze", None, FREEZE_TIMEOUT_SECONDS)
        except DriverError as err:
            frozen_at = None
            note = f"file systems not frozen ({err}): consistent as after a power cut"
            _thaw(context, name, marker)
    try:
        started = time.monotonic()
        driver.snapshot_disks(name, step.label, tuple(str(p) for p in step.disks))
        pause_ms = (time.monotonic() - started) * 1000
    finally:
        if frozen_at is not None:
            _thaw(context, name, marker)
    frozen_ms = None if frozen_at is None else (time.monotonic() - frozen_at) * 1000
    return pause_ms, frozen_ms, note


def _thaw(context: StepContext, name: str, marker: Path) -> str:
    """Thaw the guest's file systems; the marker goes once the agent says they are."""
    try:
        thawed = context.driver.agent_command(name, "guest-fsfreeze-thaw", None, 30.0)
    except DriverError as err:
        LOG.warning("%s: could not thaw the file systems: %s", name, err)
        return f"could not thaw the file systems: {err}"
    marker.unlink(missing_ok=True)
    return f"thawed {thawed if isinstance(thawed, int) else 'the'} file systems"


def thaw_filesystems(step: ThawFilesystems, context: StepContext) -> str:
    if _running(context, step.instance) is None:
        step.marker.unlink(missing_ok=True)
        return "domain not running: nothing is frozen"
    return _thaw(context, step.instance, step.marker)


def _record(
    step: TakeSnapshot,
    definition: Machine | None,
    taken: float,
    online: bool,
    pause_ms: float | None = None,
    frozen_ms: float | None = None,
) -> SnapshotRecord:
    return SnapshotRecord(
        label=step.label,
        taken=taken,
        why=step.why,
        disks=tuple(str(p) for p in step.disks),
        left_out=tuple(str(p) for p in step.left_out),
        digest=step.digest,
        definition=definition,
        moved_to=None if step.moved_to is None else str(step.moved_to),
        online=online,
        pause_ms=pause_ms,
        frozen_ms=frozen_ms,
    )


def _write_record(path: Path, record: SnapshotRecord) -> None:
    write_atomically(path, json.dumps(record.as_json(), indent=1).encode(), 0o600)


def _delete(context: StepContext, name: str, label: str, files: tuple[Path, ...]) -> None:
    """Remove snapshot `label` from `files`: through the running domain for the files it has
    open, with qemu-img for the others."""
    running = _running(context, name)
    open_files = set()
    if running is not None:
        machine = running.live_definition or running.definition
        open_files = {os.path.realpath(d.path) for d in machine.disks}
    online = tuple(str(p) for p in files if os.path.realpath(p) in open_files)
    if online:
        context.driver.delete_disk_snapshots(name, label, online)
    for path in files:
        if str(path) not in online:
            context.qemu_img.snapshot("delete", path, label)


def delete_snapshots(step: DeleteSnapshots, context: StepContext) -> str:
    done = []
    for label, files in zip(step.labels, step.files, strict=True):
        holding = tuple(path for path in files if label in labels_of(path))
        if holding:
            _delete(context, step.instance, label, holding)
        (step.directory / f"snapshot-{label}.json").unlink(missing_ok=True)
        done.append(label)
    return f"deleted snapshot{'s' if len(done) > 1 else ''} {', '.join(done)} ({step.why})"


def release_hold(step: ReleaseHold) -> str:
    step.path.unlink(missing_ok=True)
    return f"ended the hold of the revert to {step.label}"


def write_hold(
    path: Path, label: str, reverted_digest: str, *, complete: bool, running: bool
) -> None:
    """The hold a revert leaves (model.actual.HoldFacts; loop.observe reads it); `running`:
    the guest ran before the revert (started again once it is complete)."""
    data = {
        "label": label,
        "revertedDigest": reverted_digest,
        "at": time.time(),
        "complete": complete,
        "running": running,
    }
    write_atomically(path, json.dumps(data).encode(), 0o600)


def remove_hold(path: Path) -> bool:
    """End a hold; whether there was one."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return True
    return False
