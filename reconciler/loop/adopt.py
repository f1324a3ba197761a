"""Adoption: an existing domain that no reconciler made becomes managed, when its manifest
matches it, only when asked (`reconcile adopt NAME DIR`), never implicitly; and export, the
manifest an existing domain would have (`reconcile export NAME`), its first step.

The domain is planned as if it were this state directory's (Reconciler.plan, adopting): the
definition step then lists every managed field where the domain and the manifest differ.
With no difference, the marker alone is recorded on the domain's definition, which is left as
it is otherwise (libvirt's domain metadata), so nothing the manifest does not manage is lost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from reconciler.drivers.base import Driver
from reconciler.errors import ConfigError, InstanceError, ReconcilerError
from reconciler.images.diskheaders import HeaderError, parse_qcow2_header, read_head
from reconciler.images.records import hash_file
from reconciler.loop.observe import read_overlay
from reconciler.loop.reconcile import Reconciler
from reconciler.manifests.export import ExportFacts, export_manifest
from reconciler.model.actual import DomainFacts, InstanceActual
from reconciler.model.desired import InstanceSpec
from reconciler.model.machine import BOOT_DISK_TARGET, MARKER_NAMESPACE, OwnershipMarker
from reconciler.model.resolved import ResolvedInstance
from reconciler.planning.machine import describe_changes, shape_of, with_recorded_fields
from reconciler.planning.steps import DefineDomain, FetchBase
from reconciler.statedir import StateDir
from reconciler.steps.takeover import BootDiskTakeOver

# the spec digest of the marker a domain is planned with while it is being adopted
ADOPTION_DIGEST = "sha256:adopting"


@dataclass(frozen=True, slots=True)
class Adoption:
    name: str
    adopted: bool
    differences: tuple[str, ...] = ()  # managed fields where the domain and manifest differ
    refusal: str | None = None  # why it cannot be adopted at all
    next_steps: tuple[str, ...] = ()  # what the next pass will do once it is adopted
    take_over: tuple[str, ...] = ()  # what adopting does to the boot disk, in words


@dataclass(frozen=True, slots=True)
class _Adopting:
    actual: InstanceActual  # as it will be once adopted (its boot disk taken over)
    take_over: BootDiskTakeOver | None
    fetch_first: bool  # the take-over needs the base in the cache


def adopt(reconciler: Reconciler, spec: InstanceSpec, *, dry_run: bool = False) -> Adoption:
    """Adopt the unmanaged domain `spec.name` when nothing the manifest manages differs from
    it, taking over its boot disk when that is elsewhere (see take_over_of)."""
    try:
        resolved, actual = reconciler.observe(spec, reconciler.resolver(persist_digests=False))
        adopting = _as_adopted(reconciler, resolved, actual)
    except ReconcilerError as err:
        return Adoption(spec.name, False, refusal=str(err))
    plan = reconciler.plan_observed(resolved, adopting.actual)
    if plan.refusal is not None:
        return Adoption(spec.name, False, refusal=plan.refusal)
    defines = [step for step in plan.steps if isinstance(step, DefineDomain)]
    if not defines:  # a marker with the adoption digest is always redefined
        return Adoption(spec.name, False, refusal="internal error: no definition step planned")
    (define,) = defines
    domain = adopting.actual.domain
    assert domain is not None  # _as_adopted refuses an instance without one
    # what the marker records is written with it: only what the hypervisor holds may differ
    found = with_recorded_fields(domain.definition, define.machine)
    # the serial console is the reconciler's own device, no manifest's: a domain made by hand
    # (a pty, or none) gets the console log file when the next pass redefines it
    house = dataclasses.replace(found, console_log=define.machine.console_log)
    if shape_of(house) != shape_of(define.machine):
        differences = tuple(c.describe() for c in describe_changes(found, define.machine))
        return Adoption(spec.name, False, differences=differences)
    take_over = adopting.take_over
    words = take_over.describe() if take_over is not None else ()
    if adopting.fetch_first:
        words = ("fetch the base image into the cache", *words)
    fetched = adopting.fetch_first and not dry_run
    others = tuple(
        step.describe()
        for step in plan.steps
        if not isinstance(step, DefineDomain) and not (fetched and isinstance(step, FetchBase))
    )
    if house != found:
        console = ", ".join(c.describe() for c in describe_changes(found, house))
        others += (f"redefine the domain: {console} (the console `reconcile console` reads)",)
    if dry_run:
        return Adoption(spec.name, False, next_steps=others, take_over=words)
    if take_over is not None:
        from reconciler.steps.apply import apply_step  # steps run: see Reconciler.steps
        from reconciler.steps.takeover import take_over_boot_disk

        context = reconciler.steps
        try:
            if adopting.fetch_first:  # the plan fetches a base only for a start or a new disk
                image = resolved.spec.image
                fetch = FetchBase(spec.name, image, resolved.base_path, resolved.source_size)
                apply_step(fetch, context)
            take_over_boot_disk(take_over, context.driver, context.qemu_img)
        except (ReconcilerError, OSError) as err:
            return Adoption(spec.name, False, refusal=f"taking over its boot disk failed: {err}")
    reconciler.driver.set_marker(spec.name, define.machine)
    return Adoption(spec.name, True, next_steps=others, take_over=words)


def _as_adopted(
    reconciler: Reconciler, resolved: ResolvedInstance, actual: InstanceActual
) -> _Adopting:
    """`actual` as the plan reads it once the domain is adopted: with a marker that no
    manifest ever digested (so the plan redefines, and says what differs), and its boot disk
    the instance's. InstanceError when it cannot be adopted."""
    spec = resolved.spec
    domain = actual.domain
    state_dir_id = reconciler.host.state_dir_id
    if domain is None:
        raise InstanceError(f"no domain named {spec.name!r} to adopt")
    if domain.marker is not None and domain.marker.state_dir_id == state_dir_id:
        raise InstanceError(
            f"domain {spec.name!r} is already managed by this state directory: nothing to adopt"
        )
    if domain.marker is not None:
        raise InstanceError(
            f"domain {spec.name!r} carries the marker of another state directory "
            f"({domain.marker.state_dir_id or 'no id'}): it is foreign here, and that "
            "state directory's reconciler manages it; not adopted (to move it here, remove "
            f"that marker first: virsh metadata {spec.name} --uri {MARKER_NAMESPACE} "
            "--remove --config)"
        )
    marker = OwnershipMarker(str(spec.manifest), ADOPTION_DIGEST, state_dir_id)
    definition = dataclasses.replace(domain.definition, marker=marker)
    take_over = take_over_of(reconciler.state, resolved, domain)
    overlay = actual.overlay
    if take_over is not None:
        disks = tuple(
            dataclasses.replace(disk, path=str(take_over.target))
            if disk.target == BOOT_DISK_TARGET
            else disk
            for disk in definition.disks
        )
        definition = dataclasses.replace(definition, disks=disks)
        facts, _problem = read_overlay(str(take_over.source))
        assert facts is not None  # take_over_of read it
        overlay = dataclasses.replace(
            facts,
            path=str(take_over.target),
            backing_file=str(take_over.base),
            backing_format=take_over.base_format,
        )
    adopted = dataclasses.replace(
        actual, domain=dataclasses.replace(domain, definition=definition), overlay=overlay
    )
    fetch_first = take_over is not None and not resolved.base_cached
    return _Adopting(adopted, take_over, fetch_first)


def take_over_of(
    state: StateDir, resolved: ResolvedInstance, domain: DomainFacts
) -> BootDiskTakeOver | None:
    """What adopting does to a boot disk outside the instance directory (None: it is the
    instance's disk already). A disk is taken over only when nothing of the guest's can be
    lost or misread: the domain is shut off, the instance has no disk yet, the disk is a
    regular qcow2 file whose base has the manifest's image's content, on the same file system
    as the instance directory (a rename, never a copy). InstanceError says what stands in the
    way, and how to clear it."""
    name = resolved.spec.name
    boot = domain.definition.boot_disk_path
    target = state.instance(name).disk
    if boot is None or boot == str(target):
        return None
    source = Path(boot)
    inside = os.path.realpath(state.root) + os.sep
    if os.path.realpath(source).startswith(inside):
        raise InstanceError(
            f"its boot disk {source} is a file of the state directory {state.root} (another "
            "instance's, or the image cache's): it is never taken over"
        )
    if domain.state.active:
        raise InstanceError(
            f"its boot disk {source} is outside the instance directory, and adopting moves it "
            f"to {target}: shut the domain down first (virsh shutdown), then adopt again"
        )
    if os.path.lexists(target):
        raise InstanceError(
            f"its boot disk is {source}, and {target} already exists: adopting would replace "
            "that file; move it away first if it is not needed"
        )
    try:
        status = os.lstat(source)
    except OSError as err:
        raise InstanceError(f"its boot disk {source} cannot be read: {err.strerror}") from err
    if not stat.S_ISREG(status.st_mode):
        raise InstanceError(
            f"its boot disk {source} is not a regular file (a symlink or a device): only a "
            "disk file is moved into the instance directory"
        )
    facts, problem = read_overlay(str(source))
    if facts is None or facts.backing_file is None:
        raise InstanceError(
            f"its boot disk {source} is not a copy-on-write overlay of a base image "
            f"({problem or 'a disk without a backing file'}); an instance boots from an "
            "overlay of its image, so this disk cannot become one"
        )
    image = resolved.spec.image
    base, base_format = resolved.base_path, image.cached_format.value
    backing = Path(facts.backing_file)
    if not backing.is_absolute():
        backing = source.parent / backing
    if backing == base and facts.backing_format == base_format:
        rebase_from = None
    else:
        digest = _sha256_of(backing)
        if digest != image.sha256 or facts.backing_format != image.format.value:
            raise InstanceError(
                f"its boot disk {source} is based on {backing} ({facts.backing_format}, sha256 "
                f"{(digest or 'unreadable')[:16]}...), not on the manifest's image "
                f"{image.location} ({base_format}, sha256 {(image.sha256 or '?')[:16]}...): "
                "adopting would change what the guest reads. Name that base in image.source"
            )
        rebase_from = str(backing)
    home = _existing_ancestor(target.parent)
    if os.stat(home).st_dev != status.st_dev:
        raise InstanceError(
            f"its boot disk {source} is on another file system than {target.parent}: adopting "
            f"moves a disk by renaming it, never copies it. With the domain shut off, copy it "
            f"there yourself (cp --sparse=always {source} {target}), point the domain's vda at "
            "the copy (virsh edit), and adopt again"
        )
    return BootDiskTakeOver(name, source, target, base, base_format, rebase_from)


def _sha256_of(path: Path) -> str | None:
    """The sha256 of a regular file's content (None: not a regular file, or unreadable; a
    FIFO named as a base is never read)."""
    try:
        return hash_file(path)
    except InstanceError:
        return None


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def adoption_json(adoption: Adoption) -> dict[str, object]:
    """An adoption as the daemon sends it."""
    return {
        "name": adoption.name,
        "adopted": adoption.adopted,
        "differences": list(adoption.differences),
        "refusal": adoption.refusal,
        "nextSteps": list(adoption.next_steps),
        "takeOver": list(adoption.take_over),
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
        strings("takeOver"),
    )


def export_domain(driver: Driver, state: StateDir, name: str) -> str:
    """The manifest of existing domain `name` (ConfigError when there is none to export)."""
    record = driver.lookup(name)
    if not isinstance(record, DomainFacts):
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
