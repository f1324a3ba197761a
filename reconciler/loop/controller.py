"""The daemon: a controller in controller-runtime's shape.

Triggers only enqueue an instance name: a burst of manifest changes (the names the changed
files defined before and after), a domain event from the driver, a periodic full resync
(events can be lost), a reconnection after the hypervisor went away, a request on the control
socket. Workers take names from the queue; each reconcile of a name observes afresh, plans and
acts, and its outcome decides whether and when the name comes back: never after a success
(unless the domain was caught in a transition), with exponential backoff after a transient
failure, and only once its manifest or its source changes after a permanent one.

Beside it: what is known of each name (loop.names), the status file's pacing
(loop.statuswriter), the control socket's requests (loop.daemonapi), the results
(loop.results). Every time source is the injected clock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.clock import Clock
from reconciler.drivers.base import DomainEvent, Driver, EventKind
from reconciler.errors import ReconcilerError
from reconciler.gitops.source import GitSource
from reconciler.health.conditions import Condition, ConditionType
from reconciler.health.prober import Prober
from reconciler.health.record import probes_of, record_probes
from reconciler.images.catalogue import CatalogueEntry, catalogue_in_force
from reconciler.images.progress import TransferReporter
from reconciler.images.resolve import SourceResolver
from reconciler.loop.control import Reply
from reconciler.loop.daemonapi import DaemonApi
from reconciler.loop.imagenames import NameResolver
from reconciler.loop.monitor import DaemonMonitor
from reconciler.loop.names import FULL_PASS_TRIGGERS, NameBook, Trigger
from reconciler.loop.once import orphan_refusal, prune_refusal
from reconciler.loop.queue import WorkQueue
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.loop.results import Failure, InstanceResult, Outcome
from reconciler.loop.rollouts import RolloutPacer
from reconciler.loop.status import StatusBook
from reconciler.loop.statuswriter import StatusWriter
from reconciler.loop.watch import ManifestWatcher
from reconciler.loop.workers import DEFAULT_WORKERS, WorkerPool
from reconciler.manifests.filecache import FileStamp, stamp
from reconciler.manifests.loader import LoadResult, load_manifests
from reconciler.manifests.readingstore import load_store, save_store
from reconciler.manifests.selection import Selection, select
from reconciler.model.actual import DomainFacts, ObservedDomain, PowerState
from reconciler.model.desired import InstanceSpec
from reconciler.model.machine import Machine
from reconciler.planning.addresses import machine_addresses
from reconciler.planning.cloudinit import login_user
from reconciler.statedir import StateDir

LOG = logging.getLogger("reconciler.daemon")
DEFAULT_RESYNC_SECONDS = 300.0
DEFAULT_GIT_INTERVAL_SECONDS = 60.0
RECONNECT_INITIAL_SECONDS = 1.0
RECONNECT_CAP_SECONDS = 30.0
SHUTDOWN_MARGIN_SECONDS = 30.0
INVALID_MANIFEST_NOTE = (
    "its manifest has errors (see the manifest errors): left as it is until they are fixed"
)


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    directory: Path  # absolute
    workers: int = DEFAULT_WORKERS
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    selection: Selection = field(default_factory=Selection)  # this host's slice
    git: GitSource | None = None  # pull mode: the manifests come from this repository
    git_interval_seconds: float = DEFAULT_GIT_INTERVAL_SECONDS
    catalogue: dict[str, CatalogueEntry] | None = None  # images by name (None: shipped only)
    metrics_address: tuple[str, int] | None = None  # /metrics, /healthz, /readyz (None: off)


def _source_identity(spec: InstanceSpec) -> FileStamp:
    """What says a local source file changed (None for a remote source or a missing file)."""
    return None if spec.image.is_remote else stamp(spec.image.path)


def _fingerprint(spec: InstanceSpec) -> tuple[InstanceSpec, FileStamp]:
    return spec, _source_identity(spec)


class Controller:
    """Owns the work queue, the workers, the triggers and the status of one state directory."""

    def __init__(
        self,
        driver: Driver,
        state: StateDir,
        settings: Settings,
        options: DaemonOptions,
        clock: Clock | None = None,
    ) -> None:
        self.driver = driver
        self.state = state
        self.options = options
        self.clock = clock or Clock()
        self._stop = threading.Event()
        self.reconciler = Reconciler(
            driver,
            state,
            settings,
            self._progress,
            clock=self.clock,
            transfers=TransferReporter(),
            cancel=self._stop,
        )
        self.queue = WorkQueue(self.clock)
        self.status = StatusBook(
            state.status_file,
            {
                "pid": os.getpid(),
                "manifests": str(options.directory),
                "uri": driver.uri,
                "running": True,
                "connected": True,
                "started": self._iso_now(),
            },
        )
        self.status_writer = StatusWriter(self.status, self.clock)
        # the probes of the running instances; a liveness failure reconciles the name
        self.prober = Prober(driver, state, self.clock, self._health_changed)
        self.reconciler.liveness_failure = self.prober.liveness_failure
        # rolling changes: paced from the probes' readiness; a member with room is enqueued
        self.pacer = RolloutPacer(
            self.reconciler,
            self._group_members,
            self.prober.ready_since,
            self.prober.knows_readiness,
            lambda names: self.enqueue(names, Trigger.ROLLOUT),
        )
        self.reconciler.pacer = self.pacer
        # images by name the lock lacks: resolved off the loop, never in pull mode
        self._catalogue = options.catalogue or catalogue_in_force()
        self.image_names = (
            None
            if options.git is not None
            else NameResolver(
                options.directory,
                self._catalogue,
                lambda: self.reconciler.steps.cache,
                settings.transport,
                settings.download_limits,
                self.clock,
            )
        )
        self.monitor = DaemonMonitor(self, options.metrics_address)
        self._lock = threading.Condition()  # reentrant: the name book shares it
        self._instance_locks: dict[str, threading.Lock] = {}  # see instance_lock
        self.names = NameBook(self._lock, self.clock)
        self._specs: dict[str, InstanceSpec] = {}
        self._load: LoadResult | None = None
        # a full pass lists every domain once; each name it enqueued (and that nothing else
        # asked for meanwhile) is settled from that listing when converged
        self._listing: PassListing | None = None
        self._subscribers: list[Callable[[str, str], None]] = []
        self._reload_requested = threading.Event()
        self._validated: frozenset[str] = frozenset()  # see manifests.loader.document_key
        # a resync rereads only the files that changed, and a start only those that changed
        # since the last process (plan and --once keep the same readings)
        self._readings = load_store(state.manifest_readings, self._catalogue)
        self._readings_saving = threading.Lock()
        self._lost = threading.Event()
        self._host_down = threading.Event()  # shutdown-guests was asked: reconcile nothing
        self._workers = WorkerPool(self.queue, self.reconcile_name, options.workers)
        self.api = DaemonApi(self)
        # in pull mode only a fetch changes the manifests: no file watcher
        self._watcher = (
            ManifestWatcher(options.directory, self._on_manifest_change)
            if options.git is None
            else None
        )

    # -- running -----------------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until `stop()`; `on_ready` is called once the first pass is done."""
        self.state.create()
        self.monitor.start()  # /readyz says not ready until the first pass is done
        self.attach()
        if self._watcher is not None:
            self._watcher.start()
        self.fetch()
        since = self.names.sequence()  # before the first reconcile: each after it counts
        self.reload(Trigger.START)
        self._workers.start()
        threading.Thread(
            target=self.prober.run, args=(self._stop,), name="prober", daemon=True
        ).start()
        threading.Thread(
            target=self._first_pass, args=(on_ready, since), name="first-pass", daemon=True
        ).start()
        clock = self.clock
        next_resync = clock.monotonic() + self.options.resync_seconds
        next_fetch = clock.monotonic() + self.options.git_interval_seconds
        while not self._stop.is_set():
            self.monitor.tick()
            wait = max(0.0, next_resync - clock.monotonic())
            clock.wait(self._stop, min(wait, 1.0))
            if self._stop.is_set():
                break
            if self._lost.is_set():
                self._reconnect()
            if self.options.git is not None and clock.monotonic() >= next_fetch:
                if self.fetch():
                    self.reload(Trigger.GIT, everything=True)
                next_fetch = clock.monotonic() + self.options.git_interval_seconds
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                LOG.info("rereading %s (SIGHUP)", self.options.directory)
                self.reload(Trigger.RELOAD, everything=True)
            if clock.monotonic() >= next_resync:
                self.resync()
                next_resync = clock.monotonic() + self.options.resync_seconds
        self._shut_down()

    def attach(self) -> None:
        """Receive the driver's events and connection losses (run() does it first)."""
        self.driver.watch(self.on_event, self.on_lost)

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def handle_request(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        """A request of the control socket (see loop.daemonapi)."""
        return self.api.handle(request, reply)

    def _first_pass(self, on_ready: Callable[[], None] | None, since: int) -> None:
        """Ready (systemd's READY=1) once every name has been reconciled once since start,
        whatever the outcome: a failure, even a permanent one, is an answer too."""
        with self._lock:
            names = list(self._specs)
        self.wait_for(names, since)
        if not self._stop.is_set():
            self.monitor.first_pass_done()
            LOG.info("first pass done: %d instance(s)", len(names))
            if on_ready is not None:
                on_ready()

    def _shut_down(self) -> None:
        LOG.info("stopping: no new work; waiting for the steps in flight")
        self.monitor.stop()
        if self._watcher is not None:
            self._watcher.stop()
        self.queue.close()
        longest = self._longest_shutdown()
        if not self._workers.join(longest + SHUTDOWN_MARGIN_SECONDS):
            LOG.warning("steps still running after %ss; leaving them", longest)
        self.status.set_daemon(running=False, stopped=self._iso_now())
        self.status_writer.now()
        LOG.info("stopped")

    def _longest_shutdown(self) -> int:
        with self._lock:
            return max((s.shutdown_timeout_seconds for s in self._specs.values()), default=0)

    def host_going_down(self) -> None:
        """shutdown-guests: reconcile nothing more from now on (a guest shut down must not be
        started again), and let the reconciles in flight end."""
        if not self._host_down.is_set():
            LOG.warning("host shutdown: reconciling nothing more; shutting the guests down")
            self._host_down.set()
            self.status.set_daemon(hostShutdown=self._iso_now())
        deadline = self.clock.monotonic() + self._longest_shutdown() + SHUTDOWN_MARGIN_SECONDS
        self.names.wait_idle(deadline)

    # -- triggers ----------------------------------------------------------------------------

    def enqueue(self, names: Iterable[str], trigger: Trigger, delay: float = 0.0) -> None:
        with self._lock:
            for name in names:
                self.names.triggered(name, trigger)
                self.queue.add(name, delay)

    def _list_for_pass(self, names: Iterable[str]) -> None:
        """List every domain once for a full pass over `names` (those being reconciled now
        excepted: the listing may have caught them halfway)."""
        try:
            domains = self.reconciler.list_domains()
        except ReconcilerError as err:
            LOG.debug("no listing for this pass (%s): each name is looked up", err)
            return
        resolver = self.reconciler.resolver(persist_digests=True)
        with self._lock:
            self._listing = PassListing(domains, set(names) - self.names.active(), resolver)

    def _listed(self, name: str, triggers: set[Trigger]) -> PassListing | None:
        """The pass listing to settle `name` from, if a full pass alone asked for it (under
        the lock; a name is settled from a listing once)."""
        listing = self._listing
        if listing is None or name not in listing.names:
            return None
        listing.names.discard(name)
        if not listing.names:
            self._listing = None  # every name of the pass has had its turn
        return listing if triggers and triggers <= FULL_PASS_TRIGGERS else None

    def reload(
        self, reason: Trigger, changed: set[Path] | None = None, everything: bool = False
    ) -> list[str]:
        """Read the manifest directory again and enqueue the names whose manifests changed:
        a different spec, a file in `changed` that defined the name before or defines it now,
        or every name (`everything`, orphans included). Returns the names enqueued."""
        load = self.read_manifests()
        specs = {spec.name: spec for spec in load.instances}
        if changed:  # the watched directory itself changes with any file saved in it: that
            # says nothing of any one instance (a file's own change, or its spec's, does)
            root = self.options.directory.absolute()
            changed = {path for path in changed if path.absolute() != root}
        orphans: set[str] = set()
        # orphans of an earlier run are found by a full pass, and those kept while manifests
        # had errors (nothing is pruned then) once the errors are gone
        errors_cleared = self._load is not None and bool(self._load.errors) and not load.errors
        if everything or errors_cleared:
            try:
                orphans = set(self.reconciler.orphans(set(specs) | set(load.invalid_names)))
            except ReconcilerError as err:
                LOG.warning("cannot list orphans: %s", err)
        with self._lock:
            old = self._specs
            names = (set(old) | set(specs) | orphans) if everything else set(orphans)
            for name in set(old) | set(specs):
                before, after = old.get(name), specs.get(name)
                if before != after or _touched(before, changed) or _touched(after, changed):
                    names.add(name)
            # a name an invalid manifest claimed had no spec, and one it no longer claims may
            # have none either (its file removed, its set scaled down): it is looked at now
            claimed = set() if self._load is None else set(self._load.invalid_names)
            names |= claimed - set(specs) - set(load.invalid_names)
            self._specs, self._load = specs, load
            self.names.unpark(names)  # a changed manifest is tried again
        for error in load.errors:
            LOG.error("manifest: %s", error)
        self.status.set_manifest_errors([str(error) for error in load.errors])
        self.status.set_sets(load.sets)
        self.status.keep_rollouts({s.rollout.group for s in specs.values() if s.rollout})
        for spec in specs.values():
            self.status.set_desired(spec.name, str(spec.manifest), spec.state.value)
        if names:
            LOG.info("%s: %d instance(s) to reconcile", reason, len(names))
        if everything:
            self._list_for_pass(names)
        self.enqueue(sorted(names), reason)
        return sorted(names)

    def _group_members(self, group: str) -> list[InstanceSpec]:
        """The instances whose rollout policy is `group`'s, as the manifests say now."""
        with self._lock:
            specs = list(self._specs.values())
        return [s for s in specs if s.rollout is not None and s.rollout.group == group]

    def _show_rollout(self, spec: InstanceSpec) -> None:
        """The progress of `spec`'s rollout, in the status."""
        if spec.rollout is not None:
            progress = self.pacer.progress(spec.rollout.group, spec.rollout)
            self.status.set_rollout(spec.rollout.group, progress)

    def show_rollouts(self) -> None:
        """Every rollout's progress as of now, in the status (availability moves with time:
        minReadySeconds pass without a reconcile)."""
        with self._lock:
            policies = {s.rollout.group: s for s in self._specs.values() if s.rollout}
        for spec in policies.values():
            self._show_rollout(spec)

    def manifests(self) -> LoadResult | None:
        """The manifests as last read (None: not read yet)."""
        with self._lock:
            return self._load

    def read_manifests(self, directory: Path | None = None) -> LoadResult:
        """The manifest directory (or `directory`), cut to this host's slice."""
        if directory is not None:
            read = load_manifests(directory, self._validated, catalogue=self._catalogue)
        else:  # documents validated once are not validated, files unchanged not reread
            read = load_manifests(
                self.options.directory, self._validated, self._readings, self._catalogue
            )
            self._validated = read.valid_documents
            if read.unlocked and self.image_names is not None:
                self.image_names.ask(read.unlocked)
            self._keep_readings()
        load, _ignored = select(read, self.options.selection)
        return load

    def _keep_readings(self) -> None:
        """Write the manifest readings to the state directory when one changed (a cache: a
        failure costs the next process a full reading)."""
        with self._readings_saving:
            if not self._readings.changed:
                return
            self._readings.changed = False
            try:
                save_store(self.state.manifest_readings, self._readings, self._catalogue)
            except OSError as err:
                LOG.debug("cannot keep the manifest readings: %s", err)

    def fetch(self) -> bool:
        """Pull mode: fetch, and apply the newest commit if it is good; whether a new commit
        is in force. Failures are logged and shown in `status`; the commit in force stays."""
        source = self.options.git
        if source is None:
            return False
        try:
            changed = source.sync().changed
        except ReconcilerError as err:
            LOG.warning("%s", err)
            changed = False
        self.status.set_daemon(git=source.state.as_json())
        self.status_writer.soon()
        return changed

    def _on_manifest_change(self, paths: set[Path]) -> None:
        shown = ", ".join(
            sorted(
                str(p.relative_to(self.options.directory))
                for p in paths
                if p.is_relative_to(self.options.directory)
            )
        )
        names = self.reload(Trigger.MANIFEST, changed=paths)
        # a change that concerns no instance (a log file kept there, notes) is not news: at
        # INFO it would be written to a log that may itself lie in the directory, forever
        LOG.log(
            logging.INFO if names else logging.DEBUG,
            "manifests changed: %s",
            shown or "(directory)",
        )

    def on_event(self, event: DomainEvent) -> None:
        """A domain event from the driver: its name is reconciled again, unless it is the
        echo of the step reconciling it now."""
        with self._lock:
            managed = event.name in self._specs
            echo = self.names.is_active(event.name) and event.may_echo_a_step
        if not managed:
            return
        LOG.info("%s: event %s %s", event.name, event.kind, event.detail)
        self.status.record_event(event.name, event.kind, event.detail)
        if event.kind is EventKind.REBOOT:  # a new boot in the same QEMU
            self.prober.restarted(event.name, reboot=True)
        elif event.detail.startswith("started"):  # a new QEMU
            self.prober.restarted(event.name)
        if not echo:
            self.enqueue([event.name], Trigger.EVENT)

    def on_lost(self, reason: str) -> None:
        """The driver lost its connection: the main loop reconnects."""
        if not self._lost.is_set():
            LOG.warning("%s; reconnecting", reason)
            self.status.set_daemon(connected=False)
            self._lost.set()

    def _reconnect(self) -> None:
        """Reconnect with backoff (from the main thread); then enqueue every name."""
        delay = RECONNECT_INITIAL_SECONDS
        while not self._stop.is_set():
            try:
                self.driver.reconnect()
                self.reconciler.refresh_host()
            except ReconcilerError as err:
                LOG.warning("still disconnected (%s); next try in %.0fs", err, delay)
                self.clock.wait(self._stop, delay)
                delay = min(delay * 2, RECONNECT_CAP_SECONDS)
                continue
            self._lost.clear()
            with self._lock:
                self._listing = None  # from before the connection was lost
            self.status.set_daemon(connected=True)
            LOG.info("connection back: reconciling every instance")
            with self._lock:
                names = list(self._specs)
            self.enqueue(names, Trigger.RECONNECT)
            return

    def resync(self) -> None:
        """The periodic full pass: every name, except permanent failures whose inputs have
        not changed."""
        self.reconciler.refresh_host()
        self.reload(Trigger.RESYNC)
        with self._lock:
            names = [
                name
                for name, spec in self._specs.items()
                if self.names.parked_on(name) != _fingerprint(spec)
            ]
        self._list_for_pass(names)
        self.enqueue(names, Trigger.RESYNC)

    # -- one name ----------------------------------------------------------------------------

    def reconcile_ready(self, now: float | None = None) -> list[str]:
        """Reconcile, in this thread and in order, every name due at `now` (default: the
        clock's now); the names. What the workers do, one at a time (for tests and tools)."""
        handled = []
        moment = self.clock.monotonic() if now is None else now
        while (name := self.queue.pop_ready(moment)) is not None:
            try:
                self.reconcile_name(name)
            finally:
                self.queue.done(name)
            handled.append(name)
        return handled

    def instance_lock(self, name: str) -> threading.Lock:
        """Held while `name` is reconciled, and by a snapshot command on it: the two never
        act on one instance at once."""
        with self._lock:
            return self._instance_locks.setdefault(name, threading.Lock())

    def reconcile_name(self, name: str) -> None:
        """One reconcile of `name`, taken from the queue (see _reconcile_name), never while
        a snapshot command acts on it."""
        with self.instance_lock(name):
            self._reconcile_name(name)

    def _reconcile_name(self, name: str) -> None:
        """One reconcile of `name`, taken from the queue: skipped while the host goes down or
        the connection is lost; an orphan is pruned within the guards, a managed name
        reconciled (or settled from the pass's listing); then its outcome decides when it
        comes back, and it is logged and recorded in the status."""
        with self._lock:
            spec = self._specs.get(name)
            triggers, sequence = self.names.begin(name)
            listing = self._listed(name, triggers)
        if self._host_down.is_set():  # the host is going down: nothing starts again
            LOG.info("%s: not reconciled: the host is shutting down", name)
            self.queue.forget(name)
            self.names.finish(name, sequence, None)
            return
        if not self.driver.connected():
            self.on_lost(f"connection to {self.driver.uri} lost")
            self.names.finish(name, sequence, None)  # the reconnection enqueues every name
            return
        started = self.clock.wall()
        # a full pass says how many names it takes, once; each is named in the log when it
        # is not settled from the listing (debug shows every one)
        LOG.log(
            logging.INFO if listing is None else logging.DEBUG,
            "%s: reconciling (%s)",
            name,
            ", ".join(sorted(triggers)) or "request",
        )
        settled: InstanceResult | None = None
        if spec is None:  # its manifest is gone: an orphan, pruned within the guards
            result = self._prune(name)
            self.prober.forget(name)
            if result.outcome is Outcome.UNCHANGED and not result.notes:  # not ours, or gone
                self.status.forget(name)
                self.queue.forget(name)
                self.names.finish(name, sequence, None)
                return
        else:
            if listing is not None:
                settled = self.reconciler.settled(spec, listing.resolver, listing.domains)
            result = settled or self.reconciler.reconcile(spec)
        next_retry = self._requeue(name, spec, result)
        self.monitor.reconciled(result, triggers)
        self._log_result(result, next_retry, settled=settled is not None)
        observed, addresses, running = self._observed(
            name, listing if settled is not None else None
        )
        if spec is not None:
            paths = self.state.instance(name)
            record_probes(paths, probes_of(spec), login_user(spec.guest))
            if result.started:  # a new boot, whatever events the driver gives: start over
                self.prober.restarted(name)
            self.prober.watch(name, probes_of(spec), running, observed or "unknown")
            addresses = self._addresses(name) or addresses
        self.status.record_result(
            result,
            started=started,
            triggers=triggers,
            observed=observed,
            addresses=addresses,
            failures=self.queue.retry_state(name).failures,
            next_retry=next_retry,
            pending_restart=result.pending_restart,
        )
        if spec is not None:
            self._record_health(name)
            self._show_rollout(spec)
        self.status_writer.soon()
        self.names.finish(name, sequence, result)

    def _health_changed(self, name: str, kind: ConditionType, condition: Condition) -> None:
        """A condition of `name` changed status (from the prober): shown in the status; a
        liveness failure reconciles the name (its run policy decides about a restart)."""
        self._record_health(name)
        self.status_writer.soon()
        with self._lock:
            spec = self._specs.get(name)
        if kind is ConditionType.READY and spec is not None and spec.rollout is not None:
            # a member ready (or no longer): the rollout may move on
            self.enqueue(self.pacer.watchers(spec.rollout.group), Trigger.ROLLOUT)
        failure = self.prober.liveness_failure(name) if kind is ConditionType.LIVE else None
        if failure is not None:  # the probe's verdict, not a domain that does not run
            LOG.warning("%s: liveness failed: %s", name, failure)
            self.enqueue([name], Trigger.PROBE)

    def _record_health(self, name: str) -> None:
        conditions = self.prober.conditions(name)
        if conditions is not None:
            self.status.set_health(
                name, [condition.as_json() for condition in conditions], self._addresses(name)
            )

    def _addresses(self, name: str) -> list[dict[str, object]] | None:
        observed = self.prober.addresses(name)
        return [address.as_json() for address in observed] if observed else None

    def _requeue(
        self, name: str, spec: InstanceSpec | None, result: InstanceResult
    ) -> float | None:
        """When `name` comes back after `result`: parked on its inputs after a permanent
        failure, with backoff after a transient one (the wall time of the retry), again soon
        when caught in a transition, else not until a trigger."""
        if result.outcome is Outcome.FAILED and result.failure is Failure.PERMANENT:
            self.names.park(name, None if spec is None else _fingerprint(spec))
            self.queue.forget(name)
            return None
        if result.outcome is Outcome.FAILED:
            next_retry = self.clock.wall() + self.queue.retry(name)
            self.monitor.metrics.retried()
            if not self.driver.connected():
                self.on_lost(f"connection to {self.driver.uri} lost")
            return next_retry
        self.names.unpark([name])
        self.queue.forget(name)
        if result.requeue_after is not None:
            self.enqueue([name], Trigger.TRANSITION, result.requeue_after)
        elif result.snapshot_due_in is not None:
            self.enqueue([name], Trigger.SCHEDULE, result.snapshot_due_in)
        return None

    def _prune(self, name: str) -> InstanceResult:
        """Prune orphan `name` if this daemon's last reading of the manifests allows it; a
        name an invalid manifest claims is no orphan: it is left as it is."""
        load = self.manifests()
        refusal: str | None = "the manifests have not been read yet"
        if load is not None and name in load.invalid_names:
            return InstanceResult(name, Outcome.UNCHANGED, notes=(INVALID_MANIFEST_NOTE,))
        if load is not None:
            record = next((r for r in self.reconciler.managed_domains() if r.name == name), None)
            refusal = (
                prune_refusal(load, self.reconciler.settings, orphans=1)
                if record is None
                else orphan_refusal(load, self.reconciler.settings, record, orphans=1)
            )
        return self.reconciler.prune(name, refusal)

    def _observed(
        self, name: str, listing: PassListing | None = None
    ) -> tuple[str | None, list[dict[str, object]] | None, Machine | None]:
        """The power state of `name` now, its addresses as its machine says, and the machine
        it runs as (None: not running), as `listing` saw it, for a name settled from it."""
        if listing is not None:
            record = listing.domains.get(name)
        else:
            try:
                record = self.driver.lookup(name)
            except ReconcilerError:
                return None, None, None
        if record is None:
            return "absent", None, None
        if not isinstance(record, DomainFacts):
            return record.state.value, None, None
        addresses = [address.as_json() for address in machine_addresses(record.definition)]
        running = record.state is PowerState.RUNNING
        machine = (record.live_definition or record.definition) if running else None
        return record.state.value, addresses, machine

    def _log_result(
        self, result: InstanceResult, next_retry: float | None, settled: bool = False
    ) -> None:
        if settled and result.outcome is Outcome.UNCHANGED and not result.notes:
            LOG.debug("%s: unchanged (settled from the pass's listing)", result.name)
        elif result.outcome is Outcome.FAILED:
            retry = (
                f"; retry in {next_retry - self.clock.wall():.1f}s"
                if next_retry is not None
                else "; waiting for its manifest or source to change"
            )
            LOG.warning("%s: failed (%s): %s%s", result.name, result.failure, result.message, retry)
        else:
            LOG.info("%s: %s in %.2fs", result.name, result.outcome.value, result.seconds)
        for note in result.notes:
            LOG.info("%s: %s", result.name, note)

    def _progress(self, name: str, message: str) -> None:
        LOG.info("%s: %s", name, message)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            with contextlib.suppress(OSError):  # that client went away
                subscriber(name, message)

    @contextlib.contextmanager
    def progress_to(self, subscriber: Callable[[str, str], None]) -> Iterator[None]:
        """Have every step's progress also said to `subscriber` meanwhile (a client)."""
        with self._lock:
            self._subscribers.append(subscriber)
        try:
            yield
        finally:
            with self._lock:
                self._subscribers.remove(subscriber)

    def wait_for(self, names: list[str], since: int, timeout: float | None = None) -> bool:
        """Wait until each name has finished a reconcile that started after `since` (see
        NameBook.wait_for); False when the daemon stops or the timeout comes first."""
        return self.names.wait_for(names, since, self._stop.is_set, timeout)

    def _iso_now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.wall()))


@dataclass(slots=True)
class PassListing:
    """Every domain, listed once for a full pass; the names still to be settled from it; the
    resolver the pass shares."""

    domains: dict[str, ObservedDomain]
    names: set[str]
    resolver: SourceResolver


def _touched(spec: InstanceSpec | None, changed: set[Path] | None) -> bool:
    """Whether `spec`'s manifest is one of `changed` or lies under one of them (a
    directory)."""
    if spec is None or not changed:
        return False
    manifest = spec.manifest.absolute()
    return any(manifest == path or manifest.is_relative_to(path) for path in changed)


def notify_systemd(message: str) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, when there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as err:
        LOG.warning("cannot notify systemd: %s", err)
