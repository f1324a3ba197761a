"""Test helpers for the reconciler test guest (tools/guest): build it, and read what it
reports on its serial console (markers documented in tools/guest/README.md)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import PROJECT, poll

MARKER = "reconciler-guest: "
IMAGES = PROJECT / "build" / "images"


def guest_image(image_format: str = "raw") -> Path:
    """Build the guest image if needed (cached, a second run does nothing); return its path."""
    subprocess.run(
        [sys.executable, str(PROJECT / "tools" / "guest" / "build-guest-image.py"), str(IMAGES)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return IMAGES / f"reconciler-guest.{image_format}"


@dataclass
class GuestReport:
    """The markers one boot printed."""

    booted: bool = False
    disk: str | None = None
    disk_bytes: int | None = None
    disks: dict[str, int] = field(default_factory=dict)  # every disk at boot, by name
    disks_added: dict[str, int] = field(default_factory=dict)  # plugged in while it ran
    disks_removed: list[str] = field(default_factory=list)  # taken out while it ran
    config_drive: str | None = None
    config_files: dict[str, str] = field(default_factory=dict)
    instance_id: str | None = None
    local_hostname: str | None = None
    hostname: str | None = None
    nics: dict[str, str] = field(default_factory=dict)
    ip: str | None = None  # the first NIC's address (user-mode networking's guest address)
    http: bool = False  # the reply server listens on port 80
    power_button: str | None = None
    ready: bool = False
    shutdown: bool = False


def boots(console: str) -> list[str]:
    """A console log cut into boots (each from its `booted` marker on; the first piece holds
    what came before any)."""
    pieces = console.split(f"{MARKER}booted")
    return [pieces[0], *(f"{MARKER}booted" + piece for piece in pieces[1:])]


def parse_markers(console: str) -> GuestReport:
    """Parse the marker lines of a console log's last boot (other lines are ignored; lines end
    in \\r\\n)."""
    report = GuestReport()
    for raw in boots(console)[-1].splitlines():
        line = raw.strip()
        if not line.startswith(MARKER):
            continue
        marker = line[len(MARKER) :]
        key, _, value = marker.partition("=")
        words = marker.split()
        if marker in ("booted", "ready", "shutdown"):
            setattr(report, marker, True)
        elif words[0] == "config-file":
            report.config_files[words[1]] = words[2].removeprefix("sha256=")
        elif words[0] in ("disk", "disk-added") and len(words) == 3:
            into = report.disks if words[0] == "disk" else report.disks_added
            into[words[1]] = int(words[2].removeprefix("bytes="))
        elif words[0] == "disk-removed":
            report.disks_removed.append(words[1])
        elif words[0] == "nic":
            report.nics[words[1]] = words[2].removeprefix("mac=")
        elif key == "disk":
            report.disk = value
        elif key == "disk-bytes":
            report.disk_bytes = int(value)
        elif key == "config-drive":
            report.config_drive = value.split()[0]
        elif key == "instance-id":
            report.instance_id = value
        elif key == "local-hostname":
            report.local_hostname = value
        elif key == "hostname":
            report.hostname = value
        elif words[0] == "ip":
            report.ip = words[2]
        elif key == "http":
            report.http = True
        elif key == "power-button":
            report.power_button = value
    return report


def wait_for_marker(
    console_log: Path, marker: str, timeout: float = 180.0, boot: int | None = None
) -> GuestReport:
    """Wait (polling, with a deadline) until the console shows `marker` (in the `boot`th boot
    of the log when given, counting from 1); return the markers of that (the last) boot.

    Boots under TCG take 6 to 8 s on an idle machine and up to 35 s on a loaded one.
    """

    def text() -> str:
        return console_log.read_text(errors="replace") if console_log.exists() else ""

    def found() -> GuestReport | None:
        current = text()
        if boot is None:
            return parse_markers(current) if f"{MARKER}{marker}" in current else None
        pieces = boots(current)
        if len(pieces) > boot and f"{MARKER}{marker}" in pieces[boot]:
            return parse_markers(pieces[boot])
        return None

    return poll(
        found,
        timeout,
        f"the '{marker}' marker in {console_log}",
        interval=0.25,
        context=lambda: text()[-2000:],
    )
