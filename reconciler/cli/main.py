"""The `reconcile` command: parses options, configures logging, runs a pass and maps every
outcome and error to an exit status (the only place that does).

    reconcile [OPTIONS] --once DIR         apply once and exit
    reconcile [OPTIONS] plan DIR           print the steps, change nothing
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from reconciler import __version__
from reconciler.cli.report import render_manifest_errors, render_plan, render_summary
from reconciler.drivers.base import Driver
from reconciler.errors import ConfigError, ReconcilerError, StateDirBusy
from reconciler.images.cache import ImageCache
from reconciler.images.download import Transport
from reconciler.images.gc import collect_garbage
from reconciler.images.progress import LOG as PROGRESS_LOG
from reconciler.images.progress import TransferReporter
from reconciler.images.qemuimg import QemuImg
from reconciler.images.sources import SourcePolicy
from reconciler.loop.once import apply_all, plan_all
from reconciler.loop.reconcile import Outcome, Reconciler, Settings
from reconciler.manifests.loader import LoadResult, load_manifests
from reconciler.model.desired import Accelerator
from reconciler.statedir import StateDir, StateDirLock, default_state_dir

LOG = logging.getLogger("reconciler")

EXIT_OK = 0  # converged (or, for plan, success)
EXIT_FAILED = 1  # an instance failed, or the run could not proceed
EXIT_INVALID = 2  # invalid input: manifests or command line
PLAN_EXIT_NO_CHANGES = 0  # plan --detailed-exitcode
PLAN_EXIT_ERROR = 1
PLAN_EXIT_CHANGES = 2


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect",
        metavar="URI",
        default=os.environ.get("LIBVIRT_DEFAULT_URI"),
        help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else libvirt's embedded QEMU "
        "driver rooted in the state directory)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="images, disks and the embedded libvirt root (default: $RECONCILER_STATE_DIR, "
        "else /var/lib/reconciler as root, else ~/.local/state/reconciler)",
    )
    parser.add_argument(
        "--accelerator",
        choices=[a.value for a in Accelerator],
        default=Accelerator.AUTO.value,
        help="default for instances that do not set spec.accelerator (default: auto: KVM "
        "where it can run guests, TCG otherwise)",
    )
    parser.add_argument(
        "--image-dir",
        metavar="DIR",
        type=Path,
        action="append",
        default=[],
        help="a directory local image sources may come from (repeatable; the manifest "
        "directory and $RECONCILER_IMAGE_DIRS are always allowed)",
    )
    parser.add_argument(
        "--ca-bundle",
        metavar="FILE",
        type=Path,
        default=None,
        help="CA certificates (PEM) that HTTPS image servers are checked against, instead of "
        "the system's (proxies come from http_proxy, HTTPS_PROXY, ALL_PROXY and NO_PROXY)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--debug", action="store_true", help="log everything, with tracebacks")


def build_parser() -> argparse.ArgumentParser:
    """One parser for both forms: `[OPTIONS] --once DIR` and `[OPTIONS] plan DIR`."""
    parser = argparse.ArgumentParser(
        prog="reconcile",
        usage="%(prog)s [OPTIONS] --once DIR\n       %(prog)s [OPTIONS] plan DIR "
        "[--detailed-exitcode]\n       %(prog)s [OPTIONS] gc [--dry-run] [--grace DURATION]",
        description="Keep libvirt VMs in the state that YAML manifests describe.",
        epilog="Exit status of --once: 0 converged, 1 an instance failed, 2 invalid input. "
        "Of plan: 0 success, 1 error, 2 invalid input; with --detailed-exitcode: "
        "0 no changes, 2 changes pending, 1 error (invalid input included).",
    )
    parser.add_argument("words", nargs="+", metavar="[plan] DIR", help="manifest file or directory")
    parser.add_argument("--version", action="version", version=f"reconcile {__version__}")
    parser.add_argument("--once", action="store_true", help="apply one pass, then exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="with gc: list what would be removed"
    )
    parser.add_argument(
        "--grace",
        metavar="DURATION",
        default="24h",
        help="with gc: keep unused bases used within this long (e.g. 7d, 12h, 30m, 0; default 24h)",
    )
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="with plan: exit 0 when nothing would change, 2 when changes are pending, 1 on error",
    )
    _common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
        if args.words == ["gc"]:
            args.directory = Path(".")
            return _run_command(run_gc, args)
        is_plan = args.words[0] == "plan" and len(args.words) == 2
        if len(args.words) != 1 + is_plan:
            parser.error("expected one manifest directory (or 'plan DIR', or 'gc')")
        args.directory = Path(args.words[-1])
        if is_plan and args.once:
            parser.error("--once applies changes; plan never does: use one or the other")
        if not is_plan and args.detailed_exitcode:
            parser.error("--detailed-exitcode goes with plan")
        if not is_plan and not args.once:
            parser.error("watch mode is not available yet: use 'reconcile --once DIR'")
    except SystemExit as exit_request:
        return EXIT_INVALID if exit_request.code else EXIT_OK
    return _run_command(run_plan if is_plan else run_once, args)


def _run_command(
    command: Callable[[argparse.Namespace, TextIO], int], args: argparse.Namespace
) -> int:
    """Run one command, mapping every outcome and error to the exit status."""
    _configure_logging(args.verbose, args.debug)
    try:
        return command(args, sys.stdout)
    except ConfigError as err:
        print(f"reconcile: error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except ReconcilerError as err:
        if args.debug:
            LOG.exception("run failed")
        print(f"reconcile: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("reconcile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as err:  # e.g. a state directory that cannot be created or written
        if args.debug:
            LOG.exception("run failed")
        where = f"{err.filename}: " if err.filename else ""
        print(f"reconcile: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_FAILED


def _configure_logging(verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Download progress is information, not a warning, and wanted even when output goes to a
    # file: visible at every level.
    PROGRESS_LOG.setLevel(min(level, logging.INFO))


def _load(directory: Path) -> LoadResult:
    if not directory.exists():
        raise ConfigError(f"{directory}: no such file or directory")
    load = load_manifests(directory)
    for line in render_manifest_errors(load.errors):
        print(line, file=sys.stderr)
    return load


def _state(args: argparse.Namespace) -> StateDir:
    state = StateDir((args.state_dir or default_state_dir()).absolute())
    if args.connect is None:
        state.check_embedded_path_length()
    return state


def _open_driver(args: argparse.Namespace, state: StateDir) -> Driver:
    from reconciler.drivers.libvirt_driver import LibvirtDriver

    state.root.mkdir(parents=True, exist_ok=True)
    return LibvirtDriver.open(args.connect, state.root)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        default_accelerator=Accelerator(args.accelerator),
        sources=SourcePolicy.from_settings(args.image_dir, args.directory.absolute()),
        transport=Transport.from_environment(ca_bundle=args.ca_bundle),
    )


def run_plan(args: argparse.Namespace, out: TextIO) -> int:
    """`reconcile plan DIR`."""
    load = _load(args.directory)
    settings = _settings(args)
    state = _state(args)
    driver = _open_driver(args, state)
    try:
        plans = plan_all(load, Reconciler(driver, state, settings))
    finally:
        driver.close()
    for line in render_plan(plans):
        print(line, file=out)
    failed = bool(load.errors) or any(plan.refusal for plan in plans)
    pending = any(plan.steps for plan in plans)
    if args.detailed_exitcode:
        if failed:
            return PLAN_EXIT_ERROR
        return PLAN_EXIT_CHANGES if pending else PLAN_EXIT_NO_CHANGES
    return EXIT_INVALID if load.errors else EXIT_OK


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}


def parse_duration(text: str) -> float:
    """Seconds in '7d', '12h', '30m', '45s' or '0'; ConfigError otherwise."""
    number, unit = text[:-1], text[-1:]
    if unit.isdigit():
        number, unit = text, ""
    if not number.isdigit() or unit not in _DURATION_UNITS:
        raise ConfigError(f"--grace {text!r} is not a duration (expected e.g. 7d, 12h, 30m, 0)")
    return int(number) * _DURATION_UNITS[unit]


def run_gc(args: argparse.Namespace, out: TextIO) -> int:
    """`reconcile gc`: remove cached bases no disk uses, after the grace period."""
    grace = parse_duration(args.grace)
    state = StateDir((args.state_dir or default_state_dir()).absolute())
    if not state.root.is_dir():
        raise ConfigError(f"state directory {state.root} does not exist")
    cache = ImageCache(state, QemuImg(), SourcePolicy())
    with StateDirLock(state):
        report = collect_garbage(state, cache, grace, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in report.removed:
        print(f"{verb} {path.name}", file=out)
    for path in report.leftovers:
        print(f"{verb} leftover {path.relative_to(state.root)}", file=out)
    print(
        f"gc: {len(report.removed)} {verb}, {len(report.in_use)} in use, "
        f"{len(report.too_young)} used within {args.grace}",
        file=out,
    )
    return EXIT_OK


def run_once(args: argparse.Namespace, out: TextIO) -> int:
    """`reconcile --once DIR`."""
    load = _load(args.directory)
    settings = _settings(args)
    state = _state(args)
    state.create()
    lock = StateDirLock(state)
    try:
        lock.acquire()
    except StateDirBusy as err:
        raise StateDirBusy(f"{err}; wait for it to finish") from err
    try:
        driver = _open_driver(args, state)
        print(f"reconcile: libvirt {driver.uri}, state directory {state.root}", file=out)
        printing = threading.Lock()

        def progress(name: str, message: str) -> None:
            with printing:
                print(f"{name}: {message}", file=out, flush=True)

        try:
            reconciler = Reconciler(driver, state, settings, progress, transfers=TransferReporter())
            results = apply_all(load, reconciler)
        finally:
            driver.close()
    finally:
        lock.release()
    for line in render_summary(results, len(load.errors)):
        print(line, file=out)
    if load.errors:
        return EXIT_INVALID
    return EXIT_FAILED if any(r.outcome is Outcome.FAILED for r in results) else EXIT_OK
