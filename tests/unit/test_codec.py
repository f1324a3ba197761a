"""The model's JSON codec (reconciler.model.codec): every spec the loader can build comes back
equal, and data of any other shape (what a corrupt or planted cache file holds) is refused
with CodecError, never built into something else and never another exception."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.errors import SourceLocation
from reconciler.manifests.loader import load_manifests
from reconciler.model.codec import CodecError, decode, encode
from reconciler.model.desired import (
    DataDiskSpec,
    GuestConfig,
    ImageFormat,
    ImageSource,
    InjectedFile,
    InstanceSpec,
    SnapshotPolicy,
    SnapshotTrigger,
)
from reconciler.model.imagelock import ImageName
from tests.helpers import manifest_document, write_base_image


def _rich_spec(tmp_path: Path) -> InstanceSpec:
    base, sha = write_base_image(tmp_path)
    (tmp_path / "user-data").write_text("#cloud-config\nruncmd: [true]\n")
    document = manifest_document(
        "rcc-rich", base, sha,
        description="a rich one", autostart=True,
        disks=[{"name": "data", "size": "1GiB", "bus": "scsi", "deletionPolicy": "delete"}],
        networks=[{"type": "user", "ports": [{"host": 18080, "guest": 80}]}],
        cloudInit={"userDataFile": "user-data"}, ssh={"authorizedKeys": ["ssh-ed25519 AAAA k"]},
        files=[{"path": "/etc/x", "content": "\u00e9 text", "permissions": "0600"}],
        readiness={"http": {"port": 80, "path": "/ready"}, "periodSeconds": 5},
        snapshots={"beforeChange": ["restart", "replace"], "keep": 2, "schedule": "6h"},
        rollout={"maxUnavailable": "25%", "onFailure": "revert"}, updatePolicy="restart",
    )  # fmt: skip
    document["metadata"]["labels"] = {"tier": "web"}
    (tmp_path / "rcc-rich.yaml").write_text(yaml.safe_dump(document))
    load = load_manifests(tmp_path)
    assert not load.errors, [str(e) for e in load.errors]
    (spec,) = load.instances
    return spec


def test_a_rich_spec_comes_back_equal_through_json(tmp_path: Path) -> None:
    spec = _rich_spec(tmp_path)
    text = json.dumps(encode(spec))
    assert decode(InstanceSpec, json.loads(text)) == spec
    assert spec.guest.files and spec.snapshots.before_change  # bytes and a frozenset went through


def test_defaults_are_left_out_and_a_path_is_told_from_a_string() -> None:
    source = ImageSource(Path("/srv/base.qcow2"), "0" * 64, ImageFormat.QCOW2)
    encoded = encode(source)
    assert encoded["location"] == {"$path": "/srv/base.qcow2"}
    assert "convert_to" not in encoded and "name" not in encoded
    assert decode(ImageSource, encoded) == source
    url = dataclasses.replace(source, location="https://example.invalid/b.qcow2")
    assert decode(ImageSource, encode(url)).location == "https://example.invalid/b.qcow2"
    named = dataclasses.replace(source, name=ImageName("debian-12", "x86_64"))
    assert decode(ImageSource, encode(named)) == named
    assert decode(SourceLocation, encode(SourceLocation("a.yaml", 3, 4))) == SourceLocation(
        "a.yaml", 3, 4
    )


BAD: list[tuple[type, Any]] = [
    (DataDiskSpec, {"name": "d", "size_bytes": 1, "extra": 1}),  # an unknown field
    (DataDiskSpec, {"name": "d"}),  # a missing one
    (DataDiskSpec, {"name": "d", "size_bytes": True}),  # a bool for a number
    (DataDiskSpec, {"name": 5, "size_bytes": 1}),  # a number for a string
    (DataDiskSpec, {"name": "d", "size_bytes": 1, "bus": "floppy"}),  # no such enum value
    (DataDiskSpec, ["d", 1]),  # an array for an object
    (DataDiskSpec, None),
    (ImageSource, {"location": {"$path": 5}, "sha256": "x", "format": "raw"}),
    (ImageSource, {"location": {"$path": "/a", "more": 1}, "sha256": "x", "format": "raw"}),
    (ImageSource, {"location": {"$pickle": "gASV"}, "sha256": "x", "format": "raw"}),
    (GuestConfig, {"user_data": {"$bytes": "not base64!"}}),
    (GuestConfig, {"files": [{"path": "/x"}]}),  # an injected file without content
    (GuestConfig, {"files": {"path": "/x"}}),
    (SnapshotPolicy, {"before_change": ["restart", "reboot"]}),
    (InjectedFile, {"path": "/x", "content": "plain text, not tagged"}),
    (InstanceSpec, {"name": "x"}),
    (InstanceSpec, "InstanceSpec(name='x')"),
    (InstanceSpec, {"__class__": "os.system"}),
]


@pytest.mark.parametrize(("kind", "data"), BAD, ids=[repr(d)[:40] for _k, d in BAD])
def test_data_of_another_shape_is_refused(kind: type, data: Any) -> None:
    with pytest.raises(CodecError):
        decode(kind, data)


def test_every_mutation_of_an_encoded_spec_decodes_or_is_refused(tmp_path: Path) -> None:
    """Each field of a real encoded spec replaced with values of every JSON kind: the result
    is a spec (the value fit the type) or CodecError, nothing else."""
    encoded = encode(_rich_spec(tmp_path))
    kinds: list[Any] = [None, True, 0, -1, 2.5, "", "x", [], [1], {}, {"$path": "/"}]
    for field in list(encoded):
        for value in kinds:
            changed = {**encoded, field: value}
            try:
                spec = decode(InstanceSpec, changed)
            except CodecError:
                continue
            assert isinstance(spec, InstanceSpec)


def test_a_frozenset_of_enums_is_written_in_one_order() -> None:
    one = SnapshotPolicy(frozenset({SnapshotTrigger.RESTART, SnapshotTrigger.REPLACE}))
    two = SnapshotPolicy(frozenset({SnapshotTrigger.REPLACE, SnapshotTrigger.RESTART}))
    assert json.dumps(encode(one)) == json.dumps(encode(two))
