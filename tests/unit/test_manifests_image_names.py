"""Images by name in manifests: `image: {name: debian-12}` takes the source the lock file
beside the manifests pins; a name the lock does not hold, or a lock that cannot be used, is
an error at the name's line and holds back only the instances that use it; the schema says
which names the catalogue has and that a name and a source do not go together."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.images.catalogue import shipped_catalogue
from reconciler.manifests import filecache
from reconciler.manifests.filecache import ManifestFileCache
from reconciler.manifests.loader import instance_schema, load_manifests
from reconciler.model.desired import ImageFormat
from reconciler.model.imagelock import (
    ImageName,
    LockedImage,
    host_architecture,
    lock_key,
    lock_text,
)

ARCH = host_architecture()
SHA = "ab" * 32


def manifest(name: str, image: str) -> str:
    return f"""\
apiVersion: reconciler/v1alpha1
kind: Instance
metadata:
  name: {name}
spec:
  vcpus: 1
  memory: 256MiB
  image:
{image}
  disk:
    size: 2GiB
"""


def locked(name: str = "debian-12", variant: str = "genericcloud", sha: str = SHA) -> LockedImage:
    return LockedImage(
        name=name, arch=ARCH, variant=variant, url=f"https://mirror.invalid/{name}.qcow2",
        algorithm="sha512", digest="c" * 128, sha256=sha, format="qcow2", size=1234,
        published="2026-12-01T00:00:00Z", signed_by="D" * 40,
        checksums_url="https://mirror.invalid/SHA512SUMS",
    )  # fmt: skip


def write_lock(directory: Path, *entries: tuple[str, LockedImage]) -> None:
    (directory / "images.lock.json").write_bytes(lock_text(dict(entries)))


def test_a_name_in_the_lock_becomes_its_pinned_source(tmp_path: Path) -> None:
    write_lock(tmp_path, (lock_key("debian-12", ARCH), locked()))
    (tmp_path / "a.yaml").write_text(manifest("web", "    name: debian-12"))
    (tmp_path / "b.yaml").write_text(manifest("raw", "    name: debian-12\n    convertTo: raw"))
    result = load_manifests(tmp_path)
    assert result.errors == () and result.unlocked == ()
    specs = {spec.name: spec for spec in result.instances}
    image = specs["web"].image
    assert image.location == "https://mirror.invalid/debian-12.qcow2"
    assert (image.sha256, image.format, image.convert_to) == (SHA, ImageFormat.QCOW2, None)
    assert specs["raw"].image.convert_to is ImageFormat.RAW


def test_a_name_not_in_the_lock_is_an_error_at_its_line_and_holds_back_only_its_instance(
    tmp_path: Path,
) -> None:
    write_lock(tmp_path, (lock_key("debian-12", ARCH), locked()))
    (tmp_path / "a.yaml").write_text(manifest("web", "    name: debian-12"))
    (tmp_path / "b.yaml").write_text(manifest("db", "    name: ubuntu-24.04\n    arch: aarch64"))
    (tmp_path / "c.yaml").write_text(manifest("gen", "    name: debian-12\n    variant: generic"))
    result = load_manifests(tmp_path)
    assert [spec.name for spec in result.instances] == ["web"]
    assert result.invalid_names == {"db", "gen"}
    assert result.unlocked == (
        ImageName("debian-12", ARCH, "generic"),
        ImageName("ubuntu-24.04", "aarch64"),
    )
    said = [str(error) for error in result.errors]
    assert said[0].startswith(f"{tmp_path}/b.yaml:9:11: /spec/image/name: image ubuntu-24.04")
    assert "is not in the lock file" in said[0] and "reconcile images lock" in said[0]
    # a variant asked for is held by an entry of that variant under the plain key too
    write_lock(tmp_path, (lock_key("debian-12", ARCH), locked(variant="generic")))
    result = load_manifests(tmp_path)
    assert {spec.name for spec in result.instances} == {"web", "gen"}


@pytest.mark.parametrize(
    "lock",
    [
        b"{",
        json.dumps({"version": 1, "images": {"debian-12/x86_64": {"url": "file:///"}}}).encode(),
        b"x" * (5 * 1024 * 1024),
    ],
)
def test_a_lock_that_cannot_be_used_fails_the_instances_naming_images_and_no_other(
    tmp_path: Path, lock: bytes
) -> None:
    (tmp_path / "images.lock.json").write_bytes(lock)
    (tmp_path / "a.yaml").write_text(manifest("web", "    name: debian-12"))
    (tmp_path / "b.yaml").write_text(
        manifest("plain", f'    source: base.raw\n    sha256: "{SHA}"\n    format: raw')
    )
    result = load_manifests(tmp_path)
    assert [spec.name for spec in result.instances] == ["plain"]
    assert result.unlocked == ()  # resolving again would not mend it
    (error,) = result.errors
    assert error.pointer == "/spec/image/name" and "lock file cannot be used" in str(error)


def test_a_pushers_lock_symlinked_out_of_the_tree_or_a_fifo_is_never_read(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside.json"
    outside.write_bytes(lock_text({lock_key("debian-12", ARCH): locked()}))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.yaml").write_text(manifest("web", "    name: debian-12"))
    (tree / "images.lock.json").symlink_to(outside)
    (error,) = load_manifests(tree).errors
    assert "outside" in str(error) and "it was not read" in str(error)
    (tree / "images.lock.json").unlink()
    os.mkfifo(tree / "images.lock.json")
    (error,) = load_manifests(tree).errors  # returns: a FIFO is never opened
    assert "not a regular file" in str(error)


def test_a_kept_reading_is_read_again_when_the_lock_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filecache, "RACY_SECONDS", 0.0)
    (tmp_path / "a.yaml").write_text(manifest("web", "    name: debian-12"))
    cache = ManifestFileCache()
    first = load_manifests(tmp_path, cache=cache)
    assert first.instances == () and len(first.unlocked) == 1
    write_lock(tmp_path, (lock_key("debian-12", ARCH), locked()))
    second = load_manifests(tmp_path, cache=cache)
    assert [spec.image.sha256 for spec in second.instances] == [SHA]
    write_lock(tmp_path, (lock_key("debian-12", ARCH), locked(sha="cd" * 32)))
    third = load_manifests(tmp_path, cache=cache)
    assert [spec.image.sha256 for spec in third.instances] == ["cd" * 32]


@pytest.mark.parametrize(
    ("image", "said"),
    [
        ("    name: debian-12\n    source: x.img", "not both"),
        ("    name: debian-12\n    format: qcow2", "not both"),
        ("    source: x.img\n    format: raw\n    variant: generic", "or a name"),
        ("    name: Debian_12", "a name from the image catalogue"),
        ("    name: debian-12\n    arch: x86/64", "an architecture"),
        ("    format: raw", "missing required field 'source'"),
    ],
)
def test_the_schema_says_what_an_image_takes(tmp_path: Path, image: str, said: str) -> None:
    (tmp_path / "a.yaml").write_text(manifest("web", image))
    errors = [str(error) for error in load_manifests(tmp_path).errors]
    assert errors and any(said in error for error in errors), errors


def test_the_schema_lists_the_shipped_catalogues_names() -> None:
    name = instance_schema()["properties"]["spec"]["properties"]["image"]["properties"]["name"]
    assert name["examples"] == sorted(shipped_catalogue())
    for entry in shipped_catalogue():
        assert entry in name["description"] and entry in name["x-expected"]


def test_images_lock_drops_the_entries_no_manifest_uses_and_keeps_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to resolve here (every name in use is locked): no network is touched."""
    from reconciler.cli import main as cli

    monkeypatch.setenv("RECONCILER_CONFIG", "")
    manifests = tmp_path / "m"
    manifests.mkdir()
    write_lock(
        manifests,
        (lock_key("debian-12", ARCH), locked()),
        (lock_key("fedora-41", ARCH), locked("fedora-41", "generic")),
    )
    (manifests / "a.yaml").write_text(manifest("web", "    name: debian-12"))
    state = ["--state-dir", str(tmp_path / "s")]
    assert cli.main(["images", "lock", str(manifests), *state]) == 0
    said = capsys.readouterr().out
    assert f"dropped fedora-41/{ARCH}: no manifest uses it" in said
    lock = json.loads((manifests / "images.lock.json").read_text())
    assert list(lock["images"]) == [f"debian-12/{ARCH}"]
    assert cli.main(["images", "lock", str(manifests), *state]) == 0
    assert "every name in use is locked (1)" in capsys.readouterr().out
    # the words each action takes
    for words, said in (
        (["images", "lock", "a", "b"], "one DIR at most"),
        (["images", "pull"], "one NAME"),
        (["images", "update", "--from", "x"], "--from goes with images pull"),
        (["images", "update", "no-such", "--dir", str(manifests)], "not in the lock file"),
    ):
        assert cli.main([*words, *state]) == 2, words
        assert said in capsys.readouterr().err


def test_validate_says_a_name_the_catalogue_lacks_and_notes_unused_lock_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.cli import main as cli

    monkeypatch.setenv("RECONCILER_CONFIG", "")
    write_lock(tmp_path, (lock_key("fedora-41", ARCH), locked("fedora-41", "generic")))
    (tmp_path / "a.yaml").write_text(manifest("web", "    name: debian-13"))
    assert cli.main(["validate", str(tmp_path)]) == 2
    said = capsys.readouterr().out
    assert "a.yaml:9:11: /spec/image/name: image 'debian-13' is not in the catalogue" in said
    assert "expected one of: debian-12, fedora-41, ubuntu-22.04, ubuntu-24.04" in said
    assert f"note: {tmp_path}/images.lock.json: fedora-41/{ARCH} is used by no manifest" in said
