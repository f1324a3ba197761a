"""Observe actual state: domains from the driver, disk facts from file headers. Read-only."""

from __future__ import annotations

import os
from collections.abc import Mapping

from reconciler.drivers.base import Driver
from reconciler.errors import InstanceError
from reconciler.images.diskheaders import HeaderError, read_overlay_header
from reconciler.layout import InstancePaths, is_config_drive
from reconciler.model.actual import (
    DiskFacts,
    DomainFacts,
    InstanceActual,
    ObservedDomain,
    UnreadableDomain,
)
from reconciler.model.desired import ImageFormat, InstanceSpec
from reconciler.model.resolved import ResolvedInstance


def domain_facts(record: ObservedDomain) -> DomainFacts:
    """A domain as the plan reads it; InstanceError for one whose definition the driver could
    not read (it cannot carry a marker we could trust, so it is never touched)."""
    if isinstance(record, UnreadableDomain):
        raise InstanceError(
            f"domain {record.name}: {record.problem or 'unreadable definition'}; "
            "it is left untouched"
        )
    return record


def read_overlay(path: str) -> tuple[DiskFacts | None, str | None]:
    """An overlay's facts from its qcow2 header (no qemu-img). (None, None) when it does not
    exist; (None, problem) when it exists but is not a qcow2 we can read."""
    try:
        header = read_overlay_header(path)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"cannot read {path}: {err.strerror}"
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
    """Domain `name` as it is now (None when there is none). Raises DriverError
    (ConnectionLost when the connection is gone: never read as "no such domain")."""
    record = driver.lookup(name)
    return None if record is None else domain_facts(record)


def observe_instance(
    driver: Driver,
    name: str,
    paths: InstancePaths,
    source: ResolvedInstance,
    listed: Mapping[str, ObservedDomain] | None = None,
) -> InstanceActual:
    """What exists for instance `name`: its domain (if any), its disk, and its cached base.
    `listed`: every domain, from one listing taken earlier in the pass, read instead of a
    lookup of its own (a plan from it is only as fresh as the listing)."""
    overlay, problem = read_overlay(str(paths.disk))
    data_disks, data_problem = read_data_disks(source.spec, paths)
    if listed is None:
        domain = observe_domain(driver, name)
    else:
        record = listed.get(name)
        domain = None if record is None else domain_facts(record)
    return InstanceActual(
        domain=domain,
        overlay=overlay,
        overlay_problem=problem,
        config_drives=config_drives(paths),
        host_shutdown=os.path.exists(paths.host_shutdown),
        data_disks=data_disks,
        data_disk_problem=data_problem,
    )


def read_data_disks(
    spec: InstanceSpec, paths: InstancePaths
) -> tuple[tuple[DiskFacts, ...], str | None]:
    """The manifest's data disks whose files exist, and the first that is not what it should
    be (a qcow2 disk whose header is not ours). A raw disk is never probed: its size is its
    file's."""
    found: list[DiskFacts] = []
    for disk in spec.disks:
        path = str(paths.directory / disk.file_name)
        if disk.format is ImageFormat.RAW:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                continue
            except OSError as err:
                return tuple(found), f"cannot read {path}: {err.strerror}"
            found.append(DiskFacts(path, "raw", size, None, None))
            continue
        facts, problem = read_overlay(path)
        if problem is not None:
            return tuple(found), problem
        if facts is not None and facts.backing_file is not None:
            return tuple(found), f"{path} has a backing file ({facts.backing_file}): not our disk"
        if facts is not None:
            found.append(facts)
    return tuple(found), None


def config_drives(paths: InstancePaths) -> frozenset[str]:
    """The config drive images in an instance's directory (config-DIGEST.iso)."""
    try:
        names = os.listdir(paths.directory)
    except OSError:
        return frozenset()
    return frozenset(name for name in names if is_config_drive(name))
