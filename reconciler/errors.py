"""The project's one exception tree; only the CLI turns these into exit codes, and only the
reconcile loop turns them into retries.

Whether a failure is worth retrying is said by the class, never by the message: a
PermanentError waits until its manifest or its source changes, a TransientError is retried
with backoff. Modules that raise a subclass define it beside the code (named on the right).

ReconcilerError
 +-- PermanentError             retrying cannot help until the input changes
 |    +-- ManifestError             a mistake in a manifest (location, pointer, message, hint)
 |    |    +-- DuplicateNameError       one name defined twice (manifests.loader)
 |    +-- InstanceError             an instance cannot be converged as asked
 |    |    +-- ReplacementNeeded        converging would destroy data (shrink, other base)
 |    |    +-- UnsafeImageError         a base image failed inspection
 |    |    +-- SourceRefused            a source outside the policy (images.sources)
 |    |    +-- DownloadRefused          a download that can never succeed (images.download)
 |    |    +-- SignatureError           a checksum file's signature refused (images.signatures)
 |    |    +-- NameNotResolved          a name the catalogue or its checksums lack (images.byname)
 |    +-- ConfigError               a bad command-line setting or environment
 +-- TransientError             a later attempt may succeed
      +-- StepError                 a step failed while acting (qemu-img, file system)
      |    +-- NoSpaceLeft              a file system or quota full where a file was written
      |    +-- DownloadFailed           every retry of a download failed (images.download)
      |    |    +-- ProxyRefused            the proxy would not carry it (images.download)
      |    +-- Abandoned                a download given up on stop (images.cache)
      +-- DriverError               the hypervisor driver failed (message, cause)
      |    +-- ConnectionLost           the connection is gone: never "domain not found"
      +-- StateDirBusy              another process holds the state directory (holder)
      +-- DaemonUnavailable         the state directory's daemon did not answer
      +-- GitError                  a fetch or a check of the repository failed (gitops.source)

Internal parse errors (HeaderError, DomainXmlError, YamlSyntaxError) never leave the module
pair that raises and catches them; they are not ReconcilerErrors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

EXCERPT_CHARACTERS = 60  # the most of a value from a file that a message quotes
MAX_MESSAGE_CHARACTERS = 400  # a message longer than this is cut (see ManifestError)


class ReconcilerError(Exception):
    """Root of every error the reconciler raises on purpose."""


class PermanentError(ReconcilerError):
    """Retrying will not help until the manifest, the source or the settings change."""


class TransientError(ReconcilerError):
    """A later attempt may succeed: retried with backoff."""


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where in a manifest file a problem sits (1-based line and column)."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class ManifestError(PermanentError):
    """One problem in one manifest; prints like a compiler error.

    `pointer` is the JSON pointer of the offending field ("" for the whole document).
    """

    def __init__(
        self, location: SourceLocation, pointer: str, message: str, hint: str = ""
    ) -> None:
        self.location = location
        self.pointer = pointer
        self.message = _cut(message)
        self.hint = _cut(hint)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = (
            f"{self.location}: {_printable(_short_pointer(self.pointer)) or '/'}: {self.message}"
        )
        return f"{where} ({self.hint})" if self.hint else where


def excerpt(text: str, limit: int = EXCERPT_CHARACTERS) -> str:
    """`text` quoted and escaped as JSON, cut to `limit` characters with its length said: the
    most of a value from an untrusted file that any message carries."""
    if len(text) <= limit:
        return json.dumps(text)
    return f"{json.dumps(text[:limit])}... ({len(text)} characters)"


def _short_pointer(pointer: str) -> str:
    """A JSON pointer whose tokens (keys from a file) are cut to EXCERPT_CHARACTERS each."""
    tokens = pointer.split("/")
    if all(len(token) <= EXCERPT_CHARACTERS for token in tokens):
        return pointer
    return "/".join(
        t if len(t) <= EXCERPT_CHARACTERS else f"{t[:EXCERPT_CHARACTERS]}..." for t in tokens
    )


def _cut(text: str) -> str:
    """A message (or hint) cut to MAX_MESSAGE_CHARACTERS: whatever a message is built from, it
    can never carry a file's content."""
    if len(text) <= MAX_MESSAGE_CHARACTERS:
        return text
    return f"{text[:MAX_MESSAGE_CHARACTERS]}... (cut: {len(text)} characters)"


def _printable(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x00), so an error stays on one line."""
    return "".join(
        char.encode("unicode_escape").decode() if ord(char) < 0x20 or ord(char) == 0x7F else char
        for char in text
    )


class InstanceError(PermanentError):
    """An instance cannot be converged as its manifest asks; retrying will not help."""


class ReplacementNeeded(InstanceError):
    """Converging would destroy data; the manifest must allow replacement explicitly."""


class UnsafeImageError(InstanceError):
    """A base image was refused by inspection (format, backing file, checksum)."""


class StepError(TransientError):
    """A step failed while acting on the world; a later pass may succeed."""


class NoSpaceLeft(StepError):
    """A file system (or a quota) was full where a file was being written: retried, since
    room may be made. Says where, how much is free and, when known, how much was needed."""

    def __init__(self, path: str, free: int | None, needed: int | None = None) -> None:
        self.path = path
        shown_free = "unknown" if free is None else f"{free} bytes"
        want = f"; {needed} bytes were needed" if needed is not None else ""
        super().__init__(
            f"no space left on the file system of {path} ({shown_free} free{want}): make room "
            "there; it is tried again"
        )


class DriverError(TransientError):
    """The hypervisor driver failed: connection or API call. Keeps the driver's own message."""

    def __init__(self, message: str, cause: str = "") -> None:
        self.message = message
        self.cause = cause
        super().__init__(f"{message}: {cause}" if cause else message)


class ConnectionLost(DriverError):
    """The connection to the hypervisor is gone (the daemon reconnects). Never a reason to
    believe a domain does not exist."""


class StateDirBusy(TransientError):
    """Another process holds the state directory (or the embedded libvirt root in it)."""

    def __init__(self, message: str, cause: str = "", holder: int | None = None) -> None:
        self.message = message
        self.cause = cause
        self.holder = holder
        super().__init__(f"{message}: {cause}" if cause else message)


class DaemonUnavailable(TransientError):
    """The daemon that holds a state directory did not answer on its control socket."""

    def __init__(self, message: str, cause: str = "") -> None:
        self.message = message
        self.cause = cause
        super().__init__(f"{message}: {cause}" if cause else message)


class ConfigError(PermanentError):
    """A bad command-line option or environment setting."""
