"""How much a step disturbs a machine, and what it changes, field by field: each step says
it of itself (planning.steps), the review gathers it (planning.review). Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from reconciler.planning.machine import ChangeClass


class Disruption(enum.StrEnum):
    """How much a step disturbs a machine, least first."""

    NONE = "none"  # nothing running is touched: files made, a stopped domain started
    LIVE = "live"  # the running guest sees it at once (memory, a disk, a NIC, a medium)
    RESTART = "restart"  # the guest stops, now or at its next restart
    REPLACE = "replace"  # a new boot disk: the guest's disk contents are lost
    DELETE = "delete"  # a domain or a disk goes away

    @property
    def rank(self) -> int:
        return list(Disruption).index(self)


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One thing a step changes: None on a side means it does not exist there."""

    field: str
    before: str | None
    after: str | None
    drift: bool = False  # the "before" was made by hand, behind the reconciler's back

    def as_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "drift": self.drift,
        }


def most_disruptive(disruptions: list[Disruption]) -> Disruption:
    return max(disruptions, key=lambda d: d.rank, default=Disruption.NONE)


CLASS_DISRUPTION = {
    ChangeClass.LIVE: Disruption.LIVE,
    ChangeClass.RESTART: Disruption.RESTART,
    ChangeClass.REPLACE: Disruption.REPLACE,
}

Review = tuple[Disruption, tuple[FieldChange, ...]]
