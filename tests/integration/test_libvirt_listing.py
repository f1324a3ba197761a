"""A listing over a libvirt connection asks for every domain's state, persistence and
autostart at once, not three round trips per domain (each one over a daemon's socket), and
says of each domain exactly what asking it on its own says (libvirt's test driver: running,
paused, stopped, transient and autostart domains)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import libvirt
import pytest

from reconciler.drivers.libvirt_driver import LibvirtDriver
from reconciler.layout import StateLayout
from reconciler.model.actual import DomainFacts

PER_DOMAIN = ("state", "isPersistent", "autostart")


class Counted:
    """A libvirt object whose method calls are counted (domains it returns are counted too)."""

    def __init__(self, inner: Any, calls: Counter[str]) -> None:
        self._inner, self._calls = inner, calls

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any) -> Any:
            self._calls[name] += 1
            result = attribute(*args)
            if name == "listAllDomains":
                return [Counted(domain, self._calls) for domain in result]
            return result

        return call


def _xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory>65536</memory>"
            "<os><type>hvm</type></os></domain>")  # fmt: skip


@pytest.fixture
def connection() -> Any:
    conn = libvirt.open("test:///default")
    for name in ("rclist-run", "rclist-paused", "rclist-off", "rclist-auto"):
        conn.defineXML(_xml(name))
    conn.lookupByName("rclist-run").create()
    paused = conn.lookupByName("rclist-paused")
    paused.create()
    paused.suspend()
    conn.lookupByName("rclist-auto").setAutostart(1)
    conn.createXML(_xml("rclist-transient"), 0)
    yield conn
    for domain in conn.listAllDomains(0):
        if domain.name().startswith("rclist-"):
            persistent = domain.isPersistent()
            if domain.isActive():
                domain.destroy()  # a transient domain is gone with it
            if persistent:
                domain.undefine()
    conn.close()


def test_a_listing_asks_for_states_at_once_and_says_what_lookups_say(
    connection: Any, tmp_path: Path
) -> None:
    calls: Counter[str] = Counter()
    driver = LibvirtDriver("test:///default", Counted(connection, calls), StateLayout(tmp_path))
    listed = {record.name: record for record in driver.list_domains()}
    assert {n for n in listed if n.startswith("rclist-")} == {
        "rclist-run", "rclist-paused", "rclist-off", "rclist-auto", "rclist-transient"
    }  # fmt: skip
    assert all(calls[method] == 0 for method in PER_DOMAIN), calls
    assert calls["getAllDomainStats"] == 1
    for name, record in listed.items():
        assert driver.lookup(name) == record, name
    transient, auto, off = (listed[f"rclist-{n}"] for n in ("transient", "auto", "off"))
    assert isinstance(transient, DomainFacts) and transient.persistent is False
    assert isinstance(auto, DomainFacts) and auto.autostart is True
    assert isinstance(off, DomainFacts) and off.autostart is False
    assert listed["rclist-paused"].state.value == "paused"
