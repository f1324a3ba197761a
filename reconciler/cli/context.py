"""What the commands share: the state directory and its lock, a driver on it, the run's
settings, this host's slice of the manifests, and the running daemon's control socket."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from reconciler.cli.report import render_manifest_errors
from reconciler.drivers.base import Driver
from reconciler.errors import ConfigError, StateDirBusy
from reconciler.fileops import write_atomically
from reconciler.images.download import DownloadLimits, Transport
from reconciler.images.sources import SourcePolicy
from reconciler.loop.control import daemon_listening, request
from reconciler.loop.reconcile import Settings
from reconciler.manifests.loader import LoadResult, load_manifests
from reconciler.manifests.selection import Selection, select
from reconciler.model.desired import Accelerator
from reconciler.statedir import (
    PRIVATE_UMASK,
    TRAVERSABLE_UMASK,
    StateDir,
    StateDirLock,
    control_socket,
    default_state_dir,
)

_T = TypeVar("_T")


def load_slice(args: argparse.Namespace, out: TextIO) -> LoadResult:
    """The manifests of this run: DIR loaded, its errors printed, cut to this host's slice.
    Documents an earlier pass on this state directory validated skip the schema."""
    directory = check_directory(args)
    state = state_dir_of(args)
    known = _read_validated(state)
    load = load_manifests(directory, known)
    if load.valid_documents != known and state.root.is_dir():
        text = "".join(f"{key}\n" for key in sorted(load.valid_documents))
        with contextlib.suppress(OSError):  # a cache: a pass without it validates everything
            write_atomically(state.validated_documents, text.encode())
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


def check_directory(args: argparse.Namespace) -> Path:
    """DIR, which must exist."""
    directory: Path = args.directory
    if not directory.exists():
        raise ConfigError(f"{directory}: no such file or directory")
    return directory


def _read_validated(state: StateDir) -> frozenset[str]:
    try:
        return frozenset(state.validated_documents.read_text().split())
    except OSError:
        return frozenset()


def selection_of(args: argparse.Namespace) -> Selection:
    return Selection.parse(getattr(args, "host", None), getattr(args, "selector", None))


def state_dir_of(args: argparse.Namespace) -> StateDir:
    """The state directory the command line names (--state-dir, else the default)."""
    return StateDir((args.state_dir or default_state_dir()).absolute())


def state_of(args: argparse.Namespace) -> StateDir:
    """state_dir_of, checked to be usable by the driver the command line asks for."""
    state = state_dir_of(args)
    if args.connect is None and getattr(args, "driver", "libvirt") == "libvirt":
        state.check_embedded_path_length()
    return state


def umask_of(args: argparse.Namespace) -> int:
    """The umask every command runs under: private to the owner, but with directories that
    a system libvirt's QEMU user can pass through when a local libvirtd runs the guests."""
    uri = getattr(args, "connect", None)
    if uri is None or getattr(args, "driver", "libvirt") != "libvirt" or "embed" in uri:
        return PRIVATE_UMASK
    from reconciler.drivers.libvirt_driver import uri_is_local

    return TRAVERSABLE_UMASK if uri_is_local(uri) else PRIVATE_UMASK


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
    state = state_dir_of(args)
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
    state = state_dir_of(args)
    path = control_socket(state)
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
    with _locked_state(args, busy_hint) as state:
        driver = open_driver(args, state)
        try:
            yield state, driver
        finally:
            driver.close()


@contextlib.contextmanager
def owned_state_loading(
    args: argparse.Namespace, busy_hint: str, out: TextIO
) -> Iterator[tuple[StateDir, Driver, LoadResult]]:
    """owned_state, and this run's manifests (load_slice) loaded while the driver opens."""
    check_directory(args)  # before anything is made for it
    with _locked_state(args, busy_hint) as state:
        driver, load = opened_while(args, state, lambda: load_slice(args, out))
        try:
            yield state, driver, load
        finally:
            driver.close()


def opened_while(
    args: argparse.Namespace, state: StateDir, work: Callable[[], _T]
) -> tuple[Driver, _T]:
    """open_driver in a thread of its own while `work` runs in this one, and both results.
    The embedded libvirt driver's start-up (it reads every domain's definition: 0.6 s with
    1,000) is most of a no-op pass's fixed cost, and it is C code that lets Python run. If
    either fails, the other is waited for (and the driver closed) before the error rises."""
    opened: list[Driver] = []
    failed: list[BaseException] = []

    def opening() -> None:
        try:
            opened.append(open_driver(args, state))
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
def _locked_state(args: argparse.Namespace, busy_hint: str) -> Iterator[StateDir]:
    state = state_of(args)
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
