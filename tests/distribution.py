"""A fake distribution for images by name, served on 127.0.0.1 (no internet): trees in
Debian's layout (SHA512SUMS with a detached .sign), Ubuntu's (its clearsigned simplestreams
product file; or SHA256SUMS with a detached .gpg) and Fedora's (a clearsigned CHECKSUM),
signed with a key the test makes; and the catalogue entries that point at them, for a host
configuration or for entries_from."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.httpserver import Behaviour, ImageServer

STREAM = "streams/v1/com.ubuntu.cloud:released:download.sjson"
PRODUCT = "com.ubuntu.cloud:server:24.04:{arch}"
FILES = {
    "debian": "debian-12-genericcloud-amd64.qcow2",
    "ubuntu": "server/releases/noble/release-20241004/ubuntu-24.04-server-cloudimg-amd64.img",
    "ubuntu-sums": "ubuntu-24.04-server-cloudimg-amd64.img",
    "fedora": "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2",
}
LAYOUTS: dict[str, dict[str, Any]] = {
    "debian": {"checksums": "SHA512SUMS", "signature": "SHA512SUMS.sign",
               "file": "debian-12-{variant}-{arch}.qcow2", "arch": {"x86_64": "amd64"},
               "variants": ["genericcloud"]},
    "ubuntu": {"kind": "simplestreams", "signature": None, "checksums": STREAM,
               "product": PRODUCT, "file": "disk1.img", "arch": {"x86_64": "amd64"},
               "variants": ["server"]},
    "ubuntu-sums": {"checksums": "SHA256SUMS", "signature": "SHA256SUMS.gpg",
                    "file": "ubuntu-24.04-server-cloudimg-{arch}.img",
                    "arch": {"x86_64": "amd64"}, "variants": ["server"]},
    "fedora": {"checksums": "Fedora-Cloud-41-1.4-{arch}-CHECKSUM", "signature": None,
               "file": "Fedora-Cloud-Base-Generic-41-1.4.{arch}.qcow2",
               "arch": {"x86_64": "x86_64"}, "variants": ["generic"]},
}  # fmt: skip


def sign(env: dict[str, str], how: str, data: bytes) -> bytes:
    """`data` signed by the test's key: --detach-sign or --clearsign."""
    return subprocess.run(
        ["gpg", "--batch", "--yes", how], input=data, env={**os.environ, **env},
        check=True, capture_output=True,
    ).stdout  # fmt: skip


def product_file(versions: dict[str, tuple[str, bytes]]) -> bytes:
    """Ubuntu's simplestreams product file with one product: each version's disk1.img."""
    items = {
        version: {"label": "release", "items": {
            "disk1.img": {"ftype": "disk1.img", "path": path, "size": len(image),
                          "sha256": hashlib.sha256(image).hexdigest(),
                          "md5": hashlib.md5(image).hexdigest()},
            "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": path + ".lxd", "size": 1,
                           "sha256": "0" * 64},
        }}
        for version, (path, image) in versions.items()
    }  # fmt: skip
    document = {
        "content_id": "com.ubuntu.cloud:released:download",
        "format": "products:1.0",
        "products": {
            "com.ubuntu.cloud:server:24.04:amd64": {"arch": "amd64", "versions": items},
            "com.ubuntu.cloud:server:22.04:amd64": {"arch": "amd64", "versions": {}},
        },
    }
    return json.dumps(document, indent=1).encode()


@dataclass
class Distribution:
    """The fake distribution's server and signing key."""

    server: ImageServer
    env: dict[str, str]  # gpg's, signing with the key
    keyring: Path
    fingerprint: str

    def entry(self, layout: str, fingerprint: str | None = None) -> dict[str, Any]:
        """The catalogue entry of a layout's tree, as a host configuration writes it."""
        return {
            **LAYOUTS[layout],
            "url": self.server.url(f"/{layout}/"),
            "keyring": str(self.keyring),
            "fingerprints": [fingerprint or self.fingerprint],
        }

    def publish(self, layout: str, image: bytes, versions: dict[str, str] | None = None) -> str:
        """The tree of one layout: the image, its checksum file, the signature; the image's
        path under the tree. `versions` (simplestreams): more versions, by their paths."""
        name = FILES[layout]
        self.server.serve(f"/{layout}/{name}", Behaviour(body=image))
        if layout == "debian":
            sums = f"{hashlib.sha512(image).hexdigest()}  {name}\n".encode()
            self.signed("/debian/SHA512SUMS", sums, "/debian/SHA512SUMS.sign")
        elif layout == "ubuntu":
            published = {"20241004": (name, image)}
            for version, path in (versions or {}).items():
                published[version] = (path, image)
                self.server.serve(f"/ubuntu/{path}", Behaviour(body=image))
            self.signed(f"/ubuntu/{STREAM}", product_file(published))
        elif layout == "ubuntu-sums":
            sums = f"{hashlib.sha256(image).hexdigest()} *{name}\n".encode()
            self.signed("/ubuntu-sums/SHA256SUMS", sums, "/ubuntu-sums/SHA256SUMS.gpg")
        else:
            sums = f"SHA256 ({name}) = {hashlib.sha256(image).hexdigest()}\n".encode()
            self.signed("/fedora/Fedora-Cloud-41-1.4-x86_64-CHECKSUM", sums)
        return name

    def signed(self, path: str, data: bytes, signature_path: str | None = None) -> None:
        """Serve `data` at `path` signed: clearsigned, or with a detached signature."""
        if signature_path is None:
            self.server.serve(path, Behaviour(body=sign(self.env, "--clearsign", data)))
            return
        self.server.serve(path, Behaviour(body=data))
        self.server.serve(signature_path, Behaviour(body=sign(self.env, "--detach-sign", data)))
