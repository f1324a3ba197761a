"""`reconcile events [NAME] [-o json] [--follow]`: what happened to each instance, newest
last: reconciles that changed or failed (with their triggers, actions and error), domain
events (a start, a crash, a shutdown), and Ready/Live transitions. Asked of the daemon when
one runs; otherwise read from the status file it last wrote. `--follow` keeps printing new
events until interrupted."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, TextIO

from reconciler.cli.context import ask, daemon_socket
from reconciler.cli.options import Exit, Options
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.loop.status import read_status_file

FOLLOW_SECONDS = 1.0


def add_events_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    events = commands.add_parser(
        "events", parents=[common], help="what happened to each instance (or one), and when"
    )
    events.add_argument("name", metavar="NAME", nargs="?", help="one instance only")
    events.add_argument(
        "-o", "--output", choices=("text", "json"), default="text",
        help="text (a line each), or json (one object per line with --follow)",
    )  # fmt: skip
    events.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until interrupted"
    )


def run_events(options: Options, out: TextIO) -> int:
    events, last = _events(options, 0)
    if options.output == "json" and not options.follow:
        json.dump({"events": events}, out, indent=2)
        out.write("\n")
        return Exit.OK
    _print(options, events, out)
    while options.follow:
        time.sleep(FOLLOW_SECONDS)
        events, last = _events(options, last)
        _print(options, events, out)
    return Exit.OK


def _events(options: Options, since: int) -> tuple[list[dict[str, Any]], int]:
    socket_path = daemon_socket(options)
    if socket_path is not None:
        try:
            answer = ask(socket_path, {"op": "events", "name": options.name, "since": since})
            return list(answer["events"]), int(answer["last"])
        except ReconcilerError:
            if not options.follow:
                raise  # following: the daemon restarting is no reason to stop
    snapshot = read_status_file(options.state.status_file)
    if snapshot is None:
        if options.follow:
            return [], since
        raise ConfigError(f"no daemon runs on {options.state.root} and no status file is there")
    found = [
        {"instance": item["name"], **event}
        for item in snapshot.get("instances", [])
        if options.name in (None, item.get("name"))
        for event in item.get("events") or []
        if isinstance(event, dict) and event.get("seq", 0) > since
    ]
    found.sort(key=lambda event: event.get("seq", 0))
    return found, max([since, *(event.get("seq", 0) for event in found)])


def _print(options: Options, events: list[dict[str, Any]], out: TextIO) -> None:
    for event in events:
        if options.output == "json":
            print(json.dumps(event), file=out, flush=True)
        else:
            print(event_line(event), file=out, flush=True)


def event_line(event: dict[str, Any]) -> str:
    """One event as a line: when, which instance, what."""
    kind = event.get("kind")
    if kind == "reconcile":
        what = f"{event.get('outcome')} ({', '.join(event.get('triggers') or []) or 'request'})"
        if event.get("actions"):
            what += ": " + "; ".join(event["actions"])
        if event.get("error"):
            what += f": {event['error']}"
        if event.get("crashLoopRestarts"):
            what += f" [crash loop: {event['crashLoopRestarts']} restart(s)]"
    elif kind == "condition":
        what = f"{event.get('type')} {event.get('status')}"
        reason = " ".join(str(event[key]) for key in ("reason", "message") if event.get(key))
        what += f": {reason}" if reason else ""
    else:
        what = f"{event.get('event')} {event.get('detail')}"
    return f"{event.get('at')}  {event.get('instance')}  {kind}  {what}"
