"""The shortest hand-written path to N running instances, for comparison with reconciler:
one thread per instance runs `qemu-img create` for its overlay, then defineXML + create.
And the shortest hand-written no-op: list the domains with their XML, check that each of
the N runs and its disk file is there, exit.

    python bench/handwritten.py create URI STATE_DIR BASE PREFIX N
    python bench/handwritten.py noop URI STATE_DIR PREFIX N
    python bench/handwritten.py cleanup URI STATE_DIR PREFIX...

Without libvirt (URI `qemu`, for the QMP driver's comparison): one thread per instance runs
`qemu-img create`, then QEMU itself (`-daemonize`, a pid file, the same machine as the XML
below); the no-op reads each pid file and checks that the process is that QEMU, on that
disk; the clean-up kills each by its pid file and removes the files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


QEMU_ARGV = [
    "qemu-system-x86_64", "-daemonize", "-nodefaults", "-display", "none",
    "-machine", "pc,accel=tcg", "-m", "128", "-smp", "1",
    "-no-user-config", "-boot", "c",
]  # fmt: skip


def open_connection(uri: str) -> Any:
    import libvirt  # not for the QEMU path: it would pay for an import it does not need

    if uri.startswith("qemu:///embed"):
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, daemon=True).start()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    # As reconciler does: start the embedded driver on one fixed CPU, or libvirt re-probes
    # QEMU (3 to 4 s) whenever this process lands on a CPU whose CPUID differs.
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        return libvirt.open(uri)
    finally:
        os.sched_setaffinity(0, allowed)


def create(uri: str, state_dir: Path, base: Path, prefix: str, count: int) -> None:
    connection = None if uri == "qemu" else open_connection(uri)

    def one(index: int) -> None:
        name = f"{prefix}-{index}"
        directory = state_dir / "hand" / name
        directory.mkdir(parents=True, exist_ok=True)
        disk = directory / "disk.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(base),
                "-F",
                "raw",
                str(disk),
                "2G",
            ],
            check=True,
        )
        if connection is None:
            subprocess.run(
                [
                    *QEMU_ARGV, "-name", name, "-pidfile", str(directory / "qemu.pid"),
                    "-drive", f"file={disk},format=qcow2,if=virtio",
                    "-serial", f"file:{directory / 'console.log'}",
                ],
                check=True,
            )  # fmt: skip
            return
        xml = DOMAIN_XML.format(name=name, disk=disk, console=directory / "console.log")
        connection.defineXML(xml).create()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if connection is not None:
        connection.close()


def noop(uri: str, state_dir: Path, prefix: str, count: int) -> None:
    """Exit 0 when the N domains run with their disks in place (reconciler's layout)."""
    if uri == "qemu":
        return noop_qemu(state_dir, prefix, count)
    connection = open_connection(uri)
    running = {
        domain.name(): domain.XMLDesc(0)
        for domain in connection.listAllDomains(0)
        if domain.isActive()
    }
    for index in range(count):
        name = f"{prefix}-{index}"
        disk = state_dir / "instances" / name / "disk.qcow2"
        if name not in running or str(disk) not in running[name] or not disk.exists():
            raise SystemExit(f"{name} is not as it should be")
    connection.close()


def noop_qemu(state_dir: Path, prefix: str, count: int) -> None:
    """Exit 0 when the N QEMUs the QMP driver started run on their disks: each pid file names
    a live process whose command line is QEMU's, naming the instance's disk."""
    for index in range(count):
        name = f"{prefix}-{index}"
        directory = state_dir / "instances" / name
        disk = directory / "disk.qcow2"
        try:
            pid = int((directory / "qemu.pid").read_text())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            raise SystemExit(f"{name} does not run") from None
        if not any(str(disk).encode() in word for word in argv) or not disk.exists():
            raise SystemExit(f"{name} is not as it should be")


def cleanup_qemu(state_dir: Path, prefixes: list[str]) -> None:
    """Kill each QEMU by its pid file (SIGKILL, as destroy ends up doing) and remove its files."""
    pids = []
    for prefix in prefixes:
        for pidfile in (state_dir / "hand").glob(f"{prefix}-*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGKILL)
                pids.append(pid)
    for pid in pids:  # -daemonize: not our children; gone (or a zombie) as /proc says
        while _alive(pid):
            time.sleep(0.005)
    shutil.rmtree(state_dir / "hand", ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie waits for init to reap it


def cleanup(uri: str, state_dir: Path, prefixes: list[str]) -> None:
    if uri == "qemu":
        return cleanup_qemu(state_dir, prefixes)
    import libvirt

    connection = open_connection(uri)
    for domain in connection.listAllDomains(0):
        if any(domain.name().startswith(prefix + "-") for prefix in prefixes):
            if domain.isActive():
                try:
                    domain.destroy()
                except libvirt.libvirtError:
                    if domain.isActive():  # libvirt may report a race it won anyway
                        raise
            domain.undefine()
    connection.close()
    shutil.rmtree(state_dir / "hand", ignore_errors=True)
    for prefix in prefixes:
        for directory in (state_dir / "instances").glob(f"{prefix}-*"):
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    command, uri, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if command == "create":
        create(uri, state, Path(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    elif command == "noop":
        noop(uri, state, sys.argv[4], int(sys.argv[5]))
    else:
        cleanup(uri, state, sys.argv[4:])
