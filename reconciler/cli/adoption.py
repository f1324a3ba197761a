"""`reconcile export NAME` (a manifest for an existing domain) and `reconcile adopt NAME DIR`
(an existing, unmanaged domain becomes managed when its manifest matches it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from reconciler.cli.backends import backend_for
from reconciler.cli.options import Exit, Options


def add_adoption_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    export = commands.add_parser(
        "export", parents=[common], help="print a manifest for an existing domain"
    )
    export.add_argument(
        "name", metavar="NAME", help="the libvirt domain (or, --resolved, instance)"
    )
    export.add_argument(
        "--resolved",
        metavar="DIR",
        type=Path,
        help="print instance NAME of the manifests in DIR with its profiles merged in, each field "
        "with the file and line that wrote it (reads the files only)",
    )
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


def run_export(options: Options, out: TextIO) -> int:
    """The manifest of an existing domain (asked of the daemon when one runs); with
    --resolved DIR, an instance of DIR's manifests with its profiles merged in."""
    if options.resolved is not None:
        from reconciler.manifests.explain import resolved_lines

        for line in resolved_lines(options.resolved, options.name or ""):
            print(line, file=out)
        return Exit.OK
    print(backend_for(options).export(options.name or ""), end="", file=out)
    return Exit.OK


def run_adopt(options: Options, out: TextIO) -> int:
    """Adopt a domain whose manifest matches it (asked of the daemon when one runs)."""
    adoption = backend_for(options).adopt(out)
    name = options.name
    if adoption.refusal is not None:
        print(f"{name}: cannot be adopted: {adoption.refusal}", file=out)
        return Exit.FAILED
    if adoption.differences:
        print(f"{name}: differs from its manifest, not adopted:", file=out)
        for difference in adoption.differences:
            print(f"  {difference}", file=out)
        return Exit.FAILED
    verb = "matches its manifest" if options.dry_run else "adopted: managed by this state directory"
    print(f"{name}: {verb}", file=out)
    for action in adoption.take_over:
        print(f"  {'to do: ' if options.dry_run else 'done: '}{action}", file=out)
    for step in adoption.next_steps:
        print(f"  next pass: {step}", file=out)
    return Exit.OK
