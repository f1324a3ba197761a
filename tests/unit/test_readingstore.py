"""The manifest readings kept in the state directory (manifests.readingstore): a load from the
store gives what reading the files gives, reads no unchanged file (no YAML, no schema), reads
again exactly the files that changed (or whose named files did), and a store that is wrong in
any way (garbage, another version or build, a FIFO, a link, wrong types) is ignored whole."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli.main import main
from reconciler.manifests import filecache, loader, readingstore
from reconciler.manifests.loader import LoadResult, load_manifests
from reconciler.manifests.readingstore import load_store, save_store
from tests.helpers import manifest_document, write_base_image


@pytest.fixture(autouse=True)
def _no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written a moment ago can be kept (one test puts the window back)."""
    monkeypatch.setattr(filecache, "RACY_SECONDS", 0.0)


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Good instances (one naming a user-data file), a broken one and an instance set."""
    manifests = tmp_path / "m"
    manifests.mkdir()
    base, sha = write_base_image(manifests)
    _write(manifests, "user-data", "#cloud-config\n")
    for index in range(3):
        extra: dict[str, Any] = {"cloudInit": {"userDataFile": "user-data"}} if index == 0 else {}
        document = manifest_document(f"rcrs-{index}", base, sha, **extra)
        _write(manifests, f"rcrs-{index}.yaml", yaml.safe_dump(document))
    broken = manifest_document("rcrs-bad", base, sha, memory="lots")
    _write(manifests, "rcrs-bad.yaml", yaml.safe_dump(broken))
    template = manifest_document("x", base, sha)["spec"]
    spec = {"replicas": 2, "template": template}
    group = {"apiVersion": "reconciler/v1alpha1", "kind": "InstanceSet",
             "metadata": {"name": "rcrs-set"}, "spec": spec}  # fmt: skip
    _write(manifests, "rcrs-set.yaml", yaml.safe_dump(group))
    return manifests


def _summary(load: LoadResult) -> tuple[Any, ...]:
    return (load.instances, [str(e) for e in load.errors], load.invalid_names, load.sets,
            load.valid_documents, load.unlocked)  # fmt: skip


def _stored(tree: Path, store: Path) -> LoadResult:
    cache = load_store(store, None)
    load = load_manifests(tree, cache=cache)
    save_store(store, cache, None)
    return load


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    parsed: list[Path] = []
    real = loader.parse_manifest_file

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        parsed.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(loader, "parse_manifest_file", counting)
    return parsed


def test_a_load_from_the_store_equals_a_reading_and_reads_no_file(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "readings.json"
    first = _stored(tree, store)
    assert first.instances and first.errors and first.sets
    parsed = _no_parsing(monkeypatch)
    again = load_manifests(tree, cache=load_store(store, None))
    assert parsed == []
    assert _summary(again) == _summary(first) == _summary(load_manifests(tree))


def test_a_changed_file_and_a_changed_named_file_are_read_again(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "readings.json"
    _stored(tree, store)
    edited = yaml.safe_load((tree / "rcrs-1.yaml").read_text())
    edited["spec"]["memory"] = "96MiB"
    _write(tree, "rcrs-1.yaml", yaml.safe_dump(edited))
    _write(tree, "user-data", "#cloud-config\nruncmd: [true]\n")
    parsed = _no_parsing(monkeypatch)
    cache = load_store(store, None)
    load = load_manifests(tree, cache=cache)
    assert sorted(p.name for p in parsed) == ["rcrs-0.yaml", "rcrs-1.yaml"]
    specs = {spec.name: spec for spec in load.instances}
    assert specs["rcrs-1"].memory_bytes == 96 * 1024 * 1024
    assert specs["rcrs-0"].guest.user_data == b"#cloud-config\nruncmd: [true]\n"
    assert cache.changed


def test_a_file_modified_just_now_or_that_uses_a_profile_is_not_kept(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filecache, "RACY_SECONDS", 1.0)
    time.sleep(1.1)
    (tree / "rcrs-2.yaml").touch()  # modified now: a second write in the same tick would hide
    profile = {"apiVersion": "reconciler/v1alpha1", "kind": "Profile",
               "metadata": {"name": "rcrs-p"}, "spec": {"vcpus": 2}}  # fmt: skip
    _write(tree, "profile.yaml", yaml.safe_dump(profile))
    user = yaml.safe_load((tree / "rcrs-1.yaml").read_text())
    user["spec"]["profiles"] = ["rcrs-p"]
    del user["spec"]["vcpus"]
    _write(tree, "rcrs-1.yaml", yaml.safe_dump(user))
    store = tmp_path / "readings.json"
    _stored(tree, store)
    kept = {Path(p).name for p in json.loads(store.read_text())["readings"]}
    assert kept == {"rcrs-0.yaml", "rcrs-bad.yaml", "rcrs-set.yaml"}
    parsed = _no_parsing(monkeypatch)
    load = load_manifests(tree, cache=load_store(store, None))
    assert {p.name for p in parsed} == {"rcrs-1.yaml", "rcrs-2.yaml", "profile.yaml"}
    assert {s.name: s.vcpus for s in load.instances}["rcrs-1"] == 2


def _corruptions(store: Path) -> list[tuple[str, Any]]:
    data = json.loads(store.read_text())
    reading = next(iter(data["readings"].values()))
    bad_reading = {**reading, "stamp": ["1", 2, 3, 4, 5]}
    bad_spec = json.loads(json.dumps(data))
    first = next(iter(bad_spec["readings"].values()))
    if first["instances"]:
        first["instances"][0][0]["vcpus"] = "lots"
    return [
        ("garbage", b"\x00\xffnot json"),
        ("truncated", store.read_bytes()[:-10]),
        ("another version", {**data, "version": 99}),
        ("another build", {**data, "context": "0" * 64}),
        ("a list", [data]),
        ("a reading of the wrong shape", {**data, "readings": {"/x.yaml": bad_reading}}),
        ("a spec of the wrong type", bad_spec),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ]


def test_a_store_that_is_wrong_in_any_way_is_ignored_whole(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "readings.json"
    expected = _summary(_stored(tree, store))
    for what, content in _corruptions(store):
        planted = tmp_path / "planted.json"
        planted.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        cache = load_store(planted, None)
        assert len(cache) == 0, what
        assert _summary(load_manifests(tree, cache=cache)) == expected, what
    monkeypatch.setattr(readingstore, "MAX_STORE_BYTES", 10)
    assert len(load_store(store, None)) == 0  # too big


def test_a_fifo_or_a_link_in_place_of_the_store_is_not_followed(tree: Path, tmp_path: Path) -> None:
    store = tmp_path / "readings.json"
    _stored(tree, store)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert len(load_store(fifo, None)) == 0  # at once: never blocks on a writer
    link = tmp_path / "link.json"
    link.symlink_to(store)
    assert len(load_store(link, None)) == 0


def test_the_store_holds_for_its_catalogue_only(tree: Path, tmp_path: Path) -> None:
    store = tmp_path / "readings.json"
    cache = load_store(store, ["debian-12"])
    load_manifests(tree, cache=cache, catalogue=["debian-12"])
    save_store(store, cache, ["debian-12"])
    assert len(load_store(store, ["debian-12"])) == 5
    assert len(load_store(store, ["debian-12", "ubuntu-24.04"])) == 0


def test_a_second_plan_parses_no_manifest(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    argv = ["plan", str(tree), "--state-dir", str(state), "--connect", "test:///default",
            "--image-dir", str(tree)]  # fmt: skip
    main(argv)
    first = capsys.readouterr()
    assert (state / "manifest-readings.json").is_file()
    parsed = _no_parsing(monkeypatch)
    main(argv)
    assert parsed == []
    assert capsys.readouterr() == first


def test_a_pusher_who_swaps_a_named_file_for_a_link_out_of_the_tree_gets_no_stored_reading(
    tree: Path, tmp_path: Path
) -> None:
    """The reading of rcrs-0.yaml holds only while its user-data file is the one it read:
    a link put in its place (to a file outside the manifests, same size or not) is checked
    as on a first reading, and refused."""
    store = tmp_path / "readings.json"
    _stored(tree, store)
    outside = tmp_path / "secret"
    outside.write_text("#cloud-config\n")  # the same bytes as the file it replaces
    (tree / "user-data").unlink()
    (tree / "user-data").symlink_to(outside)
    load = load_manifests(tree, cache=load_store(store, None))
    assert "rcrs-0" in load.invalid_names
    assert any("user-data" in str(error) for error in load.errors)


def test_the_store_is_its_owners_alone(tree: Path, tmp_path: Path) -> None:
    """It holds user-data and injected files' contents: never readable by other users."""
    store = tmp_path / "readings.json"
    _stored(tree, store)
    assert store.stat().st_mode & 0o077 == 0
