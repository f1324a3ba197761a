"""Golden domain XML (regenerate with RECONCILER_REGENERATE_GOLDEN=1) and parsing it back."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.model.desired import Accelerator, CpuMode, CpuSpec
from reconciler.planning.domainxml import (
    DomainLayout,
    build_domain_xml,
    parse_domain_xml,
    spec_digest,
)
from tests.helpers import make_spec

GOLDEN = Path(__file__).parent / "golden"
STATE_DIR_ID = "0123456789abcdef0123456789abcdef"
LAYOUT = DomainLayout(
    "/state/instances/web/disk.qcow2", "/state/instances/web/console.log", Accelerator.TCG
)
CASES = {
    "tcg-default-cpu": (make_spec(), LAYOUT, None),
    "kvm-custom-cpu-redefine": (
        make_spec(vcpus=2, cpu=CpuSpec(CpuMode.CUSTOM, "Skylake-Client")),
        replace(LAYOUT, accelerator=Accelerator.KVM),
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_domain_xml(case: str) -> None:
    spec, layout, uuid = CASES[case]
    xml = build_domain_xml(spec, layout, uuid, STATE_DIR_ID)
    golden = GOLDEN / f"{case}.xml"
    if os.environ.get("RECONCILER_REGENERATE_GOLDEN"):
        golden.write_text(xml)
    assert xml == golden.read_text()


def test_values_are_escaped_not_concatenated() -> None:
    spec = make_spec(manifest=Path("x/<a>&\"b'.yaml"))
    xml = build_domain_xml(spec, LAYOUT, None, STATE_DIR_ID)
    assert "<a>" not in xml
    assert parse_domain_xml(xml).marker is not None
    assert parse_domain_xml(xml).marker.manifest == "x/<a>&\"b'.yaml"  # type: ignore[union-attr]


def test_parse_round_trip() -> None:
    spec = make_spec()
    definition = parse_domain_xml(build_domain_xml(spec, LAYOUT, None, STATE_DIR_ID))
    assert definition.name == "web"
    assert definition.vcpus == 1
    assert definition.memory_kib == 128 * 1024
    assert definition.domain_type == "qemu"
    assert definition.disk_paths == (("vda", LAYOUT.disk_path),)
    assert definition.marker is not None
    assert definition.marker.spec_digest == spec_digest(spec, LAYOUT)


def test_domain_without_marker_is_foreign() -> None:
    xml = "<domain type='qemu'><name>x</name><memory unit='MiB'>64</memory><vcpu>1</vcpu></domain>"
    definition = parse_domain_xml(xml)
    assert definition.marker is None
    assert definition.memory_kib == 64 * 1024


def test_digest_changes_with_what_the_domain_is_built_from() -> None:
    spec = make_spec()
    base = spec_digest(spec, LAYOUT)
    assert spec_digest(replace(spec, memory_bytes=256 * 1024**2), LAYOUT) != base
    assert spec_digest(spec, replace(LAYOUT, accelerator=Accelerator.KVM)) != base
    # the disk size and the state are not part of the definition
    assert spec_digest(replace(spec, disk_bytes=9 * 1024**3), LAYOUT) == base
