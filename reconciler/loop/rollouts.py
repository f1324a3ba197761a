"""Rollouts on disk and in a running pass: the record of each group (STATE/rollouts/), the
pacer a Reconciler asks before a change that restarts a running member (see
planning.rollouts for the rules), the revert of a member whose change failed, and the
commands (`reconcile rollout pause|resume|undo`) and the progress `status` shows.

The daemon and a one-off pass use the same pacer: the daemon reads readiness from its
prober and comes back to a waiting member when a member's readiness changes or its wait is
over; a one-off pass (loop.once) probes the group's members itself and goes on until no
member waits.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from reconciler.errors import ConfigError, ReconcilerError
from reconciler.fileops import write_atomically
from reconciler.layout import StateLayout
from reconciler.loop.reconcile import Paced, Reconciler
from reconciler.loop.results import Failure, InstanceResult, Outcome
from reconciler.model.desired import DesiredState, InstanceSpec, RolloutPolicy
from reconciler.planning.context import InstancePlan
from reconciler.planning.rollouts import (
    Decision,
    GroupFacts,
    RolloutRecord,
    Stop,
    Verdict,
    admit,
    decide,
    next_look,
    restarts_running,
    restore_point,
    settle,
    spec_revision,
    unavailable,
)

LOG = logging.getLogger("reconciler.rollout")
MAX_RECORD_BYTES = 1024 * 1024
_GROUP_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # as the schema's names


def group_of(argument: str) -> str:
    """The group `reconcile rollout ACTION ARGUMENT` names: a set by its name, or
    profile/NAME, instance/NAME, set/NAME."""
    kind, slash, name = argument.partition("/")
    if not slash:
        kind, name = "set", argument
    if kind not in ("set", "profile", "instance") or not _GROUP_NAME.fullmatch(name):
        raise ConfigError(
            f"{argument!r} names no rollout: give an instance set's name, or profile/NAME or "
            "instance/NAME"
        )
    return f"{kind}/{name}"


class RolloutBook:
    """The records of a state directory's rollouts (written atomically, read defensively)."""

    def __init__(self, layout: StateLayout) -> None:
        self._layout = layout

    def read(self, group: str) -> RolloutRecord:
        try:
            with open(self._layout.rollout(group), "rb") as stream:
                data = json.loads(stream.read(MAX_RECORD_BYTES))
        except (OSError, ValueError):
            return RolloutRecord(group)
        return RolloutRecord.from_json(group, data)

    def write(self, record: RolloutRecord) -> None:
        self._layout.rollouts.mkdir(mode=0o700, exist_ok=True)
        text = json.dumps(record.as_json(), indent=1) + "\n"
        write_atomically(self._layout.rollout(record.group), text.encode())


class RolloutPacer:
    """What the Reconciler asks before each reconcile of an instance with a rollout policy.

    `members(group)`: the specs of the group's instances (what the manifests say now);
    `ready_since(name)`: since when it has been ready in this boot (None: it is not);
    `knows(name)`: whether its readiness is known (see Prober.knows_readiness);
    `wake(names)`: have those reconciled soon (the daemon enqueues them; a pass notes them).
    """

    def __init__(
        self,
        reconciler: Reconciler,
        members: Callable[[str], list[InstanceSpec]],
        ready_since: Callable[[str], float | None],
        knows: Callable[[str], bool],
        wake: Callable[[Iterable[str]], None] = lambda _names: None,
    ) -> None:
        self.reconciler = reconciler
        self.book = RolloutBook(reconciler.state)
        self._members = members
        self._ready_since = ready_since
        self._knows = knows
        self._wake = wake
        self._lock = threading.Lock()
        self._group_locks: dict[str, threading.Lock] = {}
        self._waiting: dict[str, set[str]] = {}  # by group: members whose change waits
        self._said: dict[str, str] = {}  # by name: why its change waits, as last said
        self._started = reconciler.clock.wall()  # readiness is watched from here on

    def members(self, group: str) -> list[InstanceSpec]:
        """The instances of `group` as the manifests say now."""
        return [m for m in self._members(group) if m.rollout is not None]

    def _group_lock(self, group: str) -> threading.Lock:
        with self._lock:
            return self._group_locks.setdefault(group, threading.Lock())

    def facts(self, group: str) -> GroupFacts:
        members = [m for m in self._members(group) if m.rollout is not None]
        return GroupFacts(
            {m.name: spec_revision(m) for m in members},
            frozenset(m.name for m in members if m.state is DesiredState.RUNNING),
            {m.name: self._ready_since(m.name) for m in members},
            frozenset(m.name for m in members if not self._knows(m.name)),
            self._started,
        )

    # -- the Reconciler's questions ---------------------------------------------------------

    def pace(self, spec: InstanceSpec, plan: InstancePlan) -> Paced:
        policy = spec.rollout
        assert policy is not None
        group, name = policy.group, spec.name
        now = self.reconciler.clock.wall()
        with self._group_lock(group):
            record = self.book.read(group)
            before = record.as_json()
            facts = self.facts(group)
            if name not in facts.revisions:  # the manifests changed under this reconcile
                return Paced(plan)
            in_flight = set(record.in_flight())
            was_stopped = record.stopped is not None
            decision = decide(record, policy, facts, name, restarts_running(spec, plan), now)
            if decision.verdict is Verdict.ADMIT:
                admit(record, name, facts.revisions[name], restore_point(plan), now)
            if record.as_json() != before:
                self.book.write(record)
            waiting = self._waiting.setdefault(group, set())
            if decision.verdict is Verdict.HOLD:
                waiting.add(name)
            else:
                waiting.discard(name)
            wake = self._news(record, in_flight, was_stopped, name)
            wait = self._wait(record, policy, facts, name, decision, now)
        if wake:
            self._wake(wake)
        return self._paced(spec, plan, decision, wait)

    def _news(
        self, record: RolloutRecord, in_flight: set[str], was_stopped: bool, name: str
    ) -> list[str]:
        """Who to wake after this look changed the record: when the rollout has just stopped,
        the members to revert and those waiting (to say why they wait now); when a member
        stopped being in flight, those waiting (lock held)."""
        stopped_now = record.stopped is not None and not was_stopped
        wake = (
            set(record.stopped.to_revert) if record.stopped is not None and stopped_now else set()
        )
        if stopped_now or in_flight - set(record.in_flight()):
            wake |= self._waiting.get(record.group, set())
        wake.discard(name)
        return sorted(wake)

    def _wait(
        self,
        record: RolloutRecord,
        policy: RolloutPolicy,
        facts: GroupFacts,
        name: str,
        decision: Decision,
        now: float,
    ) -> float | None:
        """When `name` looks again: held for room, or in flight (until it is available or
        its deadline passes)."""
        if decision.verdict is Verdict.HOLD:
            return decision.wait
        entry = record.members.get(name)
        in_flight = (
            entry is not None
            and entry.available is None
            and entry.revision == facts.revisions.get(name)
        )
        if decision.verdict in (Verdict.ADMIT, Verdict.GO) and in_flight:
            return next_look(record, policy, facts, now)
        return None

    def _paced(
        self, spec: InstanceSpec, plan: InstancePlan, decision: Decision, wait: float | None
    ) -> Paced:
        name = spec.name
        if decision.verdict is Verdict.REVERT:
            return Paced(plan, result=self._revert(spec, decision.snapshot))
        if decision.verdict is Verdict.HOLD:
            if self._said.get(name) != decision.note:  # said once, not at every look
                self._said[name] = decision.note
                self.reconciler.report(name, decision.note)
            # the plan's own notes are of steps that are not made now: only why is said
            held = InstancePlan(name, notes=(decision.note,), accelerator=plan.accelerator)
            return Paced(held, wait=wait, held=True)
        self._said.pop(name, None)
        if decision.verdict is Verdict.ADMIT:
            plan = InstancePlan(
                plan.name, plan.steps, plan.refusal, (*plan.notes, decision.note),
                plan.accelerator, plan.pending_restart, plan.restart_after, plan.kept_off,
                plan.base_forecasts, plan.held, plan.snapshot_due_in,
            )  # fmt: skip
        return Paced(plan, wait=wait)

    def applied(self, spec: InstanceSpec, result: InstanceResult) -> None:
        """A reconcile of `spec` ended: an admitted change that succeeded is applied (its
        minReadySeconds count from its readiness after this)."""
        policy = spec.rollout
        if policy is None or result.outcome is Outcome.FAILED:
            return
        with self._group_lock(policy.group):
            record = self.book.read(policy.group)
            entry = record.members.get(spec.name)
            if entry is None or entry.available is not None or entry.finished is not None:
                return
            if entry.revision != spec_revision(spec):
                return
            entry.finished = self.reconciler.clock.wall()
            self.book.write(record)

    def _revert(self, spec: InstanceSpec, label: str | None) -> InstanceResult:
        """Put a member whose change failed back on its snapshot before the change and its
        definition then (a revert's hold keeps it there until its manifest changes)."""
        name = spec.name
        assert spec.rollout is not None
        stopped = self.book.read(spec.rollout.group).stopped
        why = "rollout undone" if stopped is not None and not stopped.failed else "rollout failed"
        notes: tuple[str, ...] = ()
        started = False
        if label is None:
            outcome = Outcome.UNCHANGED
            notes = (f"{why}: no snapshot was taken before its change; left as it is",)
        else:
            from reconciler.loop.snapshots import revert  # the steps: only for a revert

            try:
                report = revert(self.reconciler, name, label)
            except ReconcilerError as err:
                LOG.warning("%s: rollout revert to %s failed: %s", name, label, err)
                return InstanceResult(
                    name, Outcome.FAILED, message=f"rollout revert: {err}",
                    failure=Failure.TRANSIENT,
                )  # fmt: skip
            outcome, started = Outcome.CHANGED, report.started
            notes = report.notes
        with self._group_lock(spec.rollout.group):
            record = self.book.read(spec.rollout.group)
            stopped = record.stopped
            if stopped is not None:
                stopped.to_revert = tuple(n for n in stopped.to_revert if n != name)
                if label is not None:
                    stopped.reverted = (*stopped.reverted, name)
                self.book.write(record)
        action = (
            f"{why}: reverted to snapshot {label} and its definition before the change"
            if label is not None
            else f"{why}: nothing to revert to"
        )
        LOG.warning("%s: %s", name, action)
        return InstanceResult(
            name, outcome, (action,) if label is not None else (), notes=notes,
            state=spec.state, started=started,
        )  # fmt: skip

    def busy(self, spec: InstanceSpec) -> bool:
        """Whether a reconcile of `spec` has rollout work even when its plan is empty: its
        change is in flight (to be found available, or late), or it is to be reverted."""
        if spec.rollout is None:
            return False
        record = self.book.read(spec.rollout.group)
        entry = record.members.get(spec.name)
        if entry is not None and entry.available is None:
            return True
        return record.stopped is not None and spec.name in record.stopped.to_revert

    # -- what the daemon asks ---------------------------------------------------------------

    def watchers(self, group: str) -> list[str]:
        """The members to look at again when a member's readiness changes: those waiting,
        and those in flight."""
        with self._group_lock(group):
            waiting = set(self._waiting.get(group, set()))
            record = self.book.read(group)
        return sorted(waiting | set(record.in_flight()))

    # -- commands ---------------------------------------------------------------------------

    def pause(self, group: str) -> str:
        with self._group_lock(group):
            record = self.book.read(group)
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.reconciler.clock.wall()))
            record.paused = f"by `reconcile rollout pause` at {when}"
            self.book.write(record)
        return f"rollout {group} paused: no member is changed until `rollout resume`"

    def resume(self, group: str) -> str:
        """Lift a pause and a stop; the members a failed rollout reverted are let go too
        (their holds end): the change is tried again."""
        with self._group_lock(group):
            record = self.book.read(group)
            released = record.stopped.reverted if record.stopped is not None else ()
            record.paused, record.stopped = None, None
            self.book.write(record)
            waiting = sorted(self._waiting.get(group, set()))
        if released:
            from reconciler.loop.snapshots import resume as end_hold

            for name in released:
                end_hold(self.reconciler, name)
        self._wake(sorted({*waiting, *released, *(m.name for m in self._members(group))}))
        return f"rollout {group} resumed"

    def undo(self, group: str) -> str:
        """Stop the rollout and put each member it changed back on its snapshot before the
        change; the group stays on the old revision until its manifest changes again."""
        with self._group_lock(group):
            record = self.book.read(group)
            facts = self.facts(group)
            ours = [
                (name, entry)
                for name, entry in sorted(record.members.items())
                if entry.revision == facts.revisions.get(name)
            ]
            changed = tuple(name for name, entry in ours if entry.snapshot is not None)
            kept = [name for name, entry in ours if entry.snapshot is None]
            record.stopped = Stop(
                at=self.reconciler.clock.wall(),
                reason="undone by `reconcile rollout undo`",
                failed=(),
                revisions=dict(facts.revisions),
                to_revert=changed,
            )
            for name in changed:
                record.members[name].available = record.stopped.at
            self.book.write(record)
        self._wake(changed)
        said = f"rollout {group} stopped"
        if changed:
            said += f"; reverting {', '.join(changed)}"
        if kept:  # onFailure revert, or snapshots.beforeChange: [restart], takes them
            said += f"; no snapshot before the change of {', '.join(kept)}: left as they are"
        if not ours:
            said += ": no member was changed by it (nothing to revert)"
        return said

    def revert_now(self, group: str, names: Iterable[str]) -> list[str]:
        """Make the reverts an undo asked for, in this process (a one-off command); what
        each did."""
        done = []
        specs = {m.name: m for m in self.members(group)}
        for name in names:
            spec = specs.get(name)
            if spec is None:
                continue
            entry = self.book.read(group).members.get(name)
            result = self._revert(spec, None if entry is None else entry.snapshot)
            done.append(f"{name}: {result.message or '; '.join(result.actions) or 'unchanged'}")
        return done

    # -- what status shows ------------------------------------------------------------------

    def progress(self, group: str, policy: RolloutPolicy) -> dict[str, Any]:
        """The rollout of `group` as `status` shows it."""
        now = self.reconciler.clock.wall()
        with self._group_lock(group):
            record = self.book.read(group)
            facts = self.facts(group)
            settle(record, policy, facts, now)
            waiting = sorted(self._waiting.get(group, set()))
        return progress_view(record, policy, facts, waiting, now)


ROLLOUT_ACTIONS = ("pause", "resume", "undo")


def rollout_request(
    pacer: RolloutPacer, action: str, argument: str, *, revert_now: bool
) -> dict[str, Any]:
    """`reconcile rollout ACTION SET`, answered as JSON (here and from the daemon). An undo's
    reverts are made now with `revert_now` (no daemon to make them as it reconciles)."""
    if action not in ROLLOUT_ACTIONS:
        raise ConfigError(f"rollout {action!r}: expected pause, resume or undo")
    group = group_of(argument)
    if not pacer.members(group):
        raise ConfigError(f"no instance has the rollout {group} in the manifests")
    reverted: list[str] = []
    if action == "pause":
        said = pacer.pause(group)
    elif action == "resume":
        said = pacer.resume(group)
    else:
        said = pacer.undo(group)
        if revert_now:
            record = pacer.book.read(group)
            pending = record.stopped.to_revert if record.stopped is not None else ()
            reverted = pacer.revert_now(group, pending)
    return {"rollout": {"group": group, "outcome": said, "reverted": reverted}}


def progress_view(
    record: RolloutRecord,
    policy: RolloutPolicy,
    facts: GroupFacts,
    waiting: list[str],
    now: float,
) -> dict[str, Any]:
    """A group's rollout in words and numbers (see RolloutPacer.progress)."""
    down = unavailable(record, policy, facts, now)
    available = [n for n in facts.revisions if n not in down and n in facts.running]
    in_flight = [n for n in record.in_flight() if n in facts.revisions]
    if record.stopped is not None:
        stopped = record.stopped
        state = "reverted" if stopped.reverted or stopped.to_revert else "paused"
        why = stopped.reason
    elif record.paused is not None:
        state, why = "paused", record.paused
    elif in_flight or waiting:
        state, why = "progressing", ""
    else:
        state, why = "complete", ""
    return {
        "group": policy.group,
        "state": state,
        "reason": why,
        "inFlight": in_flight,
        "waiting": waiting,
        "available": len(available),
        "policy": policy.describe(),
        "reverted": list(record.stopped.reverted) if record.stopped is not None else [],
    }
