"""The project's one exception tree; only the CLI turns these into exit codes.

ReconcilerError
 +-- ManifestError          a user mistake in a manifest (file:line:col, JSON pointer, hint)
 +-- InstanceError          an instance cannot be converged as asked (permanent until it changes)
 |    +-- ReplacementNeeded     converging would destroy data (shrink, other base, other format)
 |    +-- UnsafeImageError      a base image failed inspection
 +-- StepError              a step failed while acting (qemu-img, libvirt, file system)
 +-- DriverError            the hypervisor driver failed (connection, API call)
 |    +-- StateDirBusy          another process holds the state directory
 +-- ConfigError            a bad command-line setting or environment
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Root of every error the reconciler raises on purpose."""


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where in a manifest file a problem sits (1-based line and column)."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class ManifestError(ReconcilerError):
    """One problem in one manifest; prints like a compiler error.

    `pointer` is the JSON pointer of the offending field ("" for the whole document).
    """

    def __init__(
        self, location: SourceLocation, pointer: str, message: str, hint: str = ""
    ) -> None:
        self.location = location
        self.pointer = pointer
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.location}: {_printable(self.pointer) or '/'}: {self.message}"
        return f"{where} ({self.hint})" if self.hint else where


def _printable(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x00), so an error stays on one line."""
    return "".join(
        char.encode("unicode_escape").decode() if ord(char) < 0x20 or ord(char) == 0x7F else char
        for char in text
    )


class InstanceError(ReconcilerError):
    """An instance cannot be converged as its manifest asks; retrying will not help."""


class ReplacementNeeded(InstanceError):
    """Converging would destroy data; the manifest must allow replacement explicitly."""


class UnsafeImageError(InstanceError):
    """A base image was refused by inspection (format, backing file, checksum)."""


class StepError(ReconcilerError):
    """A step failed while acting on the world; a later pass may succeed."""


class DriverError(ReconcilerError):
    """The hypervisor driver failed: connection or API call. Keeps the driver's own message."""

    def __init__(self, message: str, cause: str = "") -> None:
        self.message = message
        self.cause = cause
        super().__init__(f"{message}: {cause}" if cause else message)


class StateDirBusy(DriverError):
    """Another process holds the state directory (or the embedded libvirt root in it)."""


class ConfigError(ReconcilerError):
    """A bad command-line option or environment setting."""
