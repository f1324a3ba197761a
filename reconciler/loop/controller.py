"""The daemon: a controller in controller-runtime's shape.

Triggers only enqueue an instance name: a burst of manifest changes (the names the changed
files defined before and after), a domain event from the driver, a periodic full resync
(events can be lost), a reconnection after the hypervisor went away, a request on the control
socket. Workers take names from the queue; each reconcile of a name observes afresh, plans and
acts, and its outcome decides whether and when the name comes back: never after a success
(unless the domain was caught in a transition), with exponential backoff after a transient
failure, and only once its manifest or its source changes after a permanent one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.drivers.base import DomainEvent, DomainRecord, Driver
from reconciler.errors import ReconcilerError
from reconciler.gitops.source import GitSource
from reconciler.images.progress import TransferReporter
from reconciler.images.resolve import SourceResolver
from reconciler.loop.control import RequestError
from reconciler.loop.once import plan_all, prune_refusal
from reconciler.loop.queue import WorkQueue
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.loop.results import Failure, InstanceResult, Outcome, result_to_json
from reconciler.loop.status import StatusBook
from reconciler.loop.watch import ManifestWatcher
from reconciler.loop.workers import DEFAULT_WORKERS, WorkerPool
from reconciler.manifests.filecache import FileStamp, ManifestFileCache, stamp
from reconciler.manifests.loader import LoadResult, load_manifests
from reconciler.manifests.selection import Selection, select
from reconciler.model.desired import InstanceSpec
from reconciler.statedir import StateDir

LOG = logging.getLogger("reconciler.daemon")
DEFAULT_RESYNC_SECONDS = 300.0
DEFAULT_GIT_INTERVAL_SECONDS = 60.0
RECONNECT_INITIAL_SECONDS = 1.0
RECONNECT_CAP_SECONDS = 30.0
SHUTDOWN_MARGIN_SECONDS = 30.0
STATUS_WRITE_SECONDS = 0.25  # the status file: at most four writes a second
STATUS_WRITE_SHARE = 4.0  # and a pause of at least four times as long as the last write took


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    directory: Path  # absolute
    workers: int = DEFAULT_WORKERS
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    selection: Selection = field(default_factory=Selection)  # this host's slice
    git: GitSource | None = None  # pull mode: the manifests come from this repository
    git_interval_seconds: float = DEFAULT_GIT_INTERVAL_SECONDS


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
    ) -> None:
        self.driver = driver
        self.state = state
        self.options = options
        self._stop = threading.Event()
        self.reconciler = Reconciler(
            driver, state, settings, self._progress, transfers=TransferReporter(), cancel=self._stop
        )
        self.queue = WorkQueue()
        self.status = StatusBook(
            state.root / "status.json",
            {
                "pid": os.getpid(),
                "manifests": str(options.directory),
                "uri": driver.uri,
                "running": True,
                "connected": True,
                "started": _iso_now(),
            },
        )
        self._lock = threading.Condition()
        self._specs: dict[str, InstanceSpec] = {}
        self._load: LoadResult | None = None
        self._parked: dict[str, object] = {}  # permanent failures: the inputs they failed on
        self._triggers: dict[str, set[str]] = {}
        self._sequence = 0  # reconciles started, ever
        self._completed: dict[str, int] = {}  # name -> sequence of its last finished reconcile
        self._results: dict[str, InstanceResult] = {}
        self._active: set[str] = set()  # names being reconciled now
        # a full pass lists every domain once; each name it enqueued (and that nothing else
        # asked for meanwhile) is settled from that listing when converged
        self._listing: PassListing | None = None
        self._subscribers: list[Callable[[str, str], None]] = []
        self._reload_requested = threading.Event()
        self._validated: frozenset[str] = frozenset()  # see manifests.loader.document_key
        self._readings = ManifestFileCache()  # a resync rereads only the files that changed
        self._status_dirty = threading.Event()
        self._status_writer: threading.Thread | None = None
        self._status_write_lock = threading.Lock()
        self._lost = threading.Event()
        self._host_down = threading.Event()  # shutdown-guests was asked: reconcile nothing
        self._workers = WorkerPool(self.queue, self._handle, options.workers)
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
        self.driver.watch(self._on_event, self._on_lost)
        if self._watcher is not None:
            self._watcher.start()
        self._fetch()
        with self._lock:  # before the first reconcile: each one after it counts for readiness
            since = self._sequence
        self.reload(reason="start")
        self._workers.start()
        threading.Thread(
            target=self._first_pass, args=(on_ready, since), name="first-pass", daemon=True
        ).start()
        next_resync = time.monotonic() + self.options.resync_seconds
        next_fetch = time.monotonic() + self.options.git_interval_seconds
        while not self._stop.is_set():
            wait = max(0.0, next_resync - time.monotonic())
            self._stop.wait(min(wait, 1.0))
            if self._stop.is_set():
                break
            if self._lost.is_set():
                self._reconnect()
            if self.options.git is not None and time.monotonic() >= next_fetch:
                if self._fetch():
                    self.reload(reason="git", everything=True)
                next_fetch = time.monotonic() + self.options.git_interval_seconds
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                LOG.info("rereading %s (SIGHUP)", self.options.directory)
                self.reload(reason="reload", everything=True)
            if time.monotonic() >= next_resync:
                self.resync()
                next_resync = time.monotonic() + self.options.resync_seconds
        self._shut_down()

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def _first_pass(self, on_ready: Callable[[], None] | None, since: int) -> None:
        """Ready (systemd's READY=1) once every name has been reconciled once since start,
        whatever the outcome: a failure, even a permanent one, is an answer too."""
        with self._lock:
            names = list(self._specs)
        self._wait_for(names, since)
        if not self._stop.is_set():
            LOG.info("first pass done: %d instance(s)", len(names))
            if on_ready is not None:
                on_ready()

    def _shut_down(self) -> None:
        LOG.info("stopping: no new work; waiting for the steps in flight")
        if self._watcher is not None:
            self._watcher.stop()
        self.queue.close()
        with self._lock:
            longest = max((s.shutdown_timeout_seconds for s in self._specs.values()), default=0)
        if not self._workers.join(longest + SHUTDOWN_MARGIN_SECONDS):
            LOG.warning("steps still running after %ss; leaving them", longest)
        self.status.set_daemon(running=False, stopped=_iso_now())
        self._write_status_now()
        LOG.info("stopped")

    # -- triggers ----------------------------------------------------------------------------

    def enqueue(self, names: Iterable[str], trigger: str, delay: float = 0.0) -> None:
        with self._lock:
            for name in names:
                self._triggers.setdefault(name, set()).add(trigger)
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
            self._listing = PassListing(domains, set(names) - self._active, resolver)

    def _listed(self, name: str, triggers: set[str]) -> PassListing | None:
        """The pass listing to settle `name` from, if a full pass alone asked for it (under
        the lock; a name is settled from a listing once)."""
        listing = self._listing
        if listing is None or name not in listing.names:
            return None
        listing.names.discard(name)
        if not listing.names:
            self._listing = None  # every name of the pass has had its turn
        return listing if triggers and triggers <= _FULL_PASS_TRIGGERS else None

    def reload(
        self, reason: str, changed: set[Path] | None = None, everything: bool = False
    ) -> list[str]:
        """Read the manifest directory again and enqueue the names whose manifests changed:
        a different spec, a file in `changed` that defined the name before or defines it now,
        or every name (`everything`, orphans included). Returns the names enqueued."""
        load = self._read_manifests()
        specs = {spec.name: spec for spec in load.instances}
        orphans: set[str] = set()
        if everything:  # orphans of an earlier run are found by a full pass only
            try:
                orphans = set(self.reconciler.orphans(set(specs) | set(load.invalid_names)))
            except ReconcilerError as err:
                LOG.warning("cannot list orphans: %s", err)
        with self._lock:
            old = self._specs
            names = set(old) | set(specs) | orphans if everything else set()
            for name in set(old) | set(specs):
                before, after = old.get(name), specs.get(name)
                if before != after or _touched(before, changed) or _touched(after, changed):
                    names.add(name)
            self._specs, self._load = specs, load
            for name in names:
                self._parked.pop(name, None)  # a changed manifest is tried again
        for error in load.errors:
            LOG.error("manifest: %s", error)
        self.status.set_manifest_errors([str(error) for error in load.errors])
        for spec in specs.values():
            self.status.set_desired(spec.name, str(spec.manifest), spec.state.value)
        if names:
            LOG.info("%s: %d instance(s) to reconcile", reason, len(names))
        if everything:
            self._list_for_pass(names)
        self.enqueue(sorted(names), reason)
        return sorted(names)

    def _read_manifests(self, directory: Path | None = None) -> LoadResult:
        """The manifest directory (or `directory`), cut to this host's slice."""
        if directory is not None:
            read = load_manifests(directory, self._validated)
        else:  # documents validated once are not validated, files unchanged not reread
            read = load_manifests(self.options.directory, self._validated, self._readings)
            self._validated = read.valid_documents
        load, _ignored = select(read, self.options.selection)
        return load

    def _fetch(self) -> bool:
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
        self._write_status()
        return changed

    def _on_manifest_change(self, paths: set[Path]) -> None:
        shown = ", ".join(
            sorted(
                str(p.relative_to(self.options.directory))
                for p in paths
                if p.is_relative_to(self.options.directory)
            )
        )
        names = self.reload(reason="manifest", changed=paths)
        # a change that concerns no instance (a log file kept there, notes) is not news: at
        # INFO it would be written to a log that may itself lie in the directory, forever
        LOG.log(
            logging.INFO if names else logging.DEBUG,
            "manifests changed: %s",
            shown or "(directory)",
        )

    def _on_event(self, event: DomainEvent) -> None:
        with self._lock:
            managed = event.name in self._specs
            echo = event.name in self._active and _is_echo(event)
        if not managed:
            return
        LOG.info("%s: event %s %s", event.name, event.kind, event.detail)
        self.status.record_event(event.name, event.kind, event.detail)
        if not echo:
            self.enqueue([event.name], "event")

    def _on_lost(self, reason: str) -> None:
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
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_CAP_SECONDS)
                continue
            self._lost.clear()
            with self._lock:
                self._listing = None  # from before the connection was lost
            self.status.set_daemon(connected=True)
            LOG.info("connection back: reconciling every instance")
            with self._lock:
                names = list(self._specs)
            self.enqueue(names, "reconnect")
            return

    def resync(self) -> None:
        """The periodic full pass: every name, except permanent failures whose inputs have
        not changed."""
        self.reconciler.refresh_host()
        self.reload(reason="resync")
        with self._lock:
            names = [
                name
                for name, spec in self._specs.items()
                if self._parked.get(name) != _fingerprint(spec)
            ]
        self._list_for_pass(names)
        self.enqueue(names, "resync")

    # -- one name ----------------------------------------------------------------------------

    def _handle(self, name: str) -> None:
        with self._lock:
            spec = self._specs.get(name)
            triggers = self._triggers.pop(name, set())
            self._sequence += 1
            sequence = self._sequence
            self._active.add(name)
            listing = self._listed(name, triggers)
        if self._host_down.is_set():  # the host is going down: nothing starts again
            LOG.info("%s: not reconciled: the host is shutting down", name)
            self.queue.forget(name)
            self._finish(name, sequence, None)
            return
        if not self.driver.connected():
            self._on_lost(f"connection to {self.driver.uri} lost")
            self._finish(name, sequence, None)  # the reconnection enqueues every name
            return
        started = time.time()
        settled: InstanceResult | None = None
        LOG.info("%s: reconciling (%s)", name, ", ".join(sorted(triggers)) or "request")
        if spec is None:  # its manifest is gone: an orphan, pruned within the guards
            result = self._prune(name)
            if result.outcome is Outcome.UNCHANGED and not result.notes:  # not ours, or gone
                self.status.forget(name)
                self.queue.forget(name)
                self._finish(name, sequence, None)
                return
        else:
            if listing is not None:
                settled = self.reconciler.settled(spec, listing.resolver, listing.domains)
            result = settled or self.reconciler.reconcile(spec)
        next_retry = None
        if result.outcome is Outcome.FAILED and result.failure is Failure.PERMANENT:
            with self._lock:
                self._parked[name] = None if spec is None else _fingerprint(spec)
            self.queue.forget(name)
        elif result.outcome is Outcome.FAILED:
            delay = self.queue.retry(name)
            next_retry = time.time() + delay
            if not self.driver.connected():
                self._on_lost(f"connection to {self.driver.uri} lost")
        else:
            with self._lock:
                self._parked.pop(name, None)
            self.queue.forget(name)
            if result.requeue_after is not None:
                self.enqueue([name], "transition", result.requeue_after)
        self._log_result(result, next_retry)
        self.status.record_result(
            result,
            started=started,
            triggers=triggers,
            observed=self._observed(name, listing if settled is not None else None),
            failures=self.queue.retry_state(name).failures,
            next_retry=next_retry,
            pending_restart=result.pending_restart,
        )
        self._write_status()
        self._finish(name, sequence, result)

    def _prune(self, name: str) -> InstanceResult:
        """Prune orphan `name` if this daemon's last reading of the manifests allows it."""
        with self._lock:
            load = self._load
        refusal = (
            "the manifests have not been read yet"
            if load is None
            else prune_refusal(load, self.reconciler.settings, orphans=1)
        )
        return self.reconciler.prune(name, refusal)

    def _finish(self, name: str, sequence: int, result: InstanceResult | None) -> None:
        with self._lock:
            self._active.discard(name)
            self._completed[name] = sequence
            if result is not None:
                self._results[name] = result
            self._lock.notify_all()

    def _observed(self, name: str, listing: PassListing | None = None) -> str | None:
        """The power state of `name` now (as `listing` saw it, for a name settled from it)."""
        if listing is not None:
            record = listing.domains.get(name)
        else:
            try:
                record = self.driver.lookup(name)
            except ReconcilerError:
                return None
        return "absent" if record is None else record.state.value

    def _log_result(self, result: InstanceResult, next_retry: float | None) -> None:
        if result.outcome is Outcome.FAILED:
            retry = (
                f"; retry in {next_retry - time.time():.1f}s"
                if next_retry is not None
                else "; waiting for its manifest or source to change"
            )
            LOG.warning("%s: failed (%s): %s%s", result.name, result.failure, result.message, retry)
        else:
            LOG.info("%s: %s in %.2fs", result.name, result.outcome.value, result.seconds)
        for note in result.notes:
            LOG.info("%s: %s", result.name, note)

    def _write_status(self) -> None:
        """Have the status file written soon: at most every STATUS_WRITE_SECONDS, however
        many instances finish meanwhile (written after each of 1,000 instances, the file of
        1,000 entries made a full pass quadratic: 76 s)."""
        with self._lock:
            if self._status_writer is None:
                self._status_writer = threading.Thread(
                    target=self._write_status_soon, name="status-writer", daemon=True
                )
                self._status_writer.start()
        self._status_dirty.set()

    def _write_status_soon(self) -> None:
        while True:
            self._status_dirty.wait()
            self._status_dirty.clear()
            started = time.monotonic()
            self._write_status_now()
            took = time.monotonic() - started
            # a large file (0.1 s for 5,000 instances) is written less often, so that writing
            # it never takes more than a fifth of the daemon's time
            time.sleep(max(STATUS_WRITE_SECONDS, STATUS_WRITE_SHARE * took))

    def _write_status_now(self) -> None:
        # one write (snapshot, then file) at a time: the writer thread's older snapshot must
        # never land after the final one written at shutdown
        with self._status_write_lock:
            try:
                self.status.write()
            except OSError as err:  # a full disk must not stop the controller
                LOG.warning("cannot write the status file: %s", err)

    def _progress(self, name: str, message: str) -> None:
        LOG.info("%s: %s", name, message)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            with contextlib.suppress(OSError):  # that client went away
                subscriber(name, message)

    def _wait_for(self, names: list[str], since: int, timeout: float | None = None) -> bool:
        """Wait until each name has finished a reconcile that started after `since`. Names
        are looked at in turn, each until it has (a finished one stays finished), so that a
        pass over N names costs N checks, not N at every wake-up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        position = 0
        with self._lock:
            while True:
                while position < len(names) and self._completed.get(names[position], 0) > since:
                    position += 1
                if position == len(names):
                    break
                if self._stop.is_set():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(1.0 if left is None else min(left, 1.0))
        return True

    # -- the control socket ------------------------------------------------------------------

    def handle_request(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        op = request["op"]
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "status":
            return self._status_answer(request.get("name"))
        if op == "plan":
            return self._plan_answer(request)
        if op == "pass":
            return self._pass_answer(request, reply)
        if op == "shutdown-guests":
            return self._shutdown_guests_answer(reply)
        if op == "export":
            return {"manifest": self._export_answer(request)}
        if op == "adopt":
            return self._adopt_answer(request)
        if op == "gc":
            return self._gc_answer(request)
        raise RequestError(
            f"unknown op {op!r} (expected ping, status, plan, pass, export, adopt, gc or "
            "shutdown-guests)"
        )

    def _export_answer(self, request: dict[str, Any]) -> str:
        from reconciler.loop.adopt import export_domain

        name = request.get("name")
        if not isinstance(name, str):
            raise RequestError('"name" must be a string')
        try:
            return export_domain(self.driver, self.state, name)
        except ReconcilerError as err:
            raise RequestError(str(err)) from err

    def _adopt_answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Adopt (or, dryRun, check) a domain against its manifest in the request's directory
        (this daemon's, or another: a manifest for a domain it does not manage yet)."""
        from reconciler.loop.adopt import adopt, adoption_json

        name, asked = request.get("name"), request.get("directory")
        if not isinstance(name, str) or not isinstance(asked, str):
            raise RequestError('"name" and "directory" must be strings')
        directory = Path(asked)
        if not directory.exists():
            raise RequestError(f"{directory}: no such file or directory")
        load = self._read_manifests(directory)
        spec = next((s for s in load.instances if s.name == name), None)
        if spec is None:
            raise RequestError(f"no valid manifest for {name!r} in {directory}: adoption needs one")
        adoption = adopt(self.reconciler, spec, dry_run=bool(request.get("dryRun")))
        if adoption.adopted:
            self.enqueue([name], "request")
        return {"adoption": adoption_json(adoption)}

    def _gc_answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Garbage collection of the image cache, in this process (which holds the state
        directory): a base in use is never removed, checked under the entry's lock."""
        from reconciler.images.gc import collect_garbage

        grace = request.get("graceSeconds")
        if not isinstance(grace, int | float) or grace < 0:
            raise RequestError('"graceSeconds" must be a number of seconds')
        report = collect_garbage(
            self.state, self.reconciler.steps.cache, float(grace),
            dry_run=bool(request.get("dryRun")),
        )  # fmt: skip
        return {
            key: [str(path) for path in getattr(report, key)]
            for key in ("removed", "in_use", "too_young", "leftovers", "replaced")
        }

    def _shutdown_guests_answer(self, reply: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """The host is going down: reconcile nothing more (a guest shut down must not be
        started again), let the reconciles in flight end, then shut every managed guest down
        (see loop.hostshutdown)."""
        from reconciler.loop.hostshutdown import shut_down_guests

        if not self._host_down.is_set():
            LOG.warning("host shutdown: reconciling nothing more; shutting the guests down")
            self._host_down.set()
            self.status.set_daemon(hostShutdown=_iso_now())
        with self._lock:
            longest = max((s.shutdown_timeout_seconds for s in self._specs.values()), default=0)
            deadline = time.monotonic() + longest + SHUTDOWN_MARGIN_SECONDS
            while self._active and time.monotonic() < deadline:
                self._lock.wait(0.5)

        def forward(name: str, message: str) -> None:
            LOG.info("%s: %s", name, message)
            with contextlib.suppress(OSError):  # the client went away: carry on
                reply({"progress": {"name": name, "message": message}})

        results = shut_down_guests(self.reconciler, forward)
        self._write_status()
        return {"results": [result_to_json(result) for result in results]}

    def _check_directory(self, request: dict[str, Any]) -> None:
        asked = request.get("directory")
        if asked is not None and os.path.realpath(str(asked)) != os.path.realpath(
            self.options.directory
        ):
            raise RequestError(
                f"the daemon of this state directory watches {self.options.directory}, not {asked}"
            )

    def _status_answer(self, name: object) -> dict[str, Any]:
        snapshot = self.status.snapshot()
        if name is not None:
            if not isinstance(name, str):
                raise RequestError('"name" must be a string')
            snapshot["instances"] = [i for i in snapshot["instances"] if i["name"] == name]
        return {"status": snapshot}

    def _plan_answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """A plan of the watched directory, or of another one (a pull request's checkout:
        planning changes nothing), cut to this daemon's slice."""
        asked = request.get("directory")
        if asked is not None and not isinstance(asked, str):
            raise RequestError('"directory" must be a string')
        directory = Path(asked) if asked else self.options.directory
        if not directory.exists():
            raise RequestError(f"{directory}: no such file or directory")
        load = self._read_manifests(directory)
        plans = plan_all(load, self.reconciler)
        return {
            "plans": [plan.view().as_json() for plan in plans],
            "manifestErrors": [str(error) for error in load.errors],
        }

    def _pass_answer(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        self._check_directory(request)

        def forward(name: str, message: str) -> None:
            reply({"progress": {"name": name, "message": message}})

        with self._lock:
            self._subscribers.append(forward)
        try:
            with self._lock:
                since = self._sequence
            self._fetch()  # pull mode: the pass is over the newest good commit
            # everything, parked names and orphans included: a requested pass tries them all
            names = self.reload(reason="request", everything=True)
            with self._lock:
                load = self._load
            if not self._wait_for(names, since):
                raise RequestError("the daemon is stopping")
            with self._lock:
                results = [self._results[name] for name in names if name in self._results]
        finally:
            with self._lock:
                self._subscribers.remove(forward)
        return {
            "results": [result_to_json(result) for result in results],
            "manifestErrors": [str(error) for error in (load.errors if load else ())],
        }


@dataclass(slots=True)
class PassListing:
    """Every domain, listed once for a full pass; the names still to be settled from it; the
    resolver the pass shares."""

    domains: dict[str, DomainRecord]
    names: set[str]
    resolver: SourceResolver


# the triggers of a full pass: a name any other trigger also asked for is observed afresh
_FULL_PASS_TRIGGERS = frozenset({"resync", "request", "reload", "git"})

# What the steps themselves cause: seen while the name is being reconciled, these are the echo
# of our own define, start, stop or undefine, and enqueueing them would only repeat the
# reconcile (or cut a backoff short). Crashes, failures and errors always enqueue.
_ECHOES = ("defined", "undefined", "started", "resumed", "stopped: shutdown", "stopped: destroyed")


def _is_echo(event: DomainEvent) -> bool:
    return event.kind == "lifecycle" and event.detail.startswith(_ECHOES)


def _touched(spec: InstanceSpec | None, changed: set[Path] | None) -> bool:
    """Whether `spec`'s manifest is one of `changed` or lies under one of them (a
    directory)."""
    if spec is None or not changed:
        return False
    manifest = spec.manifest.absolute()
    return any(manifest == path or manifest.is_relative_to(path) for path in changed)


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
