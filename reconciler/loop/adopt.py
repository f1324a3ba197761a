"""Adoption: an existing domain that no reconciler made becomes managed, when its manifest
matches it, only when asked (`reconcile adopt NAME DIR`), never implicitly; and export, the
manifest an existing domain would have (`reconcile export NAME`), its first step.

The domain is planned as if it were this state directory's (Reconciler.plan, adopting): the
definition step then lists every managed field where the domain and the manifest differ.
With no difference, the marker alone is recorded on the domain's definition, which is left as
it is otherwise (libvirt's domain metadata), so nothing the manifest does not manage is lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.drivers.base import Driver
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.images.diskheaders import HeaderError, parse_qcow2_header, read_head
from reconciler.loop.reconcile import Reconciler
from reconciler.manifests.export import ExportFacts, export_manifest
from reconciler.model.desired import InstanceSpec
from reconciler.planning.machine import describe_changes, shape_of, with_recorded_fields
from reconciler.planning.steps import DefineDomain
from reconciler.statedir import StateDir


@dataclass(frozen=True, slots=True)
class Adoption:
    name: str
    adopted: bool
    differences: tuple[str, ...] = ()  # managed fields where the domain and manifest differ
    refusal: str | None = None  # why it cannot be adopted at all
    next_steps: tuple[str, ...] = ()  # what the next pass will do once it is adopted


def adopt(reconciler: Reconciler, spec: InstanceSpec, *, dry_run: bool = False) -> Adoption:
    try:
        plan = reconciler.plan(spec, reconciler.resolver(persist_digests=False), adopting=True)
    except ReconcilerError as err:
        return Adoption(spec.name, False, refusal=str(err))
    if plan.refusal is not None:
        return Adoption(spec.name, False, refusal=plan.refusal)
    defines = [step for step in plan.steps if isinstance(step, DefineDomain)]
    others = tuple(step.describe() for step in plan.steps if not isinstance(step, DefineDomain))
    if not defines:  # a marker with the adoption digest is always redefined
        return Adoption(spec.name, False, refusal="internal error: no definition step planned")
    (define,) = defines
    record = reconciler.driver.lookup(spec.name)
    if record is None or record.definition is None:
        return Adoption(spec.name, False, refusal="the domain went away meanwhile")
    # what the marker records is written with it: only what the hypervisor holds may differ
    found = with_recorded_fields(record.definition, define.machine)
    if shape_of(found) != shape_of(define.machine):
        differences = tuple(c.describe() for c in describe_changes(found, define.machine))
        return Adoption(spec.name, False, differences=differences)
    if not dry_run:
        reconciler.driver.set_marker(spec.name, define.machine)
    return Adoption(spec.name, not dry_run, next_steps=others)


def adoption_json(adoption: Adoption) -> dict[str, object]:
    """An adoption as the daemon sends it."""
    return {
        "name": adoption.name,
        "adopted": adoption.adopted,
        "differences": list(adoption.differences),
        "refusal": adoption.refusal,
        "nextSteps": list(adoption.next_steps),
    }


def adoption_from_json(data: dict[str, object]) -> Adoption:
    def strings(key: str) -> tuple[str, ...]:
        value = data.get(key)
        return tuple(str(item) for item in value) if isinstance(value, list) else ()

    refusal = data.get("refusal")
    return Adoption(
        str(data.get("name")),
        bool(data.get("adopted")),
        strings("differences"),
        None if refusal is None else str(refusal),
        strings("nextSteps"),
    )


def export_domain(driver: Driver, state: StateDir, name: str) -> str:
    """The manifest of existing domain `name` (ConfigError when there is none to export)."""
    record = driver.lookup(name)
    if record is None or record.definition is None:
        why = "no such domain" if record is None else record.problem
        raise ConfigError(f"cannot export {name!r}: {why}")
    machine = record.definition
    source, image_format, size = boot_disk_facts(machine.boot_disk_path)
    entry = _CACHE_ENTRY.fullmatch(Path(source).name) if source is not None else None
    cached = source is not None and Path(source).parent == state.images and entry is not None
    digest = entry.group(1) if cached and entry is not None else None
    facts = ExportFacts(
        running=record.state.active,
        autostart=record.autostart,
        image_source=_remembered_source(state, digest) or source,
        image_format=image_format,
        disk_bytes=size,
        instance_disk=str(state.instance(name).disk),
        image_sha256=digest,
        cached=cached and _remembered_source(state, digest) is None,
    )
    return export_manifest(machine, facts)


_CACHE_ENTRY = re.compile(r"sha256-([0-9a-f]{64})\.(?:raw|qcow2)")


def _remembered_source(state: StateDir, digest: str | None) -> str | None:
    """The local source a cache entry was made from, when the cache remembers one (the
    digests of local sources named without a checksum)."""
    if digest is None:
        return None
    try:
        memos = sorted(state.source_digests.glob("*.json"))
    except OSError:
        return None
    for memo in memos:
        try:
            data = json.loads(memo.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("sha256") == digest and data.get("path"):
            return str(data["path"])
    return None


def boot_disk_facts(path: str | None) -> tuple[str | None, str | None, int | None]:
    """The boot disk's base (its backing file, else itself), the base's format and the disk's
    virtual size, read from its header (no subprocess; a raw disk's size is its length)."""
    if path is None:
        return None, None, None
    try:
        head = read_head(path)
        header = parse_qcow2_header(head)
    except HeaderError:
        try:
            return path, "raw", Path(path).stat().st_size
        except OSError:
            return path, "raw", None
    except OSError:
        return path, None, None
    if header.backing_file is None:
        return path, "qcow2", header.virtual_size
    backing = Path(header.backing_file)
    if not backing.is_absolute():
        backing = Path(path).parent / backing
    return str(backing), header.backing_format or "raw", header.virtual_size
