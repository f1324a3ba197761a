"""The QMP driver's definitions: a Machine as JSON in the model's own terms (not libvirt's
XML), read back exactly, refused with a reason when the file is not one, and a definition an
earlier version wrote as libvirt XML read once and rewritten."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.drivers.definition import DefinitionError, machine_from_json, machine_to_json
from reconciler.drivers.libvirt_xml import render_domain_xml
from reconciler.drivers.qmp_driver import QmpDriver
from reconciler.layout import StateLayout
from reconciler.model.actual import DomainFacts, PowerState, UnreadableDomain
from tests.unit.test_change_rules import BASE, SAMPLES

EVERY_SETTING = replace(BASE, **SAMPLES)


def test_every_field_reads_back_exactly() -> None:
    for machine in (BASE, EVERY_SETTING):
        assert machine_from_json(machine_to_json(machine)) == machine
    document = json.loads(machine_to_json(EVERY_SETTING))
    assert document["version"] == 1 and document["machine"]["firmware"] == "uefi"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<domain/>", "not JSON"),
        ('{"version": 9, "machine": {}}', "not a definition of version 1"),
        ('{"version": 1, "machine": {"name": 1}}', "machine.name: expected a string"),
        ('{"version": 1, "machine": {"bogus": 1}}', "unknown field(s) bogus"),
    ],
)
def test_a_file_that_is_not_a_definition_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(DefinitionError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        machine_from_json(text)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[QmpDriver]:
    opened = QmpDriver(StateLayout(tmp_path))
    yield opened
    opened.close()


def test_a_definition_written_as_libvirt_xml_is_read_once_and_rewritten(
    driver: QmpDriver, tmp_path: Path
) -> None:
    paths = StateLayout(tmp_path).instance(BASE.name)
    paths.directory.mkdir(parents=True)
    paths.legacy_definition.write_text(render_domain_xml(BASE))
    assert [record.name for record in driver.list_domains()] == [BASE.name]
    record = driver.lookup(BASE.name)
    assert isinstance(record, DomainFacts) and record.state is PowerState.SHUTOFF
    assert record.definition == BASE
    assert not paths.legacy_definition.exists()
    assert machine_from_json(paths.definition.read_text()) == BASE
    assert driver.lookup(BASE.name) == record  # now read from the JSON file


def test_an_unreadable_definition_is_an_unreadable_domain(
    driver: QmpDriver, tmp_path: Path
) -> None:
    paths = StateLayout(tmp_path).instance(BASE.name)
    paths.directory.mkdir(parents=True)
    paths.definition.write_text('{"version": 1, "machine": {"vcpus": "many"}}')
    record = driver.lookup(BASE.name)
    assert isinstance(record, UnreadableDomain) and "machine.vcpus" in record.problem
