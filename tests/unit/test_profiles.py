"""Profiles: merged in order before the instance's own fields (mappings merge, lists replace,
null removes), errors at the line that wrote the field in whichever file, missing, broken,
cyclic and repeated profiles, relative paths, and what a profile change changes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from reconciler.manifests import filecache
from reconciler.manifests.filecache import ManifestFileCache
from reconciler.manifests.loader import load_manifests

SHA = "0" * 64
PROFILES = f"""\
apiVersion: reconciler/v1alpha1
kind: Profile
metadata: {{name: base}}
spec:
  vcpus: 2
  memory: 256MiB
  image: {{source: images/base.raw, sha256: "{SHA}", format: raw}}
  disk: {{size: 1GiB}}
  description: from base
  networks: [{{type: user}}, {{type: user}}]
  labels-unused: null
---
apiVersion: reconciler/v1alpha1
kind: Profile
metadata: {{name: big}}
spec:
  memory: 1GiB
  disk: {{size: 4GiB}}
  networks: []
---
apiVersion: reconciler/v1alpha1
kind: Profile
metadata: {{name: plain}}
spec:
  profiles: [base]
  description: null
"""


def instance(name: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    return (
        f"apiVersion: reconciler/v1alpha1\nkind: Instance\nmetadata: {{name: {name}}}\n"
        f"spec:\n{body}"
    )


def write(tmp_path: Path, profiles: str = PROFILES, **instances: str) -> None:
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "common.yaml").write_text(
        profiles.replace("  labels-unused: null\n", "")
    )
    for name, spec in instances.items():
        (tmp_path / f"{name}.yaml").write_text(instance(name, spec))


def test_profiles_merge_in_order_then_the_instances_own_fields(tmp_path: Path) -> None:
    write(
        tmp_path,
        a="profiles: [base, big]\nvcpus: 4\n",
        b="profiles: [plain]\n",
        c="profiles: [base]\ndescription: null\n"
        "networks: [{type: user, ports: [{host: 18081, guest: 22}]}]\n",
    )
    result = load_manifests(tmp_path)
    assert result.errors == ()
    specs = {spec.name: spec for spec in result.instances}
    a, b, c = specs["a"], specs["b"], specs["c"]
    # later profiles win; the instance wins over all; mappings merge (disk keeps nothing
    # else), lists replace (big's empty networks)
    assert (a.vcpus, a.memory_bytes, a.disk_bytes) == (4, 1024**3, 4 * 1024**3)
    assert a.networks == () and a.description == "from base"
    # a profile listing a profile; its null removes what the one before it gave
    assert b.memory_bytes == 256 * 1024**2 and b.description is None
    assert len(b.networks) == 2
    # the instance's null removes, its list replaces
    assert c.description is None and [n.ports[0].host for n in c.networks] == [18081]
    # a relative path is relative to the file that wrote it: the profile's
    assert a.image.path == tmp_path / "profiles" / "images" / "base.raw"
    assert [name for name, _digest in a.profiles] == ["base", "big"]
    assert [name for name, _digest in b.profiles] == ["base", "plain"]


def test_an_error_in_the_merged_spec_is_at_the_line_that_wrote_it(tmp_path: Path) -> None:
    profiles = PROFILES.replace("  memory: 1GiB\n", "  memory: 1MiB\n")
    write(tmp_path, profiles, a="profiles: [big]\n", b="profiles: [base, big]\n")
    errors = [str(error) for error in load_manifests(tmp_path).errors]
    common = tmp_path / "profiles" / "common.yaml"
    # a: nothing gives it an image: said at its own spec
    assert any(e.startswith(f"{tmp_path}/a.yaml:5:") and "missing required field 'image'" in e
               for e in errors), errors  # fmt: skip
    # b: big's memory breaks it: said at big's line, naming b
    (memory,) = [e for e in errors if "/spec/memory" in e]
    assert memory.startswith(f"{common}:16:11: /spec/memory: '1MiB' is too small")
    assert f"(merged into instance 'b' of {tmp_path}/b.yaml)" in memory


def test_missing_broken_cyclic_and_repeated_profiles(tmp_path: Path) -> None:
    profiles = PROFILES + textwrap.dedent("""\
        ---
        apiVersion: reconciler/v1alpha1
        kind: Profile
        metadata: {name: one}
        spec: {profiles: [two]}
        ---
        apiVersion: reconciler/v1alpha1
        kind: Profile
        metadata: {name: two}
        spec: {profiles: [one]}
        ---
        apiVersion: reconciler/v1alpha1
        kind: Profile
        metadata: {name: bad}
        spec: {vcpus: lots}
        """)  # fmt: skip
    write(
        tmp_path,
        profiles,
        a="profiles: [base, nope]\n",
        b="profiles: [one]\n",
        c="profiles: [bad]\n",
        d="profiles: [base]\n",
    )
    (tmp_path / "again.yaml").write_text(
        "apiVersion: reconciler/v1alpha1\nkind: Profile\nmetadata: {name: big}\nspec: {}\n"
    )
    result = load_manifests(tmp_path)
    errors = [str(error) for error in result.errors]
    assert [spec.name for spec in result.instances] == ["d"]
    assert {"a", "b", "c"} <= result.invalid_names
    assert any("a.yaml:5:" in e and "no profile named 'nope'" in e for e in errors), errors
    assert any("b.yaml:5:" in e and "'one' lists itself through one -> two -> one" in e
               for e in errors), errors  # fmt: skip
    assert any("c.yaml:5:" in e and "profile 'bad' has errors" in e for e in errors), errors
    assert any("common.yaml" in e and "/spec/vcpus" in e for e in errors), errors
    repeated = [e for e in errors if "profile name 'big' is also defined at" in e]
    assert len(repeated) == 2, errors


def test_a_profile_change_changes_the_specs_that_list_it_and_only_those(
    tmp_path: Path, monkeypatch: object
) -> None:
    """Through the daemon's file cache too: a file that uses or defines a profile is read
    every pass (its result depends on other files), the others are kept."""
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setattr(filecache, "RACY_SECONDS", 0.0)
    write(tmp_path, a="profiles: [base]\n", b="profiles: [big, base]\n", c="profiles: [plain]\n")
    (tmp_path / "d.yaml").write_text(
        instance(
            "d",
            f"vcpus: 1\nmemory: 64MiB\ndisk: {{size: 1GiB}}\n"
            f"image: {{source: /i.raw, sha256: '{SHA}', format: raw}}\n",
        )
    )
    cache = ManifestFileCache()
    before = {s.name: s for s in load_manifests(tmp_path, cache=cache).instances}
    assert len(cache) == 1  # d.yaml alone: no profile in it
    common = tmp_path / "profiles" / "common.yaml"
    common.write_text(common.read_text().replace("  memory: 1GiB\n", "  memory: 2GiB\n"))
    after = {s.name: s for s in load_manifests(tmp_path, cache=cache).instances}
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["b"]  # big's users; a and c use base only, d none
    assert after["b"].memory_bytes == 256 * 1024**2  # base, listed after big, wins
    # a change that leaves b's merged spec as it was still reaches it: it lists big
    assert dict(after["b"].profiles)["big"] != dict(before["b"].profiles)["big"]


def test_export_resolved_shows_each_field_with_the_line_that_wrote_it(
    tmp_path: Path, capsys: object
) -> None:
    import pytest

    from reconciler.cli import main as cli

    assert isinstance(capsys, pytest.CaptureFixture)
    write(tmp_path, a="profiles: [base, big]\nvcpus: 4\n")
    assert cli.main(["export", "a", "--resolved", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["# a: a.yaml", "# profiles merged, in order: base, big"]
    assert "  vcpus: 4  # a.yaml:6" in out
    assert '  memory: "1GiB"  # profiles/common.yaml:16' in out
    assert '  description: "from base"  # profiles/common.yaml:9' in out
    assert cli.main(["export", "nope", "--resolved", str(tmp_path)]) == 2
    assert "no instance named 'nope'" in capsys.readouterr().err


def test_a_pushers_profile_reads_nothing_outside_the_tree(tmp_path: Path) -> None:
    """A profile is a manifest like any other: a file it names is relative to it and must
    lie in the tree, and a profile file that is a symlink out of the tree is refused unread."""
    root = tmp_path / "tree"
    root.mkdir()
    outside = tmp_path / "secret.yaml"
    outside.write_text(PROFILES.replace("name: big", "name: stolen"))
    write(root, PROFILES + textwrap.dedent("""\
        ---
        apiVersion: reconciler/v1alpha1
        kind: Profile
        metadata: {name: sneaky}
        spec:
          cloudInit: {userDataFile: ../../../etc/passwd}
        """), a="profiles: [base, sneaky]\n", b="profiles: [base, stolen]\n")  # fmt: skip
    (root / "profiles" / "link.yaml").symlink_to(outside)
    result = load_manifests(root)
    errors = [str(error) for error in result.errors]
    assert result.instances == ()
    assert any("common.yaml" in e and "is outside the manifest directory" in e
               and "merged into instance 'a'" in e for e in errors), errors  # fmt: skip
    assert any("link.yaml" in e for e in errors), errors  # refused unread
    assert any("b.yaml" in e and "no profile named 'stolen'" in e for e in errors), errors
    assert not any("root:" in e for e in errors)  # nothing of /etc/passwd quoted
