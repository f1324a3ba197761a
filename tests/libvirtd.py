"""A libvirtd the test starts, stops and kills itself, in a private mount namespace so that it
shares no state with a system libvirtd: /etc/libvirt, /var/lib/libvirt, /run/libvirt,
/var/log/libvirt and /var/cache/libvirt are bind mounts of directories under its root, and its
socket is in ROOT/sock. QEMU runs as root with no security driver and writes its output to
files (no virtlogd). Restarted on the same root, it finds its running domains again.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PRIVATE = (
    "/etc/libvirt",
    "/var/lib/libvirt",
    "/run/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
)


@dataclass
class Libvirtd:
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root / 'sock' / 'libvirt-sock'}"

    def prepare(self) -> None:
        for index, _ in enumerate(PRIVATE):
            (self.root / f"private{index}").mkdir(parents=True, exist_ok=True)
        (self.root / "sock").mkdir(exist_ok=True)
        (self.root / "private0" / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\nsecurity_driver = "none"\nstdio_handler = "file"\n'
            "remember_owner = 0\n"
        )
        (self.root / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.root / "sock"}"\n'
            'unix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.root / "libvirtd.log"}"\n'
        )

    def start(self, timeout: float = 60.0) -> None:
        mounts = " && ".join(
            f"mount --bind {self.root / f'private{index}'} {target}"
            for index, target in enumerate(PRIVATE)
        )
        command = (
            f"mkdir -p {' '.join(PRIVATE)} && {mounts} && exec libvirtd "
            f"--config {self.root / 'libvirtd.conf'} --pid-file {self.root / 'libvirtd.pid'}"
        )
        log = (self.root / "libvirtd.out").open("ab")
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        socket = self.root / "sock" / "libvirt-sock"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"libvirtd exited: {(self.root / 'libvirtd.out').read_text()}")
            probe = subprocess.run(
                ["virsh", "-c", self.uri, "version"], capture_output=True, check=False
            )
            if socket.exists() and probe.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("libvirtd did not come up")

    def kill(self) -> None:
        """SIGKILL, as a crash would (the domains' QEMU processes keep running)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        (self.root / "sock" / "libvirt-sock").unlink(missing_ok=True)

    def virsh(self, *args: str) -> str:
        return subprocess.run(
            ["virsh", "-c", self.uri, *args], capture_output=True, text=True, check=False
        ).stdout

    def destroy_all(self) -> None:
        for name in self.virsh("list", "--all", "--name").split():
            self.virsh("destroy", name)
            self.virsh("undefine", name)

    def qemu_pid(self, name: str) -> int | None:
        try:
            return int((self.root / "private2" / "qemu" / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
