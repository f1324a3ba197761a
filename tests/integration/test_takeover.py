"""Adoption's take-over of a boot disk never points the disk at a base that is not there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.errors import StepError
from reconciler.images.qemuimg import QemuImg
from reconciler.steps.takeover import BootDiskTakeOver, take_over_boot_disk
from reconciler.testing.fake import FakeDriver


def test_a_missing_cached_base_leaves_the_disk_as_it_was(tmp_path: Path) -> None:
    own_base = tmp_path / "own.raw"
    own_base.write_bytes(b"\0" * 1024 * 1024)
    disk = tmp_path / "boot.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(own_base), "-F", "raw"]
    subprocess.run([*create, str(disk), "8M"], check=True)
    before = disk.read_bytes()
    missing = tmp_path / "images" / "sha256-0.raw"
    target = tmp_path / "instances" / "x" / "disk.qcow2"
    step = BootDiskTakeOver("x", disk, target, missing, "raw", str(own_base))
    driver = FakeDriver()
    with pytest.raises(StepError, match="is not there: nothing changed"):
        take_over_boot_disk(step, driver, QemuImg())
    assert disk.read_bytes() == before and not target.exists() and driver.calls == []
