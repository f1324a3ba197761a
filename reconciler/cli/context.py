"""What the commands share: the state directory and its lock, a driver on it, the run's
settings, this host's slice of the manifests, and the running daemon's control socket."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from reconciler.cli.report import render_manifest_errors
from reconciler.drivers.base import Driver
from reconciler.errors import ConfigError, StateDirBusy
from reconciler.images.download import DownloadLimits, Transport
from reconciler.images.sources import SourcePolicy
from reconciler.loop.control import daemon_listening, request
from reconciler.loop.reconcile import Settings
from reconciler.manifests.loader import LoadResult, load_manifests
from reconciler.manifests.selection import Selection, select
from reconciler.model.desired import Accelerator
from reconciler.statedir import StateDir, StateDirLock, control_socket, default_state_dir


def load_slice(args: argparse.Namespace, out: TextIO) -> LoadResult:
    """The manifests of this run: DIR loaded, its errors printed, cut to this host's slice."""
    directory = args.directory
    if not directory.exists():
        raise ConfigError(f"{directory}: no such file or directory")
    load = load_manifests(directory)
    for line in render_manifest_errors(load.errors):
        print(line, file=sys.stderr)
    selection = selection_of(args)
    load, ignored = select(load, selection)
    if ignored:
        print(
            f"reconcile: {len(ignored)} instance(s) left to other hosts (this one: "
            f"{selection.describe()})",
            file=out,
        )
    return load


def selection_of(args: argparse.Namespace) -> Selection:
    return Selection.parse(getattr(args, "host", None), getattr(args, "selector", None))


def state_of(args: argparse.Namespace) -> StateDir:
    state = StateDir((args.state_dir or default_state_dir()).absolute())
    if args.connect is None and getattr(args, "driver", "libvirt") == "libvirt":
        state.check_embedded_path_length()
    return state


def open_driver(args: argparse.Namespace, state: StateDir) -> Driver:
    """The driver the run asked for: libvirt (at --connect, else the embedded driver in the
    state directory) or QMP (QEMU run directly, no libvirt)."""
    state.root.mkdir(parents=True, exist_ok=True)
    if getattr(args, "driver", "libvirt") == "qmp":
        from reconciler.drivers.qmp_driver import QmpDriver

        if args.connect is not None:
            raise ConfigError("--connect names a libvirt URI: not with --driver qmp")
        return QmpDriver.open(state.root)
    from reconciler.drivers.libvirt_driver import LibvirtDriver

    return LibvirtDriver.open(args.connect, state.root)


def settings_of(args: argparse.Namespace) -> Settings:
    if args.download_attempts < 1:
        raise ConfigError("--download-attempts must be at least 1")
    state = StateDir((args.state_dir or default_state_dir()).absolute())
    return Settings(
        download_limits=DownloadLimits(attempts=args.download_attempts),
        default_accelerator=Accelerator(args.accelerator),
        sources=SourcePolicy.from_settings(args.image_dir, args.directory.absolute()),
        transport=Transport.from_environment(ca_bundle=args.ca_bundle),
        prune=getattr(args, "prune", False) or state.prune_enabled(),
        allow_empty=getattr(args, "allow_empty", False),
    )


def daemon_socket(args: argparse.Namespace) -> Path | None:
    """The control socket of a daemon running on this state directory (None when none runs)."""
    state = StateDir((args.state_dir or default_state_dir()).absolute())
    path = control_socket(state)
    return path if path.exists() and daemon_listening(path) else None


def ask(
    socket_path: Path,
    message: dict[str, object],
    on_progress: Callable[[dict[str, object]], None] | None = None,
) -> dict[str, Any]:
    answer = request(socket_path, message, on_progress)
    if "error" in answer:
        raise ConfigError(f"the daemon refused: {answer['error']}")
    return answer


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}


def parse_duration(text: str, option: str = "--grace") -> float:
    """Seconds in '7d', '12h', '30m', '45s' or '0'; ConfigError otherwise."""
    number, unit = text[:-1], text[-1:]
    if unit.isdigit():
        number, unit = text, ""
    if not number.isdigit() or unit not in _DURATION_UNITS:
        raise ConfigError(f"{option} {text!r} is not a duration (expected e.g. 7d, 12h, 30m, 0)")
    return int(number) * _DURATION_UNITS[unit]


@contextlib.contextmanager
def owned_state(args: argparse.Namespace, busy_hint: str) -> Iterator[tuple[StateDir, Driver]]:
    """The state directory, created and locked by this process, and a driver on it."""
    state = state_of(args)
    state.create()
    lock = StateDirLock(state)
    try:
        lock.acquire()
    except StateDirBusy as err:
        raise StateDirBusy(f"{err}; {busy_hint}") from err
    try:
        driver = open_driver(args, state)
        try:
            yield state, driver
        finally:
            driver.close()
    finally:
        lock.release()
