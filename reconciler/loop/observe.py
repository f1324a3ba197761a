"""Observe actual state: domains from the driver, disk facts from file headers. Read-only."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from reconciler.drivers.base import Driver
from reconciler.errors import InstanceError
from reconciler.images.diskheaders import (
    HeaderError,
    read_overlay_header,
    read_qcow2_snapshots,
)
from reconciler.layout import REPLACED_SUFFIX, SNAPSHOT_RECORD, InstancePaths, is_config_drive
from reconciler.model.actual import (
    DiskFacts,
    DomainFacts,
    HoldFacts,
    InstanceActual,
    ObservedDomain,
    SnapshotFacts,
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
        snapshot_count=header.snapshot_count,
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
    names = directory_names(paths)
    with_entries = [d.path for d in (overlay, *data_disks) if d is not None and d.snapshot_count]
    snapshots, snapshot_problem = read_snapshots(snapshot_files(paths, with_entries, names))
    records = frozenset(name for name in names if SNAPSHOT_RECORD.fullmatch(name))
    return InstanceActual(
        domain=domain,
        overlay=overlay,
        overlay_problem=problem,
        config_drives=frozenset(name for name in names if is_config_drive(name)),
        host_shutdown=paths.host_shutdown.name in names,
        data_disks=data_disks,
        data_disk_problem=data_problem,
        snapshots=snapshots,
        snapshot_problem=snapshot_problem,
        snapshot_records=records,
        snapshot_drives=drives_kept_for(paths, records),
        hold=read_hold(paths) if paths.hold.name in names else None,
        frozen=paths.fs_frozen.name in names,
    )


MAX_RECORD_BYTES = 1024 * 1024
_DRIVE_NAME = re.compile(r"config-[0-9a-f]{1,64}\.iso")


def drives_kept_for(paths: InstancePaths, records: frozenset[str]) -> frozenset[str]:
    """The config drives that the definitions kept in snapshot records name (a revert puts
    such a definition back, drive and all); a record that cannot be read names none."""
    found: set[str] = set()
    for name in records:
        try:
            with open(paths.directory / name, encoding="utf-8") as stream:
                definition = json.loads(stream.read(MAX_RECORD_BYTES)).get("definition")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(definition, str):
            found.update(_DRIVE_NAME.findall(definition))
    return frozenset(found)


def directory_names(paths: InstancePaths) -> frozenset[str]:
    """The file names in an instance's directory (empty when there is none)."""
    try:
        return frozenset(os.listdir(paths.directory))
    except OSError:
        return frozenset()


def snapshot_files(paths: InstancePaths, disks: list[str], names: frozenset[str]) -> list[str]:
    """The disk files that may hold snapshots: `disks` (the instance's qcow2 disks), and
    boot disks a replace moved aside (whose snapshots the record of the replace names)."""
    files = list(disks)
    aside = f"{paths.disk.name}.{REPLACED_SUFFIX}-"
    files += [str(paths.directory / name) for name in sorted(names) if name.startswith(aside)]
    return files


def read_snapshots(files: list[str]) -> tuple[tuple[SnapshotFacts, ...], str | None]:
    """Each snapshot label the files' tables hold, with the files that hold it, oldest
    first; and the first file whose table could not be read."""
    found: dict[str, tuple[float, list[str], int]] = {}
    for path in files:
        try:
            table = read_qcow2_snapshots(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            return (), f"cannot read the snapshots of {path}: {err.strerror}"
        except HeaderError as err:
            return (), f"the snapshot table of {path}: {err}"
        for entry in table:
            taken, holders, state = found.get(entry.name, (entry.date, [], 0))
            holders.append(path)
            found[entry.name] = (min(taken, entry.date), holders, max(state, entry.vm_state_size))
    facts = (
        SnapshotFacts(label, taken, tuple(holders), state)
        for label, (taken, holders, state) in found.items()
    )
    return tuple(sorted(facts, key=lambda s: (s.taken, s.label))), None


def read_hold(paths: InstancePaths) -> HoldFacts | None:
    """The hold a revert left (None when its file is gone or unreadable: a hold never stands
    on a file that cannot say what it holds)."""
    try:
        with open(paths.hold, encoding="utf-8") as stream:
            data = json.load(stream)
        return HoldFacts(
            str(data["label"]),
            str(data["revertedDigest"]),
            float(data["at"]),
            data.get("complete") is True,
            data.get("running") is True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
