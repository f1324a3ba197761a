"""The fake driver the unit tests drive the product with keeps the seam's contract
(tests/contract.py), as the real drivers do in integration and e2e."""

from __future__ import annotations

from pathlib import Path

from reconciler.model.desired import Accelerator
from reconciler.model.machine import Machine
from reconciler.planning.machine import DomainLayout, build_machine
from reconciler.testing.fake import FakeDriver
from tests.contract import exercise
from tests.helpers import make_spec


def machine_of(name: str, directory: Path) -> Machine:
    disk = directory / "disk.qcow2"
    disk.write_bytes(b"")  # the fake checks that a boot disk exists, as libvirt does
    layout = DomainLayout(str(disk), str(directory / "console.log"), Accelerator.TCG)
    return build_machine(make_spec(name), layout)


def test_the_fake_driver_keeps_the_seams_contract(tmp_path: Path) -> None:
    driver = FakeDriver()
    seen = exercise(driver, machine_of("rct-c", tmp_path), crash=driver.crash)
    assert seen.has("rct-c", "stopped: crashed")


def test_a_guest_that_ignores_the_power_button_is_forced_off_in_the_scenario(
    tmp_path: Path,
) -> None:
    driver = FakeDriver()
    machine = machine_of("rct-d", tmp_path)
    real_define = driver.define

    def define_deaf(defined: object) -> None:
        real_define(machine)
        driver.ignore_acpi("rct-d")

    driver.define = define_deaf  # type: ignore[method-assign,assignment]
    seen = exercise(driver, machine)
    assert seen.has("rct-d", "stopped: destroyed") and not seen.has("rct-d", "stopped: shutdown")
