"""`reconcile export NAME` (a manifest for an existing domain) and `reconcile adopt NAME DIR`
(an existing, unmanaged domain becomes managed when its manifest matches it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from reconciler.cli.context import load_slice, owned_state, settings_of
from reconciler.errors import ConfigError
from reconciler.images.diskheaders import HeaderError, parse_qcow2_header, read_head
from reconciler.loop.adopt import adopt
from reconciler.loop.reconcile import Reconciler
from reconciler.manifests.export import ExportFacts, export_manifest

EXIT_OK = 0
EXIT_FAILED = 1


def add_adoption_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    export = commands.add_parser(
        "export", parents=[common], help="print a manifest for an existing domain"
    )
    export.add_argument("name", metavar="NAME", help="the libvirt domain")
    adoption = commands.add_parser(
        "adopt",
        parents=[common],
        help="mark an existing domain as managed, when its manifest in DIR matches it",
    )
    adoption.add_argument("name", metavar="NAME", help="the libvirt domain")
    adoption.add_argument("directory", metavar="DIR", type=Path, help="manifest directory")
    adoption.add_argument(
        "--dry-run", action="store_true", help="say whether it matches; change nothing"
    )


def run_export(args: argparse.Namespace, out: TextIO) -> int:
    with owned_state(args, "stop the daemon first: export reads libvirt itself") as (state, driver):
        record = driver.lookup(args.name)
        if record is None or record.definition is None:
            why = "no such domain" if record is None else record.problem
            raise ConfigError(f"cannot export {args.name!r}: {why}")
        machine = record.definition
        boot = machine.boot_disk_path
        source, image_format, size = _boot_disk_facts(boot)
        facts = ExportFacts(
            running=record.state.active,
            autostart=record.autostart,
            image_source=source,
            image_format=image_format,
            disk_bytes=size,
            instance_disk=str(state.instance(args.name).disk),
        )
    print(export_manifest(machine, facts), end="", file=out)
    return EXIT_OK


def _boot_disk_facts(path: str | None) -> tuple[str | None, str | None, int | None]:
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


def run_adopt(args: argparse.Namespace, out: TextIO) -> int:
    load = load_slice(args, out)
    spec = next((s for s in load.instances if s.name == args.name), None)
    if spec is None:
        raise ConfigError(
            f"no valid manifest for {args.name!r} in {args.directory}: adoption needs one"
        )
    settings = settings_of(args)
    with owned_state(args, "stop the daemon, or adopt between its passes") as (state, driver):
        adoption = adopt(Reconciler(driver, state, settings), spec, dry_run=args.dry_run)
    if adoption.refusal is not None:
        print(f"{args.name}: cannot be adopted: {adoption.refusal}", file=out)
        return EXIT_FAILED
    if adoption.differences:
        print(f"{args.name}: differs from its manifest, not adopted:", file=out)
        for difference in adoption.differences:
            print(f"  {difference}", file=out)
        return EXIT_FAILED
    verb = "matches its manifest" if args.dry_run else "adopted: now managed by this state"
    print(f"{args.name}: {verb}", file=out)
    for step in adoption.next_steps:
        print(f"  next pass: {step}", file=out)
    return EXIT_OK
