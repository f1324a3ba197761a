"""Observe actual state: domains from the driver, disk facts from file headers. Read-only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from reconciler.drivers.base import DomainRecord, Driver
from reconciler.images.cache import EntryRecords
from reconciler.images.diskheaders import HeaderError, parse_qcow2_header, read_head
from reconciler.model.actual import DiskFacts, DomainFacts, InstanceActual
from reconciler.planning.domainxml import DomainXmlError, parse_domain_xml
from reconciler.statedir import StateDir

LOG = logging.getLogger(__name__)


def domain_facts(record: DomainRecord) -> DomainFacts:
    """Parse a driver record into facts (raises DomainXmlError on unreadable XML)."""
    return DomainFacts(
        name=record.name,
        uuid=record.uuid,
        state=record.state,
        state_reason=record.state_reason,
        persistent=record.persistent,
        definition=parse_domain_xml(record.inactive_xml),
        live_definition=parse_domain_xml(record.live_xml) if record.live_xml else None,
    )


def observe_domains(driver: Driver) -> dict[str, DomainFacts]:
    """Every domain the driver sees, by name. A domain whose XML we cannot read is kept out
    (and so never touched): it cannot carry a marker we could trust."""
    domains: dict[str, DomainFacts] = {}
    for record in driver.list_domains():
        try:
            domains[record.name] = domain_facts(record)
        except DomainXmlError as err:
            LOG.warning("domain %s: %s", record.name, err)
    return domains


def read_overlay(path: str) -> tuple[DiskFacts | None, str | None]:
    """An overlay's facts from its qcow2 header (no qemu-img). (None, None) when it does not
    exist; (None, problem) when it exists but is not a qcow2 we can read."""
    try:
        head = read_head(path)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"cannot read {path}: {err.strerror}"
    try:
        header = parse_qcow2_header(head)
    except HeaderError as err:
        return None, f"{path}: {err}"
    facts = DiskFacts(
        path=path,
        format="qcow2",
        virtual_size=header.virtual_size,
        backing_file=header.backing_file,
        backing_format=header.backing_format,
    )
    return facts, None


@dataclass(frozen=True, slots=True)
class BaseFacts:
    """A cache entry: whether it exists, and whether its file changed since it was verified."""

    cached: bool
    changed: bool


def observe_base(base_path: Path, records: EntryRecords) -> BaseFacts:
    """Facts about one cache entry (observed once per pass, however many instances share it)."""
    cached = base_path.is_file()
    return BaseFacts(cached, cached and records.changed(base_path))


def observe_instance(
    name: str, base: BaseFacts, domains: dict[str, DomainFacts], state: StateDir
) -> InstanceActual:
    """What exists for instance `name`: its domain (if any), overlay and cached base."""
    overlay, problem = read_overlay(str(state.instance(name).disk))
    return InstanceActual(
        domain=domains.get(name),
        overlay=overlay,
        overlay_problem=problem,
        base_cached=base.cached,
        base_changed=base.changed,
    )
