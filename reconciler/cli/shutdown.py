"""`reconcile shutdown-guests`: at host shutdown, every managed running guest is shut down
through ACPI, in parallel, each within its shutdownTimeoutSeconds (forced after), and started
again by the first pass after boot (see loop/hostshutdown.py). Asked of the daemon when one
runs on the state directory: it then reconciles nothing more until it exits."""

from __future__ import annotations

import argparse
from typing import TextIO

from reconciler.cli.context import (
    ask,
    daemon_socket,
    owned_state,
    progress_printers,
    settings_of,
)
from reconciler.loop.reconcile import Reconciler
from reconciler.loop.results import Outcome, result_from_json

EXIT_OK = 0
EXIT_FAILED = 1


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


def run_shutdown_guests(args: argparse.Namespace, out: TextIO) -> int:
    from reconciler.loop.hostshutdown import shut_down_guests

    progress, forward = progress_printers(out)
    socket_path = daemon_socket(args)
    if socket_path is not None:
        print(f"reconcile: asking the daemon on {socket_path} to shut the guests down", file=out)
        answer = ask(socket_path, {"op": "shutdown-guests"}, forward)
        results = [result_from_json(item) for item in answer["results"]]
    else:
        with owned_state(args, "wait for it to finish") as (state, driver):
            reconciler = Reconciler(driver, state, settings_of(args), progress)
            results = shut_down_guests(reconciler, progress)
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    for result in failed:
        print(f"{result.name}: not shut down: {result.message}", file=out)
    print(
        f"shutdown-guests: {len(results) - len(failed)} shut down, {len(failed)} failed"
        + ("" if results else " (no managed guest was running)"),
        file=out,
    )
    return EXIT_FAILED if failed else EXIT_OK
