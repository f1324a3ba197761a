"""What the commands share: the state directory and its lock, a driver on it, the run's
settings, this host's slice of the manifests, and the running daemon's control socket."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from reconciler.cli.options import Command, Options
from reconciler.cli.report import render_manifest_errors
from reconciler.drivers.base import Driver
from reconciler.errors import ConfigError, StateDirBusy
from reconciler.fileops import write_atomically
from reconciler.loop.control import daemon_listening, request
from reconciler.manifests.loader import LoadResult, load_manifests
from reconciler.manifests.readingstore import load_store, save_store
from reconciler.manifests.selection import select
from reconciler.statedir import (
    StateDir,
    StateDirLock,
)

_T = TypeVar("_T")


def load_slice(options: Options, out: TextIO) -> LoadResult:
    """The manifests of this run: DIR loaded, its errors printed, cut to this host's slice.
    Documents an earlier pass on this state directory validated skip the schema."""
    directory = check_directory(options)
    state = options.state
    known = _read_validated(state)
    catalogue = options.catalogue()
    kept = state.root.is_dir()  # the state directory keeps what reading each file gave
    readings = load_store(state.manifest_readings, catalogue) if kept else None
    load = load_manifests(directory, known, readings, catalogue=catalogue)
    if load.unlocked and options.command is Command.ONCE:  # images by name, not locked yet
        from reconciler.cli.images import resolve_unlocked

        if resolve_unlocked(options, load, sys.stderr):
            load = load_manifests(directory, known, readings, catalogue=catalogue)
    if load.valid_documents != known and kept:
        text = "".join(f"{key}\n" for key in sorted(load.valid_documents))
        with contextlib.suppress(OSError):  # a cache: a pass without it validates everything
            write_atomically(state.validated_documents, text.encode())
    if readings is not None and readings.changed:
        with contextlib.suppress(OSError):  # a cache too: without it, every file is read
            save_store(state.manifest_readings, readings, catalogue)
    for line in render_manifest_errors(load.errors):
        print(line, file=sys.stderr)
    selection = options.selection
    load, ignored = select(load, selection)
    if ignored:
        print(
            f"reconcile: {len(ignored)} instance(s) left to other hosts (this one: "
            f"{selection.describe()})",
            file=out,
        )
    return load


def check_directory(options: Options) -> Path:
    """DIR, which must exist."""
    directory = options.directory
    if not directory.exists():
        raise ConfigError(f"{directory}: no such file or directory")
    return directory


def _read_validated(state: StateDir) -> frozenset[str]:
    try:
        return frozenset(state.validated_documents.read_text().split())
    except OSError:
        return frozenset()


def open_driver(options: Options, state: StateDir) -> Driver:
    """The driver the run asked for: libvirt (at --connect, else the embedded driver in the
    state directory) or QMP (QEMU run directly, no libvirt)."""
    state.root.mkdir(parents=True, exist_ok=True)
    if options.driver == "qmp":
        from reconciler.drivers.qmp_driver import QmpDriver

        if options.connect is not None:
            raise ConfigError("--connect names a libvirt URI: not with --driver qmp")
        return QmpDriver.open(state)
    from reconciler.drivers.libvirt_driver import LibvirtDriver

    return LibvirtDriver.open(options.connect, state)


def daemon_socket(options: Options) -> Path | None:
    """The control socket of a daemon running on this state directory (None when none runs)."""
    path = options.state.control_socket
    return path if path.exists() and daemon_listening(path) else None


def progress_printers(
    out: TextIO,
) -> tuple[Callable[[str, str], None], Callable[[dict[str, Any]], None]]:
    """Print progress as `NAME: MESSAGE` lines, from any thread: the callback for a pass run
    here, and the one for the progress lines a daemon sends."""
    printing = threading.Lock()

    def progress(name: str, message: str) -> None:
        with printing:
            print(f"{name}: {message}", file=out, flush=True)

    def forward(message: dict[str, Any]) -> None:
        update = message.get("progress")
        if isinstance(update, dict):
            progress(str(update.get("name")), str(update.get("message")))

    return progress, forward


def ask(
    socket_path: Path,
    message: dict[str, object],
    on_progress: Callable[[dict[str, object]], None] | None = None,
) -> dict[str, Any]:
    answer = request(socket_path, message, on_progress)
    if "error" in answer:
        raise ConfigError(f"the daemon refused: {answer['error']}")
    return answer


@contextlib.contextmanager
def owned_state(options: Options, busy_hint: str) -> Iterator[tuple[StateDir, Driver]]:
    """The state directory, created and locked by this process, and a driver on it."""
    with locked_state(options, busy_hint) as state:
        driver = open_driver(options, state)
        try:
            yield state, driver
        finally:
            driver.close()


@contextlib.contextmanager
def owned_state_loading(
    options: Options, busy_hint: str, out: TextIO
) -> Iterator[tuple[StateDir, Driver, LoadResult]]:
    """owned_state, and this run's manifests (load_slice) loaded while the driver opens."""
    check_directory(options)  # before anything is made for it
    with locked_state(options, busy_hint) as state:
        driver, load = opened_while(options, state, lambda: load_slice(options, out))
        try:
            yield state, driver, load
        finally:
            driver.close()


def opened_while(options: Options, state: StateDir, work: Callable[[], _T]) -> tuple[Driver, _T]:
    """open_driver in a thread of its own while `work` runs in this one, and both results.
    The embedded libvirt driver's start-up (it reads every domain's definition: 0.6 s with
    1,000) is most of a no-op pass's fixed cost, and it is C code that lets Python run. If
    either fails, the other is waited for (and the driver closed) before the error rises."""
    opened: list[Driver] = []
    failed: list[BaseException] = []
    if options.driver == "libvirt":  # the output is routed here, not while this thread prints
        from reconciler.drivers.libvirt_driver import route_process_output

        state.root.mkdir(parents=True, exist_ok=True)
        route_process_output(state)

    def opening() -> None:
        try:
            opened.append(open_driver(options, state))
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    thread = threading.Thread(target=opening, name="open-driver", daemon=True)
    thread.start()
    try:
        value = work()
    except BaseException:
        thread.join()
        for driver in opened:
            driver.close()
        raise
    thread.join()
    if failed:
        raise failed[0]
    return opened[0], value


@contextlib.contextmanager
def locked_state(
    options: Options, busy_hint: str, *, for_driver: bool = True
) -> Iterator[StateDir]:
    """The state directory, created and locked by this process (`for_driver`: checked to
    be usable by the driver too; a command that opens none skips that)."""
    state = options.checked_state() if for_driver else options.state
    state.create()
    lock = StateDirLock(state)
    try:
        lock.acquire()
    except StateDirBusy as err:
        raise StateDirBusy(f"{err}; {busy_hint}") from err
    try:
        yield state
    finally:
        lock.release()
