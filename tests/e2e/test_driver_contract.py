"""The embedded libvirt driver and the QMP driver keep the seam's contract on real QEMU
(tests/contract.py): define, start, a shutdown request the test guest ignores (its boot
sector halts), a forced stop, a crash (SIGKILL of the QEMU the driver started), undefine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from reconciler.model.desired import Accelerator
from reconciler.planning.machine import DomainLayout, build_machine
from tests.contract import exercise
from tests.e2e.conftest import E2E, separate_driver
from tests.helpers import make_spec, unique_name

pytestmark = pytest.mark.both_drivers


def test_the_driver_keeps_the_seams_contract_on_real_qemu(e2e: E2E) -> None:
    name = unique_name("rcc")
    paths = e2e.state.instance(name)
    paths.directory.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(e2e.base), "-F", "raw",
         str(paths.disk), "64M"],
        check=True,
    )  # fmt: skip
    layout = DomainLayout(str(paths.disk), str(paths.console_log), Accelerator.TCG)
    machine = build_machine(make_spec(name, memory_bytes=128 * 1024**2), layout)

    def crash(crashed: str) -> None:  # the QEMU this test had the driver start, by its pid
        os.kill(e2e.qemu_pid(crashed), signal.SIGKILL)

    try:
        with separate_driver(e2e) as driver:  # it watches: not the session's driver
            seen = exercise(driver, machine, crash=crash, timeout=120)
    finally:
        if e2e.driver.lookup(name) is not None:
            if e2e.state_of(name) is not None and e2e.driver.lookup(name).state.active:
                e2e.driver.force_stop(name)
            e2e.driver.undefine(name)
        shutil.rmtree(paths.directory, ignore_errors=True)
    assert any(not event.may_echo_a_step for event in seen.of(name))  # the crash's
