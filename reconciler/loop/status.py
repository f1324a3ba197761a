"""What the daemon knows about each instance, for `reconcile status` and the status file.

The book is updated after every reconcile and every domain event, and written to
STATE/status.json (atomically: temporary file, rename) so that it can be read when the daemon
is gone. Its JSON shape (version 1) is documented in the README.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.fileops import temporary_path
from reconciler.loop.results import Failure, InstanceResult, Outcome

STATUS_VERSION = 1
EVENTS_KEPT = 20  # per instance, in memory and in the status file (`reconcile events`)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
        + f".{int(timestamp % 1 * 1000):03d}Z"
    )


@dataclass
class InstanceStatus:
    name: str
    manifest: str | None = None
    desired: str | None = None
    observed: str | None = None  # the domain's power state after the last reconcile or event
    accelerator: str | None = None
    accelerator_reason: str | None = None
    last_reconcile: dict[str, Any] | None = None
    last_change: dict[str, Any] | None = None  # the last reconcile that changed something
    last_error: dict[str, Any] | None = None
    failures: int = 0
    next_retry: float | None = None  # wall-clock time
    waiting_for_change: bool = False  # a permanent failure: retried when the manifest changes
    pending_restart: bool = False
    crash_loop: dict[str, Any] | None = None  # restarts in a row after failures, next start
    reconciles: int = 0
    triggers: dict[str, int] = field(default_factory=dict)  # reconciles by what caused them
    last_event: dict[str, Any] | None = None
    addresses: list[dict[str, object]] | None = None  # per interface (planning.addresses)
    conditions: list[dict[str, str]] | None = None  # Ready, Live (health.conditions)
    # the last EVENTS_KEPT events: reconciles that changed or failed, domain events,
    # condition transitions (each with the book's sequence number)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "manifest": self.manifest,
            "desired": self.desired,
            "observed": self.observed,
            "accelerator": self.accelerator,
            "acceleratorReason": self.accelerator_reason,
            "lastReconcile": self.last_reconcile,
            "lastChange": self.last_change,
            "lastError": self.last_error,
            "failures": self.failures,
            "nextRetry": _iso(self.next_retry),
            "waitingForChange": self.waiting_for_change,
            "pendingRestart": self.pending_restart,
            "crashLoop": self.crash_loop,
            "reconciles": self.reconciles,
            "triggers": dict(sorted(self.triggers.items())),
            "lastEvent": self.last_event,
            "addresses": self.addresses,
            "conditions": self.conditions,
            "events": list(self.events),
        }


def _crash_loop(result: InstanceResult, started: float) -> dict[str, Any] | None:
    loop = result.crash_loop
    if loop is None:
        return None
    next_start = None
    if loop.next_start_in is not None:
        next_start = _iso(started + result.seconds + loop.next_start_in)
    return {"restarts": loop.restarts, "nextStart": next_start, "delaySeconds": loop.delay}


class StatusBook:
    """Per-instance status, safe to update from any thread."""

    def __init__(self, path: Path, daemon: dict[str, Any]) -> None:
        self._path = path
        self._daemon = daemon
        self._instances: dict[str, InstanceStatus] = {}
        self._manifest_errors: list[str] = []
        self._sets: tuple[tuple[str, int], ...] = ()  # each instance set, and its replicas
        self._rollouts: dict[str, dict[str, Any]] = {}  # each rollout's progress, by group
        self._lock = threading.Lock()
        self._sequence = 0  # of the last event recorded (events are numbered for --follow)

    def set_desired(self, name: str, manifest: str, desired: str) -> None:
        with self._lock:
            entry = self._entry(name)
            entry.manifest, entry.desired = manifest, desired

    def forget(self, name: str) -> None:
        with self._lock:
            self._instances.pop(name, None)

    def set_manifest_errors(self, errors: list[str]) -> None:
        with self._lock:
            self._manifest_errors = list(errors)

    def set_sets(self, sets: tuple[tuple[str, int], ...]) -> None:
        with self._lock:
            self._sets = sets

    def set_rollout(self, group: str, progress: dict[str, Any]) -> None:
        with self._lock:
            self._rollouts[group] = progress

    def keep_rollouts(self, groups: set[str]) -> None:
        """Forget the rollouts no manifest has any more."""
        with self._lock:
            self._rollouts = {g: p for g, p in self._rollouts.items() if g in groups}

    def set_daemon(self, **facts: Any) -> None:
        with self._lock:
            self._daemon.update(facts)

    def record_event(self, name: str, kind: str, detail: str) -> None:
        with self._lock:
            if name not in self._instances:
                return
            entry = self._instances[name]
            entry.last_event = {"at": _iso(time.time()), "kind": kind, "detail": detail}
            self._add_event(entry, "domain", {"event": kind, "detail": detail})

    def events(self, name: str | None = None, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The events kept (of `name`, or of every instance) numbered after `since`, oldest
        first, each with its instance; and the number of the last event recorded."""
        with self._lock:
            entries = [self._instances[name]] if name in self._instances else []
            if name is None:
                entries = list(self._instances.values())
            found = [
                {"instance": entry.name, **event}
                for entry in entries
                for event in entry.events
                if event["seq"] > since
            ]
            return sorted(found, key=lambda event: event["seq"]), self._sequence

    def _add_event(self, entry: InstanceStatus, kind: str, fields: dict[str, Any]) -> None:
        """Lock held."""
        self._sequence += 1
        entry.events.append({"seq": self._sequence, "at": _iso(time.time()), "kind": kind,
                             **fields})  # fmt: skip

    def record_result(
        self,
        result: InstanceResult,
        *,
        started: float,
        triggers: AbstractSet[str],
        observed: str | None,
        failures: int,
        addresses: list[dict[str, object]] | None = None,
        next_retry: float | None,
        pending_restart: bool,
    ) -> None:
        with self._lock:
            entry = self._entry(result.name)
            entry.reconciles += 1
            for trigger in triggers:
                entry.triggers[trigger] = entry.triggers.get(trigger, 0) + 1
            entry.last_reconcile = {
                "started": _iso(started),
                "seconds": round(result.seconds, 3),
                "outcome": result.outcome.value,
                "actions": list(result.actions),
                "notes": list(result.notes),
                "triggers": sorted(triggers),
            }
            if result.outcome is Outcome.CHANGED:
                entry.last_change = {
                    "at": _iso(started),
                    "actions": list(result.actions),
                }
            if result.accelerator is not None:
                entry.accelerator = result.accelerator.accelerator.value
                entry.accelerator_reason = result.accelerator.reason
            if result.outcome is Outcome.FAILED:
                entry.last_error = {
                    "at": _iso(started + result.seconds),
                    "message": result.message,
                    "failure": result.failure.value if result.failure else None,
                }
            else:
                entry.last_error = None
            entry.observed = observed
            entry.addresses = addresses
            entry.failures = failures
            entry.next_retry = next_retry
            entry.waiting_for_change = result.failure is Failure.PERMANENT
            entry.pending_restart = pending_restart
            entry.crash_loop = _crash_loop(result, started)
            if result.outcome is not Outcome.UNCHANGED:  # a no-op pass is not history
                event: dict[str, Any] = {
                    "outcome": result.outcome.value,
                    "triggers": sorted(triggers),
                    "actions": list(result.actions),
                }
                if result.outcome is Outcome.FAILED:
                    event["error"] = result.message
                if entry.crash_loop is not None:
                    event["crashLoopRestarts"] = entry.crash_loop["restarts"]
                self._add_event(entry, "reconcile", event)

    def set_health(
        self,
        name: str,
        conditions: list[dict[str, str]],
        addresses: list[dict[str, object]] | None = None,
    ) -> None:
        """The instance's Ready and Live conditions (and its addresses, when observed)."""
        with self._lock:
            entry = self._entry(name)
            before = {c.get("type"): c.get("status") for c in entry.conditions or []}
            for condition in conditions:
                if before.get(condition.get("type")) != condition.get("status"):
                    self._add_event(entry, "condition", {
                        key: condition[key]
                        for key in ("type", "status", "reason", "message")
                        if key in condition
                    })  # fmt: skip
            entry.conditions = conditions
            if addresses:
                entry.addresses = addresses

    def metrics_rows(
        self,
    ) -> tuple[list[tuple[str, str, str, bool | None, bool | None, bool, int]], int]:
        """Each instance as the metrics show it (name, desired, observed, ready, live,
        failing, crash-loop restarts), and the number of manifest errors."""
        rows: list[MetricsRow] = []
        with self._lock:
            for name in sorted(self._instances):
                entry = self._instances[name]
                conditions = {c.get("type"): c.get("status") for c in entry.conditions or []}
                rows.append((
                    name, entry.desired or "unknown", entry.observed or "unknown",
                    _condition(conditions.get("Ready")), _condition(conditions.get("Live")),
                    entry.last_error is not None,
                    (entry.crash_loop or {}).get("restarts", 0),
                ))  # fmt: skip
            return rows, len(self._manifest_errors)

    def get(self, name: str) -> InstanceStatus | None:
        with self._lock:
            return self._instances.get(name)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": STATUS_VERSION,
                "written": _iso(time.time()),
                "daemon": dict(self._daemon),
                "manifestErrors": list(self._manifest_errors),
                "sets": [self._set_row(name, replicas) for name, replicas in self._sets],
                "rollouts": [self._rollouts[group] for group in sorted(self._rollouts)],
                "instances": [self._instances[name].as_json() for name in sorted(self._instances)],
            }

    def _set_row(self, name: str, replicas: int) -> dict[str, Any]:
        """An instance set as a Deployment shows one: desired (its replicas), current (its
        members that exist, those being removed included), updated (members the last
        reconcile left on the manifest's definition, no restart pending), ready (members
        whose Ready condition is True), available (ready for its rollout's minReadySeconds) and its
        rollout's progress. Lock held."""
        member = re.compile(rf"{re.escape(name)}-(0|[1-9][0-9]*)")
        entries = [e for n, e in self._instances.items() if member.fullmatch(n)]
        current = [e for e in entries if e.observed not in (None, "absent")]
        updated = [
            e
            for e in current
            if (e.last_reconcile or {}).get("outcome") in ("changed", "unchanged")
            and not e.pending_restart
        ]
        ready = [
            e
            for e in current
            if any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in e.conditions or [])
        ]  # fmt: skip
        rollout = self._rollouts.get(f"set/{name}")
        row: dict[str, Any] = {
            "name": name,
            "desired": replicas,
            "current": len(current),
            "updated": len(updated),
            "ready": len(ready),
            # ready for minReadySeconds, as its rollout counts them (no rollout: ready)
            "available": len(ready) if rollout is None else rollout["available"],
        }
        if rollout is not None:
            row["rollout"] = rollout
        return row

    def write(self) -> None:
        """Write the status file atomically (a reader sees the old file or the new one)."""
        text = status_file_text(self.snapshot())
        with self._lock:  # one writer at a time: the temporary name is per process
            temporary = temporary_path(self._path)
            try:
                temporary.write_text(text)
                os.replace(temporary, self._path)
            finally:
                temporary.unlink(missing_ok=True)

    def _entry(self, name: str) -> InstanceStatus:
        entry = self._instances.get(name)
        if entry is None:
            entry = self._instances[name] = InstanceStatus(name)
        return entry


# name, desired, observed, ready, live, failing, crash-loop restarts
MetricsRow = tuple[str, str, str, bool | None, bool | None, bool, int]


def _condition(status: str | None) -> bool | None:
    return {"True": True, "False": False}.get(status or "")


def status_file_text(snapshot: dict[str, Any]) -> str:
    """The status file's text: the daemon's facts indented, then one instance per line.
    Each line comes from json's C encoder; its indenting encoder is written in Python and
    took a second for 5,000 instances, written four times a second."""
    head = {key: value for key, value in snapshot.items() if key != "instances"}
    opening = json.dumps(head, indent=2)
    if not head:
        opening = "{\n}"
    instances = [json.dumps(item) for item in snapshot.get("instances", [])]
    body = "[\n    " + ",\n    ".join(instances) + "\n  ]" if instances else "[]"
    separator = ",\n" if head else "\n"
    return f'{opening[:-2]}{separator}  "instances": {body}\n}}\n'


def read_status_file(path: Path) -> dict[str, Any] | None:
    """The status a daemon last wrote (None when there is none or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == STATUS_VERSION else None
