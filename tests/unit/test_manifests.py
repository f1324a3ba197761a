"""Manifest loading: every user mistake is reported with file:line:col, pointer and hint."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.manifests import filecache, loader
from reconciler.manifests.filecache import ManifestFileCache
from reconciler.manifests.loader import load_manifests
from reconciler.model.desired import Accelerator, DesiredState, ImageFormat

SHA = "0" * 64
VALID = f"""\
apiVersion: reconciler/v1alpha1
kind: Instance
metadata:
  name: web
spec:
  vcpus: 2
  memory: 256MiB
  image:
    source: images/base.raw
    sha256: "{SHA}"
    format: raw
  disk:
    size: 1.5GiB
"""


def errors_of(tmp_path: Path, text: str, name: str = "m.yaml") -> list[str]:
    (tmp_path / name).write_text(text)
    return [str(error) for error in load_manifests(tmp_path).errors]


def test_valid_manifest_becomes_a_spec(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(VALID)
    result = load_manifests(tmp_path)
    assert result.errors == ()
    (spec,) = result.instances
    assert spec.name == "web"
    assert spec.state is DesiredState.RUNNING
    assert spec.vcpus == 2
    assert spec.memory_bytes == 256 * 1024**2
    assert spec.disk_bytes == 1536 * 1024**2
    assert spec.image.path == tmp_path / "images" / "base.raw"
    assert spec.image.format is ImageFormat.RAW
    assert spec.accelerator is None
    assert spec.shutdown_timeout_seconds == 60


def test_file_url_source_and_accelerator(tmp_path: Path) -> None:
    text = VALID.replace("images/base.raw", "file:///srv/img/base.raw") + "  accelerator: tcg\n"
    (tmp_path / "web.yaml").write_text(text)
    (spec,) = load_manifests(tmp_path).instances
    assert spec.image.path == Path("/srv/img/base.raw")
    assert spec.accelerator is Accelerator.TCG


def test_malformed_yaml_gives_position(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, "apiVersion: [1,\nkind: x\n")
    assert error.startswith(f"{tmp_path}/m.yaml:3:1: /: malformed YAML")
    assert "expected ',' or ']'" in error


def test_size_with_unknown_unit(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, VALID.replace("size: 1.5GiB", "size: 10XB"))
    assert error == (
        f'{tmp_path}/m.yaml:13:11: /spec/disk/size: "10XB" is not valid '
        "(expected a size, e.g. 20GiB)"
    )


def test_state_maybe(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, VALID.replace("  vcpus: 2", "  state: maybe\n  vcpus: 2"))
    assert error == (
        f'{tmp_path}/m.yaml:6:10: /spec/state: "maybe" is not valid '
        "(expected one of running, stopped, absent)"
    )


def test_duplicate_key(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, VALID.replace("  vcpus: 2", "  vcpus: 2\n  vcpus: 3"))
    assert error == f"{tmp_path}/m.yaml:7:3: /spec/vcpus: duplicate key 'vcpus' (first at line 6)"


def test_yaml11_boolean_is_rejected_with_hint(tmp_path: Path) -> None:
    text = VALID.replace("  name: web", "  name: web\n  labels:\n    enabled: no")
    (error,) = errors_of(tmp_path, text)
    assert error.startswith(f"{tmp_path}/m.yaml:6:14: /metadata/labels/enabled: expected")
    assert "got the boolean false" in error
    assert error.count("quote") == 1  # said once, by the field's own expectation


@pytest.mark.parametrize("name", ["../x", "a/b", "<a>", "", "x" * 300, "Web", "a\u0000b", "-a"])
def test_hostile_names_are_rejected(tmp_path: Path, name: str) -> None:
    text = VALID.replace("  name: web", f'  name: "{name.replace(chr(0), chr(92) + "0")}"')
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1
    assert f"{tmp_path}/m.yaml:4:9: /metadata/name:" in errors[0]
    assert load_manifests(tmp_path).instances == ()


def test_every_error_of_a_file_is_listed_in_order(tmp_path: Path) -> None:
    text = (
        VALID.replace("vcpus: 2", "vcpus: 0")
        .replace("memory: 256MiB", "memory: lots")
        .replace("format: raw", "format: vmdk")
        + "  extra: 1\n"
    )
    errors = errors_of(tmp_path, text)
    assert [e.split(": ")[1] for e in errors] == [
        "/spec/vcpus",
        "/spec/memory",
        "/spec/image/format",
        "/spec/extra",
    ]
    assert "unknown field 'extra'" in errors[3]


def test_missing_required_field(tmp_path: Path) -> None:
    text = VALID.replace("  disk:\n    size: 1.5GiB\n", "")
    (error,) = errors_of(tmp_path, text)
    assert error == f"{tmp_path}/m.yaml:6:3: /spec/disk: missing required field 'disk'"


def test_same_name_in_two_files_rejects_both(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yml").write_text(VALID)
    result = load_manifests(tmp_path)
    assert result.instances == ()
    assert [str(e) for e in result.errors] == [
        f"{tmp_path}/a.yaml:4:9: /metadata/name: instance name 'web' is also defined at "
        f"{tmp_path}/b.yml:4:9 (names must be unique across all manifests)",
        f"{tmp_path}/b.yml:4:9: /metadata/name: instance name 'web' is also defined at "
        f"{tmp_path}/a.yaml:4:9 (names must be unique across all manifests)",
    ]
    assert result.invalid_names == {"web"}


def test_several_documents_and_recursion_and_non_yaml_ignored(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    other = VALID.replace("name: web", "name: db")
    (tmp_path / "sub" / "two.yaml").write_text(VALID + "---\n" + other + "---\n")
    (tmp_path / "README.md").write_text("not: [yaml")
    (tmp_path / ".hidden" / "x.yaml").write_text("not: [yaml")
    result = load_manifests(tmp_path)
    assert result.errors == ()
    assert [spec.name for spec in result.instances] == ["web", "db"]


def test_invalid_document_does_not_hide_valid_one_in_same_file(tmp_path: Path) -> None:
    bad = VALID.replace("name: web", "name: bad").replace("vcpus: 2", "vcpus: many")
    (tmp_path / "m.yaml").write_text(bad + "---\n" + VALID)
    result = load_manifests(tmp_path)
    assert [spec.name for spec in result.instances] == ["web"]
    assert result.invalid_names == {"bad"}
    assert len(result.errors) == 1


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join(['*a' + str(i - 1)] * 10)}]" for i in range(1, 8)]
    (error,) = errors_of(tmp_path, "\n".join(lines) + "\n")
    assert "alias bomb" in error


def test_python_tags_are_refused(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, "x: !!python/object/apply:os.system ['true']\n")
    assert error == (
        f"{tmp_path}/m.yaml:1:4: /: malformed YAML: "
        "unsupported tag 'tag:yaml.org,2002:python/object/apply:os.system'"
    )


def test_memory_below_minimum(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, VALID.replace("memory: 256MiB", "memory: 1MiB"))
    assert "/spec/memory:" in error and "at least 16MiB" in error


def test_sha256_is_optional_for_local_files(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(VALID.replace(f'    sha256: "{SHA}"\n', ""))
    result = load_manifests(tmp_path)
    assert result.errors == ()
    assert result.instances[0].image.sha256 is None


def test_keys_with_slashes_get_escaped_pointers_and_their_own_position(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, VALID + '  "a/b~c": 1\n')
    assert error == (
        f"{tmp_path}/m.yaml:14:3: /spec/a~1b~0c: unknown field 'a/b~c' "
        "(expected one of: accelerator, allowReplace, autostart, boot, cloudInit, cpu, "
        "deletionPolicy, description, disk, disks, files, firmware, graphics, guestAgent, "
        "host, hostname, image, liveness, machine, maxMemory, maxVcpus, memory, networks, "
        "profiles, protect, readiness, rng, rollout, runPolicy, shutdownTimeoutSeconds, "
        "snapshots, ssh, "
        "state, "
        "updatePolicy, vcpus, watchdog)"
    )


# Every patterned field, with a valid value that a final newline must spoil: Python's
# re.search lets "$" match before a final newline, so each pattern must anchor against it.
TRAILING_NEWLINE_CASES = [
    ("  name: web", '  name: "web\\n"', "/metadata/name"),
    ("  name: web", '  name: web\n  labels: {"app\\n": web}', "/metadata/labels/app\\n"),
    ("  vcpus: 2", '  vcpus: 2\n  cpu: {mode: custom, model: "qemu64\\n"}', "/spec/cpu/model"),
    ("source: images/base.raw", 'source: "images/base.raw\\n"', "/spec/image/source"),
    (f'sha256: "{SHA}"', f'sha256: "{SHA}\\n"', "/spec/image/sha256"),
    ("memory: 256MiB", 'memory: "256MiB\\n"', "/spec/memory"),
    ("size: 1.5GiB", 'size: "1.5GiB\\n"', "/spec/disk/size"),
]


@pytest.mark.parametrize(("valid", "spoiled", "pointer"), TRAILING_NEWLINE_CASES)
def test_a_final_newline_is_refused_in_every_patterned_field(
    tmp_path: Path, valid: str, spoiled: str, pointer: str
) -> None:
    (tmp_path / "ok.yaml").write_text(VALID.replace(valid, spoiled.replace("\\n", "")))
    assert load_manifests(tmp_path).errors == ()
    (tmp_path / "ok.yaml").unlink()
    errors = errors_of(tmp_path, VALID.replace(valid, spoiled))
    assert len(errors) == 1, errors
    assert f": {pointer}: " in errors[0]
    assert load_manifests(tmp_path).instances == ()


@pytest.mark.parametrize(
    ("replacement", "pointer", "message"),
    [
        ("memory: 100TiB", "/spec/memory", "100TiB is more than the maximum of 16TiB"),
        ("size: 99999999TiB", "/spec/disk/size", "is more than the maximum of 1024TiB"),
    ],
)
def test_sizes_beyond_any_machine_are_refused(
    tmp_path: Path, replacement: str, pointer: str, message: str
) -> None:
    field = replacement.split(":")[0]
    original = "memory: 256MiB" if field == "memory" else "size: 1.5GiB"
    (error,) = errors_of(tmp_path, VALID.replace(original, replacement))
    assert f": {pointer}: " in error and message in error


def test_a_document_an_earlier_pass_validated_skips_the_schema_and_only_that_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys of accepted documents let the next pass skip the schema for the same content;
    a changed document (even one character) is validated, and its errors are as precise."""
    (tmp_path / "web.yaml").write_text(VALID)
    first = load_manifests(tmp_path)
    (key,) = first.valid_documents

    def no_schema() -> None:
        raise AssertionError("the schema ran for content already validated")

    with monkeypatch.context() as patched:
        patched.setattr(loader, "_validator", no_schema)
        again = load_manifests(tmp_path, first.valid_documents)
    assert again.instances == first.instances and again.valid_documents == {key}

    (tmp_path / "web.yaml").write_text(VALID.replace("vcpus: 2", "vcpus: two"))
    broken = load_manifests(tmp_path, first.valid_documents)
    assert [str(e) for e in broken.errors] == [str(e) for e in load_manifests(tmp_path).errors]
    assert broken.errors and "/spec/vcpus" in str(broken.errors[0])
    assert broken.valid_documents == frozenset()


def test_a_document_json_cannot_say_is_always_validated(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(VALID + "  note: 2026-12-01\n")  # a YAML timestamp
    result = load_manifests(tmp_path)
    assert result.valid_documents == frozenset()
    assert result.errors  # and the schema saw it: no such field


class CountingReads:
    """Counts the manifest files the loader actually reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = loader.load_manifest_file

        def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
            self.paths.append(path.name)
            return real(path, *args, **kwargs)

        monkeypatch.setattr(loader, "load_manifest_file", counting)

    def take(self) -> list[str]:
        taken, self.paths = sorted(self.paths), []
        return taken


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> CountingReads:
    monkeypatch.setattr(filecache, "RACY_SECONDS", 0.0)  # files written just now may be kept
    return CountingReads(monkeypatch)


def test_a_reading_is_kept_until_the_file_or_a_file_it_names_changes(
    tmp_path: Path, reads: CountingReads
) -> None:
    (tmp_path / "user-data").write_text("#cloud-config\n")
    (tmp_path / "a.yaml").write_text(VALID + "  cloudInit: {userDataFile: user-data}\n")
    (tmp_path / "b.yaml").write_text(VALID.replace("name: web", "name: db"))
    cache = ManifestFileCache()
    first = load_manifests(tmp_path, cache=cache)
    assert first.errors == () and reads.take() == ["a.yaml", "b.yaml"]

    again = load_manifests(tmp_path, cache=cache)
    assert again == first and reads.take() == []

    # the same size, the modification time put back: the change time still tells
    text = (tmp_path / "b.yaml").read_text()
    before = (tmp_path / "b.yaml").stat()
    (tmp_path / "b.yaml").write_text(text.replace("vcpus: 2", "vcpus: 3"))
    os.utime(tmp_path / "b.yaml", ns=(before.st_atime_ns, before.st_mtime_ns))
    changed = load_manifests(tmp_path, cache=cache)
    assert reads.take() == ["b.yaml"]
    assert {s.name: s.vcpus for s in changed.instances} == {"web": 2, "db": 3}

    (tmp_path / "user-data").write_text("#cloud-config\nhostname: other\n")
    load_manifests(tmp_path, cache=cache)
    assert reads.take() == ["a.yaml"]

    # a named file repointed (a symlink) is a change, even to a file unchanged itself
    (tmp_path / "other").write_text("#cloud-config\n")
    (tmp_path / "link").symlink_to("user-data")
    (tmp_path / "a.yaml").write_text(VALID + "  cloudInit: {userDataFile: link}\n")
    load_manifests(tmp_path, cache=cache)
    assert reads.take() == ["a.yaml"]
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("other")
    load_manifests(tmp_path, cache=cache)
    assert reads.take() == ["a.yaml"]


def test_errors_and_cross_file_checks_are_the_same_from_kept_readings(
    tmp_path: Path, reads: CountingReads
) -> None:
    """A kept reading gives its errors again, and takes part in the checks across files:
    a name defined in a second file fails both, though the first is not reread."""
    bad = VALID.replace("vcpus: 2", "vcpus: many").replace("name: web", "name: bad")
    (tmp_path / "bad.yaml").write_text(bad)
    (tmp_path / "missing.yaml").write_text(VALID + "  cloudInit: {userDataFile: nothing}\n")
    (tmp_path / "web.yaml").write_text(VALID.replace("name: web", "name: web2"))
    cache = ManifestFileCache()
    cold = load_manifests(tmp_path, cache=cache)
    reads.take()
    warm = load_manifests(tmp_path, cache=cache)
    assert reads.take() == [] and [str(e) for e in warm.errors] == [str(e) for e in cold.errors]
    assert len(cold.errors) == 2

    (tmp_path / "nothing").write_text("#cloud-config\n")  # the missing file appears
    (tmp_path / "twin.yaml").write_text(VALID.replace("name: web", "name: web2"))
    load = load_manifests(tmp_path, cache=cache)
    assert reads.take() == ["missing.yaml", "twin.yaml"]
    assert "web2" in load.invalid_names and [s.name for s in load.instances] == ["web"]
    (tmp_path / "twin.yaml").unlink()
    assert [s.name for s in load_manifests(tmp_path, cache=cache).instances] == ["web", "web2"]
    assert reads.take() == [] and len(cache) == 3


def test_a_file_modified_just_now_is_read_again(tmp_path: Path) -> None:
    """Two writes inside one timestamp tick would look the same: a file written within
    RACY_SECONDS of its reading is never kept."""
    (tmp_path / "web.yaml").write_text(VALID)
    cache = ManifestFileCache()
    load_manifests(tmp_path, cache=cache)
    assert len(cache) == 0
    old = time.time() - 10
    os.utime(tmp_path / "web.yaml", (old, old))  # the change time is now, still too recent
    load_manifests(tmp_path, cache=cache)
    assert len(cache) == 0
