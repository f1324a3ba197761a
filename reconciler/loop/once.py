"""One pass over every instance, built on the per-name reconcile: `plan` plans each name,
`--once` enqueues every name, drains the queue with the workers, and exits.

An invalid manifest never reaches here: only valid instances are planned or touched.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from reconciler.health.record import probes_of, record_probes
from reconciler.loop.queue import WorkQueue
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.loop.results import Failure, InstanceResult, Outcome
from reconciler.loop.rollouts import RolloutPacer
from reconciler.loop.waiting import HealthWatch
from reconciler.loop.workers import WorkerPool
from reconciler.manifests.loader import LoadResult
from reconciler.manifests.sets import SET_LABEL
from reconciler.model.actual import DomainFacts, ObservedDomain
from reconciler.model.desired import InstanceSpec
from reconciler.planning.cloudinit import login_user
from reconciler.planning.plan import InstancePlan
from reconciler.planning.rollouts import plan_waves

LOG = logging.getLogger(__name__)


def prune_refusal(load: LoadResult, settings: Settings, orphans: int) -> str | None:
    """Why this pass may not prune (None when it may): prune must be on, every manifest must
    have loaded and validated, and an empty set of instances is never read as "delete them
    all" unless --allow-empty says so."""
    if not settings.prune:
        return "prune is off: --prune, or a file STATE/prune, turns it on"
    if load.errors:
        return (
            f"prune is held back: {len(load.errors)} manifest error(s) in this pass, and "
            "nothing is pruned unless every manifest loads and validates"
        )
    if not load.instances and not load.invalid_names and orphans and not settings.allow_empty:
        return (
            "prune is held back: no instance is defined while managed domains exist (an empty "
            "or half-broken checkout must not delete a fleet); --allow-empty overrides this"
        )
    return None


def scaled_down(load: LoadResult, record: DomainFacts) -> str | None:
    """The instance set that `record` was a member of and no longer is (its ordinal is past
    the set's replicas now), or None. Its marker's labels say which set made it."""
    marker = record.marker
    labels = dict(marker.labels) if marker is not None else {}
    name = labels.get(SET_LABEL)
    replicas = dict(load.sets).get(name or "")
    if name is None or replicas is None:
        return None
    ordinal = record.name.removeprefix(f"{name}-")
    return name if ordinal.isdigit() and int(ordinal) >= replicas else None


def orphan_refusal(
    load: LoadResult, settings: Settings, record: DomainFacts, orphans: int
) -> str | None:
    """Why orphan `record` may not be removed (None: it may). A member an instance set no
    longer counts (scaled down) goes as its set asks, prune on or off; the other guards
    hold all the same (every manifest valid, never all at once from an empty checkout)."""
    if scaled_down(load, record) is not None:  # the set is there: the checkout is not empty
        asked = dataclasses.replace(settings, prune=True, allow_empty=True)
        return prune_refusal(load, asked, orphans)
    return prune_refusal(load, settings, orphans)


def orphans_of(
    load: LoadResult, reconciler: Reconciler, listed: Mapping[str, ObservedDomain] | None = None
) -> list[tuple[str, str | None]]:
    """The orphans of this pass (from `listed` when given), each with why it may not be
    removed (None: it may)."""
    known = {spec.name for spec in load.instances} | set(load.invalid_names)
    records = [r for r in reconciler.managed_domains(listed) if r.name not in known]
    settings = reconciler.settings
    return [
        (record.name, orphan_refusal(load, settings, record, len(records)))
        for record in sorted(records, key=lambda r: r.name)
    ]


class OnceRollouts:
    """A one-off pass's rollouts: the changes a rollout holds back are made as room comes,
    in this process (its own probes say when a changed member is ready), until no member
    waits; a rollout that stops (a member not ready by its deadline) is left stopped, and
    one that makes no progress for its longest progressDeadlineSeconds ends the pass."""

    def __init__(self, load: LoadResult, reconciler: Reconciler) -> None:
        self._reconciler = reconciler
        self._specs = [s for s in load.instances if s.rollout is not None]
        self._watch = HealthWatch(reconciler.driver, reconciler.state, reconciler.clock)
        self._woken: set[str] = set()
        self._lock = threading.Lock()
        reconciler.pacer = RolloutPacer(
            reconciler,
            self._members,
            self._watch.prober.ready_since,
            self._watch.prober.knows_readiness,
            self._wake,
        )

    def _members(self, group: str) -> list[InstanceSpec]:
        return [s for s in self._specs if s.rollout is not None and s.rollout.group == group]

    def _wake(self, names: Iterable[str]) -> None:
        with self._lock:
            self._woken.update(names)

    def finish(
        self, results: dict[str, InstanceResult], reconcile: Callable[[str], InstanceResult]
    ) -> None:
        """Reconcile again each member its rollout asks to look at again (`results` are
        replaced by the last), until none is left."""
        clock = self._reconciler.clock
        names = [s.name for s in self._specs]
        patience = max(s.rollout.progress_deadline_seconds for s in self._specs if s.rollout)
        due = {n: clock.monotonic() + r.requeue_after for n, r in results.items()
               if n in names and r.requeue_after is not None}  # fmt: skip
        last_progress = clock.monotonic()
        next_lookup = 0.0
        try:
            while True:
                with self._lock:
                    woken, self._woken = self._woken & set(names), set()
                now = clock.monotonic()
                ready = sorted(woken | {n for n, at in due.items() if at <= now})
                if not ready and not due:
                    return
                if now - last_progress > patience:
                    for name in due:
                        results[name] = _stalled(results[name], patience)
                    return
                if now >= next_lookup:
                    self._watch.observe(names)
                    next_lookup = now + 1.0
                self._watch.prober.tick()
                for name in ready:
                    result = reconcile(name)
                    results[name] = result
                    due.pop(name, None)
                    if result.started:  # a new boot: its probes start over
                        self._watch.prober.restarted(name)
                    if result.outcome is Outcome.CHANGED:
                        last_progress = clock.monotonic()
                    if result.requeue_after is not None:
                        due[name] = clock.monotonic() + result.requeue_after
                clock.sleep(0.2)
        finally:
            self._watch.close()
            self._reconciler.pacer = None


def _stalled(result: InstanceResult, patience: int) -> InstanceResult:
    """A member still held when the pass gives up on its rollout: a failure that says why."""
    why = "; ".join(note for note in result.notes if note.startswith("rollout")) or "waiting"
    return dataclasses.replace(
        result,
        outcome=Outcome.FAILED,
        failure=Failure.TRANSIENT,
        message=f"its rollout made no progress in {patience}s ({why}); the change is not "
        "made: run again, or let the daemon roll it",
    )


def plan_all(load: LoadResult, reconciler: Reconciler) -> list[InstancePlan]:
    """Plan every valid instance, in manifest order, then every orphan; nothing is changed.
    Every domain is listed once, and each plan reads the listing."""
    started = time.monotonic()
    resolver = reconciler.resolver(persist_digests=False)
    listed = reconciler.list_domains()
    with reconciler.pass_listing(listed):
        plans = [reconciler.plan(spec, resolver, listed=listed) for spec in load.instances]
    plans = plan_waves(list(load.instances), plans)
    plans += [
        reconciler.plan_orphan(n, refusal) for n, refusal in orphans_of(load, reconciler, listed)
    ]
    LOG.debug("planned %d instances in %.3fs", len(plans), time.monotonic() - started)
    return plans


def apply_all(load: LoadResult, reconciler: Reconciler) -> list[InstanceResult]:
    """Reconcile every valid instance once (several in parallel); one result per instance, in
    manifest order. Failures are reported, not retried: a daemon retries, a pass does not.

    Every domain is listed once; an instance that the listing shows converged is settled in
    this thread, and only the others go to the workers, which observe them afresh (a no-op
    pass is bound by the interpreter's lock: threads would only take turns)."""
    reconciler.state.create()
    reconciler.refresh_host()
    specs = {spec.name: spec for spec in load.instances}
    resolver = reconciler.resolver(persist_digests=True)  # bases shared by the whole pass
    listed = reconciler.list_domains()
    results: dict[str, InstanceResult] = {}
    guard = threading.Lock()

    def handle(name: str) -> None:
        result = reconciler.reconcile(specs[name], resolver)
        with guard:
            results[name] = result

    rolling = OnceRollouts(load, reconciler) if any(s.rollout for s in specs.values()) else None
    queue = WorkQueue(reconciler.clock)
    with reconciler.pass_listing(listed):
        for name, spec in specs.items():
            settled = reconciler.settled(spec, resolver, listed)
            if settled is None:
                queue.add(name)
            else:
                results[name] = settled
        settled_here = len(results)
        if settled_here < len(specs):
            workers = max(1, min(reconciler.settings.max_parallel, len(specs) - settled_here))
            WorkerPool(queue, handle, workers, prefix="instance").drain()
    LOG.debug("reconciled %d instances, %d settled from the listing", len(results), settled_here)
    for spec in load.instances:  # what status and wait check, in another process too
        paths = reconciler.state.instance(spec.name)
        record_probes(paths, probes_of(spec), login_user(spec.guest))
    if rolling is not None:
        rolling.finish(results, lambda name: reconciler.reconcile(specs[name], resolver))
    pruned = [reconciler.prune(n, refusal) for n, refusal in orphans_of(load, reconciler, listed)]
    return [results[name] for name in specs] + pruned
