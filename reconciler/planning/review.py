"""A plan for review: each step's disruption class and what it changes, before and after, in
the documented shape of `reconcile plan -o json` (README, "Plan for review"). Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, assert_never

from reconciler.planning.machine import ChangeClass
from reconciler.planning.steps import (
    AttachDisk,
    AttachNic,
    BuildConfigDrive,
    ChangeMedium,
    CreateDataDisk,
    CreateOverlay,
    DefineDomain,
    DetachDisk,
    DetachNic,
    FetchBase,
    MoveDiskAside,
    RecoverDomain,
    RemoveFiles,
    ResizeDisk,
    SetAutostart,
    SetMemory,
    SetVcpus,
    StartDomain,
    Step,
    StopDomain,
    UndefineDomain,
)

PLAN_JSON_VERSION = 1


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
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanView:
        steps = tuple(StepView.from_json(step) for step in data["steps"])
        return cls(data["name"], steps, data["refusal"], tuple(data["notes"]))


def plan_json(views: list[PlanView], manifest_errors: list[str]) -> dict[str, Any]:
    """The whole plan, in the documented shape (README, "Plan for review")."""
    return {
        "version": PLAN_JSON_VERSION,
        "disruption": most_disruptive([view.disruption for view in views]).value,
        "instances": [view.as_json() for view in views],
        "manifestErrors": manifest_errors,
    }


_CLASS_DISRUPTION = {
    ChangeClass.LIVE: Disruption.LIVE,
    ChangeClass.RESTART: Disruption.RESTART,
    ChangeClass.REPLACE: Disruption.REPLACE,
}


def step_view(step: Step) -> StepView:
    disruption, changes = _review(step)
    return StepView(step.kind.value, step.describe(), disruption, changes)


def most_disruptive(disruptions: list[Disruption]) -> Disruption:
    return max(disruptions, key=lambda d: d.rank, default=Disruption.NONE)


def _review(step: Step) -> tuple[Disruption, tuple[FieldChange, ...]]:
    """One branch per step kind: its disruption and what it changes."""
    match step:
        case DefineDomain(changes=changes):
            if not changes:
                return Disruption.NONE, (FieldChange("domain", None, step.instance),)
            disruption = most_disruptive([_CLASS_DISRUPTION[c.kind] for c in changes])
            fields = tuple(
                FieldChange(c.field, c.found, c.wanted, c.drift)
                if c.field
                else FieldChange(c.what, None, None, c.drift)
                for c in changes
            )
            return disruption, fields
        case FetchBase(image=image):
            return Disruption.NONE, (FieldChange("base image", None, str(image.location)),)
        case CreateOverlay(path=path, size=size):
            return Disruption.NONE, (FieldChange("disk", None, f"{path.name} {size} bytes"),)
        case CreateDataDisk(path=path, size=size):
            return Disruption.NONE, (FieldChange("data disk", None, f"{path.name} {size} bytes"),)
        case BuildConfigDrive(path=path):
            return Disruption.NONE, (FieldChange("config drive file", None, path.name),)
        case SetAutostart(autostart=autostart):
            return Disruption.NONE, (FieldChange("autostart", str(not autostart), str(autostart)),)
        case StartDomain():
            return Disruption.NONE, (FieldChange("power", "off", "running"),)
        case ResizeDisk(target=target, current=current, size=size, online=online):
            change = FieldChange(f"disk {target} bytes", str(current), str(size))
            return (Disruption.LIVE if online else Disruption.NONE), (change,)
        case SetMemory(memory_kib=kib):
            return Disruption.LIVE, (FieldChange("running memory KiB", None, str(kib)),)
        case SetVcpus(vcpus=vcpus):
            return Disruption.LIVE, (FieldChange("running vCPUs", None, str(vcpus)),)
        case AttachDisk(disk=disk):
            return Disruption.LIVE, (FieldChange(f"disk {disk.target}", None, disk.path),)
        case DetachDisk(disk=disk):
            return Disruption.LIVE, (FieldChange(f"disk {disk.target}", disk.path, None),)
        case AttachNic(nic=nic, index=index):
            return Disruption.LIVE, (FieldChange(f"network interface {index}", None, nic.mac),)
        case DetachNic(nic=nic, index=index):
            return Disruption.LIVE, (FieldChange(f"network interface {index}", nic.mac, None),)
        case ChangeMedium(target=target, path=path):
            return Disruption.LIVE, (FieldChange(f"medium {target}", None, path.name),)
        case StopDomain() | RecoverDomain():
            return Disruption.RESTART, (FieldChange("power", "running", "off"),)
        case MoveDiskAside(path=path, aside=aside):
            return Disruption.REPLACE, (FieldChange("boot disk", path.name, aside.name),)
        case RemoveFiles(paths=paths, what=what):
            removed = FieldChange(what, ", ".join(str(p) for p in paths), None)
            # a replaced config drive is a file nothing uses; anything else is data
            kept = what == "replaced config drive"
            return (Disruption.NONE if kept else Disruption.DELETE), (removed,)
        case UndefineDomain():
            return Disruption.DELETE, (FieldChange("domain", step.instance, None),)
    assert_never(step)
