"""Snapshots in a plan: the restore point before a disruptive change, the scheduled ones, and
which the policy removes (keep, expiry). Pure: from the steps already planned, the snapshots
the disks hold, and the time.

A snapshot's label says where it comes from, so that the disks alone (their snapshot tables)
are enough to apply the policy: `before-<class>-<digest>` before a change (the manifest digest
of the change), `auto-<UTC time>` on the schedule, anything else on request.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from reconciler.layout import InstancePaths
from reconciler.model.actual import InstanceActual, SnapshotFacts
from reconciler.model.desired import ImageFormat, InstanceSpec, SnapshotTrigger
from reconciler.planning.disruption import Disruption
from reconciler.planning.steps import (
    DefineDomain,
    DeleteSnapshots,
    MoveDiskAside,
    StartDomain,
    Step,
    StopDomain,
    TakeSnapshot,
)

CHANGE_PREFIX = "before-"
SCHEDULE_PREFIX = "auto-"
LABEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
RESERVED_PREFIXES = (CHANGE_PREFIX, SCHEDULE_PREFIX)
QUIET_PASS_RETRY_SECONDS = 5.0
_TRIGGER_DISRUPTION = {
    SnapshotTrigger.RESTART: Disruption.RESTART,
    SnapshotTrigger.REPLACE: Disruption.REPLACE,
}


def origin(label: str) -> str:
    """Where a snapshot comes from, by its label: change, schedule or request."""
    if label.startswith(CHANGE_PREFIX):
        return "change"
    if label.startswith(SCHEDULE_PREFIX):
        return "schedule"
    return "request"


def label_problem(label: str) -> str | None:
    """Why `label` cannot name a snapshot taken on request (None: it can)."""
    if not LABEL.fullmatch(label):
        return (
            f"snapshot label {label!r} is not valid (expected lower-case letters, digits, '.', "
            "'_' and '-', starting with a letter or digit, at most 63 characters)"
        )
    if label.startswith(RESERVED_PREFIXES):
        return (
            f"snapshot label {label!r} starts with {label.split('-')[0]}-, which names the "
            "reconciler's own snapshots (their policy would remove it)"
        )
    return None


def stamp(now: float) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))


def request_label(now: float) -> str:
    return f"snap-{stamp(now)}"


def snapshot_disks(
    spec: InstanceSpec, paths: InstancePaths
) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """The disk files a snapshot of the instance covers (the boot disk, the qcow2 data disks),
    and those it cannot (raw data disks)."""
    qcow2 = [paths.disk]
    raw: list[Path] = []
    for disk in spec.disks:
        (raw if disk.format is ImageFormat.RAW else qcow2).append(paths.data_disk(disk))
    return tuple(qcow2), tuple(raw)


def before_change(
    spec: InstanceSpec,
    actual: InstanceActual,
    steps: list[Step],
    digest: str,
    paths: InstancePaths,
) -> tuple[int, TakeSnapshot] | None:
    """The restore point the policy asks for before the planned steps, and where it goes in
    them (None: none is asked for, or it exists already): before the first step of a listed
    class, after the shutdown that precedes it (the disks are then quiet and consistent)."""
    if actual.domain is None or actual.overlay is None:
        return None  # nothing to restore to yet
    wanted = {_TRIGGER_DISRUPTION[t] for t in spec.snapshots.before_change}
    first: int | None = None
    what: Disruption | None = None
    moved_to: Path | None = None
    for index, step in enumerate(steps):
        disruption = _change_disruption(step)
        if disruption in wanted and first is None:
            first, what = index, disruption
        if isinstance(step, MoveDiskAside):
            moved_to = step.aside
    if first is None or what is None:
        return None
    short = digest.rsplit(":", 1)[-1][:12]
    label = f"{CHANGE_PREFIX}{what.value}-{short}"
    disks, raw = snapshot_disks(spec, paths)
    taken = _by_label(actual.snapshots).get(label)
    if taken is not None and {str(p) for p in disks} <= set(taken.files):
        return None  # a retry of the same change: its restore point exists
    stop = next((i for i, s in enumerate(steps) if isinstance(s, StopDomain)), None)
    where = stop + 1 if stop is not None and stop < first else first
    step = TakeSnapshot(
        spec.name,
        label,
        tuple(p for p in disks if _exists(p, actual)),
        f"before the {what.value}-class change to manifest digest {short}",
        paths.directory,
        left_out=raw,
        freeze=spec.guest_agent,
        digest=digest,
        moved_to=moved_to,
    )
    return where, step


def _change_disruption(step: Step) -> Disruption | None:
    """The class of change a step makes to an existing machine (None: not a change a restore
    point is taken before)."""
    if isinstance(step, MoveDiskAside):
        return Disruption.REPLACE
    if isinstance(step, DefineDomain) and step.changes:
        disruption, _fields = step.review()
        return disruption if disruption.rank >= Disruption.RESTART.rank else None
    return None


def _exists(path: Path, actual: InstanceActual) -> bool:
    """Whether the disk file exists, as observed (the boot disk, or a data disk)."""
    if actual.overlay is not None and actual.overlay.path == str(path):
        return True
    return any(d.path == str(path) for d in actual.data_disks)


def scheduled(
    spec: InstanceSpec, actual: InstanceActual, paths: InstancePaths, now: float | None
) -> TakeSnapshot | None:
    """The scheduled snapshot that is due now (None: none is): of a running guest only, as
    Incus does by default (a stopped guest's disks do not change)."""
    every = spec.snapshots.schedule_seconds
    domain = actual.domain
    if every is None or now is None or domain is None or not domain.state.active:
        return None
    if actual.overlay is None:
        return None
    last = max((s.taken for s in actual.snapshots if origin(s.label) == "schedule"), default=None)
    if last is not None and now - last < every:
        return None
    disks, raw = snapshot_disks(spec, paths)
    return TakeSnapshot(
        spec.name,
        f"{SCHEDULE_PREFIX}{stamp(now)}",
        tuple(p for p in disks if _exists(p, actual)),
        "on the schedule",
        paths.directory,
        left_out=raw,
        freeze=spec.guest_agent,
    )


def due_in(
    spec: InstanceSpec, actual: InstanceActual, steps: list[Step], now: float | None
) -> float | None:
    """Seconds until the instance's next scheduled snapshot is due, for the daemon to come
    back then (None: no schedule, or the guest does not run; a few seconds when one is due
    but waits for a quiet pass)."""
    every = spec.snapshots.schedule_seconds
    domain = actual.domain
    if every is None or now is None:
        return None
    if domain is None or not domain.state.active:  # a guest this pass starts: soon after
        starting = any(isinstance(s, StartDomain) for s in steps)
        return QUIET_PASS_RETRY_SECONDS if starting else None
    taking = any(isinstance(s, TakeSnapshot) and origin(s.label) == "schedule" for s in steps)
    if taking:
        return float(every)
    last = max((s.taken for s in actual.snapshots if origin(s.label) == "schedule"), default=None)
    left = every - (now - last) if last is not None else 0.0
    return max(QUIET_PASS_RETRY_SECONDS, left)


def pruned(
    spec: InstanceSpec,
    actual: InstanceActual,
    taking: tuple[TakeSnapshot, ...],
    paths: InstancePaths,
    now: float | None,
) -> DeleteSnapshots | None:
    """The automatic snapshots the policy removes once `taking` are taken: past `keep` for
    each kind (the oldest go), and scheduled ones past `expiry`."""
    policy = spec.snapshots
    doomed: dict[str, str] = {}
    for kind in ("change", "schedule"):
        held = [s.label for s in actual.snapshots if origin(s.label) == kind]
        held += [t.label for t in taking if origin(t.label) == kind and t.label not in held]
        for label in held[: max(0, len(held) - policy.keep)]:
            doomed[label] = f"keep: {policy.keep}"
    if policy.expiry_seconds is not None and now is not None:
        for snapshot in actual.snapshots:
            if (
                origin(snapshot.label) == "schedule"
                and now - snapshot.taken > policy.expiry_seconds
            ):
                doomed.setdefault(snapshot.label, "expired")
    existing = _by_label(actual.snapshots)
    labels = tuple(label for label in doomed if label in existing)
    if not labels:
        return None
    reasons = sorted(set(doomed[label] for label in labels))
    return DeleteSnapshots(
        spec.name,
        labels,
        tuple(tuple(Path(f) for f in existing[label].files) for label in labels),
        ", ".join(reasons),
        paths.directory,
    )


def _by_label(snapshots: tuple[SnapshotFacts, ...]) -> dict[str, SnapshotFacts]:
    return {s.label: s for s in snapshots}
