"""A plan for review: each step's disruption class and what it changes, before and after, in
the documented shape of `reconcile plan -o json` (README, "Plan for review"). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.planning.disruption import Disruption, FieldChange, most_disruptive
from reconciler.planning.steps import Step

PLAN_JSON_VERSION = 1


@dataclass(frozen=True, slots=True)
class StepView:
    """A step as reviewed: its kind, its words, its disruption and its changes."""

    kind: str
    description: str
    disruption: Disruption
    changes: tuple[FieldChange, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "description": self.description,
            "disruption": self.disruption.value,
            "changes": [change.as_json() for change in self.changes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepView:
        changes = tuple(
            FieldChange(c["field"], c["before"], c["after"], bool(c.get("drift")))
            for c in data.get("changes", ())
        )
        return cls(data["kind"], data["description"], Disruption(data["disruption"]), changes)


@dataclass(frozen=True, slots=True)
class PlanView:
    """One instance's plan as reviewed: its steps, refusal and notes (JSON-friendly)."""

    name: str
    steps: tuple[StepView, ...]
    refusal: str | None
    notes: tuple[str, ...]
    # its change in a rollout: the group, its wave and how many waves the group's changes
    # take (planning.rollouts.waves); None when no rollout paces it
    wave: tuple[str, int, int] | None = None

    @property
    def disruption(self) -> Disruption:
        return most_disruptive([step.disruption for step in self.steps])

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "converged": not self.steps and self.refusal is None,
            "disruption": self.disruption.value,
            "steps": [step.as_json() for step in self.steps],
            "refusal": self.refusal,
            "notes": list(self.notes),
            "rollout": None
            if self.wave is None
            else {"group": self.wave[0], "wave": self.wave[1], "waves": self.wave[2]},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanView:
        steps = tuple(StepView.from_json(step) for step in data["steps"])
        rollout = data.get("rollout")
        wave = (
            None
            if not isinstance(rollout, dict)
            else (str(rollout["group"]), int(rollout["wave"]), int(rollout["waves"]))
        )
        return cls(data["name"], steps, data["refusal"], tuple(data["notes"]), wave)


def plan_json(views: list[PlanView], manifest_errors: list[str]) -> dict[str, Any]:
    """The whole plan, in the documented shape (README, "Plan for review")."""
    return {
        "version": PLAN_JSON_VERSION,
        "disruption": most_disruptive([view.disruption for view in views]).value,
        "instances": [view.as_json() for view in views],
        "rollouts": rollout_waves(views),
        "manifestErrors": manifest_errors,
    }


def rollout_waves(views: list[PlanView]) -> list[dict[str, Any]]:
    """Each rollout of the plan: its group, and the instances it changes in each wave."""
    groups: dict[str, dict[int, list[str]]] = {}
    for view in views:
        if view.wave is not None:
            group, wave, _count = view.wave
            groups.setdefault(group, {}).setdefault(wave, []).append(view.name)
    return [
        {"group": group, "waves": [waves[n] for n in sorted(waves)]}
        for group, waves in sorted(groups.items())
    ]


def step_view(step: Step) -> StepView:
    disruption, changes = step.review()
    return StepView(step.kind.value, step.describe(), disruption, changes)
