"""What the daemon knows about each instance name, in one record per name: why it is queued
(its triggers), whether it is being reconciled, which reconcile finished last, how the last
one ended, and the inputs a permanent failure was parked on. The one answer to "what do we
know about X" (the manifests say what X should be; the status book, what was shown of it).

The book shares the controller's condition, so that a reconcile finishing wakes whoever waits
for a set of names (a requested pass, readiness, a host shutdown).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from reconciler.clock import Clock
from reconciler.loop.results import InstanceResult


class Trigger(enum.StrEnum):
    """Why a name was queued (shown in `status`, counted per trigger)."""

    START = "start"  # the daemon started
    MANIFEST = "manifest"  # a manifest file changed
    EVENT = "event"  # a domain event that was not the echo of our own step
    RESYNC = "resync"  # the periodic full pass
    RECONNECT = "reconnect"  # the hypervisor connection came back
    REQUEST = "request"  # a client asked for a pass (or an adoption)
    RELOAD = "reload"  # SIGHUP
    GIT = "git"  # pull mode: a new commit is in force
    TRANSITION = "transition"  # the domain was caught in a transition: look again soon
    PROBE = "probe"  # its liveness probe failed past its threshold
    SCHEDULE = "schedule"  # its scheduled snapshot is due
    ROLLOUT = "rollout"  # its rollout moved on (room for its change, a revert to make)


# the triggers of a full pass: a name any other trigger also asked for is observed afresh
FULL_PASS_TRIGGERS = frozenset({Trigger.RESYNC, Trigger.REQUEST, Trigger.RELOAD, Trigger.GIT})

NOT_PARKED = object()  # a record's `parked` when no permanent failure holds it


@dataclass(slots=True)
class NameRecord:
    """Everything the daemon holds about one name."""

    triggers: set[Trigger] = field(default_factory=set)  # since it was last taken
    active: bool = False  # a worker reconciles it now
    completed: int = 0  # the sequence number of its last finished reconcile
    result: InstanceResult | None = None  # how that ended (None: skipped, or not yet)
    parked: object = NOT_PARKED  # a permanent failure's inputs (manifest, source identity)


class NameBook:
    """The records, by name, under the controller's condition (reentrant)."""

    def __init__(self, condition: threading.Condition, clock: Clock) -> None:
        self._condition = condition
        self._clock = clock
        self._records: dict[str, NameRecord] = {}
        self._sequence = 0  # reconciles started, ever

    def _record(self, name: str) -> NameRecord:
        record = self._records.get(name)
        if record is None:
            record = self._records[name] = NameRecord()
        return record

    def triggered(self, name: str, trigger: Trigger) -> None:
        with self._condition:
            self._record(name).triggers.add(trigger)

    def begin(self, name: str) -> tuple[set[Trigger], int]:
        """`name` is taken by a worker: its triggers since it was last taken, and the
        sequence number of this reconcile."""
        with self._condition:
            record = self._record(name)
            triggers, record.triggers = record.triggers, set()
            self._sequence += 1
            record.active = True
            return triggers, self._sequence

    def finish(self, name: str, sequence: int, result: InstanceResult | None) -> None:
        with self._condition:
            record = self._record(name)
            record.active = False
            record.completed = sequence
            if result is not None:
                record.result = result
            self._condition.notify_all()

    def sequence(self) -> int:
        """The sequence number of the last reconcile started (readiness counts from it)."""
        with self._condition:
            return self._sequence

    def active(self) -> set[str]:
        with self._condition:
            return {name for name, record in self._records.items() if record.active}

    def is_active(self, name: str) -> bool:
        with self._condition:
            record = self._records.get(name)
            return record is not None and record.active

    def result(self, name: str) -> InstanceResult | None:
        with self._condition:
            record = self._records.get(name)
            return None if record is None else record.result

    def park(self, name: str, inputs: object) -> None:
        """A permanent failure: not tried again by a resync until `inputs` change."""
        with self._condition:
            self._record(name).parked = inputs

    def unpark(self, names: Iterable[str]) -> None:
        with self._condition:
            for name in names:
                record = self._records.get(name)
                if record is not None:
                    record.parked = NOT_PARKED

    def parked_on(self, name: str) -> object:
        """The inputs `name` is parked on (NOT_PARKED: it is not)."""
        with self._condition:
            record = self._records.get(name)
            return NOT_PARKED if record is None else record.parked

    def wait_for(
        self, names: list[str], since: int, stopped: Callable[[], bool], timeout: float | None
    ) -> bool:
        """Wait until each name has finished a reconcile that started after `since` (False:
        `stopped()` or the timeout came first). Names are looked at in turn, each until it
        has (a finished one stays finished), so that a pass over N names costs N checks,
        not N at every wake-up."""
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        position = 0
        with self._condition:
            while True:
                while position < len(names) and self._completed(names[position]) > since:
                    position += 1
                if position == len(names):
                    return True
                if stopped():
                    return False
                left = None if deadline is None else deadline - self._clock.monotonic()
                if left is not None and left <= 0:
                    return False
                self._condition.wait(1.0 if left is None else min(left, 1.0))

    def wait_idle(self, deadline: float) -> None:
        """Wait until no name is being reconciled, or the monotonic `deadline`."""
        with self._condition:
            while self.active() and self._clock.monotonic() < deadline:
                self._condition.wait(0.5)

    def _completed(self, name: str) -> int:
        record = self._records.get(name)
        return 0 if record is None else record.completed
