"""End-to-end fixtures: one state directory per driver for the whole session (the embedded
libvirt root's first use probes QEMU), real qemu-img, real QEMU. Every domain made here is
destroyed at the end.

A module marked `both_drivers` runs each of its tests under libvirt's embedded driver and
under the QMP driver (`e2e.driver_name` says which); a test that needs what only libvirt has
is marked `libvirt_only`. Other modules run under libvirt.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main as cli
from reconciler.drivers.libvirt_driver import LibvirtDriver, embedded_uri
from reconciler.drivers.qmp_driver import QmpDriver
from reconciler.layout import QEMU_PID_FILE, StateLayout
from reconciler.model.actual import PowerState
from reconciler.statedir import StateDir
from tests.guest import IMAGES
from tests.helpers import poll, write_base_image

DRIVERS = ("libvirt", "qmp")


@dataclass(frozen=True)
class E2E:
    state: StateDir
    driver: Any  # LibvirtDriver or QmpDriver; libvirt-only tests use libvirt's extras (xml...)
    base: Path
    sha256: str
    driver_name: str = "libvirt"

    def qemu_pid(self, name: str) -> int:
        """The pid the driver recorded for the domain's QEMU (libvirt's pid file, or the QMP
        driver's in the instance directory)."""
        if self.driver_name == "libvirt":
            path = self.state.libvirt_pid_file(name)
        else:
            path = self.state.instance(name).qemu_pid
        return int(path.read_text().strip())

    def state_of(self, name: str) -> PowerState | None:
        """The domain's power state, or None when there is no such domain."""
        record = self.driver.lookup(name)
        return None if record is None else record.state


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of `both_drivers` modules run once per driver (libvirt_only ones under libvirt),
    whether through `e2e` or by asking for `driver_name` (for a state directory of their
    own). The parameter is module-scoped: a module's fixtures may depend on it, and its tests
    run under one driver, then the other."""
    if "driver_name" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker("both_drivers") is not None
    only = metafunc.definition.get_closest_marker("libvirt_only") is not None
    drivers = DRIVERS if both and not only else DRIVERS[:1]
    metafunc.parametrize("driver_name", drivers, scope="module")


@contextlib.contextmanager
def _session_state(driver_name: str) -> Iterator[E2E]:
    # Short path: libvirt's unix sockets live under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix=f"rce{driver_name[0]}-", dir="/tmp"))
    images = root / "src"
    images.mkdir()
    base, sha = write_base_image(images)
    driver: Any = (
        LibvirtDriver.open(None, StateDir(root))
        if driver_name == "libvirt"
        else QmpDriver.open(StateDir(root))
    )
    try:
        yield E2E(StateDir(root), driver, base, sha, driver_name)
    finally:
        for record in driver.list_domains():
            if record.state.active:
                driver.force_stop(record.name)
            driver.undefine(record.name)
        driver.close()
        shutil.rmtree(root, ignore_errors=True)


# One state directory per driver, each kept for the whole session (the libvirt one's log file
# is where every process the tests start sends libvirt's messages)
@pytest.fixture(scope="session")
def e2e_libvirt() -> Iterator[E2E]:
    with _session_state("libvirt") as state:
        yield state


@pytest.fixture(scope="session")
def e2e_qmp() -> Iterator[E2E]:
    with _session_state("qmp") as state:
        yield state


@pytest.fixture
def e2e(driver_name: str, request: pytest.FixtureRequest) -> Iterator[E2E]:
    """The session's state directory for this driver. What a test left running is stopped
    after it (names never repeat between tests): idle TCG guests of every earlier test would
    otherwise share the host's two cores with the guests of the later ones."""
    state: E2E = request.getfixturevalue(f"e2e_{driver_name}")
    yield state
    for record in state.driver.list_domains():
        if record.state.active:
            with contextlib.suppress(Exception):
                state.driver.force_stop(record.name)


@pytest.fixture
def reconcile(e2e: E2E, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """Run the `reconcile` command in this process against the session's state directory."""

    def run(*args: str) -> CliRun:
        capsys.readouterr()
        images = ["--image-dir", str(e2e.base.parent), "--image-dir", str(IMAGES)]
        driver = ["--driver", e2e.driver_name]
        code = cli.main([*args, "--state-dir", str(e2e.state.root), *driver, *images])
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
        destroy_domains(root)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Host:
    """A state directory of its own and the driver the reconciler processes on it use."""

    root: Path
    driver_name: str

    def command(self, *args: str) -> list[str]:
        """`reconcile ARGS` on this state directory, under this driver, as an argument list."""
        state = ["--state-dir", str(self.root), "--driver", self.driver_name]
        return [sys.executable, "-m", "reconciler", *args, *state]

    def domains(self) -> dict[str, PowerState]:
        return domain_states(self.root, self.driver_name)

    def definition_file(self, name: str) -> Path:
        return definition_file(self.root, self.driver_name, name)


@contextlib.contextmanager
def private_host(prefix: str, driver_name: str) -> Iterator[Host]:
    """private_state_dir, with the driver its reconcilers are to use."""
    with private_state_dir(f"{prefix}{driver_name[0]}-") as root:
        yield Host(root, driver_name)


def _virsh(state_dir: Path, *args: str) -> str:
    uri = embedded_uri(StateLayout(state_dir).libvirt_root)
    command = ["virsh", "-c", uri, *args]
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout


_VIRSH_STATES = {"shut off": PowerState.SHUTOFF, "in shutdown": PowerState.SHUTDOWN}


def domain_states(state_dir: Path, driver_name: str) -> dict[str, PowerState]:
    """Domain name -> power state in a state directory that no reconciler process has open
    at the moment (an embedded libvirt root admits one process: virsh asks, never this one)."""
    if driver_name == "qmp":
        driver = QmpDriver(StateLayout(state_dir))
        try:
            return {record.name: record.state for record in driver.list_domains()}
        finally:
            driver.close()
    names = _virsh(state_dir, "list", "--all", "--name").split()
    states = {name: _virsh(state_dir, "domstate", name).strip() for name in names}
    return {name: _VIRSH_STATES.get(text) or PowerState(text) for name, text in states.items()}


def definition_file(state_dir: Path, driver_name: str, name: str) -> Path:
    """Where the driver keeps the domain's persistent definition."""
    layout = StateLayout(state_dir)
    if driver_name == "qmp":
        return layout.instance(name).definition
    return layout.libvirt_definition(name)


def destroy_domains(state_dir: Path) -> None:
    """End every QEMU of a state directory, under either driver (no reconciler has it open)."""
    layout = StateLayout(state_dir)
    if layout.libvirt_root.is_dir():
        for name in _virsh(state_dir, "list", "--all", "--name").split():
            _virsh(state_dir, "destroy", name)
            _virsh(state_dir, "undefine", "--nvram", name)
    if any(layout.instances.glob(f"*/{QEMU_PID_FILE}")):
        driver = QmpDriver(layout)
        try:
            for record in driver.list_domains():
                if record.state.active:
                    with contextlib.suppress(Exception):
                        driver.force_stop(record.name)
        finally:
            driver.close()


@contextlib.contextmanager
def separate_driver(e2e: E2E) -> Iterator[Any]:
    """A driver of the session's kind on its state directory, of its own: a test may watch it
    (the QMP driver's watch holds every QEMU's monitor, which then answers no other client)
    and its close ends that, leaving the session's driver as it was."""
    driver: Any = (
        LibvirtDriver.open(None, e2e.state)
        if e2e.driver_name == "libvirt"
        else QmpDriver.open(e2e.state)
    )
    try:
        yield driver
    finally:
        driver.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true or fail after `timeout` seconds."""
    poll(condition, timeout, what)
