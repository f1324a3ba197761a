"""The Ready and Live conditions of an instance (Kubernetes' condition: type, status, reason,
message, last transition time) and the thresholds that turn probe results into them. Pure:
every time is passed in.

A readiness probe starts failing (not ready) and passes after `successThreshold` successes in
a row; a liveness probe starts passing (alive) and fails after `failureThreshold` failures in
a row. Either flips back after the other threshold, as in Kubernetes. Nothing is checked
before `initialDelaySeconds` after the domain was seen starting.

One departure from Kubernetes, on purpose: a liveness probe counts failures only once it has
succeeded in this boot, or, when `initialDelaySeconds` is given, once that delay has passed.
A guest boots in seconds under KVM and in minutes under TCG or a loaded host; a liveness
probe that failed a guest whose service had not come up yet would restart every slow boot,
forever. A guest that hangs before its service ever comes up is for the readiness probe to
report and for the watchdog device to reset.
"""

from __future__ import annotations

import calendar
import enum
import time
from dataclasses import dataclass, replace

from reconciler.model.desired import ProbeSpec


class ConditionType(enum.StrEnum):
    READY = "Ready"
    LIVE = "Live"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: str  # CamelCase, as Kubernetes: ProbeSucceeded, ProbeFailed, NotRunning...
    message: str
    last_transition: float  # wall time of the last change of status

    def moved(self, status: ConditionStatus, reason: str, message: str, now: float) -> Condition:
        """This condition with a new status, reason and message; its transition time moves
        only when the status changes."""
        since = self.last_transition if status is self.status else now
        return replace(self, status=status, reason=reason, message=message, last_transition=since)

    def as_json(self) -> dict[str, str]:
        return {
            "type": self.type.value,
            "status": self.status.value,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": iso_time(self.last_transition),
        }

    @classmethod
    def from_json(cls, data: object) -> Condition | None:
        """A condition as `as_json` wrote it (None for anything else: the file may be old)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                ConditionType(data["type"]),
                ConditionStatus(data["status"]),
                str(data["reason"]),
                str(data["message"]),
                calendar.timegm(time.strptime(data["lastTransitionTime"], ISO_FORMAT)),
            )
        except (KeyError, ValueError, TypeError):
            return None


ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso_time(wall: float) -> str:
    return time.strftime(ISO_FORMAT, time.gmtime(wall))


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One check: whether it succeeded, and what it found, in words (for the message)."""

    ok: bool
    message: str
    reason: str = ""  # a reason of its own (CloudInitFailed...); default ProbeSucceeded/Failed


@dataclass(slots=True)
class ProbeTracker:
    """One probe of one running domain: when it is next due, and its counts in a row."""

    spec: ProbeSpec
    condition: Condition
    started: float  # monotonic: when the domain was seen starting
    next_due: float  # monotonic
    successes: int = 0
    failures: int = 0
    checks: int = 0
    armed: bool = True  # failures count (a liveness probe: once it succeeded, or its delay)

    @classmethod
    def begin(
        cls, spec: ProbeSpec, kind: ConditionType, started: float, wall: float
    ) -> ProbeTracker:
        """A tracker for a domain seen starting at monotonic `started` (`wall` now)."""
        if kind is ConditionType.READY:
            first = Condition(
                kind, ConditionStatus.FALSE, "NotYetChecked", "waiting for " + spec.describe(), wall
            )
        else:
            first = Condition(
                kind, ConditionStatus.TRUE, "NotYetChecked", "alive until " + spec.describe()
                + f" fails {spec.failure_threshold} time(s) in a row", wall,
            )  # fmt: skip
        armed = kind is ConditionType.READY or spec.initial_delay_seconds > 0
        return cls(spec, first, started, started + spec.initial_delay_seconds, armed=armed)

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def record(self, result: ProbeResult, now: float, wall: float) -> bool:
        """Count one check's result (made at monotonic `now`); whether the status changed."""
        self.checks += 1
        self.next_due = now + self.spec.period_seconds
        if not result.ok and not self.armed:
            message = f"{self.spec.describe()}: {result.message} (not counted: it has not "
            message += "succeeded yet this boot)"
            self.condition = self.condition.moved(
                self.condition.status, "NotYetAlive", message, wall
            )
            return False
        if result.ok:
            self.armed = True
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        before = self.condition.status
        status = before
        if result.ok and self.successes >= self.spec.success_threshold:
            status = ConditionStatus.TRUE
        elif not result.ok and self.failures >= self.spec.failure_threshold:
            status = ConditionStatus.FALSE
        reason = result.reason or ("ProbeSucceeded" if result.ok else "ProbeFailed")
        counted = "" if result.ok else f" ({self.failures} in a row)"
        message = f"{self.spec.describe()}: {result.message}{counted}"
        self.condition = self.condition.moved(status, reason, message, wall)
        return status is not before


def without_probe(kind: ConditionType, running: bool, state: str, wall: float) -> Condition:
    """The condition of a domain with no such probe (ready and live while it runs), or of one
    that does not run (neither)."""
    if running:
        return Condition(kind, ConditionStatus.TRUE, "Running", "the domain runs (no probe)", wall)
    return Condition(kind, ConditionStatus.FALSE, "NotRunning", f"the domain is {state}", wall)
