"""Rendering plans, progress and results for people. Pure: returns lines of text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from reconciler.drivers.base import Driver
from reconciler.errors import ManifestError
from reconciler.health.conditions import ConditionType
from reconciler.loop.results import InstanceResult, Outcome
from reconciler.model.desired import DesiredState
from reconciler.planning.disruption import Disruption
from reconciler.planning.plan import InstancePlan
from reconciler.planning.review import PlanView, rollout_waves
from reconciler.sizes import format_size

if TYPE_CHECKING:  # status only: a pass never loads the inventory (nor the steps)
    from reconciler.loop.inventory import InventoryEntry


def render_manifest_errors(errors: Iterable[ManifestError]) -> list[str]:
    """One compiler-style line per error."""
    return [f"error: {error}" for error in errors]


# a plan reads like a diff: + adds (disturbs nothing), ~ changes what runs, ! replaces a boot
# disk, - deletes
_DIFF_MARKS = {
    Disruption.NONE: "+",
    Disruption.LIVE: "~",
    Disruption.RESTART: "~",
    Disruption.REPLACE: "!",
    Disruption.DELETE: "-",
}


def render_plan(plans: Sequence[InstancePlan | PlanView]) -> list[str]:
    """The steps each instance needs, then a one-line total."""
    views = [plan.view() if isinstance(plan, InstancePlan) else plan for plan in plans]
    lines: list[str] = []
    for plan in views:
        if plan.refusal is not None:
            lines.append(f"{plan.name}: cannot converge: {plan.refusal}")
        elif not plan.steps:
            lines.append(f"{plan.name}: up to date")
        else:
            lines.append(
                f"{plan.name}: {len(plan.steps)} step(s), disruption {plan.disruption.value}"
            )
            lines.extend(
                f"  {_DIFF_MARKS[step.disruption]} {step.description}" for step in plan.steps
            )
        if plan.wave is not None:
            group, wave, count = plan.wave
            lines.append(f"  rollout {group}: wave {wave} of {count}")
        lines.extend(f"  note: {note}" for note in plan.notes)
    for rollout in rollout_waves(views):
        waves = "; ".join(
            f"wave {n}: {', '.join(names)}" for n, names in enumerate(rollout["waves"], 1)
        )
        lines.append(f"Rollout {rollout['group']}: {waves}")
    pending = sum(len(plan.steps) for plan in views)
    changing = sum(1 for plan in views if plan.steps)
    refused = sum(1 for plan in views if plan.refusal is not None)
    lines.append(
        f"Plan: {pending} step(s) for {changing} instance(s), "
        f"{len(views) - changing - refused} up to date, {refused} cannot converge."
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


def render_inventory(entries: Sequence[InventoryEntry]) -> list[str]:
    """The instances of a state directory observed now, as a table."""
    if not entries:
        return ["  no instances"]
    names = max(len(entry.name) for entry in entries)
    sizes = max(len(entry.disk_text) for entry in entries)
    lines = [
        f"  {'NAME':<{names}}  {'DESIRED':<8}  {'OBSERVED':<13}  {'READY':<5}  {'ACCEL':<5}  "
        f"{'DISK':<{sizes}}  ADDRESSES"
    ]
    for entry in entries:
        ready = entry.condition(ConditionType.READY)
        lines.append(
            f"  {entry.name:<{names}}  {entry.desired:<8}  {entry.observed:<13}  "
            f"{ready.status.value if ready else '-':<5}  "
            f"{entry.accelerator:<5}  {entry.disk_text:<{sizes}}  "
            f"{'; '.join(address.describe() for address in entry.addresses) or '-'}"
        )
        lines += _condition_lines([c.as_json() for c in entry.conditions], " " * (names + 2))
        lines += _snapshot_lines(entry.name, entry.snapshots, " " * (names + 2))
    return lines


def _snapshot_lines(name: str, summary: dict[str, Any] | None, indent: str) -> list[str]:
    """A line for an instance's snapshots (how many, the space only they hold), and one for
    the hold a revert left."""
    if not summary:
        return []
    lines = []
    if summary.get("count"):
        lines.append(
            f"  {indent}snapshots: {summary['count']}, {format_size(summary.get('bytes') or 0)} "
            "on disk that only they hold (reconcile snapshots)"
        )
    if summary.get("problem"):
        lines.append(f"  {indent}snapshots: cannot be read: {summary['problem']}")
    held = summary.get("held")
    if held and held.get("complete"):
        lines.append(
            f"  {indent}held: reverted to snapshot {held['label']} at {held['at']}; the manifest's "
            f"change is not applied again until it changes or `reconcile resume {name}`"
        )
    elif held:
        lines.append(
            f"  {indent}held: a revert to snapshot {held['label']} was cut short at {held['at']}: "
            f"run `reconcile revert {name} {held['label']}` again"
        )
    return lines


def _condition_lines(conditions: list[dict[str, Any]], indent: str) -> list[str]:
    """A line per condition that is not True: why, and since when."""
    return [
        f"  {indent}{c.get('type')} {c.get('status')} since {c.get('lastTransitionTime')}: "
        f"{c.get('reason')}: {c.get('message')}"
        for c in conditions
        if c.get("status") != "True"
    ]


def render_status(snapshot: dict[str, Any]) -> list[str]:
    """The daemon's status as a table, then one block per instance with an error, a pending
    retry or a pending restart."""
    daemon = snapshot.get("daemon", {})
    if daemon.get("running"):
        head = f"daemon pid {daemon.get('pid')} watching {daemon.get('manifests')}"
        if not daemon.get("connected", True):
            head += " (disconnected from libvirt, reconnecting)"
    else:
        head = f"no daemon running; status as written at {snapshot.get('written')}"
    lines = [head, *_git_lines(daemon.get("git"))]
    instances = snapshot.get("instances", [])
    width = max((len(i["name"]) for i in instances), default=4)
    shown = {
        item["name"]: "; ".join(_address_text(a) for a in item.get("addresses") or []) or "-"
        for item in instances
    }
    wide = max((len(text) for text in shown.values()), default=9)
    lines.append(
        f"  {'NAME':<{width}}  {'DESIRED':<8}  {'OBSERVED':<13}  {'READY':<5}  {'ACCEL':<5}  "
        f"{'ADDRESSES':<{wide}}  LAST"
    )
    for item in instances:
        last = item.get("lastReconcile") or {}
        summary = f"{last.get('outcome', '-')} at {last.get('started', '-')}"
        if last:
            summary += f" ({last.get('seconds')}s)"
        change = item.get("lastChange")
        if change and last.get("outcome") != "changed":  # a later pass found nothing to do
            summary += f"; last changed at {change.get('at')}"
        conditions = item.get("conditions") or []
        ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        lines.append(
            f"  {item['name']:<{width}}  {item.get('desired') or '-':<8}  "
            f"{item.get('observed') or '-':<13}  {ready.get('status', '-'):<5}  "
            f"{item.get('accelerator') or '-':<5}  {shown[item['name']]:<{wide}}  {summary}"
        )
        lines += _condition_lines(conditions, " " * (width + 2))
        lines += _snapshot_lines(item["name"], item.get("snapshots"), " " * (width + 2))
        error = item.get("lastError")
        if error:
            lines.append(f"  {'':<{width}}  error ({error.get('failure')}): {error.get('message')}")
        if item.get("nextRetry"):
            lines.append(
                f"  {'':<{width}}  retry {item.get('failures')} at {item.get('nextRetry')}"
            )
        if item.get("waitingForChange"):
            lines.append(f"  {'':<{width}}  not retried until its manifest or source changes")
        loop = item.get("crashLoop")
        if loop:
            when = f"next start at {loop['nextStart']}" if loop.get("nextStart") else "started"
            lines.append(
                f"  {'':<{width}}  crash loop: {loop['restarts']} restart(s) in a row; {when}"
            )
        if item.get("pendingRestart"):
            lines.append(
                f"  {'':<{width}}  restart pending: the running domain has an older definition"
            )
    sets = snapshot.get("sets") or []
    if sets:
        wide = max(len(s["name"]) for s in sets)
        lines.append(f"  {'SET':<{wide}}  DESIRED  CURRENT  UPDATED  READY    AVAILABLE")
        for row in sets:
            lines.append(
                f"  {row['name']:<{wide}}  {row['desired']:<7}  {row['current']:<7}  "
                f"{row['updated']:<7}  {row['ready']:<7}  {row.get('available', row['ready'])}"
            )
    for rollout in snapshot.get("rollouts") or []:
        lines.append(f"  rollout {rollout['group']}: {_rollout_words(rollout)}")
    for error in snapshot.get("manifestErrors", []):
        lines.append(f"error: {error}")
    if not instances:
        lines.append("  no instances")
    return lines


def _rollout_words(rollout: dict[str, Any]) -> str:
    """A rollout's progress in a line of `status`."""
    state = str(rollout.get("state"))
    if state in ("paused", "reverted"):
        reverted = rollout.get("reverted") or []
        done = f"; reverted {', '.join(reverted)}" if reverted else ""
        return f"{state}: {rollout.get('reason')}{done}"
    parts = []
    if rollout.get("inFlight"):
        parts.append(f"changing {', '.join(rollout['inFlight'])}")
    if rollout.get("waiting"):
        parts.append(f"waiting: {', '.join(rollout['waiting'])}")
    return state + (f" ({'; '.join(parts)})" if parts else "")


def _git_lines(git: dict[str, Any] | None) -> list[str]:
    """Pull mode: the commit in force, the newest seen, and why that one is not applied."""
    if not git:
        return []
    applied = git.get("appliedCommit")
    lines = [
        f"git {git.get('url')} {git.get('ref')}: "
        + (
            f"commit {applied[:12]} applied at {git.get('appliedAt')}"
            if applied
            else "none applied"
        )
    ]
    newest = git.get("newestCommit")
    refused = git.get("notApplied")
    if refused:
        lines.append(f"  newest commit {refused['commit'][:12]} not applied: {refused['reason']}")
    elif newest and newest != applied:
        lines.append(f"  newest commit {newest[:12]} seen")
    if git.get("fetchError"):
        lines.append(f"  last fetch failed: {git['fetchError']}")
    return lines


def driver_text(driver: Driver) -> str:
    """The driver in use, in words: `libvirt URI`, or the QMP driver (no libvirt)."""
    if driver.uri.startswith("qmp://"):
        return "QMP driver (QEMU run directly, no libvirt)"
    return f"libvirt {driver.uri}"


def _address_text(address: dict[str, Any]) -> str:
    """One interface's address as `status` shows it (from the daemon's JSON)."""
    where = address.get("address") or f"{address.get('type')} ({address.get('source')})"
    forwards = address.get("forwards") or []
    return str(where) + (f" ({', '.join(forwards)})" if forwards else "")
