"""The libvirt driver: the only module that imports `libvirt`.

With no URI it opens libvirt's embedded QEMU driver rooted in the state directory
(qemu:///embed?root=STATE/libvirt), which needs no daemon: it writes the root's qemu.conf,
runs libvirt's event loop in a thread and routes libvirt's own log lines to a file.
Every libvirtError is wrapped here, once, into a DriverError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from reconciler.drivers.base import DomainEvent, EventCallback, EventKind, LostCallback
from reconciler.drivers.guestagent import agent_request, decode_agent_reply
from reconciler.drivers.host import busy_ports, is_domain_emulator
from reconciler.drivers.kvm import probe_local_kvm
from reconciler.drivers.libvirt_xml import (
    MARKER_PREFIX,
    DomainXmlError,
    disk_with_source,
    render_disk_xml,
    render_domain_xml,
    render_interface_xml,
    render_marker_xml,
)
from reconciler.drivers.parsedstore import ParsedDefinitions
from reconciler.drivers.snapshotting import (
    format_nodes,
    snapshot_deletion,
    snapshot_transaction,
)
from reconciler.errors import ConnectionLost, DriverError, StateDirBusy
from reconciler.layout import StateLayout
from reconciler.model.accel import KvmSupport
from reconciler.model.actual import (
    DomainFacts,
    ObservedDomain,
    PowerState,
    StateReason,
    UnreadableDomain,
)
from reconciler.model.desired import NetworkSpec, NicType
from reconciler.model.machine import (
    BOOT_DISK_TARGET,
    MARKER_NAMESPACE,
    Disk,
    Machine,
    Nic,
    config_drive_disk,
)

LOG = logging.getLogger(__name__)

EMBEDDED_QEMU_CONF = """\
# Written by reconciler for libvirt's embedded QEMU driver; rewritten on every open.
# QEMU runs as the invoking user (root on a host install) so it can open /dev/kvm.
user = "{user}"
group = "{group}"
# No virtlogd daemon: the embedded driver writes QEMU's output to <root>/log/qemu/NAME.log.
stdio_handler = "file"
# QEMU runs as the invoking user, so relabelling changes no owner and there is nothing to
# remember in XATTRs. Remembering them only produces warnings (stale XATTR timestamps after a
# reboot or a killed start) from forked helpers, which libvirt logs to our stderr.
remember_owner = 0
"""

_P = ParamSpec("_P")
_R = TypeVar("_R")

_event_loop_lock = threading.Lock()
_event_loop_started = False


def embedded_uri(libvirt_root: Path) -> str:
    """The URI of libvirt's embedded QEMU driver rooted at `libvirt_root`."""
    return f"qemu:///embed?root={libvirt_root}"


def prepare_embedded_root(libvirt_root: Path) -> None:
    """Create the root and write its qemu.conf (idempotent)."""
    import grp
    import pwd

    etc = libvirt_root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    text = EMBEDDED_QEMU_CONF.format(
        user=pwd.getpwuid(os.getuid()).pw_name, group=grp.getgrgid(os.getgid()).gr_name
    )
    conf = etc / "qemu.conf"
    if not conf.exists() or conf.read_text() != text:
        temporary = conf.with_name(f".qemu.conf.{os.getpid()}.tmp")
        temporary.write_text(text)
        os.replace(temporary, conf)


def _route_libvirt_logs(log_file: Path | None) -> None:
    """Keep libvirt's own log lines off the user's terminal (unless they asked otherwise).

    Must run before `libvirt` is imported: the library reads the variable when it initialises.
    """
    if "LIBVIRT_LOG_OUTPUTS" in os.environ:
        return
    if log_file is None:
        os.environ["LIBVIRT_LOG_OUTPUTS"] = "4:file:/dev/null"
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        os.environ["LIBVIRT_LOG_OUTPUTS"] = f"3:file:{log_file}"


_native_stderr_routed = False


def _route_native_stderr(log_file: Path | None) -> None:
    """Send whatever C code writes to file descriptor 2 (libvirt itself whatever its log
    settings, the children it forks, anything it runs) to `log_file`, and keep Python's own
    stderr (messages, the log, progress) on the terminal through a copy of the descriptor.

    libvirt has several ways onto the terminal that its log settings do not cover (the log
    outputs of a forked helper, a warning printed before our settings are read); routing the
    descriptor covers them all. Done once per process, and only when Python's stderr is the
    process's descriptor 2 (not when a test captures it in this process)."""
    global _native_stderr_routed
    if _native_stderr_routed or log_file is None:
        return
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor
        return
    try:
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as err:
        LOG.debug("libvirt's output stays on stderr: %s", err)
        return
    old = sys.stderr
    old.flush()
    terminal = os.fdopen(
        os.dup(2), "w", buffering=1, encoding=old.encoding, errors="backslashreplace"
    )
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = terminal
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(terminal)
    _native_stderr_routed = True


def route_process_output(layout: StateLayout) -> None:
    """Send libvirt's log lines and whatever C code writes to descriptor 2 to
    STATE/libvirt.log, Python's stderr staying on the terminal (once per process). Call it
    from the thread that prints (the main one) before another thread opens the driver: a
    message printed while descriptor 2 is being swapped could land in the log instead."""
    log_file = layout.libvirt_log if layout.root.is_dir() else None
    _route_libvirt_logs(log_file)
    _route_native_stderr(log_file)


AGENT_RETRY_SECONDS = 0.2


def _libvirt() -> Any:
    import libvirt

    return libvirt


def _start_event_loop() -> None:
    """libvirt's default event loop, run forever in a daemon thread (once per process)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt = _libvirt()
        libvirt.virEventRegisterDefaultImpl()

        def run_forever() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run_forever, name="libvirt-events", daemon=True).start()
        # libvirt prints every error to stderr by default; we report them ourselves.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _event_loop_started = True


@contextlib.contextmanager
def _stable_cpu_signature(pin: bool) -> Iterator[None]:
    """Run the embedded driver's start-up on one fixed CPU.

    The driver computes a host CPUID signature when it starts and re-probes QEMU (3 to 4 s)
    whenever the signature differs from the one cached under the root. On hosts whose CPUs do
    not report identical CPUID data (seen on nested pseudo-virtualisation), the signature then
    depends on which CPU the process happens to run, and every other run pays the probe.
    Starting on the lowest allowed CPU keeps it stable. Only this thread is pinned, and only
    for the duration; QEMU processes get their own affinity from libvirt.
    """
    allowed = os.sched_getaffinity(0) if pin else set()
    if not allowed or len(allowed) == 1:
        yield
        return
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _wrap_errors(action: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Turn libvirtError raised by the decorated method into DriverError naming `action`."""

    def decorate(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(*args, **kwargs)
            except _libvirt().libvirtError as err:
                name = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
                subject = f"{action} {name}".strip() if len(name) < 64 else action
                driver = args[0]
                if isinstance(driver, LibvirtDriver) and not driver.connected():
                    raise ConnectionLost(subject, _lost_message(driver.uri, err)) from err
                raise DriverError(subject, err.get_error_message() or str(err)) from err

        return wrapper

    return decorate


_STATES = {
    1: PowerState.RUNNING,
    2: PowerState.RUNNING,  # blocked on a resource: still running
    3: PowerState.PAUSED,
    4: PowerState.SHUTDOWN,
    5: PowerState.SHUTOFF,
    6: PowerState.CRASHED,
    7: PowerState.SUSPENDED,
}
_WHY = StateReason
# libvirt's reason codes, in its order, per state
_PAUSED_REASONS = (
    _WHY.UNKNOWN, _WHY.USER, _WHY.MIGRATION, _WHY.SAVE, _WHY.DUMP, _WHY.IOERROR, _WHY.WATCHDOG,
    _WHY.FROM_SNAPSHOT, _WHY.SHUTTING_DOWN, _WHY.SNAPSHOT, _WHY.CRASHED, _WHY.STARTING_UP,
    _WHY.POSTCOPY, _WHY.POSTCOPY_FAILED, _WHY.API_ERROR,
)  # fmt: skip
_SHUTOFF_REASONS = (
    _WHY.UNKNOWN, _WHY.SHUTDOWN, _WHY.DESTROYED, _WHY.CRASHED, _WHY.MIGRATED, _WHY.SAVED,
    _WHY.FAILED, _WHY.FROM_SNAPSHOT, _WHY.DAEMON,
)  # fmt: skip
_RUNNING_REASONS = (
    _WHY.UNKNOWN, _WHY.BOOTED, _WHY.MIGRATED, _WHY.RESTORED, _WHY.FROM_SNAPSHOT, _WHY.UNPAUSED,
    _WHY.MIGRATION_CANCELED, _WHY.SAVE_CANCELED, _WHY.WAKEUP, _WHY.CRASHED, _WHY.POSTCOPY,
)  # fmt: skip


def _reason_name(state: PowerState, reason: int) -> StateReason:
    table = {
        PowerState.PAUSED: _PAUSED_REASONS,
        PowerState.SHUTOFF: _SHUTOFF_REASONS,
        PowerState.RUNNING: _RUNNING_REASONS,
    }.get(state, ())
    return table[reason] if 0 <= reason < len(table) else StateReason.UNKNOWN


_LIFECYCLE_EVENTS = (
    "defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown",
    "pmsuspended", "crashed",
)  # fmt: skip
_STOPPED_DETAILS = ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "snapshot")
_SUSPENDED_DETAILS = (
    "paused", "migrated", "ioerror", "watchdog", "restored", "snapshot", "api-error", "postcopy",
    "postcopy-failed",
)  # fmt: skip


def _lifecycle_detail(event: int, detail: int) -> str:
    name = _LIFECYCLE_EVENTS[event] if 0 <= event < len(_LIFECYCLE_EVENTS) else str(event)
    table = {"stopped": _STOPPED_DETAILS, "suspended": _SUSPENDED_DETAILS}.get(name, ())
    if 0 <= detail < len(table):
        return f"{name}: {table[detail]}"
    return name


# libvirt's watchdog actions, in its order (the words QEMU's WATCHDOG event uses)
_WATCHDOG_ACTIONS = ("none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi")


def _watchdog_action(code: int) -> str:
    return _WATCHDOG_ACTIONS[code] if 0 <= code < len(_WATCHDOG_ACTIONS) else str(code)


def _lost_message(uri: str, err: Any) -> str:
    return f"connection to {uri} lost ({err.get_error_message() or err})"


_LOCAL_HOSTS = (None, "", "localhost", "127.0.0.1", "::1")


def _with_balloon_target(live: Machine | None, definition: Machine) -> Machine | None:
    """The running domain with its balloon's target as its memory. libvirt's live XML shows
    the balloon's actual size, which a guest without a balloon driver leaves at the maximum
    (and which reads as "no maximum" then): the target is what was asked, the definition's
    current memory, as long as the running maximum is the defined one."""
    if live is None:
        return None
    running_maximum = live.max_memory_kib or live.memory_kib
    defined_maximum = definition.max_memory_kib or definition.memory_kib
    if definition.max_memory_kib is None or running_maximum != defined_maximum:
        return live
    return dataclasses.replace(
        live, memory_kib=definition.memory_kib, max_memory_kib=definition.max_memory_kib
    )


def uri_is_local(uri: str) -> bool:
    """Whether a libvirt URI's domains run on this host: it names no other host, whatever its
    transport (`qemu+unix:///system?socket=...` and `qemu+ssh:///system` are local; libvirt's
    test driver runs nothing anywhere)."""
    parts = urlsplit(uri)
    return parts.hostname in _LOCAL_HOSTS and not parts.scheme.startswith("test")


@dataclasses.dataclass(frozen=True, slots=True)
class _BulkFacts:
    """What one listing asked of libvirt for every domain at once, by UUID."""

    states: dict[str, tuple[int, int]]  # state and reason codes
    persistent: frozenset[str]
    autostart: frozenset[str] | None  # None: not asked (the embedded driver's is not used)


class LibvirtDriver:
    """Driver over one libvirt connection (any URI, embedded QEMU by default)."""

    def __init__(
        self, uri: str, connection: Any, layout: StateLayout | None, *, embedded: bool = False
    ) -> None:
        self.uri = uri
        self._conn = connection
        self._layout = layout  # the state directory's (None: a tool's connection)
        self._embedded_root = layout.libvirt_root if embedded and layout is not None else None
        self._state_dir = None if layout is None else layout.root
        self._parsed = ParsedDefinitions(None if layout is None else layout.parsed_definitions)
        self._watchers: tuple[EventCallback, LostCallback] | None = None
        self._callback_ids: list[int] = []
        self._watch_lock = threading.Lock()

    @classmethod
    def open(cls, uri: str | None, layout: StateLayout) -> LibvirtDriver:
        """Open `uri`, or the embedded QEMU driver rooted in the state directory when it is
        None.

        Raises StateDirBusy when another process holds the embedded root, DriverError when the
        connection cannot be opened.
        """
        state_dir = layout.root
        embedded_root = None
        if uri is None:
            embedded_root = layout.libvirt_root
            prepare_embedded_root(embedded_root)
            uri = embedded_uri(embedded_root)
        route_process_output(layout)
        _start_event_loop()
        if embedded_root is None:
            return cls(uri, _connect(uri, state_dir, None), layout)
        with _embedded_lock:
            if not _embedded:
                _embedded[uri] = _connect(uri, state_dir, embedded_root)
            if uri not in _embedded:
                raise DriverError(
                    f"cannot open {uri}",
                    f"this process already runs libvirt's embedded driver for "
                    f"{next(iter(_embedded))}, and it serves one root per process",
                )
            return cls(uri, _embedded[uri], layout, embedded=True)

    def kvm_support(self) -> KvmSupport:
        parts = urlsplit(self.uri)
        if parts.scheme.startswith("test"):
            return KvmSupport(False, "libvirt's test driver runs no guests")
        if self._local():
            return probe_local_kvm()
        return self._remote_kvm_support(parts.hostname or "")

    def _local(self) -> bool:
        """Whether the domains run on this host (so its devices and ports are ours to see)."""
        return uri_is_local(self.uri)

    def _remote_kvm_support(self, host: str) -> KvmSupport:
        libvirt = _libvirt()
        try:
            self._conn.getDomainCapabilities(None, "x86_64", None, "kvm")
        except libvirt.libvirtError as err:
            return KvmSupport(False, f"libvirt on {host} offers no kvm: {err.get_error_message()}")
        return KvmSupport(True, f"libvirt on {host} offers kvm")

    @_wrap_errors("list domains")
    def list_domains(self) -> list[ObservedDomain]:
        """Every domain: its state, persistence and autostart asked of libvirt for all of
        them at once (four calls, not three per domain: over a daemon's socket each is a
        round trip), then each definition (and a running one's live definition)."""
        domains = self._conn.listAllDomains(0)
        bulk = self._bulk_facts()
        records = [self._record(domain, bulk) for domain in domains]
        self._parsed.trim(len(records))
        return records

    def _bulk_facts(self) -> _BulkFacts | None:
        """The state of every domain, and which are persistent and autostart, by UUID (None:
        the driver cannot say for all at once; each domain is asked on its own)."""
        libvirt = _libvirt()
        try:
            stats = self._conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
            persistent = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
            autostart = (
                None
                if self._embedded_root is not None
                else self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
            )
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            return None
        states = {
            domain.UUIDString(): (values["state.state"], values["state.reason"])
            for domain, values in stats
            if "state.state" in values and "state.reason" in values
        }
        return _BulkFacts(
            states,
            frozenset(domain.UUIDString() for domain in persistent),
            None if autostart is None else frozenset(d.UUIDString() for d in autostart),
        )

    @_wrap_errors("read domain")
    def lookup(self, name: str) -> ObservedDomain | None:
        domain = self._find(name)
        return None if domain is None else self._record(domain)

    def _record(self, domain: Any, bulk: _BulkFacts | None = None) -> ObservedDomain:
        libvirt = _libvirt()
        uuid = domain.UUIDString()
        known = None if bulk is None else bulk.states.get(uuid)
        if known is None:  # not listed at once (or defined since): asked on its own
            bulk = None
        state_code, reason_code = domain.state() if known is None else known
        state = _STATES.get(state_code, PowerState.OTHER)
        active = state.active
        name = domain.name()
        reason = _reason_name(state, reason_code)
        try:
            definition = self._parsed.parse(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            live = self._parsed.parse(domain.XMLDesc(0)) if active else None
            live = _with_balloon_target(live, definition)
        except DomainXmlError as err:
            LOG.warning("domain %s: %s", name, err)
            return UnreadableDomain(name, uuid, state, reason, str(err))
        if bulk is not None:
            persistent = uuid in bulk.persistent
            autostart = None if bulk.autostart is None else uuid in bulk.autostart
        else:
            persistent = bool(domain.isPersistent())
            autostart = None if self._embedded_root is not None else bool(domain.autostart())
        return DomainFacts(
            name=name,
            uuid=uuid,
            state=state,
            state_reason=reason,
            persistent=persistent,
            definition=definition,
            live_definition=live,
            # the embedded driver's autostart is not used: the daemon starts instances
            autostart=autostart,
        )

    def _find(self, name: str) -> Any:
        libvirt = _libvirt()
        try:
            return self._conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN and self.connected():
                return None
            if not self.connected():
                raise ConnectionLost(f"look up {name}", _lost_message(self.uri, err)) from err
            raise DriverError(f"look up {name}", err.get_error_message()) from err

    def _require(self, name: str) -> Any:
        domain = self._find(name)
        if domain is None:
            raise DriverError(f"domain {name}", "no such domain (undefined meanwhile?)")
        return domain

    def cannot_express(self, machine: Machine) -> tuple[str, ...]:
        """libvirt runs every machine the schema describes, on this host. A libvirt on
        another host cannot: the disks, config drives and image cache are files of this
        host's state directory, which that host's QEMU would look for on its own disks."""
        host = urlsplit(self.uri).hostname
        if host in _LOCAL_HOSTS:
            return ()
        return (
            f"{self.uri} runs domains on {host}, which cannot open the disks this reconciler "
            f"makes in its state directory on this host ({self._state_dir}); remote libvirt "
            "URIs are not supported: run one reconciler on each host, over the same "
            "manifests (see the README, 'One reconciler per host')",
        )

    @_wrap_errors("define")
    def define(self, machine: Machine) -> None:
        self._conn.defineXML(render_domain_xml(machine))

    @_wrap_errors("mark")
    def set_marker(self, name: str, machine: Machine) -> None:
        libvirt = _libvirt()
        self._require(name).setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            render_marker_xml(machine),
            MARKER_PREFIX,
            MARKER_NAMESPACE,
            libvirt.VIR_DOMAIN_AFFECT_CONFIG,
        )

    @_wrap_errors("point the boot disk of")
    def repoint_boot_disk(self, name: str, path: str) -> None:
        libvirt = _libvirt()
        domain = self._require(name)
        xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        try:
            disk = disk_with_source(xml, BOOT_DISK_TARGET, path)
        except DomainXmlError as err:
            raise DriverError(f"point the boot disk of {name} at {path}", str(err)) from err
        domain.updateDeviceFlags(disk, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    @_wrap_errors("define")
    def define_xml(self, xml: str) -> None:
        """Define a domain from libvirt XML as it is (outside the seam: for tests and tools
        that check what libvirt accepts)."""
        self._conn.defineXML(xml)

    @_wrap_errors("read the definition of")
    def xml(self, name: str) -> str:
        """A domain's persistent definition as libvirt XML (outside the seam: for tests and
        tools)."""
        libvirt = _libvirt()
        return str(self._require(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    @_wrap_errors("reset")
    def reset(self, name: str) -> None:
        """Reset a running domain, as its reset button would (outside the seam: for tests
        that reboot a guest with its QEMU process kept)."""
        self._require(name).reset()

    @_wrap_errors("start")
    def start(self, name: str) -> None:
        self._require(name).create()

    @_wrap_errors("shut down")
    def request_shutdown(self, name: str) -> bool:
        libvirt = _libvirt()
        domain = self._require(name)
        try:
            try:
                domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            except libvirt.libvirtError as err:
                unsupported = (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT)
                if err.get_error_code() not in unsupported:
                    raise
                domain.shutdown()  # a hypervisor without that method: its default one
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                return False  # stopped meanwhile, or not running (paused, shutting down)
            with contextlib.suppress(libvirt.libvirtError):
                if not domain.isActive():  # said otherwise by some hypervisors
                    return False
            raise
        return True

    @_wrap_errors("stop")
    def force_stop(self, name: str) -> None:
        libvirt = _libvirt()
        domain = self._require(name)
        try:
            domain.destroy()
        except libvirt.libvirtError as err:
            if not _stopped_meanwhile(err, domain):
                raise

    @_wrap_errors("tear down")
    def tear_down(self, name: str) -> str:
        libvirt = _libvirt()
        domain = self._require(name)
        try:
            domain.destroy()
        except libvirt.libvirtError as err:
            if not domain.isActive():
                return "it stopped meanwhile"
            refused = err.get_error_message() or str(err)
        else:
            return "destroyed the half-started domain"
        pid = self._emulator_pid(name, domain.UUIDString())
        if pid is None:
            raise DriverError(
                f"tear down {name}",
                f"libvirt refused ({refused}) and no QEMU process of this domain was found",
            )
        with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
            os.kill(pid, signal.SIGKILL)
        return (
            f"libvirt refused to destroy it ({refused}), so its QEMU process {pid} (checked to "
            "be this domain's by its command line) was killed"
        )

    def _emulator_pid(self, name: str, uuid: str) -> int | None:
        """The pid of this domain's QEMU, from libvirt's pid file, if that process really is
        it (its executable is a QEMU and its command line names this domain and uuid)."""
        if self._embedded_root is not None and self._layout is not None:
            pid_file = self._layout.libvirt_pid_file(name)
        elif self._local() and urlsplit(self.uri).scheme.split("+")[0] == "qemu":
            pid_file = Path("/run/libvirt/qemu") / f"{name}.pid"
        else:
            return None  # a remote host's processes are out of reach
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            executable = os.readlink(f"/proc/{pid}/exe")
        except (OSError, ValueError):
            return None
        return pid if is_domain_emulator(cmdline, executable, name, uuid) else None

    def host_memory(self) -> int | None:
        libvirt = _libvirt()
        try:
            return int(self._conn.getInfo()[1]) * 1024**2
        except libvirt.libvirtError as err:
            LOG.debug("host memory of %s unknown: %s", self.uri, err)
            return None

    @_wrap_errors("undefine")
    def undefine(self, name: str) -> None:
        libvirt = _libvirt()
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            # the NVRAM file is the plan's to remove, once proven the instance's own: libvirt
            # would remove whatever file a hand-edited definition names
            | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
        )
        domain = self._require(name)
        try:
            domain.undefineFlags(flags)
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                raise
            domain.undefine()  # a driver without these flags (test:///) has none of those

    @_wrap_errors("resize disk of")
    def resize_disk(self, name: str, target: str, size_bytes: int) -> None:
        libvirt = _libvirt()
        self._require(name).blockResize(target, size_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    @_wrap_errors("resume")
    def resume(self, name: str) -> None:
        self._require(name).resume()

    @_wrap_errors("set memory of")
    def set_memory(self, name: str, memory_kib: int) -> None:
        libvirt = _libvirt()
        self._require(name).setMemoryFlags(memory_kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @_wrap_errors("set vCPUs of")
    def set_vcpus(self, name: str, vcpus: int) -> None:
        libvirt = _libvirt()
        self._require(name).setVcpusFlags(vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @_wrap_errors("attach a disk to")
    def attach_disk(self, name: str, disk: Disk) -> None:
        libvirt = _libvirt()
        self._require(name).attachDeviceFlags(render_disk_xml(disk), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @_wrap_errors("detach a disk from")
    def detach_disk(self, name: str, disk: Disk) -> None:
        libvirt = _libvirt()
        self._require(name).detachDeviceFlags(render_disk_xml(disk), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @_wrap_errors("attach a network interface to")
    def attach_nic(self, name: str, nic: Nic, index: int) -> None:
        libvirt = _libvirt()
        xml = render_interface_xml(nic, index)
        self._require(name).attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @_wrap_errors("detach a network interface from")
    def detach_nic(self, name: str, nic: Nic, index: int) -> None:
        libvirt = _libvirt()
        xml = render_interface_xml(nic, index)
        self._require(name).detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @_wrap_errors("set autostart of")
    def set_autostart(self, name: str, autostart: bool) -> None:
        if self._embedded_root is not None:
            return  # the embedded driver's autostart would start domains at every open
        self._require(name).setAutostart(1 if autostart else 0)

    @_wrap_errors("change medium of")
    def change_medium(self, name: str, target: str, path: str) -> None:
        libvirt = _libvirt()
        if target != config_drive_disk(path).target:
            raise DriverError(f"change medium of {name}", f"{target} is not the config drive")
        xml = render_disk_xml(config_drive_disk(path))
        # forced: a guest that keeps the drive mounted has locked the tray, and the medium is
        # read-only, so nothing is lost by taking it away
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE
        self._require(name).updateDeviceFlags(xml, flags)

    def check_attachments(self, networks: tuple[NetworkSpec, ...]) -> tuple[str, ...]:
        problems = []
        for index, network in enumerate(networks):
            problem = self._attachment_problem(network)
            if problem is not None:
                problems.append(f"interface {index}: {problem}")
            if self._local():
                problems += busy_ports(index, network)
        return tuple(problems)

    def _attachment_problem(self, network: NetworkSpec) -> str | None:
        """Why the interface's network, bridge or device is not there (None when it is, or
        when it cannot be seen from here)."""
        libvirt = _libvirt()
        if network.type is NicType.NETWORK:
            try:
                found = self._conn.networkLookupByName(network.source)
                active = bool(found.isActive())
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    return (
                        f"libvirt network {network.source!r} cannot be used: {self.uri} has no "
                        "network driver (the embedded driver has none; use --connect "
                        "qemu:///system, or type: user or bridge)"
                    )
                return f"libvirt network {network.source!r} does not exist on {self.uri}"
            return None if active else f"libvirt network {network.source!r} is not active"
        if network.type in (NicType.BRIDGE, NicType.DIRECT) and self._local():
            device = Path("/sys/class/net") / (network.source or "")
            if network.type is NicType.BRIDGE and not (device / "bridge").is_dir():
                return f"host bridge {network.source!r} does not exist"
            if network.type is NicType.DIRECT and not device.exists():
                return f"host network device {network.source!r} does not exist"
        return None

    @_wrap_errors("ask the guest agent of")
    def agent_command(
        self, name: str, command: str, arguments: dict[str, Any] | None, timeout: float
    ) -> Any:
        import libvirt_qemu  # the QEMU-only calls, beside libvirt

        libvirt = _libvirt()
        request = agent_request(command, arguments)
        domain = self._require(name)
        deadline = time.monotonic() + timeout
        while True:
            seconds = max(1, round(deadline - time.monotonic()))
            try:
                reply = libvirt_qemu.qemuAgentCommand(domain, request, seconds, 0)
                break
            except libvirt.libvirtError as err:
                # a process that just opened the embedded root connects to the agents of the
                # running domains in the background: "not connected" for a moment
                not_yet = "not connected" in (err.get_error_message() or "")
                if not not_yet or time.monotonic() + AGENT_RETRY_SECONDS > deadline:
                    raise
                time.sleep(AGENT_RETRY_SECONDS)
        return decode_agent_reply(f"ask the guest agent of {name}", reply or "")

    @_wrap_errors("snapshot the disks of")
    def snapshot_disks(self, name: str, label: str, paths: tuple[str, ...]) -> None:
        nodes = format_nodes(self._monitor(name, "query-block"), paths, f"snapshot {name}")
        self._monitor(name, "transaction", snapshot_transaction(nodes, label))

    @_wrap_errors("delete a snapshot of")
    def delete_disk_snapshots(self, name: str, label: str, paths: tuple[str, ...]) -> None:
        subject = f"delete snapshot of {name}"
        nodes = format_nodes(self._monitor(name, "query-block"), paths, subject)
        for node in nodes.values():
            self._monitor(
                name, "blockdev-snapshot-delete-internal-sync", snapshot_deletion(node, label)
            )

    def _monitor(self, name: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """One QMP command on the running domain's monitor, through libvirt (which marks the
        domain tainted custom-monitor in its log, and changes nothing else)."""
        import libvirt_qemu  # the QEMU-only calls, beside libvirt

        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        reply = libvirt_qemu.qemuMonitorCommand(self._require(name), json.dumps(request), 0)
        try:
            answer = json.loads(reply)
        except ValueError as err:
            raise DriverError(f"{command} {name}", "QEMU answered no JSON") from err
        if "error" in answer:
            error = answer["error"]
            detail = error.get("desc") if isinstance(error, dict) else None
            raise DriverError(f"{command} {name}", str(detail or error))
        return answer.get("return")

    @_wrap_errors("read the DHCP leases of network")
    def dhcp_leases(self, network: str) -> dict[str, str]:
        leases = self._conn.networkLookupByName(network).DHCPLeases()
        return {
            str(lease["mac"]).lower(): str(lease["ipaddr"])
            for lease in leases or []
            if lease.get("mac") and lease.get("ipaddr")
        }

    @_wrap_errors("read disk of")
    def disk_capacity(self, name: str, target: str) -> int:
        capacity, _allocation, _physical = self._require(name).blockInfo(target)
        return int(capacity)

    @_wrap_errors("read the CPU time of")
    def cpu_seconds(self, name: str) -> float | None:
        return float(self._require(name).info()[4]) / 1e9  # cpuTime, in nanoseconds

    def log_hint(self, name: str) -> str:
        if self._embedded_root is None or self._layout is None:
            return "see the domain's QEMU log on the libvirt host"
        log = self._layout.libvirt_qemu_log(name)
        errors = _error_lines(log)
        return f"QEMU log {log}" + (f" says: {errors}" if errors else "")

    def watch(self, on_event: EventCallback, on_lost: LostCallback) -> None:
        with self._watch_lock:
            self._watchers = (on_event, on_lost)
            self._register_callbacks()

    def _register_callbacks(self) -> None:
        """Register the watched events on the current connection (lock held)."""
        if self._watchers is None:
            return
        libvirt = _libvirt()
        on_event, on_lost = self._watchers

        def deliver(kind: EventKind, detail: Callable[..., str]) -> Callable[..., None]:
            def callback(_conn: Any, domain: Any, *args: Any) -> None:
                try:
                    on_event(DomainEvent(domain.name(), kind, detail(*args[:-1])))
                except Exception:  # an exception must not unwind into libvirt's event loop
                    LOG.exception("handling a %s event", kind)

            return callback

        events = (
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, EventKind.LIFECYCLE, _lifecycle_detail),
            (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, EventKind.REBOOT, lambda: "rebooted"),
            (
                libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG,
                EventKind.WATCHDOG,
                lambda action: f"action {_watchdog_action(action)}",
            ),
            (
                libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON,
                EventKind.IO_ERROR,
                lambda path, dev, action, reason: f"{dev} ({path}): {reason}",
            ),
            (
                libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                EventKind.DEVICE_REMOVED,
                lambda alias: alias,
            ),
            (
                libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
                EventKind.METADATA_CHANGE,
                lambda kind, namespace: f"{namespace or kind}",
            ),
        )
        ids = []
        try:
            for event_id, kind, detail in events:
                ids.append(
                    self._conn.domainEventRegisterAny(None, event_id, deliver(kind, detail), None)
                )
        except libvirt.libvirtError as err:
            raise DriverError("register domain events", err.get_error_message()) from err
        self._callback_ids = ids
        if self._embedded_root is None:

            def closed(_conn: Any, reason: int, _opaque: Any) -> None:
                reasons = ("error", "end of file", "keepalive timeout", "client closed")
                why = reasons[reason] if 0 <= reason < len(reasons) else str(reason)
                try:
                    on_lost(f"connection to {self.uri} closed ({why})")
                except Exception:
                    LOG.exception("handling a lost connection")

            with contextlib.suppress(libvirt.libvirtError):
                self._conn.registerCloseCallback(closed, None)

    def _deregister_callbacks(self) -> None:
        libvirt = _libvirt()
        for callback_id in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.domainEventDeregisterAny(callback_id)
        self._callback_ids = []
        if self._embedded_root is None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.unregisterCloseCallback()

    def connected(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except _libvirt().libvirtError:
            return False

    def reconnect(self) -> None:
        if self._embedded_root is not None or self.connected():
            return  # the embedded driver lives in this process: it cannot be lost
        libvirt = _libvirt()
        connection = _connect(self.uri, self._state_dir or Path("."), None)
        with self._watch_lock:
            old, self._conn = self._conn, connection
            self._callback_ids = []
            with contextlib.suppress(libvirt.libvirtError):
                old.close()
            self._register_callbacks()
        LOG.info("reconnected to %s", self.uri)

    def close(self) -> None:
        with self._watch_lock:
            self._deregister_callbacks()
            self._watchers = None
        try:
            self._parsed.save()
        except OSError as err:  # a cache: the next pass parses again
            LOG.debug("cannot keep the parsed definitions: %s", err)
        if self._embedded_root is not None:
            return  # the process keeps its one embedded connection (see _keep_embedded)
        libvirt = _libvirt()
        started = time.monotonic()
        try:
            self._conn.close()
        except libvirt.libvirtError as err:
            LOG.debug("closing %s: %s", self.uri, err)
        LOG.debug("closed %s in %.3fs", self.uri, time.monotonic() - started)


# libvirt registers the QEMU driver anew on every embedded open, and a process runs out of
# driver slots after a few dozen ("Too many drivers"); the embedded driver also serves only
# one root per process. So a process opens its embedded connection once and keeps it.
_embedded_lock = threading.Lock()
_embedded: dict[str, Any] = {}


def _connect(uri: str, state_dir: Path, embedded_root: Path | None) -> Any:
    """libvirt.open, with its errors said in our words."""
    libvirt = _libvirt()
    started = time.monotonic()
    try:
        with _stable_cpu_signature(embedded_root is not None):
            connection = libvirt.open(uri)
    except libvirt.libvirtError as err:
        message = err.get_error_message() or str(err)
        if embedded_root is not None and "Failed to acquire pid file" in message:
            raise StateDirBusy(
                f"state directory {state_dir} is in use by another process "
                f"({_embedded_holder(StateLayout(state_dir))})",
                "only one process at a time can hold libvirt's embedded driver",
            ) from err
        raise DriverError(f"cannot open libvirt connection {uri}", message) from err
    LOG.debug("opened %s in %.3fs", uri, time.monotonic() - started)
    return connection


def _stopped_meanwhile(err: Any, domain: Any) -> bool:
    """Whether a refused stop request only means the domain stopped on its own meanwhile."""
    return bool(
        err.get_error_code() == _libvirt().VIR_ERR_OPERATION_INVALID and not domain.isActive()
    )


def _error_lines(log: Path) -> str:
    """The last lines of a QEMU log that say error or failure, joined."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    wanted = [line.strip() for line in lines if re.search(r"error|failure|fail", line, re.I)]
    return " / ".join(wanted[-3:])


def _embedded_holder(layout: StateLayout) -> str:
    """Who holds the embedded root, from libvirt's own pid file."""
    try:
        pid = layout.libvirt_driver_pid.read_text().strip()
    except OSError:
        return "holder unknown"
    if not pid.isdigit():
        return "holder unknown"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid}: {command[:120]}"
