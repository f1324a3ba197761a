"""Images by name, the parts that need no network: the shipped catalogue and a host's
entries, the checksum files' formats, and the signatures of checksum files checked with
gpgv against a key the test makes (detached and clearsigned; a tampered file, a key the
entry does not allow, a missing keyring)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.images.catalogue import (
    catalogue_in_force,
    entries_from,
    merged,
    shipped_catalogue,
)
from reconciler.images.checksums import Checksum, parse_checksums
from reconciler.images.signatures import SignatureError, verify
from tests.gitrepo import openpgp_key_with_fingerprint

DIGEST = "a" * 64


def test_the_shipped_catalogue_names_debian_ubuntu_and_fedora_with_their_keys() -> None:
    catalogue = shipped_catalogue()
    assert {"debian-12", "ubuntu-24.04", "fedora-41"} <= set(catalogue)
    for entry in catalogue.values():
        assert entry.fingerprints and entry.source.startswith("https://"), entry.name
    debian = catalogue["debian-12"].image("x86_64")
    assert debian.url == (
        "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
    )
    assert debian.signature_url is not None and debian.signature_url.endswith("SHA512SUMS.sign")
    fedora = catalogue["fedora-41"].image("aarch64")
    assert "/41/Cloud/aarch64/images/" in fedora.url and fedora.signature_url is None
    with pytest.raises(ConfigError, match="no s390x image"):
        catalogue["debian-12"].image("s390x")
    with pytest.raises(ConfigError, match="no variant 'desktop'"):
        catalogue["ubuntu-24.04"].image("x86_64", "desktop")


def test_a_host_entry_overrides_and_a_bad_one_is_refused() -> None:
    mirror = {
        "images": {
            "debian-12": {
                "url": "http://mirror.internal/debian/", "checksums": "SHA512SUMS",
                "signature": "SHA512SUMS.sign", "file": "debian-12-{variant}-{arch}.qcow2",
                "arch": {"x86_64": "amd64"}, "variants": ["genericcloud"],
                "keyring": "/etc/reconciler/debian.gpg", "fingerprints": ["A" * 40],
            }
        }
    }  # fmt: skip
    host = entries_from(mirror, "/etc/reconciler/config.yaml")
    catalogue = merged(shipped_catalogue(), host)
    assert catalogue["debian-12"].origin == "/etc/reconciler/config.yaml"
    assert catalogue["debian-12"].image("x86_64").url.startswith("http://mirror.internal/")
    assert "ubuntu-24.04" in catalogue
    for broken, message in (
        ({"images": {"Debian": {}}}, "a name is lowercase"),
        ({"images": {"d": {**mirror["images"]["debian-12"], "url": "file:///x"}}}, "http"),
        ({"images": {"d": {**mirror["images"]["debian-12"], "fingerprints": []}}}, "lists"),
        ({"images": {"d": {**mirror["images"]["debian-12"], "fingerprints": ["zz"]}}}, "not a key"),
        ({"images": {"d": {**mirror["images"]["debian-12"], "extra": 1}}}, "unknown field"),
        ({"version": 2, "images": {}}, "version 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            entries_from(broken, "config")


def test_a_mirror_changes_a_shipped_entrys_url_and_keeps_its_keys() -> None:
    """A host without internet names its mirror in `catalogue:`: only the fields it gives
    change, the distribution's keys stay the trust root; a new name is a whole entry."""
    host = {
        "debian-12": {"url": "http://mirror.internal/debian/bookworm/latest/"},
        "ubuntu-24.04": {"url": "http://mirror.internal/ubuntu/"},
    }
    catalogue = catalogue_in_force(host, "/etc/reconciler/config.yaml")
    shipped = shipped_catalogue()
    debian = catalogue["debian-12"]
    assert debian.image("x86_64").url == (
        "http://mirror.internal/debian/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
    )
    assert (debian.fingerprints, debian.keyring) == (
        shipped["debian-12"].fingerprints,
        shipped["debian-12"].keyring,
    )
    assert debian.origin == "/etc/reconciler/config.yaml"
    ubuntu = catalogue["ubuntu-24.04"].image("x86_64")
    assert ubuntu.checksums_url == (
        "http://mirror.internal/ubuntu/streams/v1/com.ubuntu.cloud:released:download.sjson"
    )
    assert catalogue["fedora-41"] == shipped["fedora-41"]
    assert catalogue_in_force() == shipped
    with pytest.raises(ConfigError, match="keyring must be"):
        catalogue_in_force({"internal-os": {"url": "http://x/", "checksums": "SUMS",
                                            "file": "a.img", "arch": {"x86_64": "x86_64"},
                                            "fingerprints": ["A" * 40]}})  # fmt: skip
    with pytest.raises(ConfigError, match="maps image names"):
        catalogue_in_force(["debian-12"])


def test_checksum_files_of_each_layout_parse() -> None:
    text = (
        f"{DIGEST}  debian-12-genericcloud-amd64.qcow2\n"
        f"{'b' * 64} *ubuntu-24.04-server-cloudimg-amd64.img\n"
        f"SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = {'C' * 64}\n"
        f"# a comment\n{'d' * 128}  big.raw\n{'e' * 64}  ../escape.qcow2\n"
        f"{'1' * 64}  twice.img\n{'2' * 64}  twice.img\n"
    )
    sums = parse_checksums(text)
    assert sums["debian-12-genericcloud-amd64.qcow2"] == Checksum("sha256", DIGEST)
    assert sums["ubuntu-24.04-server-cloudimg-amd64.img"] == Checksum("sha256", "b" * 64)
    assert sums["Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2"] == Checksum("sha256", "c" * 64)
    assert sums["big.raw"].algorithm == "sha512"
    assert "../escape.qcow2" not in sums and "twice.img" not in sums


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, str]:
    """A key of the test's own: gpg's environment that signs with it, its public keyring,
    and its fingerprint."""
    directory = tmp_path_factory.mktemp("signer")
    return openpgp_key_with_fingerprint(directory)


def _gpg(env: dict[str, str], *args: str, data: bytes) -> bytes:
    return subprocess.run(
        ["gpg", "--batch", "--yes", *args], input=data, env={**os.environ, **env},
        check=True, capture_output=True,
    ).stdout  # fmt: skip


def test_a_detached_signature_is_checked_against_the_allowed_keys(
    signer: tuple[dict[str, str], Path, str],
) -> None:
    env, keyring, fingerprint = signer
    sums = f"{DIGEST}  image.qcow2\n".encode()
    signature = _gpg(env, "--detach-sign", data=sums)
    spaced = " ".join(fingerprint[i : i + 4] for i in range(0, 40, 4)).lower()
    good = verify(sums, signature, keyring, (spaced,), "SHA256SUMS")
    assert good.text == sums and good.fingerprint == fingerprint and good.created
    with pytest.raises(SignatureError, match="BAD signature"):
        verify(sums.replace(b"a", b"b", 1), signature, keyring, (fingerprint,), "SHA256SUMS")
    with pytest.raises(SignatureError, match="not one the catalogue allows"):
        verify(sums, signature, keyring, ("B" * 40,), "SHA256SUMS")
    with pytest.raises(SignatureError, match="does not exist"):
        verify(sums, signature, keyring.with_name("none.gpg"), (fingerprint,), "SHA256SUMS")
    with pytest.raises(SignatureError, match="no good signature"):
        verify(sums, b"garbage", keyring, (fingerprint,), "SHA256SUMS")


def test_a_clearsigned_file_gives_only_its_signed_text(
    signer: tuple[dict[str, str], Path, str],
) -> None:
    env, keyring, fingerprint = signer
    sums = f"SHA256 (image.qcow2) = {DIGEST}\n".encode()
    signed = _gpg(env, "--clearsign", data=sums)
    # a line added outside the signature never reaches the parser
    smuggled = signed + f"SHA256 (evil.qcow2) = {'f' * 64}\n".encode()
    good = verify(smuggled, None, keyring, (fingerprint,), "CHECKSUM")
    assert b"evil" not in good.text and b"image.qcow2" in good.text
    with pytest.raises(SignatureError, match="no good signature"):
        verify(sums, None, keyring, (fingerprint,), "CHECKSUM")  # not signed at all
    tampered = signed.replace(b"image.qcow2", b"other.qcow2")
    with pytest.raises(SignatureError, match="BAD signature"):
        verify(tampered, None, keyring, (fingerprint,), "CHECKSUM")
