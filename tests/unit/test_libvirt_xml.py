"""Golden libvirt XML of typed machines (regenerate with RECONCILER_REGENERATE_GOLDEN=1), and
parsing it back. The e2e suite defines every golden file on libvirt (test_golden_xml_defines)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from reconciler.drivers.libvirt_xml import parse_domain_xml, render_domain_xml
from reconciler.manifests.export import ExportFacts, export_manifest
from reconciler.model.desired import (
    Accelerator,
    BootDevice,
    CpuMode,
    CpuSpec,
    Firmware,
    Graphics,
    MachineType,
    NicModel,
    NicType,
    PortForward,
    PortProtocol,
)
from reconciler.model.machine import Disk, Machine, Nic, OwnershipMarker
from reconciler.planning.machine import DomainLayout, build_machine
from tests.helpers import make_spec

GOLDEN = Path(__file__).parent / "golden"
STATE_DIR_ID = "0123456789abcdef0123456789abcdef"
LAYOUT = DomainLayout(
    "/state/instances/web/disk.qcow2", "/state/instances/web/console.log", Accelerator.TCG
)


def complete(shape: Machine, uuid: str | None = None) -> Machine:
    marker = OwnershipMarker("manifests/web.yaml", shape.spec_digest(), STATE_DIR_ID)
    return replace(shape, uuid=uuid, marker=marker)


GOLDEN_MACHINES = {
    "tcg-default-cpu": complete(build_machine(make_spec(), LAYOUT)),
    "kvm-custom-cpu-redefine": complete(
        build_machine(
            make_spec(vcpus=2, cpu=CpuSpec(CpuMode.CUSTOM, "Skylake-Client")),
            replace(LAYOUT, accelerator=Accelerator.KVM),
        ),
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    ),
    "host-model-cpu": complete(build_machine(make_spec(cpu=CpuSpec(CpuMode.HOST_MODEL)), LAYOUT)),
    "q35-uefi-and-every-setting": complete(
        build_machine(
            make_spec(
                vcpus=2,
                max_vcpus=4,
                memory_bytes=256 * 1024**2,
                max_memory_bytes=512 * 1024**2,
                machine=MachineType.Q35,
                firmware=Firmware.UEFI,
                boot=(BootDevice.CDROM, BootDevice.HD),
                description="web front end <b>&</b> friends",
                graphics=Graphics.VNC,
                rng=True,
                guest_agent=True,
            ),
            replace(
                LAYOUT,
                nvram_path="/state/instances/web/nvram.fd",
                data_disks=(
                    Disk("vdb", "/state/instances/web/data-data.qcow2", "qcow2"),
                    Disk(
                        "sdb",
                        "/state/instances/web/data-logs.raw",
                        "raw",
                        bus="scsi",
                        delete_when_removed=True,
                    ),
                    Disk("sdc", "/state/instances/web/data-slow.qcow2", "qcow2", bus="sata"),
                ),
                nics=(Nic(NicType.USER, "52:54:00:aa:bb:01"),),
            ),
        )
    ),
    "config-drive-and-nics": complete(
        build_machine(
            make_spec(),
            replace(
                LAYOUT,
                config_drive_path="/state/instances/web/config-0123456789abcdef.iso",
                nics=(
                    Nic(NicType.USER, "52:54:00:aa:bb:01"),
                    Nic(
                        NicType.USER,
                        "52:54:00:aa:bb:02",
                        NicModel.E1000,
                        ports=(
                            PortForward(2222, 22),
                            PortForward(5353, 53, PortProtocol.UDP, "0.0.0.0"),
                        ),
                    ),
                    Nic(NicType.NETWORK, "52:54:00:aa:bb:03", source="default"),
                    Nic(NicType.BRIDGE, "52:54:00:aa:bb:04", NicModel.RTL8139, "br0"),
                    Nic(NicType.DIRECT, "52:54:00:aa:bb:05", source="eth0"),
                ),
            ),
        )
    ),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_MACHINES))
def test_golden_domain_xml(case: str) -> None:
    xml = render_domain_xml(GOLDEN_MACHINES[case])
    golden = GOLDEN / f"{case}.xml"
    if os.environ.get("RECONCILER_REGENERATE_GOLDEN"):
        golden.write_text(xml)
    assert xml == golden.read_text()


@pytest.mark.parametrize("case", sorted(GOLDEN_MACHINES))
def test_parsing_gives_back_the_machine(case: str) -> None:
    machine = GOLDEN_MACHINES[case]
    assert parse_domain_xml(render_domain_xml(machine)) == machine


@pytest.mark.parametrize("case", sorted(GOLDEN_MACHINES))
def test_the_spec_digest_is_the_one_earlier_versions_recorded(case: str) -> None:
    """The digest is recorded on every domain: computing it faster must not change it (an
    upgrade would otherwise redefine every domain). The first way was dataclasses.asdict."""
    machine = GOLDEN_MACHINES[case]
    shape = dataclasses.asdict(dataclasses.replace(machine, uuid=None, marker=None))
    for nic in shape["nics"]:  # fields added since, left out while unset
        for port in nic["ports"]:
            if port["guest_address"] is None:
                del port["guest_address"]
    if shape["watchdog"] is None:
        del shape["watchdog"]
    canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"), default=str)
    assert machine.spec_digest() == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def test_values_are_escaped_not_concatenated() -> None:
    shape = build_machine(make_spec(), LAYOUT)
    machine = replace(shape, marker=OwnershipMarker("x/<a>&\"b'.yaml", "sha256:x", STATE_DIR_ID))
    xml = render_domain_xml(machine)
    assert "<a>" not in xml
    marker = parse_domain_xml(xml).marker
    assert marker is not None and marker.manifest == "x/<a>&\"b'.yaml"


def test_domain_without_marker_is_foreign() -> None:
    xml = "<domain type='qemu'><name>x</name><memory unit='MiB'>64</memory><vcpu>1</vcpu></domain>"
    machine = parse_domain_xml(xml)
    assert machine.marker is None
    assert machine.memory_kib == 64 * 1024
    assert machine.accelerator is Accelerator.TCG


def test_libvirt_expanded_machine_types_read_as_their_family() -> None:
    xml = render_domain_xml(build_machine(make_spec(), LAYOUT))
    expanded = xml.replace('machine="pc"', 'machine="pc-i440fx-7.2"')
    assert parse_domain_xml(expanded).machine_type == "pc"


def test_digest_changes_with_what_the_domain_is_built_from() -> None:
    spec = make_spec()
    base = build_machine(spec, LAYOUT).spec_digest()
    assert build_machine(replace(spec, memory_bytes=256 * 1024**2), LAYOUT).spec_digest() != base
    kvm = replace(LAYOUT, accelerator=Accelerator.KVM)
    assert build_machine(spec, kvm).spec_digest() != base
    # the disk size and the state are not part of the definition; nor are uuid and marker
    assert build_machine(replace(spec, disk_bytes=9 * 1024**3), LAYOUT).spec_digest() == base
    assert complete(build_machine(spec, LAYOUT), "u").spec_digest() == base


def test_the_marker_records_the_manifests_labels_and_export_gives_them_back() -> None:
    """So that `export` of a managed domain writes the labels its manifest had (a selector
    or a host slice depends on them)."""
    labels = (("app", 'web <&> "q"'), ("example.com/tier", "front"))
    shape = build_machine(make_spec(), LAYOUT)
    marker = OwnershipMarker("m/web.yaml", shape.spec_digest(labels), STATE_DIR_ID, None, labels)
    parsed = parse_domain_xml(render_domain_xml(replace(shape, marker=marker)))
    assert parsed.marker is not None and parsed.marker.labels == labels
    facts = ExportFacts(True, None, "/srv/base.raw", "raw", 1024**3, "/x/disk.qcow2")
    document = yaml.safe_load(export_manifest(parsed, facts))
    assert document["metadata"] == {"name": "web", "labels": dict(labels)}
    # the digest moves with the labels, and is what it always was without any
    assert shape.spec_digest(labels) != shape.spec_digest() == shape.spec_digest(())
