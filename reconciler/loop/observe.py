"""Observe actual state: domains from the driver, disk facts from file headers. Read-only."""

from __future__ import annotations

import logging

from reconciler.drivers.base import DomainRecord, Driver
from reconciler.errors import InstanceError
from reconciler.images.diskheaders import HeaderError, parse_qcow2_header, read_head
from reconciler.images.resolve import ResolvedSource
from reconciler.model.actual import DiskFacts, DomainFacts, InstanceActual
from reconciler.planning.domainxml import DomainXmlError, parse_domain_xml
from reconciler.statedir import InstancePaths

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


def observe_domain(driver: Driver, name: str) -> DomainFacts | None:
    """Domain `name` as it is now (None when there is none). One whose XML we cannot read is
    reported and treated as foreign, so never touched: it cannot carry a marker we could
    trust. Raises DriverError (ConnectionLost when the connection is gone)."""
    record = driver.lookup(name)
    if record is None:
        return None
    try:
        return domain_facts(record)
    except DomainXmlError as err:
        raise InstanceError(f"domain {name}: {err}; it is left untouched") from err


def observe_instance(
    driver: Driver, name: str, paths: InstancePaths, source: ResolvedSource
) -> InstanceActual:
    """What exists for instance `name`: its domain (if any), its disk, and its cached base."""
    overlay, problem = read_overlay(str(paths.disk))
    return InstanceActual(
        domain=observe_domain(driver, name),
        overlay=overlay,
        overlay_problem=problem,
        base_cached=source.base_cached,
        base_changed=source.base_changed,
    )
