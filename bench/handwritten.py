"""The shortest hand-written path to N running instances, for comparison with reconciler:
one thread per instance runs `qemu-img create` for its overlay, then defineXML + create.
And the shortest hand-written no-op: list the domains with their XML, check that each of
the N runs and its disk file is there, exit.

    python bench/handwritten.py create URI STATE_DIR BASE PREFIX N
    python bench/handwritten.py noop URI STATE_DIR PREFIX N
    python bench/handwritten.py cleanup URI STATE_DIR PREFIX...
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import libvirt

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


def open_connection(uri: str) -> Any:
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
    connection = open_connection(uri)

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
        xml = DOMAIN_XML.format(name=name, disk=disk, console=directory / "console.log")
        connection.defineXML(xml).create()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    connection.close()


def noop(uri: str, state_dir: Path, prefix: str, count: int) -> None:
    """Exit 0 when the N domains run with their disks in place (reconciler's layout)."""
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


def cleanup(uri: str, state_dir: Path, prefixes: list[str]) -> None:
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
