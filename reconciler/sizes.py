"""Byte sizes as users write them ("20GiB", "512 MiB", "10G") and as we print them."""

from __future__ import annotations

import re

# Binary units, plus the single-letter forms qemu-img and libvirt users know (K, M, G, T
# mean KiB, MiB, ...), plus decimal units for those who write GB on purpose.
_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KiB": 1024,
    "M": 1024**2,
    "MiB": 1024**2,
    "G": 1024**3,
    "GiB": 1024**3,
    "T": 1024**4,
    "TiB": 1024**4,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}

# The "size" definition of schemas/instance.schema.json, whose end anchor is written for both
# ECMA-262 (editors) and Python; a unit test keeps the two identical.
SIZE_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,12})? ?(B|K|KiB|M|MiB|G|GiB|T|TiB|kB|KB|MB|GB|TB)?$(?!\n)"
_SIZE_RE = re.compile(SIZE_PATTERN)


def parse_size(text: str | int) -> int:
    """Return the number of bytes `text` names; raise ValueError for anything else.

    A plain integer is a number of bytes. Fractions are allowed ("1.5GiB") when the result is
    a whole number of bytes.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is not a size")
        return text
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size")
    number = text[: match.start(2)] if match.group(2) else text
    unit = match.group(2) or ""
    whole, _, fraction = number.strip().partition(".")
    multiplier = _UNITS[unit]
    scaled = int(whole) * multiplier
    if fraction:
        numerator = int(fraction) * multiplier
        denominator = 10 ** len(fraction)
        if numerator % denominator:
            raise ValueError(f"{text!r} is not a whole number of bytes")
        scaled += numerator // denominator
    return scaled


def format_size(size: int) -> str:
    """Render bytes in the largest binary unit that keeps the number exact, else with 1 decimal."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _UNITS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _UNITS[unit]
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"


def round_up(size: int, multiple: int) -> int:
    """Round `size` up to a multiple of `multiple`."""
    return -(-size // multiple) * multiple
