"""The `reconcile` command: parses options, configures logging, runs a command and maps every
outcome and error to an exit status (the only place that does).

    reconcile [run] [OPTIONS] DIR          the daemon: watch DIR and keep it converged
    reconcile [run] [OPTIONS] --once DIR   apply once and exit
    reconcile plan [OPTIONS] DIR           print the steps, change nothing
    reconcile validate PATH...             check manifests only (no libvirt, no state)
    reconcile export NAME                  print a manifest for an existing domain
    reconcile adopt NAME DIR               manage an existing domain its manifest matches
    reconcile status [NAME] [-o json]      what the daemon knows about each instance
    reconcile wait NAME... [--for ...]     until instances are ready, live or stopped
    reconcile ssh NAME [-- COMMAND...]     log into a guest (ssh-config: for plain ssh)
    reconcile gc [--dry-run]               remove cached bases no disk uses

While a daemon holds the state directory, plan, status, wait, ssh and --once ask it over its
control socket; otherwise they work on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from reconciler import __version__
from reconciler.cli.adoption import add_adoption_parsers, run_adopt, run_export
from reconciler.cli.backends import Backend, Local, backend_for
from reconciler.cli.console import run_console
from reconciler.cli.context import owned_state
from reconciler.cli.events import add_events_parser, run_events
from reconciler.cli.images import add_images_parser, run_images
from reconciler.cli.options import DEFAULT_WAIT, Command, Exit, Options, options_from
from reconciler.cli.pull import git_source, sync_for_once
from reconciler.cli.report import (
    driver_text,
    render_inventory,
    render_plan,
    render_status,
    render_summary,
)
from reconciler.cli.rollouts import add_rollout_parser, run_rollout
from reconciler.cli.shutdown import add_shutdown_parser, run_shutdown_guests
from reconciler.cli.snapshots import (
    add_snapshot_parsers,
    run_resume,
    run_revert,
    run_snapshot,
    run_snapshots,
)
from reconciler.cli.ssh import run_ssh, run_ssh_config
from reconciler.cli.validate import add_validate_parser, run_validate
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.fileops import is_out_of_space, no_space_left
from reconciler.images.download import DownloadLimits
from reconciler.images.progress import LOG as PROGRESS_LOG
from reconciler.loop.results import InstanceResult, Outcome
from reconciler.loop.waiting import Want
from reconciler.loop.workers import DEFAULT_WORKERS
from reconciler.model.desired import Accelerator, DesiredState
from reconciler.planning.disruption import Disruption
from reconciler.planning.review import plan_json

if TYPE_CHECKING:
    from reconciler.loop.inventory import InventoryEntry

LOG = logging.getLogger("reconciler")


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect",
        metavar="URI",
        default=None,
        help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else the configuration file's, else "
        "libvirt's embedded QEMU driver rooted in the state directory)",
    )
    parser.add_argument(
        "--driver",
        choices=("libvirt", "qmp"),
        default=None,
        help="libvirt (default; see --connect), or qmp: QEMU run directly and driven over QMP, "
        "for hosts without libvirt ($RECONCILER_DRIVER, or the configuration file's)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="images, disks and the embedded libvirt root (default: $RECONCILER_STATE_DIR, "
        "else the configuration file's, else /var/lib/reconciler as root, else "
        "~/.local/state/reconciler)",
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
        "directory, $RECONCILER_IMAGE_DIRS and the configuration file's are always allowed)",
    )
    parser.add_argument(
        "--ca-bundle",
        metavar="FILE",
        type=Path,
        default=None,
        help="CA certificates (PEM) that HTTPS image servers are checked against, instead of "
        "the system's (proxies come from http_proxy, HTTPS_PROXY, ALL_PROXY and NO_PROXY)",
    )
    parser.add_argument(
        "--download-attempts",
        type=int,
        default=DownloadLimits().attempts,
        metavar="N",
        help="tries of one image download within one reconcile, with backoff between them "
        f"(default {DownloadLimits().attempts}; the daemon also retries the instance later)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines for people (text) or one JSON object per line (json)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--debug", action="store_true", help="log everything, with tracebacks")


def _git_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--git",
        metavar="URL",
        default=None,
        help="pull mode: take the manifests from this git repository (kept in STATE/git)",
    )
    parser.add_argument("--ref", default="main", help="the branch or tag to follow (main)")
    parser.add_argument(
        "--path", default=".", help="the manifest directory inside the repository (.)"
    )
    parser.add_argument(
        "--interval", metavar="DURATION", default="60s", help="how often to fetch (60s)"
    )
    parser.add_argument(
        "--verify-signatures",
        metavar="KEYRING",
        type=Path,
        default=None,
        help="apply only commits signed by a key of KEYRING: an OpenPGP keyring (gpg) or an "
        "SSH allowed-signers file",
    )


def _slice_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        metavar="NAME",
        default=None,
        help="manage only the instances whose spec.host is NAME (without it: only those "
        "naming no host); the others are ignored, never checked nor pruned",
    )
    parser.add_argument(
        "--selector",
        metavar="KEY=VALUE,...",
        default=None,
        help="manage only the instances whose labels have every one of these values",
    )


def _prune_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prune",
        action="store_true",
        help="delete managed domains whose manifest is gone, when every manifest loaded and "
        "validated (also on while the file STATE/prune exists)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="let --prune delete every managed domain when no instance is defined at all",
    )


class _VersionAction(argparse.Action):
    """--version: the version and the commit it was built from (worked out only when asked:
    a checkout asks git)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: Any) -> None:
        print(f"reconcile {__version__} ({source_commit()})")
        parser.exit()


def source_commit() -> str:
    """The commit this copy was built from: the one a package records (reconciler/COMMIT,
    written by `make dist`), else its checkout's HEAD, else unknown."""
    package = Path(__file__).resolve().parent.parent
    recorded = package / "COMMIT"
    if recorded.is_file():
        return f"commit {recorded.read_text().strip()[:12]}"
    checkout = package.parent
    if (checkout / ".git").exists():
        import subprocess

        done = subprocess.run(
            ["git", "-C", str(checkout), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, check=False, timeout=10,
        )  # fmt: skip
        if done.returncode == 0:
            return f"commit {done.stdout.strip()}, from the checkout {checkout}"
    return "commit unknown"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (help, version) and one sub-parser per command."""
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common)
    parser = argparse.ArgumentParser(
        prog="reconcile",
        usage="%(prog)s [run] [OPTIONS] [--once] DIR\n"
        "       %(prog)s plan [OPTIONS] DIR [--detailed-exitcode]\n"
        "       %(prog)s validate PATH... [-o text|json|github]\n"
        "       %(prog)s export NAME | export NAME --resolved DIR\n"
        "       %(prog)s adopt NAME DIR [--dry-run]\n"
        "       %(prog)s status [NAME] [-o json]\n"
        "       %(prog)s wait NAME... [--for ready|live|stopped] [--timeout DURATION]\n"
        "       %(prog)s ssh NAME [--user USER] [-i KEY] [-- COMMAND...]\n"
        "       %(prog)s ssh-config [NAME]\n"
        "       %(prog)s gc [--dry-run] [--grace DURATION]\n"
        "       %(prog)s console NAME [-f]\n"
        "       %(prog)s shutdown-guests\n"
        "       %(prog)s snapshot NAME [--name LABEL] | snapshot delete NAME LABEL\n"
        "       %(prog)s snapshots [NAME] [-o json]\n"
        "       %(prog)s rollout pause|resume|undo SET [DIR]\n"
        "       %(prog)s images lock|outdated [DIR] | images update [NAME...] [--dir DIR]\n"
        "       %(prog)s images pull NAME [--from DIR|TARBALL] [--dir DIR]\n"
        "       %(prog)s events [NAME] [-o json] [--follow]\n"
        "       %(prog)s revert NAME LABEL | resume NAME\n"
        "       %(prog)s schema",
        description="Keep libvirt VMs in the state that YAML manifests describe. Without a "
        "command, 'run' is meant: a controller that watches DIR (or, with --once, one pass).",
        epilog="Exit status of --once: 0 converged, 1 an instance failed, 2 invalid input, "
        f"{Exit.NOT_READY.value} (--wait, and wait) not ready in time. "
        "Of plan: 0 success, 1 error, 2 invalid input; with --detailed-exitcode: "
        "0 no changes, 2 changes pending, 1 error (invalid input included); with --fail-on: "
        "3 when a step at least that disruptive is pending. Of validate: 0 valid, 2 invalid.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version and the commit, then exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", prog="reconcile")
    run = commands.add_parser(
        "run", parents=[common], help="watch DIR and keep it converged (the default command)"
    )
    run.add_argument(
        "directory",
        metavar="DIR",
        type=Path,
        nargs="?",
        help="manifest file or directory (not with --git)",
    )
    run.add_argument("--once", action="store_true", help="apply one pass, then exit")
    run.add_argument(
        "--wait",
        dest="wait_timeout",
        metavar="TIMEOUT",
        nargs="?",
        const=DEFAULT_WAIT,
        default=None,
        help="with --once: then wait until every instance asked to run is ready (its "
        f"readiness probe), at most TIMEOUT (default {DEFAULT_WAIT}; give it as --wait=5m); "
        f"exit {Exit.NOT_READY.value} naming those that are not",
    )
    _git_options(run)
    run.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"instances reconciled at once by the daemon (default {DEFAULT_WORKERS})",
    )
    run.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        default=None,
        help="the daemon serves /metrics (Prometheus), /healthz and /readyz there, e.g. "
        "127.0.0.1:9177 (default: off; or metrics-address in the configuration file)",
    )
    run.add_argument(
        "--resync",
        metavar="DURATION",
        default="5m",
        help="full pass over every instance this often, as events can be lost (default 5m)",
    )
    for sub in (run,):
        _prune_options(sub)
        _slice_options(sub)
    plan = commands.add_parser("plan", parents=[common], help="print the steps, change nothing")
    _prune_options(plan)
    _slice_options(plan)
    plan.add_argument("directory", metavar="DIR", type=Path, help="manifest file or directory")
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when nothing would change, 2 when changes are pending, 1 on error",
    )
    plan.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format"
    )
    plan.add_argument(
        "--fail-on",
        choices=[d.value for d in Disruption if d.rank >= Disruption.RESTART.rank],
        default=None,
        help=f"exit {Exit.DISRUPTIVE.value} when a pending step is at least this disruptive "
        "(restart < replace < delete), so that CI can ask for a second review",
    )
    add_validate_parser(commands, common)
    add_adoption_parsers(commands, common)
    add_shutdown_parser(commands, common)
    add_snapshot_parsers(commands, common)
    add_rollout_parser(commands, common)
    add_images_parser(commands, common)
    add_events_parser(commands, common)
    status = commands.add_parser(
        "status", parents=[common], help="what the daemon knows about each instance"
    )
    status.add_argument("name", metavar="NAME", nargs="?", help="one instance only")
    status.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format"
    )
    wait = commands.add_parser(
        "wait", parents=[common], help="wait until instances are ready, live or stopped"
    )
    wait.add_argument("names", metavar="NAME", nargs="+", help="the instances")
    wait.add_argument(
        "--for", dest="want", choices=("ready", "live", "stopped"), default="ready",
        help="the condition to wait for (default ready)",
    )  # fmt: skip
    wait.add_argument(
        "--timeout", metavar="DURATION", default=DEFAULT_WAIT,
        help=f"give up after this long (default {DEFAULT_WAIT}); exit {Exit.NOT_READY.value}",
    )  # fmt: skip
    ssh = commands.add_parser("ssh", parents=[common], help="log into a guest with SSH")
    ssh.add_argument("name", metavar="NAME", help="the instance")
    ssh.add_argument("--user", metavar="USER", help="the user (default: its cloud-config's)")
    ssh.add_argument(
        "-i", "--identity", metavar="FILE", type=Path, help="the private key (ssh's -i)"
    )
    ssh.add_argument(
        "ssh_command", metavar="COMMAND", nargs="*", help="run this instead of a shell (after --)"
    )
    ssh_config = commands.add_parser(
        "ssh-config", parents=[common], help="print an OpenSSH Host block per instance"
    )
    ssh_config.add_argument("name", metavar="NAME", nargs="?", help="one instance only")
    ssh_config.add_argument("--user", metavar="USER", help="the user (default: its cloud-config's)")
    ssh_config.add_argument(
        "-i", "--identity", metavar="FILE", type=Path, help="the private key (IdentityFile)"
    )
    gc = commands.add_parser("gc", parents=[common], help="remove cached bases no disk uses")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed")
    gc.add_argument(
        "--snapshots",
        action="store_true",
        help="also remove the snapshots in the disks of instances that have no domain any more "
        "(listed without it; the disks are kept)",
    )
    gc.add_argument(
        "--grace",
        metavar="DURATION",
        default="24h",
        help="keep unused bases used within this long (e.g. 7d, 12h, 30m, 0; default 24h)",
    )
    console = commands.add_parser(
        "console", parents=[common], help="print an instance's serial console log"
    )
    console.add_argument("name", metavar="NAME", help="the instance")
    console.add_argument(
        "-f", "--follow", action="store_true", help="keep printing what the guest writes"
    )
    commands.add_parser(
        "schema",
        parents=[common],
        help="print the manifests' JSON Schema (for editors: save it beside the manifests)",
    )
    return parser, dict(commands.choices)


def _split_command(
    argv: list[str], subparsers: dict[str, argparse.ArgumentParser]
) -> tuple[str, list[str]]:
    """The command word and the other arguments; 'run' when no command word is given. The
    command is the first argument that is not an option or an option's value."""
    takes_value = {
        option
        for sub in subparsers.values()
        for action in sub._actions
        if action.nargs != 0
        for option in action.option_strings
    }
    previous = ""
    for index, word in enumerate(argv):
        if word == "--":
            break
        if not word.startswith("-") and not (previous in takes_value and "=" not in previous):
            if word in subparsers:
                return word, argv[:index] + argv[index + 1 :]
            break
        previous = word
    return "run", argv


def console() -> NoReturn:
    """The `reconcile` command (and `python -m reconciler`): `main`, then out of the process
    without the interpreter's teardown. Freeing every module and object at exit takes 60 to
    100 ms on these machines, a sixth of a no-op pass; by the time `main` returns, every
    command has closed its driver, released its lock and joined its threads, so nothing is
    left for the teardown but flushing the output and the log."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` names (default: the process's arguments); returns the exit
    status."""
    parser, subparsers = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    # a bare --wait takes no value: `--once --wait DIR` must not read DIR as its timeout
    arguments = [f"--wait={DEFAULT_WAIT}" if word == "--wait" else word for word in arguments]
    try:
        if not arguments or arguments[0] in ("-h", "--help", "--version"):
            parser.parse_args(arguments or ["--help"])
        command, rest = _split_command(arguments, subparsers)
        sub = subparsers[command]
        args = sub.parse_intermixed_args(rest)
        if command == "run" and (args.directory is None) == (args.git is None):
            sub.error("give a manifest directory DIR or --git URL (one of them)")
    except SystemExit as exit_request:
        return Exit.INVALID if exit_request.code else Exit.OK
    daemon = command == "run" and not args.once
    _configure_logging(args.verbose or daemon, args.debug, args.log_format)
    try:  # every setting checked before anything is opened
        options = options_from(command, args)
    except ConfigError as err:
        print(f"reconcile: error: {err}", file=sys.stderr)
        return Exit.INVALID
    return _run_command(COMMANDS[options.command], options)


def _run_command(command: Callable[[Options, TextIO], int], options: Options) -> int:
    """Run one command, mapping every outcome and error to the exit status."""
    os.umask(options.umask())  # what the state directory holds is its owner's alone
    try:
        return command(options, sys.stdout)
    except ConfigError as err:
        print(f"reconcile: error: {err}", file=sys.stderr)
        return Exit.INVALID
    except ReconcilerError as err:
        if options.debug:
            LOG.exception("run failed")
        print(f"reconcile: error: {err}", file=sys.stderr)
        return Exit.FAILED
    except KeyboardInterrupt:
        print("reconcile: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.FAILED
    except OSError as err:  # e.g. a state directory that cannot be created or written
        if options.debug:
            LOG.exception("run failed")
        if is_out_of_space(err):
            print(f"reconcile: error: {no_space_left(err, options.state.root)}", file=sys.stderr)
            return Exit.FAILED
        where = f"{err.filename}: " if err.filename else ""
        print(f"reconcile: error: {where}{err.strerror or err}", file=sys.stderr)
        return Exit.FAILED


def _configure_logging(verbose: bool, debug: bool, log_format: str = "text") -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Download progress is information, not a warning, and wanted even when output goes to a
    # file: visible at every level.
    PROGRESS_LOG.setLevel(min(level, logging.INFO))


class _JsonFormatter(logging.Formatter):
    """One log record as a JSON line (--log-format json)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def run_plan(options: Options, out: TextIO) -> int:
    """`reconcile plan DIR` (asked of the daemon when one runs on the state directory)."""
    answer = backend_for(options).plan(out)
    views, errors = answer.plans, answer.errors
    if options.output == "json":
        print(json.dumps(plan_json(views, errors), indent=2), file=out)
    else:
        for line in render_plan(views):
            print(line, file=out)
    failed = bool(errors) or any(view.refusal for view in views)
    pending = any(view.steps for view in views)
    if options.fail_on is not None and not failed:
        threshold = options.fail_on
        held = [view.name for view in views if view.disruption.rank >= threshold.rank]
        if held:
            print(
                f"reconcile: {', '.join(held)}: the plan holds changes of class "
                f"{threshold.value} or more (--fail-on {threshold.value})",
                file=sys.stderr,
            )
            return Exit.DISRUPTIVE
    if options.detailed_exitcode:
        if failed:
            return Exit.FAILED
        return Exit.CHANGES_PENDING if pending else Exit.OK
    if errors:
        return Exit.INVALID
    # an instance that cannot converge is an error of the plan, as of --once
    return Exit.FAILED if failed else Exit.OK


def run_schema(_options: Options, out: TextIO) -> int:
    """`reconcile schema`: the JSON Schema this version validates manifests with."""
    from reconciler.manifests.loader import schema_text

    print(schema_text(), end="", file=out)
    return Exit.OK


def run_gc(options: Options, out: TextIO) -> int:
    """`reconcile gc`: remove cached bases no disk uses, after the grace period."""
    state = options.state
    if not state.root.is_dir():
        raise ConfigError(f"state directory {state.root} does not exist")
    report = backend_for(options).gc()
    verb = "would remove" if options.dry_run else "removed"
    for path in report.removed:
        print(f"{verb} {path.name}", file=out)
    for path in report.leftovers:
        print(f"{verb} leftover {path.relative_to(state.root)}", file=out)
    for path in report.replaced:
        print(f"{verb} replaced disk {path.relative_to(state.root)}", file=out)
    for entry in report.snapshots:
        disk, _, label = str(entry).rpartition("@")
        where = Path(disk).relative_to(state.root)
        if options.gc_snapshots:
            print(f"{verb} snapshot {label} of {where} (its instance is gone)", file=out)
        else:
            print(
                f"kept snapshot {label} of {where}: its instance is gone (gc --snapshots "
                "removes it)",
                file=out,
            )
    print(
        f"gc: {len(report.removed)} {verb}, {len(report.in_use)} in use, "
        f"{len(report.too_young)} used within {options.grace}",
        file=out,
    )
    return Exit.OK


def run_once(options: Options, out: TextIO) -> int:
    """`reconcile --once DIR` (a pass of the daemon when one runs on the state directory)."""
    refused = None
    backend = backend_for(options)
    if options.git is not None:
        source = git_source(options)
        options = dataclasses.replace(options, directory=source.directory)
        if isinstance(backend, Local):  # a running daemon fetches for itself
            refused = sync_for_once(source, out)
        backend = backend_for(options)
    answer = backend.apply(out)
    for line in render_summary(answer.results, len(answer.errors)):
        print(line, file=out)
    if answer.errors or refused:
        return Exit.INVALID
    if any(r.outcome is Outcome.FAILED for r in answer.results):
        return Exit.FAILED
    if options.wait_seconds is not None:
        return _wait_after_pass(options, backend, answer.results, out)
    return Exit.OK


def _wait_after_pass(
    options: Options, backend: Backend, results: list[InstanceResult], out: TextIO
) -> int:
    """--once --wait: every instance the pass left running, until ready or the timeout."""
    assert options.wait_seconds is not None
    names = [r.name for r in results if r.state is DesiredState.RUNNING]
    return _report_wait(backend, names, Want.READY, options.wait_seconds, out)


def run_wait(options: Options, out: TextIO) -> int:
    """`reconcile wait NAME...`: until each is ready, live or stopped (asked of the daemon
    when one runs), or the timeout."""
    assert options.wait_seconds is not None
    backend = backend_for(options)
    return _report_wait(backend, list(options.names), Want(options.want), options.wait_seconds, out)


def _report_wait(
    backend: Backend, names: list[str], want: Want, timeout: float, out: TextIO
) -> int:
    if not names:
        return Exit.OK
    started = time.monotonic()
    print(f"reconcile: waiting for {', '.join(names)} to be {want.value} "
          f"(at most {timeout:g}s)", file=out)  # fmt: skip
    pending = backend.wait(names, want, timeout)
    took = time.monotonic() - started
    if not pending:
        print(f"reconcile: {want.value}: {', '.join(names)} (after {took:.1f}s)", file=out)
        return Exit.OK
    for name, why in pending.items():
        print(f"reconcile: {name}: not {want.value} after {took:.0f}s: {why}", file=sys.stderr)
    return Exit.NOT_READY


def run_daemon(options: Options, out: TextIO) -> int:
    """`reconcile DIR`: the controller, until SIGTERM or SIGINT; SIGHUP rereads DIR."""
    from reconciler.loop.control import ControlServer  # the daemon's own: not for one pass
    from reconciler.loop.controller import Controller, DaemonOptions, notify_systemd

    source = git_source(options) if options.git is not None else None
    if source is not None:
        options = dataclasses.replace(options, directory=source.directory)
    directory = options.directory.absolute()
    if source is None and not directory.is_dir():
        raise ConfigError(f"{options.directory}: not a directory (the daemon watches a directory)")
    settings = options.settings()
    busy = "a daemon may already run there (reconcile status)"
    with owned_state(options, busy) as (state, driver):
        daemon = DaemonOptions(
            directory,
            options.workers,
            options.resync_seconds,
            options.selection,
            source,
            options.git.interval_seconds if options.git is not None else 60.0,
            options.catalogue(),
            options.metrics_address,
        )
        controller = Controller(driver, state, settings, daemon)
        server = ControlServer(state.control_socket, controller.handle_request)
        server.start()
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: controller.stop()),
            signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: controller.stop()),
            signal.SIGHUP: signal.signal(signal.SIGHUP, lambda *_: controller.request_reload()),
        }
        LOG.info(
            "watching %s with %s, state directory %s", directory, driver_text(driver), state.root
        )
        try:
            controller.run(on_ready=lambda: notify_systemd("READY=1"))
        finally:
            notify_systemd("STOPPING=1")
            server.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return Exit.OK


def run_status(options: Options, out: TextIO) -> int:
    """`reconcile status [NAME]`: from the daemon; without one, the state directory observed
    now (or, while another process holds it, the file the daemon last wrote)."""
    answer = backend_for(options).status()
    name = options.name
    if answer.observed is not None:
        return _print_observed(options, answer.observed, answer.where, out)
    snapshot = answer.snapshot
    assert snapshot is not None
    if name is not None and not snapshot["instances"]:
        raise ConfigError(f"no instance named {name!r} in the daemon's status")
    if options.output == "json":
        print(json.dumps(snapshot, indent=2), file=out)
    else:
        for line in render_status(snapshot):
            print(line, file=out)
    return Exit.OK


def _print_observed(
    options: Options, entries: list[InventoryEntry], where: str, out: TextIO
) -> int:
    """The instances observed now (no daemon runs)."""
    if options.name is not None:
        entries = [entry for entry in entries if entry.name == options.name]
        if not entries:
            raise ConfigError(f"no instance named {options.name!r} in {options.state.root}")
    if options.output == "json":
        snapshot = {
            "version": 1,
            "observed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "daemon": {"running": False, "uri": where},
            "instances": [entry.as_json() for entry in entries],
        }
        print(json.dumps(snapshot, indent=2), file=out)
        return Exit.OK
    print(f"no daemon runs on {options.state.root}; observed now with {where}", file=out)
    for line in render_inventory(entries):
        print(line, file=out)
    return Exit.OK


COMMANDS: dict[Command, Callable[[Options, TextIO], int]] = {
    Command.DAEMON: run_daemon,
    Command.ONCE: run_once,
    Command.PLAN: run_plan,
    Command.VALIDATE: run_validate,
    Command.EXPORT: run_export,
    Command.ADOPT: run_adopt,
    Command.STATUS: run_status,
    Command.GC: run_gc,
    Command.CONSOLE: run_console,
    Command.WAIT: run_wait,
    Command.SSH: run_ssh,
    Command.SSH_CONFIG: run_ssh_config,
    Command.SCHEMA: run_schema,
    Command.SHUTDOWN_GUESTS: run_shutdown_guests,
    Command.SNAPSHOT: run_snapshot,
    Command.SNAPSHOTS: run_snapshots,
    Command.IMAGES: run_images,
    Command.EVENTS: run_events,
    Command.REVERT: run_revert,
    Command.RESUME: run_resume,
    Command.ROLLOUT: run_rollout,
}
