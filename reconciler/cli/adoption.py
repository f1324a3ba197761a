"""`reconcile export NAME` (a manifest for an existing domain) and `reconcile adopt NAME DIR`
(an existing, unmanaged domain becomes managed when its manifest matches it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from reconciler.cli.context import ask, daemon_socket, load_slice, owned_state, settings_of
from reconciler.errors import ConfigError
from reconciler.loop.adopt import adopt, adoption_from_json, export_domain
from reconciler.loop.reconcile import Reconciler

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
    """The manifest of an existing domain (asked of the daemon when one runs)."""
    socket_path = daemon_socket(args)
    if socket_path is not None:
        text = str(ask(socket_path, {"op": "export", "name": args.name})["manifest"])
    else:
        with owned_state(args, "wait for it to finish") as (state, driver):
            text = export_domain(driver, state, args.name)
    print(text, end="", file=out)
    return EXIT_OK


def run_adopt(args: argparse.Namespace, out: TextIO) -> int:
    """Adopt a domain whose manifest matches it (asked of the daemon when one runs)."""
    socket_path = daemon_socket(args)
    if socket_path is not None:
        request = {
            "op": "adopt", "name": args.name, "directory": str(args.directory.absolute()),
            "dryRun": bool(args.dry_run),
        }  # fmt: skip
        adoption = adoption_from_json(ask(socket_path, request)["adoption"])
    else:
        load = load_slice(args, out)
        spec = next((s for s in load.instances if s.name == args.name), None)
        if spec is None:
            raise ConfigError(
                f"no valid manifest for {args.name!r} in {args.directory}: adoption needs one"
            )
        settings = settings_of(args)
        with owned_state(args, "wait for it to finish") as (state, driver):
            adoption = adopt(Reconciler(driver, state, settings), spec, dry_run=args.dry_run)
    if adoption.refusal is not None:
        print(f"{args.name}: cannot be adopted: {adoption.refusal}", file=out)
        return EXIT_FAILED
    if adoption.differences:
        print(f"{args.name}: differs from its manifest, not adopted:", file=out)
        for difference in adoption.differences:
            print(f"  {difference}", file=out)
        return EXIT_FAILED
    verb = "matches its manifest" if args.dry_run else "adopted: managed by this state directory"
    print(f"{args.name}: {verb}", file=out)
    for action in adoption.take_over:
        print(f"  {'to do: ' if args.dry_run else 'done: '}{action}", file=out)
    for step in adoption.next_steps:
        print(f"  next pass: {step}", file=out)
    return EXIT_OK
