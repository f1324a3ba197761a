"""Rolling changes: which reconciles of a group's instances may restart or replace a running
guest now, as Kubernetes' Deployment and Nomad's `update` block decide it. Pure: the record,
the members' readiness and the time are passed in; loop.rollouts reads and writes them.

A group is the instances that share one rollout policy (model.desired.RolloutPolicy): an
instance set's members, the instances of the profile that writes the policy, or one
instance. A change that would shut a running member down (a restart, a new boot disk) is
*admitted* only while fewer than the allowed number of the group's members are unavailable,
the member itself counted as unavailable when it already is (replacing a member that is down
takes nothing more down). An admitted member is *in flight* until it has been ready, after
its change, for minReadySeconds; one that is not within progressDeadlineSeconds of its
admission fails the rollout: it stops (pause), and with onFailure revert the failed members go
back to their snapshot before the change. A failed rollout holds the group until its manifest
changes again (every member's revision is recorded at the failure). The record keeps each
admission, so that a rollout cut short (the daemon killed, the host rebooted) resumes where
it was: an admitted member is not counted twice, and one whose change is done is not touched
again (its plan is empty).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.model.desired import DesiredState, InstanceSpec, OnFailure, RolloutPolicy
from reconciler.planning.context import InstancePlan
from reconciler.planning.steps import StopDomain, TakeSnapshot

RECORD_VERSION = 1
LONGEST_WAIT_SECONDS = 30.0  # a held member looks again at least this often
SHORTEST_WAIT_SECONDS = 1.0
UNKNOWN_WAIT_SECONDS = 2.0  # a member whose readiness is not known yet is looked at again


@functools.lru_cache(maxsize=8192)
def spec_revision(spec: InstanceSpec) -> str:
    """A digest of everything the manifest says of one instance: a failed rollout holds the
    group until it changes. Cached: each look at a group digests every member, and a spec
    is immutable."""
    data = dataclasses.asdict(spec)
    text = json.dumps(data, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(str(item) for item in value)
    return str(value)


def restarts_running(spec: InstanceSpec, plan: InstancePlan) -> bool:
    """Whether `plan` shuts a running guest down to change it (what a rollout paces): not a
    stop the manifest asks for, not a restart after a crash or a failed liveness probe."""
    if spec.rollout is None or plan.restart_after is not None:
        return False
    if spec.state is not DesiredState.RUNNING:
        return False
    return any(isinstance(step, StopDomain) for step in plan.steps)


def restore_point(plan: InstancePlan) -> str | None:
    """The label of the snapshot `plan` takes before its change (None: it takes none)."""
    for step in plan.steps:
        if isinstance(step, TakeSnapshot) and step.label.startswith("before-"):
            return step.label
    return None


@dataclass(slots=True)
class Admission:
    """One member admitted to change: at which revision, when, and what became of it."""

    revision: str
    admitted: float  # wall time
    snapshot: str | None = None  # its restore point before the change
    finished: float | None = None  # its change was applied (the reconcile succeeded)
    available: float | None = None  # ready for minReadySeconds after it: done

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Stop:
    """Why the rollout stopped: a member not ready in time, or `rollout undo`."""

    at: float
    reason: str
    failed: tuple[str, ...]  # the members that did not become ready
    revisions: dict[str, str]  # every member's revision then: held while they stay
    to_revert: tuple[str, ...] = ()
    reverted: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["failed"], data["to_revert"] = list(self.failed), list(self.to_revert)
        data["reverted"] = list(self.reverted)
        return data


@dataclass(slots=True)
class RolloutRecord:
    """What is on disk of one group's rollout (loop.rollouts keeps it)."""

    group: str
    members: dict[str, Admission] = field(default_factory=dict)
    paused: str | None = None  # by `rollout pause`: why
    stopped: Stop | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "group": self.group,
            "members": {name: entry.as_json() for name, entry in sorted(self.members.items())},
            "paused": self.paused,
            "stopped": None if self.stopped is None else self.stopped.as_json(),
        }

    @classmethod
    def from_json(cls, group: str, data: object) -> RolloutRecord:
        """The record as `as_json` wrote it; an empty one for anything else (a damaged file
        starts the group's bookkeeping over: nothing in it can harm an instance)."""
        record = cls(group)
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            return record
        try:
            for name, entry in dict(data.get("members") or {}).items():
                record.members[str(name)] = Admission(
                    str(entry["revision"]),
                    float(entry["admitted"]),
                    _text(entry.get("snapshot")),
                    _number(entry.get("finished")),
                    _number(entry.get("available")),
                )
            paused = data.get("paused")
            record.paused = None if paused is None else str(paused)
            stopped = data.get("stopped")
            if isinstance(stopped, dict):
                record.stopped = Stop(
                    float(stopped["at"]),
                    str(stopped["reason"]),
                    tuple(str(n) for n in stopped.get("failed") or ()),
                    {str(k): str(v) for k, v in dict(stopped["revisions"]).items()},
                    tuple(str(n) for n in stopped.get("to_revert") or ()),
                    tuple(str(n) for n in stopped.get("reverted") or ()),
                )
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls(group)
        return record

    def in_flight(self) -> list[str]:
        return sorted(n for n, e in self.members.items() if e.available is None)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _number(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class GroupFacts:
    """The group's members now: each one's revision, whether the manifest wants it running,
    since when it has been ready in its current boot (None: not ready), and those whose
    readiness is not known yet (a daemon just started has not probed them): counted as
    unavailable, never as "down already"."""

    revisions: Mapping[str, str]
    running: frozenset[str]
    ready_since: Mapping[str, float | None]
    unknown: frozenset[str] = frozenset()
    # since when readiness has been watched (the daemon's start): a deadline never counts
    # time nobody was watching (a daemon down for an hour does not fail its rollout)
    watched_since: float = 0.0


class Verdict(enum.StrEnum):
    GO = "go"  # nothing a rollout paces: carry the plan out
    ADMIT = "admit"  # a paced change, admitted now
    HOLD = "hold"  # a paced change that waits (the note says for what)
    REVERT = "revert"  # this member goes back to its snapshot before the change


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    note: str = ""
    wait: float | None = None  # held: look again after this many seconds
    snapshot: str | None = None  # REVERT: to this snapshot
    wake: tuple[str, ...] = ()  # other members to reconcile now (one to revert, waiting ones)


def settle(record: RolloutRecord, policy: RolloutPolicy, facts: GroupFacts, now: float) -> bool:
    """Bring `record` up to date with the members as they are now: members gone from the
    group forgotten, a stop the manifest has moved past lifted, in-flight members found
    available, and one past its deadline stopping the rollout. Whether anything changed."""
    changed = False
    for name in [n for n in record.members if n not in facts.revisions]:
        del record.members[name]
        changed = True
    stopped = record.stopped
    if stopped is not None and any(
        facts.revisions.get(name, revision) != revision
        for name, revision in stopped.revisions.items()
    ):
        record.stopped = None  # the manifest changed since: a new rollout
        changed = True
    late: list[str] = []
    for name in record.in_flight():
        entry = record.members[name]
        if entry.revision != facts.revisions.get(name):
            continue  # asked for something else since: admitted again when it comes
        since = facts.ready_since.get(name)
        if (
            entry.finished is not None
            and since is not None
            and since >= entry.admitted
            and now - since >= policy.min_ready_seconds
        ):
            entry.available = now
            changed = True
        elif now - max(entry.admitted, facts.watched_since) > policy.progress_deadline_seconds:
            late.append(name)
    if late and record.stopped is None:
        revert = policy.on_failure is OnFailure.REVERT
        seconds = policy.progress_deadline_seconds
        record.stopped = Stop(
            at=now,
            reason=f"{', '.join(late)} not ready within progressDeadlineSeconds ({seconds}s) "
            "after its change",
            failed=tuple(late),
            revisions=dict(facts.revisions),
            to_revert=tuple(late) if revert else (),
        )
        for name in late:
            record.members[name].available = now  # no longer in flight: it failed
        changed = True
    return changed


def unavailable(
    record: RolloutRecord, policy: RolloutPolicy, facts: GroupFacts, now: float
) -> list[str]:
    """The members that count against maxUnavailable: in flight, or meant to run and not
    ready for minReadySeconds."""
    found = set(record.in_flight()) & set(facts.revisions)
    found |= facts.unknown & facts.running
    for name in facts.running:
        since = facts.ready_since.get(name)
        if since is None or now - since < policy.min_ready_seconds:
            found.add(name)
    return sorted(found)


def decide(
    record: RolloutRecord,
    policy: RolloutPolicy,
    facts: GroupFacts,
    name: str,
    paced: bool,
    now: float,
) -> Decision:
    """What member `name` may do now, its plan being `paced` or not (see restarts_running);
    `record` is settled first and, on admission, records it (the caller writes it)."""
    settle(record, policy, facts, now)
    stopped = record.stopped
    if stopped is not None and name in stopped.to_revert:
        entry = record.members.get(name)
        return Decision(Verdict.REVERT, snapshot=None if entry is None else entry.snapshot)
    if not paced:
        return Decision(Verdict.GO)
    revision = facts.revisions[name]
    if stopped is not None:
        what = "reverted" if stopped.reverted or stopped.to_revert else "paused"
        return Decision(
            Verdict.HOLD,
            f"rollout {policy.group} {what}: {stopped.reason}; the change waits until the "
            f"manifest changes again, or `reconcile rollout resume {_name(policy.group)}`",
        )
    if record.paused is not None:
        return Decision(
            Verdict.HOLD,
            f"rollout {policy.group} paused ({record.paused}); `reconcile rollout resume "
            f"{_name(policy.group)}` goes on",
        )
    entry = record.members.get(name)
    if entry is not None and entry.available is None and entry.revision == revision:
        return Decision(Verdict.ADMIT, "rollout: resuming its change")  # admitted before
    down = unavailable(record, policy, facts, now)
    others = [n for n in down if n != name]
    allowed = policy.allowed(len(facts.revisions))
    # a member not ready at all (known to be down, not merely within its minReadySeconds)
    already_down = (
        facts.ready_since.get(name) is None
        and name not in record.in_flight()
        and name not in facts.unknown
    )
    if already_down or len(others) < allowed:
        return Decision(Verdict.ADMIT, f"rollout {policy.group}: changing it now")
    return Decision(
        Verdict.HOLD,
        f"rollout {policy.group}: waiting: {len(others)} of {len(facts.revisions)} "
        f"unavailable ({', '.join(others)}), maxUnavailable {allowed}",
        wait=next_look(record, policy, facts, now),
    )


def next_look(record: RolloutRecord, policy: RolloutPolicy, facts: GroupFacts, now: float) -> float:
    """Seconds until something may change a held member's verdict: an in-flight member's
    deadline or the end of a member's minReadySeconds (a readiness change wakes it too)."""
    moments = [
        max(record.members[n].admitted, facts.watched_since) + policy.progress_deadline_seconds
        for n in record.in_flight()
    ]
    for since in facts.ready_since.values():
        if since is not None and now - since < policy.min_ready_seconds:
            moments.append(since + policy.min_ready_seconds)
    if facts.unknown:  # soon probed
        moments.append(now + UNKNOWN_WAIT_SECONDS)
    soonest = min((m - now for m in moments), default=LONGEST_WAIT_SECONDS)
    return min(LONGEST_WAIT_SECONDS, max(SHORTEST_WAIT_SECONDS, soonest + 0.1))


def admit(
    record: RolloutRecord, name: str, revision: str, snapshot: str | None, now: float
) -> None:
    """Record `name` admitted at `revision` (a member resuming keeps its first admission)."""
    entry = record.members.get(name)
    if entry is not None and entry.available is None and entry.revision == revision:
        entry.snapshot = entry.snapshot or snapshot
        return
    record.members[name] = Admission(revision, now, snapshot)


def _name(group: str) -> str:
    """How `reconcile rollout` names a group: a set by its name, others by kind/name."""
    kind, _, name = group.partition("/")
    return name if kind == "set" else group


def plan_waves(specs: list[InstanceSpec], plans: list[InstancePlan]) -> list[InstancePlan]:
    """`plans` (one per spec, in order) with the wave each paced change takes in its
    rollout: the group's paced members in ordinal order, as many per wave as may be
    unavailable at once (the order within the rollout follows readiness; the plan shows
    the pace)."""
    paced: dict[str, list[str]] = {}
    policies: dict[str, RolloutPolicy] = {}
    for spec, plan in zip(specs, plans, strict=True):
        if spec.rollout is not None and restarts_running(spec, plan):
            paced.setdefault(spec.rollout.group, []).append(spec.name)
            policies[spec.rollout.group] = spec.rollout
    sizes = {s.rollout.group: 0 for s in specs if s.rollout is not None}
    for spec in specs:
        if spec.rollout is not None:
            sizes[spec.rollout.group] += 1
    where: dict[str, tuple[str, int, int]] = {}
    for group, names in paced.items():
        grouped = waves(names, policies[group].allowed(sizes[group]))
        for number, wave in enumerate(grouped, start=1):
            for name in wave:
                where[name] = (group, number, len(grouped))
    return [
        dataclasses.replace(plan, wave=where[plan.name]) if plan.name in where else plan
        for plan in plans
    ]


def waves(names: list[str], allowed: int) -> list[list[str]]:
    """The members to change in the order a rollout takes them, `allowed` at a time."""
    ordered = sorted(names, key=_ordinal_key)
    return [ordered[i : i + allowed] for i in range(0, len(ordered), allowed)]


def _ordinal_key(name: str) -> tuple[str, int]:
    stem, _, tail = name.rpartition("-")
    return (stem, int(tail)) if tail.isdigit() else (name, -1)
