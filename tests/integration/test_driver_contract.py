"""libvirt's test:/// driver, through the libvirt driver, keeps the seam's contract
(tests/contract.py): the states, reasons and events of define, start, shutdown request,
forced stop and undefine. (The test driver runs no emulator: there is no crash to cause.)"""

from __future__ import annotations

from pathlib import Path

from reconciler.drivers.libvirt_driver import LibvirtDriver
from reconciler.layout import StateLayout
from reconciler.model.desired import Accelerator
from reconciler.planning.machine import DomainLayout, build_machine
from tests.contract import exercise
from tests.helpers import make_spec


def test_libvirts_test_driver_keeps_the_seams_contract(tmp_path: Path) -> None:
    layout = DomainLayout(
        str(tmp_path / "disk.qcow2"), str(tmp_path / "console.log"), Accelerator.TCG
    )
    driver = LibvirtDriver.open("test:///default", StateLayout(tmp_path))
    try:
        seen = exercise(driver, build_machine(make_spec("rct-contract"), layout), timeout=10)
    finally:
        driver.close()
    assert seen.of("rct-contract")  # events arrived through libvirt's event loop
