"""The checksum files distributions publish beside their images, parsed (pure): GNU
coreutils' lines (`HEX  NAME`, `HEX *NAME`: Debian's SHA512SUMS, Ubuntu's SHA256SUMS) and
BSD-style lines (`SHA256 (NAME) = HEX`: Fedora's CHECKSUM). Anything else in the file (a
comment, a blank line) is skipped; a line that names a file twice with different sums makes
that file unusable (never the first or the last one silently)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LENGTHS = {"sha256": 64, "sha512": 128}
_GNU = re.compile(r"([0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *]([^\s/][^/]*?)\s*")
_BSD = re.compile(r"(SHA256|SHA512) \(([^/()]+)\) = ([0-9a-fA-F]+)\s*")


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str  # sha256 or sha512
    digest: str  # lower-case hex


def parse_checksums(text: str) -> dict[str, Checksum]:
    """File name -> its checksum, from a checksum file's (signed) text."""
    found: dict[str, Checksum] = {}
    conflicted: set[str] = set()
    for line in text.splitlines():
        name, checksum = _parse_line(line.strip())
        if name is None or checksum is None:
            continue
        before = found.get(name)
        if before is not None and before != checksum:
            conflicted.add(name)
        found[name] = checksum
    return {name: sum_ for name, sum_ in found.items() if name not in conflicted}


def _parse_line(line: str) -> tuple[str | None, Checksum | None]:
    bsd = _BSD.fullmatch(line)
    if bsd is not None:
        algorithm, name, digest = bsd.group(1).lower(), bsd.group(2), bsd.group(3)
        if len(digest) != _LENGTHS[algorithm]:
            return None, None
        return name, Checksum(algorithm, digest.lower())
    gnu = _GNU.fullmatch(line)
    if gnu is not None:
        digest, name = gnu.group(1), gnu.group(2)
        algorithm = "sha256" if len(digest) == 64 else "sha512"
        return name, Checksum(algorithm, digest.lower())
    return None, None
