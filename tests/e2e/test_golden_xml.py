"""Every golden domain XML of the unit tests is accepted by libvirt's QEMU driver as it is
(the KVM ones as TCG where this host offers no KVM), and reads back as the same machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.drivers.libvirt_xml import parse_domain_xml
from reconciler.planning.machine import shape_of
from tests.e2e.conftest import E2E
from tests.helpers import unique_name

GOLDEN = Path(__file__).parent.parent / "unit" / "golden"


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.xml")), ids=lambda p: p.stem)
def test_golden_xml_defines(e2e: E2E, golden: Path) -> None:
    name = unique_name()
    xml = golden.read_text().replace("<name>web</name>", f"<name>{name}</name>")
    if not e2e.driver.kvm_support().usable:
        xml = xml.replace('<domain type="kvm"', '<domain type="qemu"')
    e2e.driver.define_xml(xml)
    try:
        record = e2e.driver.lookup(name)
        assert record is not None and record.definition is not None
        wanted = parse_domain_xml(xml)
        assert record.definition.marker == wanted.marker
        assert record.definition.disks == wanted.disks
        # what libvirt reports reads back as the same machine (its defaults as defaults)
        assert shape_of(record.definition) == shape_of(wanted)
    finally:
        e2e.driver.undefine(name)
