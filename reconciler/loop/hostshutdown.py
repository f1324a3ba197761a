"""Host shutdown, as libvirt-guests does it: every managed running guest is shut down through
ACPI, all at once, each within its recorded `shutdownTimeoutSeconds` (forced off after it),
and recorded (`STATE/instances/NAME/host-shutdown`) before it is asked, so that the first
pass after the host is back starts it again whatever its run policy (the manifest still says
`running`). Run by `reconcile shutdown-guests`, itself run by the systemd unit
`reconciler-guests.service` when the host goes down; the daemon, asked over its control
socket, does it without reconciling anything more until it exits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from reconciler.errors import ReconcilerError
from reconciler.fileops import write_atomically
from reconciler.loop.reconcile import Reconciler
from reconciler.loop.results import Failure, InstanceResult, Outcome
from reconciler.model.actual import DomainFacts
from reconciler.planning.steps import StopDomain

LOG = logging.getLogger(__name__)
DEFAULT_TIMEOUT_SECONDS = 60  # a domain whose marker records none (the manifest's default)
MAX_AT_ONCE = 256  # guests asked and waited for at once (each thread mostly waits)


def shut_down_guests(
    reconciler: Reconciler, progress: Callable[[str, str], None] | None = None
) -> list[InstanceResult]:
    """Shut down every running domain this state directory manages, in parallel; one result
    per domain shut down (CHANGED), or that could not be (FAILED), sorted by name."""
    running = [r for r in reconciler.managed_domains() if r.state.active]
    if not running:
        return []
    at_once = min(len(running), MAX_AT_ONCE)
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="shutdown") as pool:
        results = list(pool.map(lambda r: _shut_down(reconciler, r, progress), running))
    return sorted(results, key=lambda result: result.name)


def _shut_down(
    reconciler: Reconciler, record: DomainFacts, progress: Callable[[str, str], None] | None
) -> InstanceResult:
    from reconciler.steps.apply import apply_step  # steps import what a no-op pass never needs

    name, started = record.name, time.monotonic()
    recorded = record.definition.shutdown_timeout_seconds
    timeout = recorded if recorded is not None else DEFAULT_TIMEOUT_SECONDS
    try:
        paths = reconciler.state.instance(name)
        write_atomically(paths.host_shutdown, b"shut down with the host\n")
        done = apply_step(StopDomain(name, timeout), reconciler.steps)
    except (ReconcilerError, OSError) as err:
        LOG.warning("%s: not shut down: %s", name, err)
        failure = Failure.TRANSIENT
        return InstanceResult(
            name, Outcome.FAILED, message=str(err), failure=failure,
            seconds=time.monotonic() - started,
        )  # fmt: skip
    if progress is not None:
        progress(name, done)
    return InstanceResult(name, Outcome.CHANGED, (done,), seconds=time.monotonic() - started)
