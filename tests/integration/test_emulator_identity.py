"""Before the reconciler kills a QEMU that libvirt cannot stop, it proves the process is the
domain's own: a real QEMU started by hand here, beside an impostor with the same arguments."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from reconciler.drivers.host import is_domain_emulator
from tests.helpers import unique_name


def identity(pid: int) -> tuple[bytes, str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        executable = os.readlink(f"/proc/{pid}/exe")
        if b"-uuid" in cmdline:  # exec has happened
            return cmdline, executable
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never showed its command line")


def test_only_the_domains_own_qemu_is_taken_for_it() -> None:
    name, domain_uuid = unique_name(), str(uuid.uuid4())
    arguments = ["-name", f"guest={name},debug-threads=on", "-uuid", domain_uuid]
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", *arguments, "-S", "-machine", "none", "-display", "none",
         "-nodefaults"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    impostor = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", *arguments],
    )
    try:
        cmdline, executable = identity(qemu.pid)
        assert is_domain_emulator(cmdline, executable, name, domain_uuid)
        assert is_domain_emulator(cmdline, executable, name, domain_uuid.upper())
        assert not is_domain_emulator(cmdline, executable, name[:-1], domain_uuid)
        assert not is_domain_emulator(cmdline, executable, name, str(uuid.uuid4()))
        assert not is_domain_emulator(*identity(impostor.pid), name, domain_uuid)
    finally:
        for process in (qemu, impostor):
            process.kill()
            process.wait()
