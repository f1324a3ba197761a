"""One pass over every instance, built on the per-name reconcile: `plan` plans each name,
`--once` enqueues every name, drains the queue with the workers, and exits.

An invalid manifest never reaches here: only valid instances are planned or touched.
"""

from __future__ import annotations

import logging
import threading
import time

from reconciler.loop.queue import WorkQueue
from reconciler.loop.reconcile import InstanceResult, Reconciler
from reconciler.loop.workers import WorkerPool
from reconciler.manifests.loader import LoadResult
from reconciler.planning.plan import InstancePlan

LOG = logging.getLogger(__name__)


def plan_all(load: LoadResult, reconciler: Reconciler) -> list[InstancePlan]:
    """Plan every valid instance, in manifest order; nothing is changed."""
    started = time.monotonic()
    resolver = reconciler.resolver(persist_digests=False)
    plans = [reconciler.plan(spec, resolver) for spec in load.instances]
    LOG.debug("planned %d instances in %.3fs", len(plans), time.monotonic() - started)
    return plans


def apply_all(load: LoadResult, reconciler: Reconciler) -> list[InstanceResult]:
    """Reconcile every valid instance once (several in parallel); one result per instance, in
    manifest order. Failures are reported, not retried: a daemon retries, a pass does not."""
    reconciler.state.create()
    reconciler.refresh_host()
    specs = {spec.name: spec for spec in load.instances}
    resolver = reconciler.resolver(persist_digests=True)  # bases shared by the whole pass
    results: dict[str, InstanceResult] = {}
    guard = threading.Lock()

    def handle(name: str) -> None:
        result = reconciler.reconcile(specs[name], resolver)
        with guard:
            results[name] = result

    queue = WorkQueue(reconciler.clock)
    for name in specs:
        queue.add(name)
    workers = min(reconciler.settings.max_parallel, len(specs))
    WorkerPool(queue, handle, workers, prefix="instance").drain()
    LOG.debug("reconciled %d instances", len(results))
    return [results[name] for name in specs]
