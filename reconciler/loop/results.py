"""How one reconcile of one instance ended: its outcome, the failure class that decides its
retry, and the form the control socket carries it in."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from reconciler.model.accel import AcceleratorChoice
from reconciler.model.desired import Accelerator, DesiredState


class Outcome(enum.StrEnum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    FAILED = "failed"


class Failure(enum.StrEnum):
    """What a failure asks of the queue."""

    TRANSIENT = "transient"  # retry with backoff
    PERMANENT = "permanent"  # wait until the manifest or the source changes


@dataclass(frozen=True, slots=True)
class InstanceResult:
    """How one reconcile of one instance ended."""

    name: str
    outcome: Outcome
    actions: tuple[str, ...] = ()
    message: str | None = None
    notes: tuple[str, ...] = ()
    accelerator: AcceleratorChoice | None = None
    state: DesiredState | None = None  # the state reached (when the outcome is not FAILED)
    failure: Failure | None = None  # set when the outcome is FAILED
    requeue_after: float | None = None  # look again after this many seconds (a transition)
    snapshot_due_in: float | None = None  # its next scheduled snapshot is due in this long
    seconds: float = 0.0  # how long the reconcile took
    pending_restart: bool = False  # the running domain waits for a restart to take a change
    crash_loop: CrashLoop | None = None  # set while restarts after failures come in a row
    started: bool = False  # this reconcile started the domain (a new boot: probes start over)


@dataclass(frozen=True, slots=True)
class CrashLoop:
    """Restarts after stops nobody asked for, in a row, as one reconcile left them."""

    restarts: int
    next_start_in: float | None = None  # seconds; None: started (or starting) now
    delay: float | None = None  # the whole wait of this hold (1, 2, 4... s), from the stop


def result_to_json(result: InstanceResult) -> dict[str, object]:
    """A result as the control socket carries it (read back by `result_from_json`)."""
    choice = result.accelerator
    return {
        "name": result.name,
        "outcome": result.outcome.value,
        "actions": list(result.actions),
        "message": result.message,
        "notes": list(result.notes),
        "accelerator": None if choice is None else [choice.accelerator.value, choice.reason],
        "state": None if result.state is None else result.state.value,
        "failure": None if result.failure is None else result.failure.value,
        "seconds": result.seconds,
    }


def result_from_json(data: dict[str, Any]) -> InstanceResult:
    choice = data.get("accelerator")
    return InstanceResult(
        name=str(data["name"]),
        outcome=Outcome(data["outcome"]),
        actions=tuple(data.get("actions") or ()),
        message=data.get("message"),
        notes=tuple(data.get("notes") or ()),
        accelerator=None if not choice else AcceleratorChoice(Accelerator(choice[0]), choice[1]),
        state=None if data.get("state") is None else DesiredState(data["state"]),
        failure=None if data.get("failure") is None else Failure(data["failure"]),
        seconds=float(data.get("seconds") or 0.0),
    )
