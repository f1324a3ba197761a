"""The QMP driver: QEMU run directly by the reconciler and driven over its QMP socket (with
qemu.qmp's asyncio client), for hosts where libvirt cannot or should not run.

Each instance's files are in its instance directory (STATE/instances/NAME):

- `domain.json`: the persistent definition (machine, UUID, ownership marker), the model's
  Machine as JSON (drivers.definition), written atomically; `live.json`: what the running
  QEMU was started as, with the live changes since. A `domain.xml` (libvirt XML) that an
  earlier version wrote is read once and rewritten;
- `qmp.sock`, `qemu.pid`, `console.log` (the serial console), `stopped` (the reason of the
  last stop this driver saw: shutdown, destroyed, crashed).

QEMU runs in a session of its own (-daemonize), so it outlives the reconciler as under
libvirt's embedded driver. A process is taken for the instance's only when the pid file names
a live process whose executable is a QEMU and whose command line carries the instance's name
and UUID; any other process is never signalled. A guest power-off leaves QEMU in the
`shutdown` run state and a guest panic in `guest-panicked`; the next observation ends that
process and records the reason, which is how a stop is told from a failure after the fact.
A QEMU that died with nobody watching reads as shut off for an unknown reason (a failure, as
under the embedded libvirt driver).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid as uuid_module
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient, QMPError, Runstate

from reconciler.drivers.base import DomainEvent, EventCallback, EventKind, LostCallback
from reconciler.drivers.definition import DefinitionError, machine_from_json, machine_to_json
from reconciler.drivers.guestagent import agent_over_socket, agent_request
from reconciler.drivers.host import (
    busy_ports,
    emulator_process,
    emulators,
    find_emulator,
    local_memory,
    process_alive,
    process_cpu_seconds,
)
from reconciler.drivers.kvm import probe_local_kvm
from reconciler.drivers.libvirt_xml import DomainXmlError, parse_domain_xml
from reconciler.drivers.qemu_argv import (
    EMULATOR,
    ProcessFiles,
    UnsupportedByQemuDriver,
    blockdev_nodes,
    hotplug_disk_device,
    hotplug_nic,
    render_qemu_argv,
    unsupported,
)
from reconciler.drivers.snapshotting import (
    format_nodes,
    snapshot_deletion,
    snapshot_transaction,
)
from reconciler.errors import DriverError, PermanentError
from reconciler.fileops import write_atomically
from reconciler.layout import QEMU_PID_FILE, InstancePaths, StateLayout
from reconciler.model.accel import KvmSupport
from reconciler.model.actual import (
    DomainFacts,
    ObservedDomain,
    PowerState,
    StateReason,
    UnreadableDomain,
)
from reconciler.model.desired import NetworkSpec, NicType
from reconciler.model.machine import BOOT_DISK_TARGET, Disk, Machine, Nic

LOG = logging.getLogger(__name__)

QMP_TIMEOUT_SECONDS = 5.0  # a socket that accepts and never answers: a timeout, not a hang
LAUNCH_TIMEOUT_SECONDS = 60.0
EXIT_WAIT_SECONDS = 10.0
DYING_WAIT_SECONDS = 1.0  # a killed QEMU is gone in milliseconds; a wedged one stays
SCAN_SECONDS = 1.0  # how often the watcher looks for processes to attach to
EMULATORS_SECONDS = 1.0  # how long one look at every QEMU of the host serves lookups
_T = TypeVar("_T")

# QMP run states -> the power state and its reason, in the seam's vocabulary
_RUN_STATES = {
    "running": (PowerState.RUNNING, StateReason.BOOTED),
    "paused": (PowerState.PAUSED, StateReason.USER),
    "prelaunch": (PowerState.PAUSED, StateReason.STARTING_UP),
    "inmigrate": (PowerState.PAUSED, StateReason.STARTING_UP),
    "io-error": (PowerState.PAUSED, StateReason.IOERROR),
    "internal-error": (PowerState.PAUSED, StateReason.CRASHED),
    "watchdog": (PowerState.PAUSED, StateReason.WATCHDOG),
}
_EVENTS = {
    "SHUTDOWN": (EventKind.LIFECYCLE, "stopped: shutdown"),
    "STOP": (EventKind.LIFECYCLE, "suspended"),
    "RESUME": (EventKind.LIFECYCLE, "resumed"),
    "RESET": (EventKind.REBOOT, ""),
    "GUEST_PANICKED": (EventKind.LIFECYCLE, "stopped: crashed"),  # ended at its next observation
    "BLOCK_IO_ERROR": (EventKind.IO_ERROR, "disk"),
    "WATCHDOG": (EventKind.WATCHDOG, "action"),  # and the action it took
}


class QmpDriver:
    """Domains as QEMU processes this driver starts, by name."""

    def __init__(self, layout: StateLayout, emulator: str = EMULATOR) -> None:
        self.uri = f"qmp://{layout.root}"
        self._layout = layout
        self._instances = layout.instances
        self._emulator = emulator
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp", daemon=True)
        self._thread.start()
        self._clients: dict[str, QMPClient] = {}
        self._quitting: set[str] = set()  # names whose QEMU this driver is ending
        self._lock = threading.RLock()
        self._on_event: EventCallback | None = None
        self._scanner: Any = None  # the watcher's scan (a concurrent future)
        self._listeners: set[asyncio.Task[None]] = set()
        self._monitors: dict[str, asyncio.Lock] = {}
        self._agents: dict[str, threading.Lock] = {}  # QEMU's agent socket takes one client
        self._emulators_seen: dict[tuple[str, str], int] = {}
        self._emulators_at = -EMULATORS_SECONDS * 2

    @classmethod
    def open(cls, layout: StateLayout) -> QmpDriver:
        if shutil.which(EMULATOR) is None and not Path(EMULATOR).exists():
            raise PermanentError(f"--driver qmp needs {EMULATOR} (Debian package qemu-system-x86)")
        return cls(layout)

    # -- files ---------------------------------------------------------------------------------

    def _paths(self, name: str) -> InstancePaths:
        return self._layout.instance(name)

    def _files(self, name: str) -> ProcessFiles:
        paths = self._paths(name)
        return ProcessFiles(
            str(paths.qmp_socket), str(paths.qemu_pid), str(paths.guest_agent_socket)
        )

    def _definition(self, name: str) -> Machine | None:
        """The persistent definition (None: no such domain); DefinitionError when the file is
        not one. A definition an earlier version wrote as libvirt XML is written anew."""
        paths = self._paths(name)
        try:
            text = paths.definition.read_text()
        except FileNotFoundError:
            return self._migrated(paths.legacy_definition, paths.definition)
        except OSError as err:
            raise DriverError(f"read the definition of {name}", str(err)) from err
        return machine_from_json(text)

    def _migrated(self, legacy: Path, path: Path) -> Machine | None:
        """The machine in `legacy` (libvirt XML, as earlier versions kept it), written
        to `path` as JSON and the old file removed; None when there is none."""
        try:
            text = legacy.read_text()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise DriverError(f"read {legacy}", str(err)) from err
        try:
            machine = parse_domain_xml(text)
        except DomainXmlError as err:
            raise DefinitionError(str(err)) from err
        with self._lock:
            write_atomically(path, machine_to_json(machine).encode(), 0o600)
            legacy.unlink(missing_ok=True)
        LOG.info("%s: rewrote %s as %s", machine.name, legacy.name, path.name)
        return machine

    def _write_definition(self, machine: Machine) -> None:
        paths = self._paths(machine.name)
        paths.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(paths.definition, machine_to_json(machine).encode(), 0o600)
        paths.legacy_definition.unlink(missing_ok=True)

    def _live(self, name: str) -> Machine | None:
        """The machine the running QEMU was started as, with the live changes made since."""
        paths = self._paths(name)
        try:
            return machine_from_json(paths.live_definition.read_text())
        except FileNotFoundError:
            try:
                return self._migrated(paths.legacy_live_definition, paths.live_definition)
            except (OSError, DefinitionError, DriverError):
                return None
        except (OSError, DefinitionError):
            return None

    def _write_live(self, machine: Machine) -> None:
        live = self._paths(machine.name).live_definition
        write_atomically(live, machine_to_json(machine).encode(), 0o600)

    def _change_live(self, name: str, **changes: Any) -> None:
        live = self._live(name)
        if live is not None:
            self._write_live(replace(live, **changes))

    def _pid(self, name: str, uuid: str) -> int | None:
        """The live QEMU of this instance, proven by its command line: the one its pid file
        names, or, when the pid file is missing or names anything else (a dead pid, another
        process), the one found among all processes. None when no QEMU of it runs."""
        pid = self._recorded_pid(name)
        if pid is not None and emulator_process(pid, name, uuid):
            return pid
        found = self._emulators().get((name, uuid.lower()))
        return found if found is not None and emulator_process(found, name, uuid) else None

    def _recorded_pid(self, name: str) -> int | None:
        try:
            return int(Path(self._files(name).pidfile).read_text().strip())
        except (OSError, ValueError):
            return None

    def _emulators(self) -> dict[tuple[str, str], int]:
        """Every QEMU on the host by domain, looked up at most every EMULATORS_SECONDS (a
        listing of stopped instances would scan /proc once per instance otherwise); each
        pid taken from it is proven again."""
        with self._lock:
            now = time.monotonic()
            if now - self._emulators_at > EMULATORS_SECONDS:
                self._emulators_seen = emulators()
                self._emulators_at = now
            return self._emulators_seen

    def _adopt(self, name: str, pid: int) -> None:
        """Take a running QEMU proven to be this instance's (command line, UUID, an answering
        monitor) as its own again: its pid file is written anew. Never a kill."""
        if self._recorded_pid(name) == pid:
            return
        LOG.warning(
            "%s: QEMU process %d runs this instance but its pid file is missing or names "
            "another process: adopted (pid file rewritten)",
            name,
            pid,
        )
        with contextlib.suppress(OSError):
            write_atomically(Path(self._files(name).pidfile), f"{pid}\n".encode(), 0o600)

    def _stop_reason(self, name: str) -> StateReason:
        try:
            return StateReason.of(self._paths(name).stopped.read_text().strip())
        except OSError:
            return StateReason.UNKNOWN

    def _record_stop(self, name: str, reason: StateReason) -> None:
        with contextlib.suppress(OSError):
            write_atomically(self._paths(name).stopped, reason.encode())

    # -- the QMP loop --------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, _T], what: str, timeout: float) -> _T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout as err:
            future.cancel()
            raise DriverError(what, f"no answer from QEMU within {timeout:.0f}s") from err
        except (QMPError, OSError, EOFError) as err:
            raise DriverError(what, str(err) or type(err).__name__) from err

    async def _connect(self, name: str) -> QMPClient:
        client = QMPClient(name)
        try:
            await asyncio.wait_for(
                client.connect(self._files(name).qmp_socket), QMP_TIMEOUT_SECONDS
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise
        return client

    async def _client(self, name: str) -> QMPClient:
        """The watcher's connection to this QEMU (kept, to hear its events)."""
        with self._lock:
            client = self._clients.get(name)
        if client is not None and client.runstate is Runstate.RUNNING:
            return client
        client = await self._connect(name)
        with self._lock:
            self._clients[name] = client
        self._listeners.add(self._loop.create_task(self._listen(name, client)))
        return client

    async def _execute(self, name: str, command: str, arguments: dict[str, Any] | None) -> Any:
        """One command. A QEMU's monitor serves one client at a time: a watching driver (the
        daemon) keeps its connection; otherwise each command connects and lets go, so that
        another process (a later run, a tool) can reach the same QEMU."""
        # one conversation per QEMU at a time: a second client of its monitor would wait, or
        # be dropped, while the first is connected (the workers of a pass ask concurrently)
        async with self._monitor(name):
            if self._on_event is not None:
                client = await self._client(name)
                return await asyncio.wait_for(
                    client.execute(command, arguments), QMP_TIMEOUT_SECONDS
                )
            client = await self._connect(name)
            try:
                return await asyncio.wait_for(
                    client.execute(command, arguments), QMP_TIMEOUT_SECONDS
                )
            finally:
                with contextlib.suppress(Exception):
                    await client.disconnect()

    def _monitor(self, name: str) -> asyncio.Lock:
        """The lock of one QEMU's monitor (made and used in the loop's thread only)."""
        lock = self._monitors.get(name)
        if lock is None:
            lock = self._monitors[name] = asyncio.Lock()
        return lock

    def _qmp(self, name: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return self._run(
            self._execute(name, command, arguments), f"{command} {name}", QMP_TIMEOUT_SECONDS * 2
        )

    async def _listen(self, name: str, client: QMPClient) -> None:
        """Deliver this QEMU's events until its socket closes (QEMU gone: a stop)."""
        consumer = asyncio.ensure_future(self._consume(name, client))
        try:
            while client.runstate is Runstate.RUNNING:
                await client.runstate_changed()
        finally:
            consumer.cancel()
        with self._lock:
            if self._clients.get(name) is client:
                del self._clients[name]
            ended_by_us = name in self._quitting
        with contextlib.suppress(Exception):
            await client.disconnect()
        self._emit(
            name, EventKind.LIFECYCLE, "stopped: destroyed" if ended_by_us else "stopped: failed"
        )

    async def _consume(self, name: str, client: QMPClient) -> None:
        async for event in client.events:
            which = str(event["event"])
            known = _EVENTS.get(which)
            data: Any = event.get("data") or {}
            guest = bool(data.get("guest", True)) if isinstance(data, dict) else True
            if known is not None and (which != "SHUTDOWN" or guest):  # not our own quit
                kind, detail = known
                if which == "WATCHDOG" and isinstance(data, dict):
                    detail = f"action {data.get('action', 'unknown')}"
                self._emit(name, kind, detail)

    def _emit(self, name: str, kind: EventKind, detail: str) -> None:
        callback = self._on_event
        if callback is not None:
            callback(DomainEvent(name, kind, detail))

    # -- observing -----------------------------------------------------------------------------

    def kvm_support(self) -> KvmSupport:
        return probe_local_kvm()

    def host_memory(self) -> int | None:
        return local_memory()

    def list_domains(self) -> list[ObservedDomain]:
        if not self._instances.is_dir():
            return []
        records = []
        for directory in sorted(self._instances.iterdir()):
            paths = self._paths(directory.name)
            if paths.definition.exists() or paths.legacy_definition.exists():
                record = self.lookup(directory.name)
                if record is not None:
                    records.append(record)
        return records

    def lookup(self, name: str) -> ObservedDomain | None:
        try:
            definition = self._definition(name)
        except DefinitionError as err:
            unknown = StateReason.UNKNOWN
            return UnreadableDomain(name, "", PowerState.SHUTOFF, unknown, str(err))
        if definition is None:
            return None
        uuid = definition.uuid or ""
        pid = self._pid(name, uuid)
        if pid is None:
            return DomainFacts(
                name, uuid, PowerState.SHUTOFF, self._stop_reason(name), True, definition
            )
        try:
            status = self._qmp(name, "query-status")
        except DriverError:
            if not self._ended(name, uuid, pid):
                raise
            return DomainFacts(
                name, uuid, PowerState.SHUTOFF, self._stop_reason(name), True, definition
            )
        self._adopt(name, pid)  # it answers: a pid file lost or forged is written anew
        run_state = str(status.get("status", ""))
        if run_state in ("shutdown", "guest-panicked"):  # on_poweroff / on_crash: destroy
            reason = StateReason.SHUTDOWN if run_state == "shutdown" else StateReason.CRASHED
            self._end(name, pid, reason)
            return DomainFacts(name, uuid, PowerState.SHUTOFF, reason, True, definition)
        state, reason = _RUN_STATES.get(run_state, (PowerState.PAUSED, StateReason.UNKNOWN))
        live = self._live(name) or definition
        return DomainFacts(name, uuid, state, reason, True, definition, live)

    def _ended(self, name: str, uuid: str, pid: int) -> bool:
        """Whether a QEMU whose monitor just failed is ending (killed while asked): it is
        given a moment to be gone; one that lives on (stopped, wedged) is a real failure."""
        deadline = time.monotonic() + DYING_WAIT_SECONDS
        while time.monotonic() < deadline:
            if self._pid(name, uuid) != pid:
                return True
            time.sleep(0.05)
        return False

    def disk_capacity(self, name: str, target: str) -> int:
        nodes = self._qmp(name, "query-named-block-nodes", {"flat": True})
        for node in nodes:
            if node.get("node-name") == target:
                return int(node["image"]["virtual-size"])
        raise DriverError(f"read disk {target} of {name}", "no such block node")

    def cpu_seconds(self, name: str) -> float | None:
        definition = self._definition(name)
        pid = None if definition is None else self._pid(name, definition.uuid or "")
        return None if pid is None else process_cpu_seconds(pid)

    def agent_command(
        self, name: str, command: str, arguments: dict[str, Any] | None, timeout: float
    ) -> Any:
        subject = f"ask the guest agent of {name}"
        if not self._require_live(name, "ask the guest agent of").guest_agent:
            raise DriverError(subject, "the domain has no guest agent channel (guestAgent: true)")
        with self._lock:
            lock = self._agents.setdefault(name, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise DriverError(subject, "another request to the guest agent is still waiting")
        try:
            path = self._paths(name).guest_agent_socket
            return agent_over_socket(path, subject, agent_request(command, arguments), timeout)
        finally:
            lock.release()

    def dhcp_leases(self, network: str) -> dict[str, str]:
        return {}  # no libvirt networks here (the manifest's type: network is refused)

    def log_hint(self, name: str) -> str:
        return f"QEMU's log: {self._paths(name).qemu_log}"

    def check_attachments(self, networks: tuple[NetworkSpec, ...]) -> tuple[str, ...]:
        problems = []
        for index, network in enumerate(networks):
            if network.type is not NicType.USER:
                problems.append(
                    f"interface {index}: type {network.type.value} needs libvirt (the QMP "
                    "driver runs user-mode networking only)"
                )
            problems += busy_ports(index, network)
        return tuple(problems)

    # -- definitions ---------------------------------------------------------------------------

    def cannot_express(self, machine: Machine) -> tuple[str, ...]:
        return tuple(unsupported(machine))

    def define(self, machine: Machine) -> None:
        problems = unsupported(machine)
        if problems:
            raise DriverError(f"define {machine.name}", "; ".join(problems))
        existing = self._definition(machine.name)
        if existing is not None and machine.uuid not in (None, existing.uuid):
            raise DriverError(f"define {machine.name}", "domain exists with another uuid")
        uuid = (existing.uuid if existing else None) or machine.uuid or str(uuid_module.uuid4())
        self._write_definition(replace(machine, uuid=uuid))
        self._emit(machine.name, EventKind.LIFECYCLE, "defined")

    def set_marker(self, name: str, machine: Machine) -> None:
        existing = self._definition(name)
        if existing is None:
            raise DriverError(f"mark {name}", "no such domain")
        self._write_definition(
            replace(
                existing,
                marker=machine.marker,
                protected=machine.protected,
                delete_disks=machine.delete_disks,
                shutdown_timeout_seconds=machine.shutdown_timeout_seconds,
                asked_running=machine.asked_running,
            )
        )

    def repoint_boot_disk(self, name: str, path: str) -> None:
        existing = self._definition(name)
        if existing is None:
            raise DriverError(f"point the boot disk of {name}", "no such domain")
        self._write_definition(replace(existing, disks=_repointed(existing.disks, path)))

    def undefine(self, name: str) -> None:
        definition = self._definition(name)
        if definition is None:
            raise DriverError(f"undefine {name}", "no such domain")
        if self._pid(name, definition.uuid or "") is not None:
            raise DriverError(f"undefine {name}", "domain is running")
        self._paths(name).definition.unlink()
        self._emit(name, EventKind.LIFECYCLE, "undefined")

    def set_autostart(self, name: str, autostart: bool) -> None:
        """The QMP driver keeps no autostart flag (DomainFacts.autostart is None)."""

    # -- power ---------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        definition = self._definition(name)
        if definition is None:
            raise DriverError(f"start {name}", "no such domain")
        if self._pid(name, definition.uuid or "") is not None:
            raise DriverError(f"start {name}", "domain is already running")
        files = self._files(name)
        if not self._adopt_launched(name, definition.uuid or "", files):
            for stale in (files.qmp_socket, files.pidfile):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
            try:
                argv = render_qemu_argv(definition, files, self._emulator)
            except UnsupportedByQemuDriver as err:
                raise DriverError(f"start {name}", str(err)) from err
            self._launch(name, argv, files)
        self._write_live(definition)
        with contextlib.suppress(FileNotFoundError):
            self._paths(name).stopped.unlink()
        with self._lock:
            self._quitting.discard(name)
        if definition.max_memory_kib is not None:  # QEMU has the maximum, the balloon the rest
            with contextlib.suppress(DriverError):
                self._qmp(name, "balloon", {"value": definition.memory_kib * 1024})
        self._emit(name, EventKind.LIFECYCLE, "started")

    def _adopt_launched(self, name: str, uuid: str, files: ProcessFiles) -> bool:
        """Whether a live QEMU of this instance (launched by a process killed before it saw
        it up, or running with its pid file lost) was adopted: it is waited for until its
        monitor answers, never launched twice on one disk, and never killed to make way for a
        start. One that never answers is an error, and is left running."""
        pid = find_emulator(name, uuid)
        if pid is None:
            return False
        deadline = time.monotonic() + LAUNCH_TIMEOUT_SECONDS
        while time.monotonic() < deadline and process_alive(pid):
            if os.path.exists(files.qmp_socket):
                with contextlib.suppress(DriverError):
                    self._qmp(name, "query-status")
                    self._adopt(name, pid)
                    return True
            time.sleep(0.05)
        if emulator_process(pid, name, uuid):
            raise DriverError(
                f"start {name}",
                f"QEMU process {pid} of this instance runs but its monitor did not answer "
                f"within {LAUNCH_TIMEOUT_SECONDS:.0f}s; it is left running (a forced stop ends "
                "it)",
            )
        return False

    def _launch(self, name: str, argv: list[str], files: ProcessFiles) -> None:
        """Start QEMU in a session of its own (it outlives this process; -daemonize cannot be
        combined with the sandbox), its output in qemu.log, and wait until it is up: its pid
        file and QMP socket are there, or it has exited (the log says why)."""
        log_path = self._paths(name).qemu_log
        try:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
        except OSError as err:
            raise DriverError(f"start {name}", str(err)) from err
        # reap it when it ends, so that a QEMU that dies while this process lives is gone
        threading.Thread(target=process.wait, name=f"reap-{name}", daemon=True).start()
        deadline = time.monotonic() + LAUNCH_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DriverError(f"start {name}", _last_line(log_path) or "QEMU exited")
            if os.path.exists(files.pidfile) and os.path.exists(files.qmp_socket):
                break
            time.sleep(0.02)
        else:
            raise DriverError(f"start {name}", f"QEMU not up after {LAUNCH_TIMEOUT_SECONDS:.0f}s")
        # the socket comes before the machine: an unknown CPU model, a disk QEMU cannot open
        # end QEMU just after it; up is when it answers about a run state (on a loaded host
        # its first answer can take longer than one command's timeout: asked again until the
        # launch deadline, as long as it lives)
        while True:
            try:
                self._qmp(name, "query-status")
                return
            except DriverError:
                try:
                    process.wait(DYING_WAIT_SECONDS)
                except subprocess.TimeoutExpired:
                    if time.monotonic() < deadline:
                        continue
                    raise
                raise DriverError(f"start {name}", _last_line(log_path) or "QEMU exited") from None

    def reset(self, name: str) -> None:
        """Reset the guest (a hard reboot; for tests and tools, as LibvirtDriver.reset)."""
        self._qmp(name, "system_reset")

    def request_shutdown(self, name: str) -> bool:
        record = self.lookup(name)
        if record is None or record.state is not PowerState.RUNNING:
            return False
        self._qmp(name, "system_powerdown")
        return True

    def force_stop(self, name: str) -> None:
        definition = self._definition(name)
        if definition is None:
            raise DriverError(f"destroy {name}", "no such domain")
        pid = self._pid(name, definition.uuid or "")
        if pid is None:
            raise DriverError(f"destroy {name}", "domain is not running")
        self._end(name, pid, StateReason.DESTROYED)

    def tear_down(self, name: str) -> str:
        definition = self._definition(name)
        pid = None if definition is None else self._pid(name, definition.uuid or "")
        if pid is None:
            return "nothing to tear down: no QEMU of this instance runs"
        self._end(name, pid, StateReason.DESTROYED)
        return f"ended QEMU process {pid}"

    def _end(self, name: str, pid: int, reason: StateReason) -> None:
        """End this instance's QEMU (`quit`, then SIGKILL of the proven pid) and record why."""
        with self._lock:
            self._quitting.add(name)
        self._record_stop(name, reason)
        with contextlib.suppress(DriverError):
            self._qmp(name, "quit")
        deadline = time.monotonic() + EXIT_WAIT_SECONDS
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.05)
        if process_alive(pid) and self._pid(name, self._uuid(name)) == pid:
            os.kill(pid, signal.SIGKILL)

    def _uuid(self, name: str) -> str:
        definition = self._definition(name)
        return (definition.uuid or "") if definition else ""

    # -- live changes --------------------------------------------------------------------------

    def resize_disk(self, name: str, target: str, size_bytes: int) -> None:
        self._qmp(name, "block_resize", {"node-name": target, "size": size_bytes})

    def snapshot_disks(self, name: str, label: str, paths: tuple[str, ...]) -> None:
        self._require_live(name, "snapshot the disks of")
        nodes = format_nodes(self._qmp(name, "query-block"), paths, f"snapshot {name}")
        self._qmp(name, "transaction", snapshot_transaction(nodes, label))

    def delete_disk_snapshots(self, name: str, label: str, paths: tuple[str, ...]) -> None:
        self._require_live(name, "delete a snapshot of")
        nodes = format_nodes(self._qmp(name, "query-block"), paths, f"delete snapshot of {name}")
        for node in nodes.values():
            self._qmp(
                name, "blockdev-snapshot-delete-internal-sync", snapshot_deletion(node, label)
            )

    def resume(self, name: str) -> None:
        self._qmp(name, "cont")

    def set_memory(self, name: str, memory_kib: int) -> None:
        self._qmp(name, "balloon", {"value": memory_kib * 1024})
        self._change_live(name, memory_kib=memory_kib)

    def set_vcpus(self, name: str, vcpus: int) -> None:
        raise DriverError(f"set vCPUs of {name}", "the QMP driver does not plug vCPUs")

    def attach_disk(self, name: str, disk: Disk) -> None:
        live = self._require_live(name, "attach disk to")
        for node in blockdev_nodes(disk):
            self._qmp(name, "blockdev-add", node)
        self._qmp(name, "device_add", hotplug_disk_device(live, disk))
        self._change_live(name, disks=(*live.disks, disk))

    def detach_disk(self, name: str, disk: Disk) -> None:
        live = self._require_live(name, "detach disk from")
        self._unplug(name, disk.target)
        for node in (disk.target, f"file-{disk.target}"):
            with contextlib.suppress(DriverError):  # gone with the device on some versions
                self._qmp(name, "blockdev-del", {"node-name": node})
        self._change_live(name, disks=tuple(d for d in live.disks if d.target != disk.target))

    def attach_nic(self, name: str, nic: Nic, index: int) -> None:
        live = self._require_live(name, "attach NIC to")
        netdev, device = hotplug_nic(live, nic, index)
        self._qmp(name, "netdev_add", netdev)
        self._qmp(name, "device_add", device)
        self._change_live(name, nics=(*live.nics, nic))

    def detach_nic(self, name: str, nic: Nic, index: int) -> None:
        live = self._require_live(name, "detach NIC from")
        self._unplug(name, f"net{index}")
        with contextlib.suppress(DriverError):
            self._qmp(name, "netdev_del", {"id": f"net{index}"})
        self._change_live(name, nics=tuple(n for n in live.nics if n.mac != nic.mac))

    def _require_live(self, name: str, what: str) -> Machine:
        live = self._live(name)
        if live is None:
            raise DriverError(f"{what} {name}", "domain is not running")
        return live

    def _unplug(self, name: str, device: str) -> None:
        """device_del, then wait until the guest let the device go (it must cooperate)."""
        self._qmp(name, "device_del", {"id": device})
        deadline = time.monotonic() + QMP_TIMEOUT_SECONDS * 6
        while time.monotonic() < deadline:
            paths = self._qmp(name, "qom-list", {"path": "/machine/peripheral"})
            if all(entry.get("name") != device for entry in paths):
                return
            time.sleep(0.2)
        raise DriverError(f"detach {device} from {name}", "the guest did not release it")

    def change_medium(self, name: str, target: str, path: str) -> None:
        self._qmp(
            name,
            "blockdev-change-medium",
            {"id": target, "filename": path, "format": "raw", "read-only-mode": "read-only",
             "force": True},
        )  # fmt: skip
        live = self._live(name)
        if live is not None:
            disks = tuple(replace(d, path=path) if d.target == target else d for d in live.disks)
            self._change_live(name, disks=disks)

    # -- events and connection -----------------------------------------------------------------

    def watch(self, on_event: EventCallback, on_lost: LostCallback) -> None:
        """Events of every running instance's QEMU: the driver attaches to each (and to each
        one started later) and reports its QMP events, and its end when the socket closes."""
        self._on_event = on_event
        self._scanner = asyncio.run_coroutine_threadsafe(self._scan(), self._loop)

    async def _scan(self) -> None:
        while True:
            for pid_file in list(self._instances.glob(f"*/{QEMU_PID_FILE}")):
                name = pid_file.parent.name
                with self._lock:
                    attached = name in self._clients
                if attached:
                    continue
                uuid = await asyncio.to_thread(self._uuid, name)
                if uuid and await asyncio.to_thread(self._pid, name, uuid) is not None:
                    with contextlib.suppress(Exception):
                        async with self._monitor(name):
                            await self._client(name)
            await asyncio.sleep(SCAN_SECONDS)

    def connected(self) -> bool:
        return self._thread.is_alive()

    def reconnect(self) -> None:
        """Nothing to reconnect to: each QEMU is reached on its own socket."""

    def close(self) -> None:
        async def disconnect_all() -> None:
            with self._lock:
                clients = list(self._clients.values())
                self._clients.clear()
                self._on_event = None
            for task in list(self._listeners):
                task.cancel()
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.disconnect()

        if self._scanner is not None:
            self._scanner.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(disconnect_all(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()  # its selector and sockets: a command's driver is one of many


def _repointed(disks: tuple[Disk, ...], path: str) -> tuple[Disk, ...]:
    """`disks` with the boot disk's file replaced by `path`."""
    if not any(disk.target == BOOT_DISK_TARGET for disk in disks):
        raise DriverError("point the boot disk", f"the domain has no disk {BOOT_DISK_TARGET}")
    return tuple(replace(d, path=path) if d.target == BOOT_DISK_TARGET else d for d in disks)


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
