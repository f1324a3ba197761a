"""Ubuntu's simplestreams product files, parsed (pure): the signed JSON index of every image
the distribution publishes (`streams/v1/com.ubuntu.cloud:released:download.sjson`, the
document `multipass` and MAAS read). For one product (`com.ubuntu.cloud:server:24.04:amd64`)
the newest version's item (`disk1.img`: the qcow2 cloud image) gives the image's path under
the mirror, its sha256 and its size.

Only the signed text reaches this parser (images.signatures returns it); a path that is not a
plain relative path under the mirror is refused all the same.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PATH = re.compile(r"[A-Za-z0-9._+~-]+(/[A-Za-z0-9._+~-]+)*")


class StreamError(ValueError):
    """A product file that does not say what the catalogue asks of it."""


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One file of one version of one product."""

    path: str  # relative to the mirror
    sha256: str
    size: int | None
    version: str  # the version's name (a date: 20241004, 20241004.1)


def newest_item(text: str, product: str, item: str) -> StreamItem:
    """The `item` of the newest version of `product` in a product file's signed text;
    StreamError saying what is missing."""
    try:
        data: Any = json.loads(text)
    except ValueError as err:
        raise StreamError(f"not a simplestreams product file: {err}") from err
    products = data.get("products") if isinstance(data, dict) else None
    if not isinstance(products, dict):
        raise StreamError("not a simplestreams product file (no products)")
    found = products.get(product)
    versions = found.get("versions") if isinstance(found, dict) else None
    if not isinstance(versions, dict):
        raise StreamError(f"it has no product {product}")
    for version in sorted(versions, key=_version_order, reverse=True):
        items = versions[version].get("items") if isinstance(versions[version], dict) else None
        entry = items.get(item) if isinstance(items, dict) else None
        if isinstance(entry, dict):
            return _item(entry, product, version)
    raise StreamError(f"no version of {product} has the item {item}")


def _item(entry: dict[str, Any], product: str, version: str) -> StreamItem:
    path, sha256, size = entry.get("path"), entry.get("sha256"), entry.get("size")
    if not isinstance(path, str) or not _PATH.fullmatch(path) or ".." in path.split("/"):
        raise StreamError(f"{product} {version}: its path is not a relative path")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise StreamError(f"{product} {version}: it gives no sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        size = None
    return StreamItem(path, sha256, size, version)


def _version_order(version: str) -> tuple[tuple[int, str], ...]:
    """Versions as dates with an optional serial (20241004.1): compared number by number."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in version.split("."))
