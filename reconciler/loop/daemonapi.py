"""The daemon's request API: what each op of the control socket (loop.control, its codec)
asks of the controller, answered from the controller's public methods.

ping, status, plan (of the watched directory or another), pass (waits for every name, with
progress), export, adopt, gc, snapshot (list, take, delete, revert, resume), rollout (pause,
resume, undo), shutdown-guests.
A request the daemon cannot take is a RequestError, answered as an error and never raised
further.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ReconcilerError
from reconciler.loop.control import Reply, RequestError
from reconciler.loop.names import Trigger
from reconciler.loop.once import plan_all
from reconciler.loop.results import result_to_json

if TYPE_CHECKING:
    from reconciler.loop.controller import Controller

LOG = logging.getLogger("reconciler.daemon")
OPS = (
    "ping", "status", "events", "plan", "pass", "export", "adopt", "gc", "snapshot",
    "rollout", "shutdown-guests",
)  # fmt: skip


class DaemonApi:
    """Answers the control socket's requests for one controller."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def handle(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        op = request["op"]
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "status":
            return self._status(request.get("name"), bool(request.get("snapshots")))
        if op == "events":
            return self._events(request)
        if op == "plan":
            return self._plan(request)
        if op == "pass":
            return self._pass(request, reply)
        if op == "shutdown-guests":
            return self._shutdown_guests(reply)
        if op == "export":
            return {"manifest": self._export(request)}
        if op == "adopt":
            return self._adopt(request)
        if op == "gc":
            return self._gc(request)
        if op == "snapshot":
            return self._snapshot(request)
        if op == "rollout":
            return self._rollout(request)
        raise RequestError(f"unknown op {op!r} (expected {', '.join(OPS[:-1])} or {OPS[-1]})")

    def _events(self, request: dict[str, Any]) -> dict[str, Any]:
        """The events kept (of one instance, or all) after the number `since`."""
        name, since = request.get("name"), request.get("since", 0)
        if name is not None and not isinstance(name, str):
            raise RequestError("events: name must be a string")
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise RequestError("events: since must be a number of at least 0")
        events, last = self._controller.status.events(name, since)
        return {"events": events, "last": last}

    def _status(self, name: object, snapshots: bool = False) -> dict[str, Any]:
        """The daemon's status (with `snapshots`, each instance's snapshot summary, read from
        its disks now: `status` asks for it, the polls of `wait` do not)."""
        from reconciler.loop.snapshots import snapshot_summary

        self._controller.show_rollouts()
        snapshot = self._controller.status.snapshot()
        if name is not None:
            if not isinstance(name, str):
                raise RequestError('"name" must be a string')
            snapshot["instances"] = [i for i in snapshot["instances"] if i["name"] == name]
        state = self._controller.state
        for item in snapshot["instances"] if snapshots else ():  # a pass never reads them
            item["snapshots"] = snapshot_summary(state.instance(item["name"]))
        return {"status": snapshot}

    def _plan(self, request: dict[str, Any]) -> dict[str, Any]:
        """A plan of the watched directory, or of another one (a pull request's checkout:
        planning changes nothing), cut to this daemon's slice."""
        asked = request.get("directory")
        if asked is not None and not isinstance(asked, str):
            raise RequestError('"directory" must be a string')
        directory = Path(asked) if asked else self._controller.options.directory
        if not directory.exists():
            raise RequestError(f"{directory}: no such file or directory")
        load = self._controller.read_manifests(directory)
        plans = plan_all(load, self._controller.reconciler)
        return {
            "plans": [plan.view().as_json() for plan in plans],
            "manifestErrors": [str(error) for error in load.errors],
        }

    def _pass(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        """A full pass over the newest manifests (parked names and orphans included: a
        requested pass tries them all), answered once every name has been reconciled."""
        controller = self._controller
        self._check_directory(request)

        def forward(name: str, message: str) -> None:
            reply({"progress": {"name": name, "message": message}})

        with controller.progress_to(forward):
            since = controller.names.sequence()
            controller.fetch()  # pull mode: the pass is over the newest good commit
            names = controller.reload(Trigger.REQUEST, everything=True)
            load = controller.manifests()
            if not controller.wait_for(names, since):
                raise RequestError("the daemon is stopping")
            results = [r for r in map(controller.names.result, names) if r is not None]
        return {
            "results": [result_to_json(result) for result in results],
            "manifestErrors": [str(error) for error in (load.errors if load else ())],
        }

    def _check_directory(self, request: dict[str, Any]) -> None:
        asked = request.get("directory")
        watched = self._controller.options.directory
        if asked is not None and os.path.realpath(str(asked)) != os.path.realpath(watched):
            raise RequestError(f"the daemon of this state directory watches {watched}, not {asked}")

    def _export(self, request: dict[str, Any]) -> str:
        from reconciler.loop.adopt import export_domain

        name = request.get("name")
        if not isinstance(name, str):
            raise RequestError('"name" must be a string')
        try:
            return export_domain(self._controller.driver, self._controller.state, name)
        except ReconcilerError as err:
            raise RequestError(str(err)) from err

    def _adopt(self, request: dict[str, Any]) -> dict[str, Any]:
        """Adopt (or, dryRun, check) a domain against its manifest in the request's directory
        (this daemon's, or another: a manifest for a domain it does not manage yet)."""
        from reconciler.loop.adopt import adopt, adoption_json

        name, asked = request.get("name"), request.get("directory")
        if not isinstance(name, str) or not isinstance(asked, str):
            raise RequestError('"name" and "directory" must be strings')
        directory = Path(asked)
        if not directory.exists():
            raise RequestError(f"{directory}: no such file or directory")
        load = self._controller.read_manifests(directory)
        spec = next((s for s in load.instances if s.name == name), None)
        if spec is None:
            raise RequestError(f"no valid manifest for {name!r} in {directory}: adoption needs one")
        adoption = adopt(self._controller.reconciler, spec, dry_run=bool(request.get("dryRun")))
        if adoption.adopted:
            self._controller.enqueue([name], Trigger.REQUEST)
        return {"adoption": adoption_json(adoption)}

    def _gc(self, request: dict[str, Any]) -> dict[str, Any]:
        """Garbage collection of the image cache, in this process (which holds the state
        directory): a base in use is never removed, checked under the entry's lock."""
        from reconciler.images.gc import collect_garbage

        grace = request.get("graceSeconds")
        if not isinstance(grace, int | float) or grace < 0:
            raise RequestError('"graceSeconds" must be a number of seconds')
        controller = self._controller
        managed = frozenset(record.name for record in controller.reconciler.managed_domains())
        report = collect_garbage(
            controller.state, controller.reconciler.steps.cache, float(grace),
            dry_run=bool(request.get("dryRun")), managed=managed,
            snapshots=bool(request.get("snapshots")),
        )  # fmt: skip
        return {
            key: [str(path) for path in getattr(report, key)]
            for key in ("removed", "in_use", "too_young", "leftovers", "replaced", "snapshots")
        }

    def _snapshot(self, request: dict[str, Any]) -> dict[str, Any]:
        """A snapshot command (loop.snapshots), on an instance no worker reconciles at the
        same time; then the instance is reconciled (a revert's hold, a resume, shown in the
        status)."""
        from reconciler.loop.snapshots import snapshot_request

        action, name, label = request.get("action"), request.get("name"), request.get("label")
        if not isinstance(action, str):
            raise RequestError('"action" must be a string')
        for key, value in (("name", name), ("label", label)):
            if value is not None and not isinstance(value, str):
                raise RequestError(f'"{key}" must be a string or null')
        assert name is None or isinstance(name, str)
        assert label is None or isinstance(label, str)
        controller = self._controller
        try:
            if name is None:
                return snapshot_request(controller.reconciler, action, None, label)
            with controller.instance_lock(name):
                answer = snapshot_request(controller.reconciler, action, name, label)
        except ReconcilerError as err:
            raise RequestError(str(err)) from err
        if action == "revert" and answer["revert"]["started"]:
            controller.prober.restarted(name)  # a new boot: its probes start over
        if action != "list":
            controller.enqueue([name], Trigger.REQUEST)
        return answer

    def _rollout(self, request: dict[str, Any]) -> dict[str, Any]:
        """`rollout pause|resume|undo SET` (loop.rollouts): the members it concerns are
        reconciled then (an undo's reverts are made as they are)."""
        from reconciler.loop.rollouts import rollout_request

        action, argument = request.get("action"), request.get("set")
        if not isinstance(action, str) or not isinstance(argument, str):
            raise RequestError('"action" and "set" must be strings')
        try:
            return rollout_request(self._controller.pacer, action, argument, revert_now=False)
        except ReconcilerError as err:
            raise RequestError(str(err)) from err

    def _shutdown_guests(self, reply: Reply) -> dict[str, Any]:
        """The host is going down: reconcile nothing more (a guest shut down must not be
        started again), let the reconciles in flight end, then shut every managed guest down
        (see loop.hostshutdown)."""
        from reconciler.loop.hostshutdown import shut_down_guests

        controller = self._controller
        controller.host_going_down()

        def forward(name: str, message: str) -> None:
            LOG.info("%s: %s", name, message)
            with contextlib.suppress(OSError):  # the client went away: carry on
                reply({"progress": {"name": name, "message": message}})

        results = shut_down_guests(controller.reconciler, forward)
        controller.status_writer.soon()
        return {"results": [result_to_json(result) for result in results]}
