"""Images by name and the lock file that pins them (pure: bytes in, values out).

A manifest says `image: {name: debian-12}`; the lock file beside the manifests
(`images.lock.json`) says which bytes that name means: the exact URL, the sha256 every host
verifies, the checksum the distribution signed, the size and when its checksum file was
signed. Resolution (images.byname) writes it; the manifest loader reads it; while it holds
an entry, every host and every pass uses exactly those bytes with no lookup.

The lock file lives in the repository, so every byte of it is the pusher's: each field of
each entry is checked, and a file that is wrong anywhere is refused whole.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass
from typing import Any

from reconciler.errors import ConfigError

LOCK_FILE = "images.lock.json"
LOCK_VERSION = 1
MAX_LOCK_BYTES = 4 * 1024 * 1024
NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class ImageName:
    """An image as a manifest names it: the catalogue's name, the architecture (the host's
    unless given) and the variant (None: the catalogue's default)."""

    name: str
    arch: str
    variant: str | None = None

    @property
    def key(self) -> str:
        return lock_key(self.name, self.arch, self.variant)

    def __str__(self) -> str:
        variant = f", variant {self.variant}" if self.variant else ""
        return f"{self.name} ({self.arch}{variant})"


@dataclass(frozen=True, slots=True)
class LockedImage:
    """One name as a lock file records it."""

    name: str
    arch: str
    variant: str  # the variant resolved (the catalogue's default when none was asked for)
    url: str
    algorithm: str  # the checksum the distribution signs: sha256 or sha512
    digest: str
    sha256: str  # what every host verifies (for sha512: of the bytes that matched it)
    format: str
    size: int | None  # in bytes, as the distribution or the server said (None: unknown)
    published: str | None  # when the checksum file was signed (UTC, ISO 8601)
    signed_by: str  # the fingerprint of the key that signed it
    checksums_url: str

    def named(self, name: ImageName) -> bool:
        """Whether this entry is what `name` asks for."""
        return (self.name, self.arch) == (name.name, name.arch) and name.variant in (
            None,
            self.variant,
        )


def lock_key(name: str, arch: str, variant: str | None = None) -> str:
    """The lock file's key of a name: `debian-12/x86_64`, or with a variant asked for,
    `debian-12/x86_64/generic`."""
    return f"{name}/{arch}" + (f"/{variant}" if variant else "")


def host_architecture() -> str:
    """The host's machine name as the catalogue and the lock key it (x86_64, aarch64)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def parse_lock(raw: bytes, where: str) -> dict[str, LockedImage]:
    """The entries of a lock file's bytes by key; ConfigError naming the first thing wrong
    (a lock is never half read)."""
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise ConfigError(f"{where}: not a lock file: {err}") from err
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION:
        raise ConfigError(f"{where}: not a lock file of version {LOCK_VERSION}")
    images = data.get("images")
    if not isinstance(images, dict):
        raise ConfigError(f"{where}: a lock file needs images: a mapping")
    return {str(key): _locked(where, key, item) for key, item in images.items()}


def lock_text(entries: dict[str, LockedImage]) -> bytes:
    """A lock file's bytes (keys sorted: an update's diff shows only what changed)."""
    data: dict[str, Any] = {
        "version": LOCK_VERSION,
        "images": {key: asdict(entries[key]) for key in sorted(entries)},
    }
    return (json.dumps(data, indent=2) + "\n").encode()


_FIELDS = tuple(LockedImage.__dataclass_fields__)
_TEXTS = ("name", "arch", "variant", "url", "algorithm", "digest", "sha256", "format",
          "signed_by", "checksums_url")  # fmt: skip


def _locked(where_file: str, key: object, item: object) -> LockedImage:
    where = f"{where_file}: entry {key!r}"
    if not isinstance(item, dict) or set(item) != set(_FIELDS):
        raise ConfigError(f"{where}: expected exactly the fields {', '.join(_FIELDS)}")
    for field in _TEXTS:
        if not isinstance(item[field], str) or len(item[field]) > 4096:
            raise ConfigError(f"{where}: {field} must be a string")
    for field in ("size", "published"):
        wanted = int if field == "size" else str
        value = item[field]
        if value is not None and (not isinstance(value, wanted) or isinstance(value, bool)):
            raise ConfigError(f"{where}: {field} must be a{'n' * (field == 'size')} "
                              f"{wanted.__name__} or null")  # fmt: skip
    locked = LockedImage(**item)
    digest_length = {"sha256": 64, "sha512": 128}.get(locked.algorithm)
    keys = (lock_key(locked.name, locked.arch), lock_key(locked.name, locked.arch, locked.variant))
    problems = [
        key not in keys and "its key does not name its name, arch and variant",
        not NAME.fullmatch(locked.name) and "its name is not a catalogue name",
        not locked.url.startswith(("https://", "http://")) and "its url is not http(s)",
        digest_length is None and "its algorithm is not sha256 or sha512",
        not re.fullmatch(rf"[0-9a-f]{{{digest_length or 64}}}", locked.digest)
        and "its digest is not lowercase hex of its algorithm's length",
        not re.fullmatch(r"[0-9a-f]{64}", locked.sha256) and "its sha256 is not lowercase hex",
        locked.algorithm == "sha256"
        and locked.sha256 != locked.digest
        and "its sha256 is not the signed digest",
        locked.format not in ("qcow2", "raw") and "its format is not qcow2 or raw",
        locked.size is not None and locked.size < 0 and "its size is negative",
    ]
    wrong = [problem for problem in problems if problem]
    if wrong:
        raise ConfigError(f"{where}: {'; '.join(wrong)}")
    return locked
