"""Images by name against a fake distribution tree on a local HTTP server (no internet):
checksum files in Debian's layout (SHA512SUMS with a detached .sign), Ubuntu's (its
clearsigned simplestreams product file, and SHA256SUMS with a detached .gpg), and Fedora's
clearsigned CHECKSUM, each signed with a key
the test makes; a host catalogue entry points at each. A name resolves to the exact URL and
checksum; a bad signature, a key the entry does not allow, and a checksum file with no line
for the image are refused with what went wrong; the lock file reads back what was written."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.images.byname import NameNotResolved, find_published, read_lock, write_lock
from reconciler.images.catalogue import CatalogueEntry, entries_from
from reconciler.images.download import DownloadLimits
from reconciler.images.signatures import SignatureError
from reconciler.model.imagelock import lock_key
from tests.distribution import Distribution, product_file, sign
from tests.gitrepo import openpgp_key_with_fingerprint
from tests.httpserver import Behaviour, ImageServer, image_server

IMAGE = b"QFI\xfb" + b"\0" * 4092  # what the tree serves as the image (never fetched here)
LIMITS = DownloadLimits(attempts=1)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, str]:
    directory = tmp_path_factory.mktemp("distribution-key")
    return openpgp_key_with_fingerprint(directory)


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with image_server() as running:
        yield running


def entry(server: ImageServer, layout: str, keyring: Path, fingerprint: str) -> CatalogueEntry:
    item = Distribution(server, {}, keyring, fingerprint).entry(layout)
    return entries_from({"images": {f"test-{layout}": item}}, "host")[f"test-{layout}"]


def publish(server: ImageServer, env: dict[str, str], layout: str, image: bytes = IMAGE) -> str:
    return Distribution(server, env, Path(), "").publish(layout, image)


@pytest.mark.parametrize("layout", ["debian", "ubuntu", "ubuntu-sums", "fedora"])
def test_a_name_resolves_from_the_signed_checksum_file(
    server: ImageServer, signer: tuple[dict[str, str], Path, str], layout: str, tmp_path: Path
) -> None:
    env, keyring, fingerprint = signer
    name = publish(server, env, layout)
    found = find_published(entry(server, layout, keyring, fingerprint), "x86_64", limits=LIMITS)
    assert found.url == server.url(f"/{layout}/{name}")
    algorithm = "sha512" if layout == "debian" else "sha256"
    assert (found.algorithm, found.digest) == (algorithm, hashlib.new(algorithm, IMAGE).hexdigest())
    assert found.size == len(IMAGE) and found.signed_by == fingerprint
    assert found.published is not None and found.published.endswith("Z")
    # the lock file reads back what was written
    locked = found.locked(hashlib.sha256(IMAGE).hexdigest())
    lock = tmp_path / "images.lock.json"
    write_lock(lock, {lock_key(locked.name, locked.arch): locked})
    assert read_lock(lock) == {lock_key(f"test-{layout}", "x86_64"): locked}


def test_the_newest_version_of_a_simplestreams_product_is_taken(
    server: ImageServer, signer: tuple[dict[str, str], Path, str]
) -> None:
    env, keyring, fingerprint = signer
    versions = {
        "20240901": ("server/old.img", b"old"),
        "20241004.1": ("server/newest.img", b"newest"),
        "20241004": ("server/new.img", b"new"),
    }
    server.serve(
        "/ubuntu/streams/v1/com.ubuntu.cloud:released:download.sjson",
        Behaviour(body=sign(env, "--clearsign", product_file(versions))),
    )
    found = find_published(entry(server, "ubuntu", keyring, fingerprint), "x86_64", limits=LIMITS)
    assert found.url == server.url("/ubuntu/server/newest.img")
    assert found.digest == hashlib.sha256(b"newest").hexdigest()
    # a path that climbs out of the mirror is refused, signed or not
    versions = {"20250101": ("../../etc/passwd", b"x")}
    server.serve(
        "/ubuntu/streams/v1/com.ubuntu.cloud:released:download.sjson",
        Behaviour(body=sign(env, "--clearsign", product_file(versions))),
    )
    with pytest.raises(NameNotResolved, match="not a relative path"):
        find_published(entry(server, "ubuntu", keyring, fingerprint), "x86_64", limits=LIMITS)


def test_a_bad_signature_a_foreign_key_and_a_missing_line_are_refused(
    server: ImageServer, signer: tuple[dict[str, str], Path, str], tmp_path: Path
) -> None:
    env, keyring, fingerprint = signer
    publish(server, env, "ubuntu-sums")
    ubuntu = entry(server, "ubuntu-sums", keyring, fingerprint)
    # a checksum file changed after it was signed (an attacker's mirror)
    evil = f"{'e' * 64} *ubuntu-24.04-server-cloudimg-amd64.img\n".encode()
    server.serve("/ubuntu-sums/SHA256SUMS", Behaviour(body=evil))
    with pytest.raises(SignatureError, match="BAD signature"):
        find_published(ubuntu, "x86_64", limits=LIMITS)
    # signed properly, by a key the entry does not allow
    server.serve("/ubuntu-sums/SHA256SUMS.gpg", Behaviour(body=sign(env, "--detach-sign", evil)))
    other = entry(server, "ubuntu-sums", keyring, "C" * 40)
    with pytest.raises(SignatureError, match="not one the catalogue allows"):
        find_published(other, "x86_64", limits=LIMITS)
    # a signed file that lists other images only
    sums = f"{'1' * 64} *something-else.img\n".encode()
    server.serve("/ubuntu-sums/SHA256SUMS", Behaviour(body=sums))
    server.serve("/ubuntu-sums/SHA256SUMS.gpg", Behaviour(body=sign(env, "--detach-sign", sums)))
    with pytest.raises(NameNotResolved, match=r"has no line for ubuntu-24\.04-server-cloudimg"):
        find_published(ubuntu, "x86_64", limits=LIMITS)
    # no signature published at all
    server.serve("/ubuntu-sums/SHA256SUMS.gpg", Behaviour(status=404))
    with pytest.raises(Exception, match="404"):
        find_published(ubuntu, "x86_64", limits=LIMITS)


def test_a_damaged_lock_file_is_refused_whole(tmp_path: Path) -> None:
    lock = tmp_path / "images.lock.json"
    for text in ("{", '{"version": 9}', '{"version": 1, "images": {"a/b/c": {"url": "x"}}}'):
        lock.write_text(text)
        with pytest.raises(ConfigError):
            read_lock(lock)
    assert read_lock(tmp_path / "none.json") == {}


def test_a_pushers_lock_file_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    """The lock file lives in the repository: every byte is the pusher's. Wrong types, a
    key that names another image, a file:// URL, a digest that is not one: a ConfigError
    saying which, never a traceback and never a half-read lock."""
    good = {
        "name": "debian-12", "arch": "x86_64", "variant": "genericcloud",
        "url": "https://example.invalid/d.qcow2", "algorithm": "sha256", "digest": "a" * 64,
        "sha256": "a" * 64, "format": "qcow2", "size": 1, "published": None, "signed_by": "A" * 40,
        "checksums_url": "https://example.invalid/SHA256SUMS",
    }  # fmt: skip
    lock = tmp_path / "images.lock.json"
    key = "debian-12/x86_64/genericcloud"
    lock.write_text(json.dumps({"version": 1, "images": {key: good}}))
    assert read_lock(lock)[key].digest == "a" * 64
    for change, said in (
        ({"url": 7}, "url must be a string"),
        ({"size": "big"}, "size must be an int"),
        ({"size": True}, "size must be an int"),
        ({"sha256": "b" * 64}, "not the signed digest"),
        ({"url": "file:///etc/shadow"}, r"not http\(s\)"),
        ({"name": "ubuntu-24.04"}, "does not name its name"),
        ({"digest": "../../x"}, "not lowercase hex"),
        ({"algorithm": "md5"}, "not sha256 or sha512"),
        ({"format": "vmdk"}, "not qcow2 or raw"),
        ({"extra": 1}, "exactly the fields"),
    ):
        lock.write_text(json.dumps({"version": 1, "images": {key: {**good, **change}}}))
        with pytest.raises(ConfigError, match=said):
            read_lock(lock)
    lock.write_text(json.dumps({"version": 1, "images": {key: [1, 2]}}))
    with pytest.raises(ConfigError, match="exactly the fields"):
        read_lock(lock)
