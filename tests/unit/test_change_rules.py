"""Every field of Machine has a declared change rule (planning.machine.CHANGE_RULES), and, set
to a value other than its default, is told as a change of its own, renders and reads back
through libvirt's domain XML (which the QMP driver also keeps its definitions in), and (when
the hypervisor sees it) changes the QMP driver's QEMU command line: as virtinst's
test_checkprops, a new setting cannot be half wired. Pure."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import pytest

from reconciler.drivers.libvirt_xml import parse_domain_xml, render_domain_xml
from reconciler.drivers.qemu_argv import ProcessFiles, render_qemu_argv
from reconciler.model.desired import (
    Accelerator,
    BootDevice,
    CpuMode,
    CpuSpec,
    Firmware,
    Graphics,
    NicModel,
    NicType,
    WatchdogAction,
    WatchdogSpec,
)
from reconciler.model.machine import Disk, Machine, Nic, OwnershipMarker, config_drive_disk
from reconciler.planning.machine import (
    CHANGE_RULES,
    NOT_SHAPE,
    ChangeClass,
    DomainLayout,
    build_machine,
    describe_changes,
    shape_of,
)
from tests.helpers import make_spec

LAYOUT = DomainLayout(
    "/state/instances/web/disk.qcow2", "/state/instances/web/console.log", Accelerator.TCG
)
SHAPE = build_machine(make_spec(), LAYOUT)
BASE = replace(
    SHAPE,
    uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    marker=OwnershipMarker("m/web.yaml", SHAPE.spec_digest(), "0123456789abcdef" * 2),
)
FILES = ProcessFiles("/s/qmp.sock", "/s/qemu.pid", "/s/ga.sock")

# A value other than BASE's for every field of Machine (a new field without one fails)
SAMPLES: dict[str, Any] = {
    "accelerator": Accelerator.KVM,
    "vcpus": 3,
    "memory_kib": 256 * 1024,
    "cpu": CpuSpec(CpuMode.CUSTOM, "Skylake-Client"),
    "machine_type": "q35",
    "disks": (*BASE.disks, Disk("vdb", "/state/instances/web/data-a.qcow2", "qcow2")),
    "nics": (Nic(NicType.USER, "52:54:00:12:34:56", NicModel.E1000),),
    "console_log": "/state/instances/web/other.log",
    "max_vcpus": 4,
    "max_memory_kib": 512 * 1024,
    "firmware": Firmware.UEFI,
    "nvram": "/state/instances/web/nvram.fd",
    "boot": (BootDevice.CDROM, BootDevice.HD),
    "description": "a web server",
    "graphics": Graphics.VNC,
    "rng": True,
    "guest_agent": True,
    "watchdog": WatchdogSpec(WatchdogAction.POWEROFF),
    "protected": True,
    "delete_disks": True,
    "shutdown_timeout_seconds": 17,
    "asked_running": False,
}
# recorded with the ownership marker (or kept by libvirt for people): QEMU never sees them
HYPERVISOR_BLIND = {
    "description", "protected", "delete_disks", "shutdown_timeout_seconds", "asked_running",
}  # fmt: skip
# what the QMP driver refuses to run (it says so at plan time: drivers.qemu_argv.unsupported)
QMP_REFUSES = {"firmware", "nvram", "max_vcpus"}
FIELDS = [field.name for field in dataclasses.fields(Machine)]
SHAPE_FIELDS = [name for name in FIELDS if name not in NOT_SHAPE]


def test_every_field_has_a_rule_and_a_sample() -> None:
    assert sorted(CHANGE_RULES) == sorted(SHAPE_FIELDS), "a Machine field without a rule"
    assert sorted(SAMPLES) == sorted(SHAPE_FIELDS), "a Machine field without a sample here"
    for name in SHAPE_FIELDS:
        assert SAMPLES[name] != getattr(BASE, name), name


def pair(name: str) -> tuple[Machine, Machine]:
    """BASE and BASE with `name` changed to its sample (NVRAM files exist with UEFI only)."""
    base = BASE
    if name == "nvram":
        base = replace(BASE, firmware=Firmware.UEFI, nvram="/state/instances/web/old.fd")
    changed = replace(base, **{name: SAMPLES[name]})
    if name == "firmware":  # UEFI comes with its NVRAM file
        changed = replace(changed, nvram=SAMPLES["nvram"])
    return base, changed


@pytest.mark.parametrize("name", SHAPE_FIELDS)
def test_a_changed_field_is_told_by_its_rule(name: str) -> None:
    base, changed = pair(name)
    changes = describe_changes(base, changed)
    assert changes, name
    assert all(change.kind in ChangeClass for change in changes)
    # told by its own rule (not by the catch-all that names any field that differs)
    own = CHANGE_RULES[name].changes(shape_of(base), shape_of(changed))
    assert own and set(own) <= set(changes), (own, changes)


@pytest.mark.parametrize("name", SHAPE_FIELDS)
def test_a_changed_field_renders_and_reads_back_under_both_drivers(name: str) -> None:
    base, changed = pair(name)
    read = parse_domain_xml(render_domain_xml(changed))
    assert getattr(read, name) == getattr(changed, name), name
    assert describe_changes(read, changed) == () or read == changed
    if name in QMP_REFUSES:
        return
    before = render_qemu_argv(base, FILES)
    after = render_qemu_argv(changed, FILES)
    assert (before == after) == (name in HYPERVISOR_BLIND), name


def test_conditional_rules_say_live_only_within_the_maximum() -> None:
    roomy = replace(BASE, max_memory_kib=512 * 1024, max_vcpus=4)
    (memory,) = describe_changes(roomy, replace(roomy, memory_kib=256 * 1024))
    (beyond,) = describe_changes(roomy, replace(roomy, memory_kib=1024 * 1024))
    (vcpus,) = describe_changes(roomy, replace(roomy, vcpus=3))
    assert (memory.kind, beyond.kind, vcpus.kind) == (
        ChangeClass.LIVE, ChangeClass.RESTART, ChangeClass.LIVE,
    )  # fmt: skip
    drive = replace(BASE, disks=(*BASE.disks, config_drive_disk("/s/config-a.iso")))
    (medium,) = describe_changes(
        drive, replace(drive, disks=(*BASE.disks, config_drive_disk("/s/config-b.iso")))
    )
    assert medium.kind is ChangeClass.LIVE  # a new medium in the drive the domain has
