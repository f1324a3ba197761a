"""Deleting an instance: for `state: absent` and for a prune. Pure."""

from __future__ import annotations

from pathlib import Path

from reconciler.model.actual import DomainFacts
from reconciler.planning.context import InstancePlan, PlanContext
from reconciler.planning.steps import (
    RecoverDomain,
    RemoveFiles,
    Step,
    StopDomain,
    UndefineDomain,
)


def plan_removal(
    name: str,
    domain: DomainFacts | None,
    context: PlanContext,
    drives: frozenset[str],
    timeout_seconds: int,
    reason: str,
) -> InstancePlan:
    """Delete an instance's domain (for `state: absent`, or a prune): stop it gracefully,
    undefine it (its NVRAM and managed save image with it), remove its config drives and, as
    its recorded deletionPolicy says, its disks. A protected domain is refused."""
    if domain is None:
        return InstancePlan(name)
    definition = domain.definition
    if definition.protected:
        return InstancePlan(
            name,
            refusal=(
                f"the domain is protected (protect: true is recorded on it), so {reason} does "
                "not delete it; set protect: false with the instance kept, apply, then remove it"
            ),
        )
    steps: list[Step] = []
    if domain.interrupted:
        steps.append(RecoverDomain(name, domain.state_reason))
    elif domain.state.active:
        steps.append(StopDomain(name, timeout_seconds))
    steps.append(UndefineDomain(name, context.paths.directory, not definition.delete_disks))
    doomed = [context.paths.directory / drive for drive in sorted(drives)]
    doomed += [
        Path(disk.path)
        for disk in definition.disks
        if disk.device == "disk"
        and (definition.delete_disks or disk.delete_when_removed)
        and Path(disk.path).parent == context.paths.directory
    ]
    if doomed:
        steps.append(RemoveFiles(name, tuple(doomed), "files of the deleted instance"))
    return InstancePlan(name, tuple(steps))
