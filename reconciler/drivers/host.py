"""Facts about the local host that both drivers read: whether a process is a given domain's
QEMU, whether a forwarded host port is free, how much memory there is."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from reconciler.model.desired import NetworkSpec, PortForward, PortProtocol


def _domain_of(cmdline: bytes) -> tuple[str, str] | None:
    """The domain name and UUID (lower case) a QEMU command line carries (-name guest=NAME,...
    and -uuid), or None."""
    args = cmdline.decode(errors="replace").split("\0")
    values = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i] in ("-name", "-uuid")}
    guest = values.get("-name", "")
    if not guest.startswith("guest=") or "-uuid" not in values:
        return None
    return guest.removeprefix("guest=").split(",", 1)[0], values["-uuid"].lower()


def _is_emulator(executable: str) -> bool:
    return Path(executable.removesuffix(" (deleted)")).name.startswith("qemu-system-")


def is_domain_emulator(cmdline: bytes, executable: str, name: str, uuid: str) -> bool:
    """Whether a process (its NUL-separated command line and executable) is the QEMU started
    for domain `name` with `uuid` (by libvirt or by the QMP driver: both pass -name and
    -uuid)."""
    return _is_emulator(executable) and _domain_of(cmdline) == (name, uuid.lower())


def emulator_process(pid: int, name: str, uuid: str) -> bool:
    """Whether live process `pid` is domain `name`'s QEMU (a reused pid is not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        executable = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return is_domain_emulator(cmdline, executable, name, uuid)


def emulators() -> dict[tuple[str, str], int]:
    """Every live QEMU on this host that carries a domain's name and UUID, by (name, UUID in
    lower case): one look at each process's executable, and at the command line of QEMUs
    only. A zombie has no executable left, so it is never taken for one."""
    found: dict[tuple[str, str], int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if not _is_emulator(os.readlink(f"/proc/{entry}/exe")):
                continue
            domain = _domain_of(Path(f"/proc/{entry}/cmdline").read_bytes())
        except OSError:
            continue
        if domain is not None:
            found[domain] = int(entry)
    return found


def find_emulator(name: str, uuid: str) -> int | None:
    """The pid of a live QEMU started for domain `name` with `uuid`, found by its command line
    among all processes (for one whose pid file is missing or wrong)."""
    pid = emulators().get((name, uuid.lower()))
    return pid if pid is not None and emulator_process(pid, name, uuid) else None


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs: it exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] != "Z"


def process_cpu_seconds(pid: int) -> float | None:
    """The CPU time process `pid` has used (user and system, all its threads), in seconds;
    None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (OSError, ValueError, IndexError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def port_in_use(port: PortForward) -> str | None:
    """Why QEMU could not listen on a forwarded host port now (None when it could)."""
    kind = socket.SOCK_STREAM if port.protocol is PortProtocol.TCP else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as QEMU's slirp does
        try:
            probe.bind((port.address, port.host))
        except OSError as err:
            return err.strerror or str(err)
    return None


def busy_ports(index: int, network: NetworkSpec) -> list[str]:
    """Why the forwards of interface `index` cannot be set up now, one line per busy port."""
    return [
        f"interface {index}: host port {port.address}:{port.host}/{port.protocol.value} is in "
        f"use ({why}); the forward to guest port {port.guest} cannot be set up"
        for port in network.ports
        if (why := port_in_use(port)) is not None
    ]


def local_memory() -> int | None:
    """Bytes of memory on this host (None when /proc/meminfo cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
