"""The command line as one frozen value, built and checked in `main()` before any lock,
driver or socket is opened: the flags, then the environment, then the host's configuration
file (cli.hostconfig). Every command reads its settings from it; nothing changes it after.

Also the one table of exit statuses (the README's "Exit status" says the same).
"""

from __future__ import annotations

import argparse
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.cli.hostconfig import config_path, read_config
from reconciler.errors import ConfigError
from reconciler.images.download import DownloadLimits, Transport
from reconciler.images.sources import SourcePolicy
from reconciler.loop.reconcile import Settings
from reconciler.loop.workers import DEFAULT_WORKERS
from reconciler.manifests.selection import Selection
from reconciler.model.desired import Accelerator
from reconciler.planning.disruption import Disruption
from reconciler.statedir import PRIVATE_UMASK, TRAVERSABLE_UMASK, StateDir, default_state_dir

if TYPE_CHECKING:  # imported by the commands that resolve images by name
    from reconciler.images.catalogue import CatalogueEntry


class Exit(enum.IntEnum):
    """Every exit status of `reconcile` (see the README's table)."""

    OK = 0  # converged; for plan, success; for validate, valid
    FAILED = 1  # an instance failed (or cannot converge), or the run could not proceed
    INVALID = 2  # invalid input: manifests or command line
    CHANGES_PENDING = 2  # plan --detailed-exitcode: changes are pending
    DISRUPTIVE = 3  # plan --fail-on: a pending step is at least that disruptive
    NOT_READY = 4  # --wait, wait: the timeout passed before every instance was ready
    INTERRUPTED = 130  # SIGINT


class Command(enum.StrEnum):
    DAEMON = "run"
    ONCE = "once"  # run --once
    PLAN = "plan"
    VALIDATE = "validate"
    EXPORT = "export"
    ADOPT = "adopt"
    STATUS = "status"
    GC = "gc"
    CONSOLE = "console"
    WAIT = "wait"
    SSH = "ssh"
    SSH_CONFIG = "ssh-config"
    SCHEMA = "schema"
    SHUTDOWN_GUESTS = "shutdown-guests"
    SNAPSHOT = "snapshot"
    SNAPSHOTS = "snapshots"
    REVERT = "revert"
    RESUME = "resume"
    ROLLOUT = "rollout"
    IMAGES = "images"
    EVENTS = "events"


@dataclass(frozen=True, slots=True)
class GitOptions:
    """Pull mode: the repository the manifests come from."""

    url: str
    ref: str = "main"
    path: str = "."
    verify_signatures: Path | None = None
    interval_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class Options:
    """One command's settings, complete and checked."""

    command: Command
    state: StateDir  # absolute
    driver: str = "libvirt"  # libvirt | qmp
    connect: str | None = None  # a libvirt URI (None: the embedded driver)
    accelerator: Accelerator = Accelerator.AUTO
    image_dirs: tuple[Path, ...] = ()
    ca_bundle: Path | None = None
    download_attempts: int = DownloadLimits().attempts
    log_format: str = "text"
    verbose: bool = False
    debug: bool = False
    directory: Path = Path(".")  # DIR as given (pull mode: the repository's checkout)
    git: GitOptions | None = None
    workers: int = DEFAULT_WORKERS
    resync_seconds: float = 300.0
    prune: bool = False
    allow_empty: bool = False
    selection: Selection = field(default_factory=Selection)
    detailed_exitcode: bool = False
    fail_on: Disruption | None = None
    output: str = "text"
    name: str | None = None
    dry_run: bool = False
    grace_seconds: float = 0.0
    grace: str = "24h"  # gc's --grace as given (said back in its summary)
    follow: bool = False
    paths: tuple[Path, ...] = ()  # validate's
    wait_seconds: float | None = None  # --once --wait, and wait's --timeout (None: no wait)
    names: tuple[str, ...] = ()  # wait's
    want: str = "ready"  # wait's --for: ready, live or stopped
    user: str | None = None  # ssh's and ssh-config's --user
    identity: Path | None = None  # their --identity
    ssh_command: tuple[str, ...] = ()  # ssh's COMMAND
    gc_snapshots: bool = False  # gc --snapshots
    resolved: Path | None = None  # export --resolved DIR
    label: str | None = None  # snapshot's --name, snapshot delete's and revert's LABEL
    action: str = "take"  # snapshot's: take or delete
    catalogue_config: tuple[str, Any] | None = None  # the config file's catalogue, and where
    source_path: Path | None = None  # images pull --from
    metrics_address: tuple[str, int] | None = None  # the daemon's --metrics-address

    @property
    def daemon(self) -> bool:
        return self.command is Command.DAEMON

    def checked_state(self) -> StateDir:
        """The state directory, checked to be usable by the driver asked for (the embedded
        libvirt driver's sockets live under it: its path has a length limit)."""
        if self.connect is None and self.driver == "libvirt":
            self.state.check_embedded_path_length()
        return self.state

    def settings(self) -> Settings:
        """What one reconcile needs from the command line."""
        return Settings(
            download_limits=DownloadLimits(attempts=self.download_attempts),
            default_accelerator=self.accelerator,
            sources=SourcePolicy.from_settings(list(self.image_dirs), self.directory.absolute()),
            transport=Transport.from_environment(ca_bundle=self.ca_bundle),
            prune=self.prune or self.state.prune_enabled(),
            allow_empty=self.allow_empty,
        )

    def catalogue(self) -> dict[str, CatalogueEntry]:
        """The image catalogue in force: the shipped one, the host configuration's over it."""
        from reconciler.images.catalogue import catalogue_in_force

        if self.catalogue_config is None:
            return catalogue_in_force()
        origin, host = self.catalogue_config
        return catalogue_in_force(host, origin)

    def umask(self) -> int:
        """The umask every command runs under: private to the owner, but with directories
        that a system libvirt's QEMU user can pass through when a local libvirtd runs the
        guests."""
        uri = self.connect
        if uri is None or self.driver != "libvirt" or "embed" in uri:
            return PRIVATE_UMASK
        from reconciler.drivers.libvirt_driver import uri_is_local

        return TRAVERSABLE_UMASK if uri_is_local(uri) else PRIVATE_UMASK


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}


def parse_duration(text: str, option: str = "--grace") -> float:
    """Seconds in '7d', '12h', '30m', '45s' or '0'; ConfigError otherwise."""
    number, unit = text[:-1], text[-1:]
    if unit.isdigit():
        number, unit = text, ""
    if not number.isdigit() or unit not in _DURATION_UNITS:
        raise ConfigError(f"{option} {text!r} is not a duration (expected e.g. 7d, 12h, 30m, 0)")
    return int(number) * _DURATION_UNITS[unit]


def options_from(command: str, args: argparse.Namespace) -> Options:
    """The options of `command` from its parsed arguments, with what they leave unset taken
    from the environment, then from the host's configuration file; ConfigError for any
    setting that cannot be used."""
    path = config_path()
    config = read_config(path) if path is not None else {}
    connect = args.connect or os.environ.get("LIBVIRT_DEFAULT_URI") or config.get("connect")
    driver = args.driver or os.environ.get("RECONCILER_DRIVER") or config.get("driver") or "libvirt"
    if driver not in ("libvirt", "qmp"):
        raise ConfigError(f"$RECONCILER_DRIVER {driver!r}: expected libvirt or qmp")
    state_dir = args.state_dir
    if state_dir is None and "RECONCILER_STATE_DIR" not in os.environ and "state-dir" in config:
        state_dir = Path(config["state-dir"])
    ca_bundle = args.ca_bundle
    if ca_bundle is None and "ca-bundle" in config:
        ca_bundle = Path(config["ca-bundle"])
    if args.download_attempts < 1:
        raise ConfigError("--download-attempts must be at least 1")
    given = vars(args)
    host = given.get("host")
    if "host" in given and host is None:
        host = config.get("host")
    kind = Command.ONCE if command == "run" and given.get("once") else Command(command)
    snapshot = _snapshot_options(kind, given)
    options = Options(
        command=kind,
        state=StateDir((state_dir or default_state_dir()).absolute()),
        driver=driver,
        connect=connect,
        accelerator=Accelerator(args.accelerator),
        image_dirs=(*args.image_dir, *(Path(d) for d in config.get("image-dir", ()))),
        ca_bundle=ca_bundle,
        download_attempts=args.download_attempts,
        log_format=args.log_format,
        verbose=args.verbose,
        debug=args.debug,
        directory=snapshot.pop("directory", None) or given.get("directory") or Path("."),
        git=_git_options(given),
        prune=bool(given.get("prune")),
        allow_empty=bool(given.get("allow_empty")),
        selection=Selection.parse(host, given.get("selector")),
        detailed_exitcode=bool(given.get("detailed_exitcode")),
        fail_on=Disruption(given["fail_on"]) if given.get("fail_on") else None,
        output=given.get("output") or "text",
        name=snapshot.pop("name", given.get("name")),
        dry_run=bool(given.get("dry_run")),
        gc_snapshots=bool(given.get("snapshots")),
        resolved=given.get("resolved"),
        follow=bool(given.get("follow")),
        paths=tuple(given.get("paths") or ()),
        workers=_workers(kind, given),
        resync_seconds=_resync(kind, given),
        grace_seconds=parse_duration(str(given.get("grace", "0"))),
        grace=str(given.get("grace", "24h")),
        wait_seconds=_wait_seconds(kind, given),
        names=tuple(snapshot.pop("names", None) or given.get("names") or ()),
        want=str(given.get("want") or "ready"),
        user=given.get("user"),
        identity=_absolute(given.get("identity")),
        ssh_command=tuple(given.get("ssh_command") or ()),
        catalogue_config=None if "catalogue" not in config else (str(path), config["catalogue"]),
        metrics_address=_metrics_address(kind, given.get("metrics_address"), config),
        **snapshot,
    )
    return options


def _snapshot_options(kind: Command, given: dict[str, Any]) -> dict[str, Any]:
    """`snapshot NAME [--name LABEL]` and `snapshot delete NAME LABEL`; revert's NAME LABEL."""
    if kind is Command.REVERT:
        return {"name": given["name"], "label": given["label"]}
    if kind is Command.ROLLOUT:
        return {"name": given["set"], "action": given["rollout_action"]}
    if kind is Command.IMAGES:
        from reconciler.cli.images import image_options

        return image_options(given)
    if kind is not Command.SNAPSHOT:
        return {}
    words = list(given.get("words") or ())
    if len(words) == 3 and words[0] == "delete":
        if given.get("label") is not None:
            raise ConfigError("snapshot delete takes the label as its last word, not --name")
        return {"name": words[1], "label": words[2], "action": "delete"}
    if len(words) != 1:
        raise ConfigError("expected `snapshot NAME [--name LABEL]` or `snapshot delete NAME LABEL`")
    return {"name": words[0], "label": given.get("label"), "action": "take"}


DEFAULT_WAIT = "10m"


def _metrics_address(
    kind: Command, given: object, config: dict[str, Any]
) -> tuple[str, int] | None:
    """The daemon's --metrics-address (else the configuration file's), checked."""
    text = given if isinstance(given, str) else config.get("metrics-address")
    if text is None:
        return None
    if kind is not Command.DAEMON:
        if isinstance(given, str):
            raise ConfigError("--metrics-address goes with the daemon (not with --once)")
        return None
    from reconciler.monitoring.server import parse_address

    return parse_address(str(text))


def _absolute(path: object) -> Path | None:
    return path.absolute() if isinstance(path, Path) else None


def _wait_seconds(kind: Command, given: dict[str, object]) -> float | None:
    """--once --wait[=TIMEOUT] (default 10m), or wait's --timeout."""
    if kind is Command.WAIT:
        return parse_duration(str(given.get("timeout") or DEFAULT_WAIT), "--timeout")
    if given.get("wait_timeout") is not None:
        if kind is not Command.ONCE:
            raise ConfigError("--wait goes with --once (a daemon keeps instances ready itself)")
        return parse_duration(str(given["wait_timeout"]), "--wait")
    return None


def _git_options(given: dict[str, object]) -> GitOptions | None:
    url = given.get("git")
    if not isinstance(url, str):
        return None
    keyring = given.get("verify_signatures")
    return GitOptions(
        url,
        str(given.get("ref") or "main"),
        str(given.get("path") or "."),
        keyring if isinstance(keyring, Path) else None,
        parse_duration(str(given.get("interval") or "60s"), "--interval"),
    )


def _workers(kind: Command, given: dict[str, object]) -> int:
    workers = int(str(given.get("workers", DEFAULT_WORKERS)))
    if kind is Command.DAEMON and workers < 1:
        raise ConfigError("--workers must be at least 1")
    return workers


def _resync(kind: Command, given: dict[str, object]) -> float:
    resync = parse_duration(str(given.get("resync", "5m")), "--resync")
    if kind is Command.DAEMON and resync <= 0:
        raise ConfigError("--resync must be longer than 0")
    interval = str(given.get("interval", "60s"))  # pull mode's, checked even without
    if kind is Command.DAEMON and parse_duration(interval, "--interval") <= 0:
        raise ConfigError("--interval must be longer than 0")
    return resync
