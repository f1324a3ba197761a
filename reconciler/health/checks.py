"""One check of one probe against a running guest: TCP, HTTP, the guest agent's ping, a
command through the agent, cloud-init's verdict. Every check has a deadline and never raises:
a failure is a result that says why.

Where a port is reached: through the user-mode port forward to it (QEMU listens on the host,
127.0.0.1 unless the forward says otherwise), else at the guest's address on an interface
that is not user-mode (guest agent, DHCP lease or neighbour table; see health.addresses).
QEMU's user-mode network accepts a connection on the host side before it knows whether the
guest does; the guest's refusal then closes it at once. A TCP check through a forward
therefore succeeds only when the connection stays open, or the guest speaks first, until
its timeout.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.drivers.base import Driver
from reconciler.errors import DriverError
from reconciler.health.cloudinit import CloudInitConsole, CloudInitState, result_errors, shown
from reconciler.health.conditions import ProbeResult
from reconciler.model.desired import NicType, ProbeKind, ProbeSpec
from reconciler.model.machine import Machine

CONSOLE_READ_BYTES = 4 * 1024**2  # read of the console per check, at most
EXEC_OUTPUT_CHARS = 200  # of a command's output, in its message
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"
EXEC_POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    forwarded: bool  # through a user-mode port forward

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def endpoint(
    machine: Machine, port: int, guest_address: Callable[[str], str | None]
) -> Endpoint | None:
    """Where guest port `port` is reached from the host: the user-mode forward to it, else
    the guest's address on another interface (`guest_address(mac)`); None: nowhere."""
    for nic in machine.nics:
        if nic.type is NicType.USER:
            for forward in nic.ports:
                if forward.guest == port and forward.protocol.value == "tcp":
                    host = "127.0.0.1" if forward.address == "0.0.0.0" else forward.address
                    return Endpoint(host, forward.host, True)
    for nic in machine.nics:
        if nic.type is not NicType.USER:
            address = guest_address(nic.mac)
            if address is not None:
                return Endpoint(address, port, False)
    return None


@dataclass(slots=True)
class ConsoleFollower:
    """The serial console log of one domain, read as it grows; a shorter file (a new QEMU
    truncated it) starts over."""

    path: Path
    cloud_init: CloudInitConsole = field(default_factory=CloudInitConsole)
    offset: int = 0

    def skip_to_end(self) -> None:
        """Read from what the log holds now on (a reboot: the earlier boots are done)."""
        try:
            self.offset = os.stat(self.path).st_size
        except OSError:
            self.offset = 0
        self.cloud_init = CloudInitConsole()

    def update(self) -> CloudInitConsole:
        try:
            descriptor = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return self.cloud_init
        with os.fdopen(descriptor, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size < self.offset:
                self.cloud_init, self.offset = CloudInitConsole(), 0
            stream.seek(self.offset)
            data = stream.read(CONSOLE_READ_BYTES)
        self.offset += len(data)
        self.cloud_init.feed(data.decode("utf-8", errors="replace"))
        return self.cloud_init


@dataclass(frozen=True, slots=True)
class Target:
    """The running guest a check is made against."""

    name: str
    machine: Machine  # as it runs
    driver: Driver
    console: ConsoleFollower
    guest_address: Callable[[str], str | None] = lambda _mac: None


def check(probe: ProbeSpec, target: Target) -> ProbeResult:
    """Run one check of `probe` against `target` within its timeout."""
    timeout = float(probe.timeout_seconds)
    try:
        if probe.kind in (ProbeKind.TCP, ProbeKind.HTTP):
            assert probe.port is not None
            where = endpoint(target.machine, probe.port, target.guest_address)
            if where is None:
                return ProbeResult(False, f"guest port {probe.port} has no route from the host yet "
                                   "(no port forward, no known guest address)")  # fmt: skip
            if probe.kind is ProbeKind.TCP:
                return _tcp(where, timeout)
            return _http(where, probe, timeout)
        if probe.kind is ProbeKind.GUEST_AGENT:
            target.driver.agent_command(target.name, "guest-ping", None, timeout)
            return ProbeResult(True, "the guest agent answered")
        if probe.kind is ProbeKind.EXEC:
            return _exec(target, probe.command, timeout)
        return _cloud_init(target, timeout)
    except DriverError as err:
        return ProbeResult(False, err.cause or str(err))


def _tcp(where: Endpoint, timeout: float) -> ProbeResult:
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((where.host, where.port), timeout=timeout) as connection:
            if not where.forwarded:
                return ProbeResult(True, f"connected to {where}")
            left = deadline - time.monotonic()
            if left > 0:
                connection.settimeout(left)
                try:
                    if connection.recv(1) == b"":
                        return ProbeResult(False, f"the guest closed {where} (nothing listens)")
                except TimeoutError:
                    pass  # still open: the guest accepted and waits for us to speak
            return ProbeResult(True, f"connected to {where}")
    except ConnectionResetError:
        return ProbeResult(False, f"the guest reset {where} (nothing listens)")
    except TimeoutError:
        return ProbeResult(False, f"no connection to {where} within {timeout:g} s")
    except OSError as err:
        return ProbeResult(False, f"{where}: {err.strerror or err}")


def _http(where: Endpoint, probe: ProbeSpec, timeout: float) -> ProbeResult:
    import http.client  # here: a pass that probes nothing over HTTP never loads it (nor email)

    connection = http.client.HTTPConnection(where.host, where.port, timeout=timeout)
    try:
        connection.request("GET", probe.path, headers={"User-Agent": "reconciler-probe"})
        response = connection.getresponse()
        status = response.status
        response.read(65536)
    except (OSError, http.client.HTTPException) as err:
        what = getattr(err, "strerror", None) or type(err).__name__
        return ProbeResult(False, f"GET {where}{probe.path}: {what}")
    finally:
        connection.close()
    wanted = status == probe.expect_status if probe.expect_status else 200 <= status < 400
    return ProbeResult(wanted, f"GET {where}{probe.path}: {status}")


def _exec(target: Target, command: tuple[str, ...], timeout: float) -> ProbeResult:
    code, output = guest_exec(target.driver, target.name, command, timeout)
    if code is None:
        return ProbeResult(False, f"did not exit within {timeout:g} s")
    said = f": {output}" if output else ""
    return ProbeResult(code == 0, f"exited {code}{said}")


def guest_exec(
    driver: Driver, name: str, command: tuple[str, ...], timeout: float
) -> tuple[int | None, str]:
    """Run `command` in the guest through its agent; its exit code (None: still running at
    the deadline) and the end of its output (stdout then stderr), safe to print."""
    deadline = time.monotonic() + timeout
    arguments = {"path": command[0], "arg": list(command[1:]), "capture-output": True}
    started = driver.agent_command(name, "guest-exec", arguments, timeout)
    pid = started.get("pid") if isinstance(started, dict) else None
    if not isinstance(pid, int):
        raise DriverError(f"run a command in {name}", "the guest agent returned no pid")
    while True:
        left = max(0.5, deadline - time.monotonic())
        status = driver.agent_command(name, "guest-exec-status", {"pid": pid}, left)
        if isinstance(status, dict) and status.get("exited"):
            code = status.get("exitcode")
            output = _decoded(status.get("out-data")) + _decoded(status.get("err-data"))
            text = shown(" ".join(output.split()))[-EXEC_OUTPUT_CHARS:]
            return (code if isinstance(code, int) else -1), text
        if time.monotonic() >= deadline:
            return None, ""
        time.sleep(EXEC_POLL_SECONDS)


def _decoded(data: Any) -> str:
    if not isinstance(data, str):
        return ""
    try:
        return base64.b64decode(data[-65536:], validate=False).decode("utf-8", errors="replace")
    except ValueError:
        return ""


def _cloud_init(target: Target, timeout: float) -> ProbeResult:
    """The guest agent's reading of cloud-init's result file, where there is an agent and the
    file; else the console's."""
    if target.machine.guest_agent:
        try:
            text = read_guest_file(target.driver, target.name, CLOUD_INIT_RESULT, timeout)
        except DriverError:
            text = None  # no agent yet, or no result yet: the console says more
        errors = None if text is None else result_errors(text)
        if errors is not None:
            if errors:
                return ProbeResult(False, "cloud-init finished with errors: " + " | ".join(errors),
                                   "CloudInitFailed")  # fmt: skip
            return ProbeResult(True, f"cloud-init finished ({CLOUD_INIT_RESULT})")
    seen = target.console.update()
    reason = "CloudInitFailed" if seen.state is CloudInitState.FAILED else ""
    return ProbeResult(seen.state is CloudInitState.DONE, seen.describe(), reason)


def read_guest_file(driver: Driver, name: str, path: str, timeout: float) -> bytes:
    """A small file of the guest (up to 64 KiB), read through its agent."""
    handle = driver.agent_command(name, "guest-file-open", {"path": path, "mode": "r"}, timeout)
    if not isinstance(handle, int):
        raise DriverError(f"read {path} in {name}", "the guest agent returned no handle")
    try:
        read = driver.agent_command(
            name, "guest-file-read", {"handle": handle, "count": 65536}, timeout
        )
    finally:
        driver.agent_command(name, "guest-file-close", {"handle": handle}, timeout)
    data = read.get("buf-b64") if isinstance(read, dict) else None
    if not isinstance(data, str):
        raise DriverError(f"read {path} in {name}", "the guest agent returned no data")
    try:
        return base64.b64decode(data, validate=False)
    except ValueError as err:
        raise DriverError(f"read {path} in {name}", "the guest agent's data is not base64") from err
