"""Running qemu-img: argument lists only, formats always explicit, resource limits, timeout."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import StepError

LOG = logging.getLogger(__name__)

# As in Nova's qemu-img wrapper: an image crafted to make qemu-img burn memory or CPU is
# stopped by the kernel (address space, CPU seconds) and by a wall-clock timeout.
ADDRESS_SPACE_LIMIT = 2 * 1024**3
CPU_SECONDS_LIMIT = 60
WALL_TIMEOUT_SECONDS = 120


@dataclass(frozen=True, slots=True)
class QemuImg:
    """The qemu-img binary and the limits it runs under."""

    binary: str = "qemu-img"
    address_space: int = ADDRESS_SPACE_LIMIT
    cpu_seconds: int = CPU_SECONDS_LIMIT
    timeout: float = WALL_TIMEOUT_SECONDS

    def run(self, *args: str) -> str:
        """Run `qemu-img ARGS` and return its stdout; StepError on failure or timeout."""
        prlimit = shutil.which("prlimit")
        limits = (
            [prlimit, f"--as={self.address_space}", f"--cpu={self.cpu_seconds}", "--"]
            if prlimit
            else []
        )
        command = [*limits, self.binary, *args]
        LOG.debug("running %s", command)
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise StepError(f"qemu-img {args[0]} timed out after {self.timeout:.0f}s") from err
        except OSError as err:
            raise StepError(f"cannot run qemu-img: {err.strerror}") from err
        if completed.returncode != 0:
            detail = completed.stderr.strip().splitlines()
            reason = detail[-1] if detail else f"exit status {completed.returncode}"
            raise StepError(f"qemu-img {args[0]} failed: {reason}")
        return completed.stdout

    def create_overlay(self, path: Path, base: Path, base_format: str, size: int) -> None:
        """A qcow2 overlay of `size` bytes backed by `base` (whose format is given, not probed)."""
        self.run(
            "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(path), str(size)
        )

    def create(self, path: Path, image_format: str, size: int) -> None:
        """A new, empty image of `size` bytes (no backing file)."""
        self.run("create", "-q", "-f", image_format, str(path), str(size))

    def info(self, path: Path, image_format: str) -> dict[str, Any]:
        """`qemu-img info` with the format given (never probed), as parsed JSON."""
        out = self.run("info", "-f", image_format, "--output=json", str(path))
        try:
            info: dict[str, Any] = json.loads(out)
        except ValueError as err:
            raise StepError(f"qemu-img info printed no JSON for {path}") from err
        return info

    def convert(self, source: Path, source_format: str, target: Path, target_format: str) -> None:
        """Write `source` to the new file `target` in another format."""
        self.run(
            "convert", "-q", "-f", source_format, "-O", target_format, str(source), str(target)
        )

    def resize(self, path: Path, image_format: str, size: int) -> None:
        """Grow an image that no running QEMU holds."""
        self.run("resize", "-q", "-f", image_format, str(path), str(size))

    def snapshot(self, action: str, path: Path, label: str) -> None:
        """`qemu-img snapshot` of a qcow2 file no running QEMU holds: create (-c), apply (-a)
        or delete (-d) internal snapshot `label`. The format is given, never probed (the
        image options name it), and the file's lock keeps qemu-img off a disk in use."""
        flag = {"create": "-c", "apply": "-a", "delete": "-d"}[action]
        options = "driver=qcow2,file.driver=file,file.filename=" + str(path).replace(",", ",,")
        self.run("snapshot", "--image-opts", "-q", flag, label, options)
