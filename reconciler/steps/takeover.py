"""Adoption's one change to files: a shut-off domain's boot disk, made by hand elsewhere,
becomes the instance's disk (STATE/instances/NAME/disk.qcow2) on the cached copy of its base.

loop.adopt decides and proves it first: the disk is a qcow2 overlay, a regular file on the
same file system as the instance directory, and its base has the manifest's image's content
(same sha256) so that pointing it at the cached copy (`qemu-img rebase -u`) changes nothing the
guest reads. Here: rebase (in place, before anything moves), rename into the instance
directory (atomic, same file system), point the definition at it; a failure after the rename
puts the file back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.drivers.base import Driver
from reconciler.errors import ReconcilerError, StepError
from reconciler.fileops import fsync_directory
from reconciler.images.qemuimg import QemuImg


@dataclass(frozen=True, slots=True)
class BootDiskTakeOver:
    instance: str
    source: Path  # the domain's boot disk now
    target: Path  # the instance's disk
    base: Path  # the cached copy of the manifest's image
    base_format: str
    rebase_from: str | None  # the base the disk names now, when it is not `base`

    def describe(self) -> tuple[str, ...]:
        moved = (
            f"move boot disk {self.source} to {self.target} (a rename on the same file "
            "system: its data kept)"
        )
        if self.rebase_from is None:
            return (moved,)
        return (
            f"point it at the cached copy {self.base} of its base {self.rebase_from} (the "
            "same content, sha256 checked; qemu-img rebase -u: the guest's data unchanged)",
            moved,
        )


def take_over_boot_disk(step: BootDiskTakeOver, driver: Driver, qemu_img: QemuImg) -> str:
    if not step.base.is_file():  # never point a guest's disk at a base that is not there
        raise StepError(f"the cached copy {step.base} of its base is not there: nothing changed")
    if step.rebase_from is not None:
        qemu_img.run(
            "rebase", "-u", "-f", "qcow2", "-F", step.base_format, "-b", str(step.base),
            str(step.source),
        )  # fmt: skip
    step.target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.path.lexists(step.target):
        raise StepError(f"{step.target} appeared meanwhile: the boot disk is not moved there")
    os.rename(step.source, step.target)
    try:
        driver.repoint_boot_disk(step.instance, str(step.target))
    except ReconcilerError:
        os.rename(step.target, step.source)
        raise
    fsync_directory(step.target.parent)
    fsync_directory(step.source.parent)
    return f"moved boot disk {step.source} to {step.target}"
