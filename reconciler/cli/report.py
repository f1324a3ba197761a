"""Rendering plans, progress and results for people. Pure: returns lines of text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from reconciler.errors import ManifestError
from reconciler.loop.reconcile import InstanceResult, Outcome
from reconciler.model.desired import DesiredState
from reconciler.planning.plan import InstancePlan, PlanView


def render_manifest_errors(errors: Iterable[ManifestError]) -> list[str]:
    """One compiler-style line per error."""
    return [f"error: {error}" for error in errors]


def render_plan(plans: Sequence[InstancePlan | PlanView]) -> list[str]:
    """The steps each instance needs, then a one-line total."""
    plans = [plan.view() if isinstance(plan, InstancePlan) else plan for plan in plans]
    lines: list[str] = []
    for plan in plans:
        if plan.refusal is not None:
            lines.append(f"{plan.name}: cannot converge: {plan.refusal}")
        elif not plan.steps:
            lines.append(f"{plan.name}: up to date")
        else:
            lines.append(f"{plan.name}: {len(plan.steps)} step(s)")
            lines.extend(f"  + {step}" for step in plan.steps)
        lines.extend(f"  note: {note}" for note in plan.notes)
    pending = sum(len(plan.steps) for plan in plans)
    changing = sum(1 for plan in plans if plan.steps)
    refused = sum(1 for plan in plans if plan.refusal is not None)
    lines.append(
        f"Plan: {pending} step(s) for {changing} instance(s), "
        f"{len(plans) - changing - refused} up to date, {refused} cannot converge."
    )
    return lines


def render_summary(results: Sequence[InstanceResult], invalid: int) -> list[str]:
    """The closing table of a pass."""
    counts = {outcome: 0 for outcome in Outcome}
    for result in results:
        counts[result.outcome] += 1
    lines = []
    width = max((len(result.name) for result in results), default=0)
    for result in results:
        detail = result.message or (result.state.value if result.state else "")
        if result.state is DesiredState.RUNNING and result.accelerator is not None:
            choice = result.accelerator
            detail += f", accelerator {choice.accelerator.value} ({choice.reason})"
        lines.append(f"  {result.name:<{width}}  {result.outcome.value:<9}  {detail}".rstrip())
        lines.extend(f"  {'':<{width}}  note: {note}" for note in result.notes)
    if not results:
        lines.append("  no instances")
    head = (
        f"Summary: {counts[Outcome.CHANGED]} changed, {counts[Outcome.UNCHANGED]} unchanged, "
        f"{counts[Outcome.FAILED]} failed"
    )
    if invalid:
        head += f", {invalid} manifest error(s)"
    if results and counts[Outcome.CHANGED] == 0 and counts[Outcome.FAILED] == 0:
        head += ": nothing to do"
    return [head, *lines]
