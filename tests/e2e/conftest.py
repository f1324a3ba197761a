"""End-to-end fixtures: one embedded libvirt root for the whole session (its first use probes
QEMU), real qemu-img, real QEMU. Every domain made here is destroyed at the end."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.cli import main as cli
from reconciler.drivers.libvirt_driver import LibvirtDriver, embedded_uri
from reconciler.model.actual import PowerState
from reconciler.statedir import StateDir
from tests.guest import IMAGES
from tests.helpers import write_base_image


@dataclass(frozen=True)
class E2E:
    state: StateDir
    driver: LibvirtDriver
    base: Path
    sha256: str

    def state_of(self, name: str) -> PowerState | None:
        """The domain's power state, or None when there is no such domain."""
        record = self.driver.lookup(name)
        return None if record is None else record.state


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def e2e() -> Iterator[E2E]:
    # Short path: libvirt's unix sockets live under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="rce-", dir="/tmp"))
    images = root / "src"
    images.mkdir()
    base, sha = write_base_image(images)
    driver = LibvirtDriver.open(None, root)
    try:
        yield E2E(StateDir(root), driver, base, sha)
    finally:
        for record in driver.list_domains():
            if record.state.active:
                driver.force_stop(record.name)
            driver.undefine(record.name)
        driver.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def reconcile(e2e: E2E, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """Run the `reconcile` command in this process against the session's state directory."""

    def run(*args: str) -> CliRun:
        capsys.readouterr()
        images = ["--image-dir", str(e2e.base.parent), "--image-dir", str(IMAGES)]
        code = cli.main([*args, "--state-dir", str(e2e.state.root), *images])
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


@contextlib.contextmanager
def private_state_dir(prefix: str) -> Iterator[Path]:
    """A state directory of its own (for tests that run `reconcile` as a process, or that
    must not see the session's domains); every domain made in it is destroyed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: libvirt's sockets
    try:
        yield root
    finally:
        uri = embedded_uri(root / "libvirt")
        names = subprocess.run(
            ["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True, text=True
        ).stdout.split()
        for name in names:
            subprocess.run(["virsh", "-c", uri, "destroy", name], capture_output=True)
            subprocess.run(["virsh", "-c", uri, "undefine", "--nvram", name], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
