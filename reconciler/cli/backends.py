"""The one switch between doing a command here and asking the daemon: while a daemon holds
the state directory, plan, a pass, status, export, adopt, gc and shutdown-guests are asked of
it over its control socket (it alone may open the embedded driver and take the lock);
otherwise they run in this process. `backend_for` chooses once; the commands render what
either answers, the same way.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from reconciler.cli.context import (
    ask,
    check_directory,
    daemon_socket,
    load_slice,
    opened_while,
    owned_state,
    owned_state_loading,
    progress_printers,
)
from reconciler.cli.options import Options
from reconciler.errors import ConfigError, StateDirBusy
from reconciler.loop.reconcile import Reconciler
from reconciler.loop.results import InstanceResult, result_from_json
from reconciler.loop.status import read_status_file
from reconciler.loop.waiting import Want
from reconciler.planning.review import PlanView

if TYPE_CHECKING:
    from reconciler.images.gc import GcReport
    from reconciler.loop.adopt import Adoption
    from reconciler.loop.inventory import InventoryEntry

Progress = Callable[[str, str], None]
BUSY_HINT = "wait for it to finish"
DAEMON_POLL_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Answer:
    """Results (a pass, a shutdown) or plans, with the manifest errors met on the way."""

    results: list[InstanceResult] = dataclasses.field(default_factory=list)
    plans: list[PlanView] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """What `status` shows: the daemon's snapshot (or the file it last wrote), or, with no
    daemon, the instances observed now."""

    snapshot: dict[str, Any] | None = None
    observed: list[InventoryEntry] | None = None
    where: str = ""  # the driver that observed them


@dataclass(frozen=True, slots=True)
class Access:
    """What `ssh` needs of one instance, from the daemon's status or observed here."""

    name: str
    state: str  # its power state
    addresses: list[dict[str, Any]]  # per interface, as planning.addresses writes them
    login: str | None  # the user its cloud-config names (health.record)


class Backend(Protocol):
    def plan(self, out: TextIO) -> Answer: ...

    def apply(self, out: TextIO) -> Answer: ...

    def status(self) -> StatusAnswer: ...

    def wait(self, names: list[str], want: Want, timeout: float) -> dict[str, str]:
        """Wait until each name satisfies `want` or `timeout` seconds pass; those that do
        not, with why."""
        ...

    def access(self, names: list[str] | None) -> list[Access]:
        """How to reach each name (None: every managed instance); ConfigError for a name
        that is not managed here."""
        ...

    def export(self, name: str) -> str: ...

    def adopt(self, out: TextIO) -> Adoption: ...

    def gc(self) -> GcReport: ...

    def shutdown_guests(self, out: TextIO) -> list[InstanceResult]: ...

    def snapshots(self, action: str, name: str | None, label: str | None) -> dict[str, Any]:
        """A snapshot command (loop.snapshots.snapshot_request), answered as JSON."""
        ...

    def rollout(self, action: str, argument: str, out: TextIO) -> dict[str, Any]:
        """A rollout command (loop.rollouts.rollout_request), answered as JSON."""
        ...


def backend_for(options: Options) -> Backend:
    """The daemon running on the state directory, else this process."""
    socket_path = daemon_socket(options)
    return Local(options) if socket_path is None else Daemon(options, socket_path)


class Daemon:
    """Asks the daemon over its control socket."""

    def __init__(self, options: Options, socket_path: Path) -> None:
        self.options = options
        self.socket_path = socket_path

    def plan(self, out: TextIO) -> Answer:
        directory = str(self.options.directory.absolute())
        answer = ask(self.socket_path, {"op": "plan", "directory": directory})
        return Answer(
            plans=[PlanView.from_json(view) for view in answer["plans"]],
            errors=self._errors(answer),
        )

    def apply(self, out: TextIO) -> Answer:
        _progress, forward = progress_printers(out)
        print(f"reconcile: asking the daemon on {self.socket_path} for a pass", file=out)
        directory = str(self.options.directory.absolute())
        answer = ask(self.socket_path, {"op": "pass", "directory": directory}, forward)
        results = [result_from_json(item) for item in answer["results"]]
        return Answer(results=results, errors=self._errors(answer))

    @staticmethod
    def _errors(answer: dict[str, Any]) -> list[str]:
        errors = [str(error) for error in answer["manifestErrors"]]
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return errors

    def status(self) -> StatusAnswer:
        request: dict[str, object] = {"op": "status", "name": self.options.name, "snapshots": True}
        answer = ask(self.socket_path, request)
        return StatusAnswer(snapshot=answer["status"])

    def access(self, names: list[str] | None) -> list[Access]:
        from reconciler.health.record import read_login

        snapshot = ask(self.socket_path, {"op": "status", "name": None})["status"]
        by_name = {item["name"]: item for item in snapshot.get("instances", [])}
        found = []
        for name in names if names is not None else sorted(by_name):
            item = by_name.get(name)
            if item is None:
                raise ConfigError(f"no instance named {name!r} in the daemon's status")
            login = read_login(self.options.state.instance(name))
            state = item.get("observed") or "unknown"
            found.append(Access(name, state, list(item.get("addresses") or []), login))
        return found

    def wait(self, names: list[str], want: Want, timeout: float) -> dict[str, str]:
        """The daemon probes: its status is asked again until it says so, or the timeout."""
        deadline = time.monotonic() + timeout
        first = True
        while True:
            snapshot = ask(self.socket_path, {"op": "status", "name": None})["status"]
            by_name = {item["name"]: item for item in snapshot.get("instances", [])}
            unknown = [name for name in names if name not in by_name]
            if first and unknown and want is not Want.STOPPED:
                raise ConfigError(
                    f"no instance named {', '.join(unknown)} in the daemon's manifests: "
                    f"nothing to wait for (the names `reconcile status` lists)"
                )
            first = False
            pending = {}
            for name in names:
                why = _why_not(by_name.get(name), want)
                if why is not None:
                    pending[name] = why
            if not pending or time.monotonic() >= deadline:
                return pending
            time.sleep(DAEMON_POLL_SECONDS)

    def export(self, name: str) -> str:
        return str(ask(self.socket_path, {"op": "export", "name": name})["manifest"])

    def adopt(self, out: TextIO) -> Adoption:
        from reconciler.loop.adopt import adoption_from_json

        request: dict[str, object] = {
            "op": "adopt", "name": self.options.name,
            "directory": str(self.options.directory.absolute()), "dryRun": self.options.dry_run,
        }  # fmt: skip
        return adoption_from_json(ask(self.socket_path, request)["adoption"])

    def gc(self) -> GcReport:
        from reconciler.images.gc import GcReport

        request = {"op": "gc", "graceSeconds": self.options.grace_seconds}
        flags = {"dryRun": self.options.dry_run, "snapshots": self.options.gc_snapshots}
        answer = ask(self.socket_path, {**request, **flags})
        fields = GcReport.__dataclass_fields__
        return GcReport(**{key: [Path(p) for p in answer[key]] for key in fields})

    def shutdown_guests(self, out: TextIO) -> list[InstanceResult]:
        _progress, forward = progress_printers(out)
        print(
            f"reconcile: asking the daemon on {self.socket_path} to shut the guests down",
            file=out,
        )
        answer = ask(self.socket_path, {"op": "shutdown-guests"}, forward)
        return [result_from_json(item) for item in answer["results"]]

    def snapshots(self, action: str, name: str | None, label: str | None) -> dict[str, Any]:
        request: dict[str, object] = {
            "op": "snapshot", "action": action, "name": name, "label": label,
        }  # fmt: skip
        return ask(self.socket_path, request)

    def rollout(self, action: str, argument: str, out: TextIO) -> dict[str, Any]:
        return ask(self.socket_path, {"op": "rollout", "action": action, "set": argument})


class Local:
    """Does it in this process, which takes the state directory's lock for it."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def plan(self, out: TextIO) -> Answer:
        from reconciler.loop.once import plan_all

        options = self.options
        settings = options.settings()
        state = options.checked_state()
        check_directory(options)
        driver, load = opened_while(options, state, lambda: load_slice(options, out))
        try:
            plans = plan_all(load, Reconciler(driver, state, settings))
        finally:
            driver.close()
        return Answer(
            plans=[plan.view() for plan in plans], errors=[str(error) for error in load.errors]
        )

    def apply(self, out: TextIO) -> Answer:
        from reconciler.cli.report import driver_text
        from reconciler.images.progress import TransferReporter
        from reconciler.loop.once import apply_all

        progress, _forward = progress_printers(out)
        settings = self.options.settings()
        with owned_state_loading(self.options, BUSY_HINT, out) as (state, driver, load):
            print(f"reconcile: {driver_text(driver)}, state directory {state.root}", file=out)
            reconciler = Reconciler(driver, state, settings, progress, transfers=TransferReporter())
            results = apply_all(load, reconciler)
        return Answer(results=results, errors=[str(error) for error in load.errors])

    def status(self) -> StatusAnswer:
        """The state directory observed now; while another process holds it (a daemon that
        is starting or stopping, a pass), the status file the daemon last wrote."""
        from reconciler.cli.report import driver_text
        from reconciler.loop.inventory import inventory

        state = self.options.state
        if not state.root.is_dir():
            raise ConfigError(f"no state directory at {state.root}: nothing was reconciled with it")
        try:
            with owned_state(self.options, "") as (owned, driver):
                entries = inventory(Reconciler(driver, owned, self.options.settings()))
                return StatusAnswer(observed=entries, where=driver_text(driver))
        except StateDirBusy:
            pass
        snapshot = read_status_file(state.status_file)
        if snapshot is None:
            raise ConfigError(
                f"another process holds {state.root} and no daemon has written a status there"
            )
        snapshot["daemon"]["running"] = False
        name = self.options.name
        if name is not None:
            snapshot["instances"] = [i for i in snapshot["instances"] if i["name"] == name]
        return StatusAnswer(snapshot=snapshot)

    def access(self, names: list[str] | None) -> list[Access]:
        from reconciler.health.addresses import observe_addresses
        from reconciler.health.record import read_login
        from reconciler.model.actual import PowerState

        with owned_state(self.options, BUSY_HINT) as (state, driver):
            records = {
                r.name: r
                for r in Reconciler(driver, state, self.options.settings()).managed_domains()
            }
            found = []
            for name in names if names is not None else sorted(records):
                record = records.get(name)
                if record is None:
                    raise ConfigError(f"no instance named {name!r} in {state.root}")
                addresses: list[dict[str, Any]] = []
                if record.state is PowerState.RUNNING:
                    machine = record.live_definition or record.definition
                    observed = observe_addresses(driver, name, machine)
                    addresses = [address.as_json() for address in observed]
                login = read_login(state.instance(name))
                found.append(Access(name, record.state.value, addresses, login))
            return found

    def wait(self, names: list[str], want: Want, timeout: float) -> dict[str, str]:
        from reconciler.loop.waiting import HealthWatch

        with owned_state(self.options, BUSY_HINT) as (state, driver):
            if want is not Want.STOPPED:  # absent is stopped; it is never ready or live
                unknown = [name for name in names if driver.lookup(name) is None]
                if unknown:
                    raise ConfigError(
                        f"no instance named {', '.join(unknown)} in {state.root}: nothing to "
                        "wait for (the names `reconcile status` lists)"
                    )
            watch = HealthWatch(driver, state)
            try:
                return watch.wait(names, want, timeout)
            finally:
                watch.close()

    def export(self, name: str) -> str:
        from reconciler.loop.adopt import export_domain

        with owned_state(self.options, BUSY_HINT) as (state, driver):
            return export_domain(driver, state, name)

    def adopt(self, out: TextIO) -> Adoption:
        from reconciler.loop.adopt import adopt

        options = self.options
        load = load_slice(options, out)
        spec = next((s for s in load.instances if s.name == options.name), None)
        if spec is None:
            raise ConfigError(
                f"no valid manifest for {options.name!r} in {options.directory}: adoption needs one"
            )
        settings = options.settings()
        with owned_state(options, BUSY_HINT) as (state, driver):
            return adopt(Reconciler(driver, state, settings), spec, dry_run=options.dry_run)

    def gc(self) -> GcReport:
        from reconciler.images.cache import ImageCache
        from reconciler.images.gc import collect_garbage
        from reconciler.images.qemuimg import QemuImg
        from reconciler.images.sources import SourcePolicy

        options = self.options
        with owned_state(options, BUSY_HINT) as (state, driver):
            cache = ImageCache(state, QemuImg(), SourcePolicy())
            reconciler = Reconciler(driver, state, options.settings())
            managed = frozenset(record.name for record in reconciler.managed_domains())
            return collect_garbage(
                state, cache, options.grace_seconds, dry_run=options.dry_run,
                managed=managed, snapshots=options.gc_snapshots,
            )  # fmt: skip

    def shutdown_guests(self, out: TextIO) -> list[InstanceResult]:
        from reconciler.loop.hostshutdown import shut_down_guests

        progress, _forward = progress_printers(out)
        with owned_state(self.options, BUSY_HINT) as (state, driver):
            reconciler = Reconciler(driver, state, self.options.settings(), progress)
            return shut_down_guests(reconciler, progress)

    def snapshots(self, action: str, name: str | None, label: str | None) -> dict[str, Any]:
        from reconciler.loop.snapshots import snapshot_request

        with owned_state(self.options, BUSY_HINT) as (state, driver):
            reconciler = Reconciler(driver, state, self.options.settings())
            return snapshot_request(reconciler, action, name, label)

    def rollout(self, action: str, argument: str, out: TextIO) -> dict[str, Any]:
        from reconciler.loop.rollouts import RolloutPacer, rollout_request

        with owned_state_loading(self.options, BUSY_HINT, out) as (state, driver, load):
            reconciler = Reconciler(driver, state, self.options.settings())
            specs = load.instances
            pacer = RolloutPacer(
                reconciler,
                lambda group: [s for s in specs if s.rollout and s.rollout.group == group],
                lambda _name: None,
                lambda _name: False,
            )
            return rollout_request(pacer, action, argument, revert_now=True)


def _why_not(item: dict[str, Any] | None, want: Want) -> str | None:
    """Why an instance of the daemon's status does not satisfy `want` (None: it does)."""
    if item is None:  # gone from its manifests: absent, which is stopped
        return None if want is Want.STOPPED else "the daemon does not manage it"
    observed = item.get("observed") or "unknown"
    if want is Want.STOPPED:
        return None if observed in ("shutoff", "absent") else f"it is {observed}"
    kind = "Ready" if want is Want.READY else "Live"
    for condition in item.get("conditions") or []:
        if condition.get("type") == kind:
            if condition.get("status") == "True":
                return None
            return f"{condition.get('reason')}: {condition.get('message')}"
    return f"it is {observed}"
