"""`reconcile snapshot NAME [--name LABEL]`, `snapshot delete NAME LABEL`, `snapshots [NAME]`,
`revert NAME LABEL` and `resume NAME` (asked of the daemon when one runs; see
loop.snapshots)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO

from reconciler.cli.backends import backend_for
from reconciler.cli.options import Exit, Options
from reconciler.sizes import format_size


def add_snapshot_parsers(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    snapshot = commands.add_parser(
        "snapshot",
        parents=[common],
        help="snapshot an instance's disks now (snapshot delete NAME LABEL deletes one)",
    )
    snapshot.add_argument(
        "words", metavar="NAME", nargs="+", help="the instance (or: delete NAME LABEL)"
    )
    snapshot.add_argument(
        "--name", dest="label", metavar="LABEL", help="the snapshot's label (default snap-TIME)"
    )
    listing = commands.add_parser(
        "snapshots",
        parents=[common],
        help="list the snapshots (SIZE: the space only it holds, which deleting it frees)",
    )
    listing.add_argument("name", metavar="NAME", nargs="?", help="one instance only")
    listing.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format"
    )
    revert = commands.add_parser(
        "revert",
        parents=[common],
        help="bring an instance back to a snapshot (held until its manifest changes)",
    )
    revert.add_argument("name", metavar="NAME", help="the instance")
    revert.add_argument("label", metavar="LABEL", help="the snapshot")
    resume = commands.add_parser(
        "resume", parents=[common], help="end the hold a revert left: apply the manifest again"
    )
    resume.add_argument("name", metavar="NAME", help="the instance")


def run_snapshot(options: Options, out: TextIO) -> int:
    answer = backend_for(options).snapshots(options.action, options.name, options.label)
    print(f"{options.name}: {answer['outcome']}", file=out)
    return Exit.OK


def run_snapshots(options: Options, out: TextIO) -> int:
    answer = backend_for(options).snapshots("list", options.name, None)
    views = answer["snapshots"]
    if options.output == "json":
        print(json.dumps({"version": 1, "snapshots": views}, indent=2), file=out)
        return Exit.OK
    if not views:
        print("no snapshots", file=out)
        return Exit.OK
    rows: list[tuple[str, ...]] = [
        ("INSTANCE", "LABEL", "TAKEN", "ORIGIN", "SIZE", "DISKS", "PRECEDED")
    ]
    rows += [_row(view) for view in views]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)
    return Exit.OK


def _row(view: dict[str, Any]) -> tuple[str, ...]:
    disks = ", ".join(os.path.basename(d) for d in view["disks"])
    preceded = view["preceded"] or "(its record is lost: known by its disks only)"
    size = "?" if view["bytes"] is None else format_size(view["bytes"])
    return (view["instance"], view["label"], view["taken"], view["origin"], size, disks, preceded)


def run_revert(options: Options, out: TextIO) -> int:
    report = backend_for(options).snapshots("revert", options.name, options.label)["revert"]
    name = report["name"]
    disks = ", ".join(os.path.basename(d) for d in report["disks"]) or "no disk"
    print(f"{name}: reverted to snapshot {report['label']}: {disks} brought back", file=out)
    for note in report["notes"]:
        print(f"  {note}", file=out)
    if report["definitionRestored"]:
        print("  the definition it had then is restored", file=out)
    if report["differences"]:
        print("  what the definition before the revert (the manifest's) had instead:", file=out)
        for difference in report["differences"]:
            print(f"    {difference}", file=out)
    print(
        f"  held: passes leave {name} as it is until its manifest changes, or "
        f"`reconcile resume {name}` applies the manifest again",
        file=out,
    )
    if report["started"]:
        print("  started again (it was running)", file=out)
    return Exit.OK


def run_resume(options: Options, out: TextIO) -> int:
    answer = backend_for(options).snapshots("resume", options.name, None)
    what = (
        "the hold is ended: the next pass applies its manifest"
        if answer["resumed"]
        else "was not held"
    )
    print(f"{options.name}: {what}", file=out)
    return Exit.OK
