"""Parsed domain definitions kept between processes (drivers.parsedstore): a second process
parses no XML it parsed before, a store that is wrong is ignored (or the one entry that is),
and the file is written only when it would say something new."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers import libvirt_xml, parsedstore
from reconciler.drivers.libvirt_xml import DomainXmlError, render_domain_xml
from reconciler.drivers.parsedstore import ParsedDefinitions
from tests.unit.test_change_rules import BASE, SAMPLES

XML = render_domain_xml(replace(BASE, **SAMPLES))
OTHER = render_domain_xml(BASE)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    parsed: list[str] = []
    real = libvirt_xml.parse_domain_xml.__wrapped__

    def counting(xml: str) -> Any:
        parsed.append(xml)
        return real(xml)

    monkeypatch.setattr(parsedstore, "parse_domain_xml", counting)
    return parsed


def test_a_second_process_parses_nothing_it_parsed_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "parsed.json"
    first = ParsedDefinitions(store)
    machines = [first.parse(XML), first.parse(OTHER)]
    first.save()
    parsed = _counting(monkeypatch)
    second = ParsedDefinitions(store)
    assert [second.parse(XML), second.parse(OTHER)] == machines
    assert parsed == []
    before = store.stat().st_mtime_ns
    second.save()  # nothing new: not written
    assert store.stat().st_mtime_ns == before


def test_a_wrong_store_or_entry_is_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "parsed.json"
    first = ParsedDefinitions(store)
    expected = first.parse(XML)
    first.save()
    data = json.loads(store.read_text())
    (key,) = data["machines"]
    wrong_entry = {**data, "machines": {key: {**data["machines"][key], "vcpus": "many"}}}
    for content in (b"garbage", json.dumps({**data, "version": 2}).encode(),
                    json.dumps({**data, "context": "x"}).encode(),
                    json.dumps(wrong_entry).encode(), b"[" * 100_000):  # fmt: skip
        store.write_bytes(content)
        parsed = _counting(monkeypatch)
        assert ParsedDefinitions(store).parse(XML) == expected
        assert parsed == [XML]
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert ParsedDefinitions(fifo).parse(XML) == expected  # never blocks on a FIFO


def test_unreadable_xml_is_still_an_error_and_the_store_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ParsedDefinitions(tmp_path / "parsed.json")
    with pytest.raises(DomainXmlError):
        store.parse("<not-a-domain/>")
    monkeypatch.setattr(parsedstore, "MAX_KEPT", 1)
    store.parse(XML)
    store.parse(OTHER)
    store.save()
    assert len(json.loads((tmp_path / "parsed.json").read_text())["machines"]) == 1


def test_a_listing_trims_what_is_kept_to_what_it_used(tmp_path: Path) -> None:
    store = ParsedDefinitions(tmp_path / "parsed.json")
    for memory in range(200):  # a daemon's redefinitions, one after the other
        store.parse(render_domain_xml(replace(BASE, memory_kib=65536 + memory)))
    store.trim(listed=1)
    store.save()
    assert len(json.loads((tmp_path / "parsed.json").read_text())["machines"]) == 66


def test_a_process_that_looked_up_one_domain_keeps_what_the_last_listing_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reconcile snapshot NAME` asks for one domain: the next pass must not parse again
    every definition the last listing kept."""
    path = tmp_path / "parsed.json"
    listing = ParsedDefinitions(path)
    listing.parse(XML)
    listing.parse(OTHER)
    listing.trim(listed=2)
    listing.save()
    one = ParsedDefinitions(path)
    changed = render_domain_xml(replace(BASE, memory_kib=BASE.memory_kib * 2))
    one.parse(changed)  # a lookup of one domain, redefined since
    one.save()
    parsed = _counting(monkeypatch)
    again = ParsedDefinitions(path)
    for xml in (XML, OTHER, changed):
        again.parse(xml)
    assert parsed == []
