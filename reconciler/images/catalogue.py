"""The catalogue of images by name (`image: {name: debian-12}`): for each name, where the
distribution publishes its image and the checksum file beside it, the signature of that
file, and the keys allowed to make it. Shipped with the package (catalogue.json, with the
documentation each fingerprint was copied from) and extended or overridden by the host's
configuration, never by a manifest: whoever pushes manifests must not choose the trust root.

Pure: entries are read from JSON and turned into the URLs of one image for one host.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError
from reconciler.model.imagelock import NAME, host_architecture

CATALOGUE_VERSION = 1
KINDS = ("checksums", "simplestreams")
_FIELDS = {"description", "kind", "url", "checksums", "signature", "file", "product",
           "format", "arch", "variants", "keyring", "fingerprints", "source"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One name of the catalogue."""

    name: str
    description: str
    kind: str  # checksums (a checksum file beside the image) or simplestreams (Ubuntu's)
    url: str  # the directory of the image and its checksum file ({arch} put in), or the
    # mirror's root (simplestreams)
    checksums: str  # the checksum file's name in it (simplestreams: the product file's path)
    signature: str | None  # its detached signature's name (None: the file is clearsigned)
    file: str  # the image's name ({arch}, {variant} put in; simplestreams: the item's)
    product: str | None  # simplestreams: the product's name ({arch}, {variant} put in)
    format: str  # qcow2 or raw
    arch: tuple[tuple[str, str], ...]  # the host's machine -> the distribution's name
    variants: tuple[str, ...]  # the first is the default
    keyring: Path
    fingerprints: tuple[str, ...]
    source: str  # where the fingerprints come from
    origin: str  # "shipped" or the host configuration's path

    def image(self, arch: str | None = None, variant: str | None = None) -> ImageLocation:
        """Where the image of this name is for `arch` (default the host's) and `variant`
        (default the first): ConfigError for an architecture or variant it does not have."""
        machine = arch or host_architecture()
        names = dict(self.arch)
        their = names.get(machine) or (machine if machine in names.values() else None)
        if their is None:
            raise ConfigError(
                f"image {self.name!r} has no {machine} image (architectures: "
                f"{', '.join(sorted(names))})"
            )
        chosen = variant or self.variants[0]
        if chosen not in self.variants:
            raise ConfigError(
                f"image {self.name!r} has no variant {chosen!r} (variants: "
                f"{', '.join(self.variants)})"
            )
        values = {"arch": their, "variant": chosen}
        directory = self.url.format(**values)
        if not directory.endswith("/"):
            directory += "/"
        return ImageLocation(
            self.name,
            machine,
            chosen,
            directory,
            directory + self.checksums.format(**values),
            None if self.signature is None else directory + self.signature.format(**values),
            self.file.format(**values),
            None if self.product is None else self.product.format(**values),
        )


@dataclass(frozen=True, slots=True)
class ImageLocation:
    """One image of the catalogue for one architecture and variant: the directory it is
    published in, its checksum file's URL, and the signature's (None: clearsigned)."""

    name: str
    arch: str
    variant: str
    directory: str  # the image's directory (simplestreams: the mirror's root)
    checksums_url: str
    signature_url: str | None
    file: str  # its name in the checksum file (simplestreams: the item's name)
    product: str | None  # simplestreams: the product

    @property
    def url(self) -> str:
        """The image's URL (checksum files: beside the file; simplestreams: the product
        file gives its path)."""
        return self.directory + self.file


def shipped_catalogue() -> dict[str, CatalogueEntry]:
    return entries_from(_shipped_document(), "shipped")


def _shipped_document() -> Any:
    # beside this module (the package is installed as files; importlib.resources would
    # cost the CLI's import time)
    return json.loads((Path(__file__).parent / "catalogue.json").read_text("utf-8"))


def catalogue_in_force(
    host: Any = None, origin: str = "the host configuration"
) -> dict[str, CatalogueEntry]:
    """The shipped catalogue with the host configuration's `catalogue:` over it: a name the
    package ships takes the host's fields over its own (a mirror changes only url; a private
    distribution brings its own keyring and fingerprints); a new name is a whole entry."""
    shipped = _shipped_document()["images"]
    if host is None:
        return entries_from({"images": shipped}, "shipped")
    if not isinstance(host, dict):
        raise ConfigError(f"{origin}: catalogue maps image names to their entries")
    overlaid = {
        name: {**shipped[name], **item} if name in shipped and isinstance(item, dict) else item
        for name, item in host.items()
    }
    return merged(
        entries_from({"images": shipped}, "shipped"), entries_from({"images": overlaid}, origin)
    )


def entries_from(data: Any, origin: str) -> dict[str, CatalogueEntry]:
    """The entries of a catalogue document (the shipped one, or a host's `catalogue:`);
    ConfigError naming the first thing wrong."""
    if not isinstance(data, dict) or data.get("version", CATALOGUE_VERSION) != CATALOGUE_VERSION:
        raise ConfigError(f"{origin}: not a catalogue of version {CATALOGUE_VERSION}")
    images = data.get("images")
    if not isinstance(images, dict):
        raise ConfigError(f"{origin}: a catalogue needs images: a mapping of names")
    return {name: _entry(name, item, origin) for name, item in images.items()}


def merged(
    shipped: dict[str, CatalogueEntry], host: dict[str, CatalogueEntry]
) -> dict[str, CatalogueEntry]:
    """The catalogue in force: the host's entries over the shipped ones, name by name."""
    return {**shipped, **host}


def _entry(name: object, item: object, origin: str) -> CatalogueEntry:
    where = f"{origin}: image {name!r}"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{where}: a name is lowercase letters, digits, '.' and '-'")
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(item) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")

    def text(key: str, default: str | None = None) -> str:
        value = item.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key} must be a non-empty string")
        return value

    kind = text("kind", "checksums")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind is one of {', '.join(KINDS)}")
    product = item.get("product")
    if (kind == "simplestreams") != isinstance(product, str) or product == "":
        raise ConfigError(f"{where}: product names the simplestreams product (and only there)")
    url = text("url")
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: url must be http(s)")
    signature = item.get("signature")
    if signature is not None and (not isinstance(signature, str) or not signature):
        raise ConfigError(f"{where}: signature is a file name, or null (clearsigned)")
    arch = item.get("arch")
    if (
        not isinstance(arch, dict)
        or not arch
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in arch.items())
    ):
        raise ConfigError(f"{where}: arch maps host machines (x86_64) to the distribution's")
    variants = item.get("variants", ["default"])
    fingerprints = item.get("fingerprints")
    if not isinstance(fingerprints, list) or not fingerprints:
        raise ConfigError(f"{where}: fingerprints lists the keys allowed to sign")
    for fingerprint in fingerprints:
        hexed = "".join(str(fingerprint).split())
        if not re.fullmatch(r"[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64}", hexed):
            raise ConfigError(f"{where}: {fingerprint!r} is not a key fingerprint")
    if text("format", "qcow2") not in ("qcow2", "raw"):
        raise ConfigError(f"{where}: format is qcow2 or raw")
    return CatalogueEntry(
        name=name,
        description=text("description", name),
        kind=kind,
        url=url,
        checksums=text("checksums"),
        signature=signature,
        file=text("file"),
        product=product,
        format=text("format", "qcow2"),
        arch=tuple(sorted(arch.items())),
        variants=tuple(str(v) for v in variants) if isinstance(variants, list) else ("default",),
        keyring=Path(text("keyring")),
        fingerprints=tuple(str(f) for f in fingerprints),
        source=text("source", origin),
        origin=origin,
    )
