"""`reconcile rollout pause|resume|undo SET [DIR]`: hold a rollout, let it go on, or stop
it and put the members it changed back on their snapshots (asked of the daemon when one
runs; see loop.rollouts). Without a daemon, DIR gives the manifests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from reconciler.cli.backends import backend_for
from reconciler.cli.options import Exit, Options


def add_rollout_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    rollout = commands.add_parser(
        "rollout",
        parents=[common],
        help="pause, resume or undo the rolling change of an instance set (or profile/NAME)",
    )
    rollout.add_argument(
        "rollout_action", metavar="ACTION", choices=("pause", "resume", "undo"),
        help="pause: change no more members; resume: go on (a stopped rollout is tried "
        "again); undo: stop, and revert the members it changed to their snapshots",
    )  # fmt: skip
    rollout.add_argument(
        "set", metavar="SET", help="an instance set's name, or profile/NAME, instance/NAME"
    )
    rollout.add_argument(
        "directory", metavar="DIR", type=Path, nargs="?", default=Path("."),
        help="the manifests (when no daemon runs; default: the current directory)",
    )  # fmt: skip


def run_rollout(options: Options, out: TextIO) -> int:
    assert options.name is not None
    answer = backend_for(options).rollout(options.action, options.name, out)["rollout"]
    print(answer["outcome"], file=out)
    for line in answer["reverted"]:
        print(f"  {line}", file=out)
    return Exit.OK
