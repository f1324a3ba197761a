"""`reconcile shutdown-guests`: at host shutdown, every managed running guest is shut down
through ACPI, in parallel, each within its shutdownTimeoutSeconds (forced after), and started
again by the first pass after boot (see loop/hostshutdown.py). Asked of the daemon when one
runs on the state directory: it then reconciles nothing more until it exits."""

from __future__ import annotations

import argparse
from typing import TextIO

from reconciler.cli.backends import backend_for
from reconciler.cli.options import Exit, Options
from reconciler.loop.results import Outcome


def add_shutdown_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    commands.add_parser(
        "shutdown-guests",
        parents=[common],
        help="shut every managed running guest down gracefully (for host shutdown; the "
        "first pass after boot starts them again)",
    )


def run_shutdown_guests(options: Options, out: TextIO) -> int:
    results = backend_for(options).shutdown_guests(out)
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    for result in failed:
        print(f"{result.name}: not shut down: {result.message}", file=out)
    print(
        f"shutdown-guests: {len(results) - len(failed)} shut down, {len(failed)} failed"
        + ("" if results else " (no managed guest was running)"),
        file=out,
    )
    return Exit.FAILED if failed else Exit.OK
