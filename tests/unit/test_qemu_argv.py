"""Golden QEMU command lines of the same typed machines as the golden libvirt XML
(regenerate with RECONCILER_REGENERATE_GOLDEN=1), and what the QMP driver refuses."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from reconciler.drivers.qemu_argv import (
    ProcessFiles,
    UnsupportedByQemuDriver,
    render_qemu_argv,
    unsupported,
)
from reconciler.model.desired import NicType
from reconciler.model.machine import Nic
from tests.unit.test_libvirt_xml import GOLDEN, GOLDEN_MACHINES

FILES = ProcessFiles(
    "/state/instances/web/qmp.sock",
    "/state/instances/web/qemu.pid",
    "/state/instances/web/guest-agent.sock",
)
# the golden machines the QMP driver runs: user-mode NICs only, BIOS, no vCPU hot-plug
RUNNABLE = {
    "tcg-default-cpu": GOLDEN_MACHINES["tcg-default-cpu"],
    "kvm-custom-cpu-redefine": GOLDEN_MACHINES["kvm-custom-cpu-redefine"],
    "host-model-cpu": GOLDEN_MACHINES["host-model-cpu"],
    "config-drive-and-nics": replace(
        GOLDEN_MACHINES["config-drive-and-nics"],
        nics=GOLDEN_MACHINES["config-drive-and-nics"].nics[:2],
    ),
    "q35-every-setting": replace(
        GOLDEN_MACHINES["q35-uefi-and-every-setting"],
        firmware=GOLDEN_MACHINES["tcg-default-cpu"].firmware,
        nvram=None,
        max_vcpus=None,
    ),
}


@pytest.mark.parametrize("case", sorted(RUNNABLE))
def test_golden_qemu_command_line(case: str) -> None:
    argv = render_qemu_argv(RUNNABLE[case], FILES)
    text = "".join(f"{argument}\n" for argument in argv)
    golden = GOLDEN / f"{case}.argv"
    if os.environ.get("RECONCILER_REGENERATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_every_command_line_is_sandboxed_without_defaults_and_with_explicit_formats() -> None:
    for machine in RUNNABLE.values():
        argv = render_qemu_argv(machine, FILES)
        assert "-nodefaults" in argv and "-no-user-config" in argv
        assert argv[argv.index("-sandbox") + 1].startswith("on,")
        blockdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-blockdev"]
        formats = [b for b in blockdevs if '"file":"file-' in b]
        assert formats and all('"driver":"qcow2"' in b or '"driver":"raw"' in b for b in formats)
        assert "-drive" not in argv and "-hda" not in argv


def test_what_the_qmp_driver_cannot_express_is_named_by_field() -> None:
    machine = GOLDEN_MACHINES["q35-uefi-and-every-setting"]
    bridged = replace(machine, nics=(*machine.nics, Nic(NicType.BRIDGE, "52:54:00:aa:bb:09")))
    problems = unsupported(bridged)
    assert any(p.startswith("networks[1].type bridge: the QMP driver") for p in problems)
    assert any(p.startswith("firmware uefi:") for p in problems)
    assert any(p.startswith("maxVcpus:") for p in problems)
    with pytest.raises(UnsupportedByQemuDriver, match=r"networks\[1\]\.type bridge"):
        render_qemu_argv(bridged, FILES)
