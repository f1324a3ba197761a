"""`reconcile validate`: schema and cross-file checks only, in every output format, with exit
codes; a tree of 1,000 manifests validates without libvirt, a state directory or root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main as cli
from tests.helpers import PROJECT

SHA = "0" * 64


def manifest(name: str, memory: str = "256MiB", **extra: str) -> str:
    lines = "".join(f"  {key}: {value}\n" for key, value in extra.items())
    return (
        "apiVersion: reconciler/v1alpha1\nkind: Instance\n"
        f"metadata:\n  name: {name}\nspec:\n  vcpus: 1\n  memory: {memory}\n"
        f'  image:\n    source: images/base.raw\n    sha256: "{SHA}"\n    format: raw\n'
        f"  disk:\n    size: 1GiB\n{lines}"
    )


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["validate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def broken_tree(tmp_path: Path) -> Path:
    (tmp_path / "good.yaml").write_text(manifest("web"))
    (tmp_path / "bad.yaml").write_text(manifest("db", memory="lots"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "twin.yaml").write_text(manifest("web"))  # a name used twice
    return tmp_path


def test_a_good_tree_is_valid_in_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(manifest("web"))
    (tmp_path / "b.yml").write_text(manifest("db"))
    code, out, _ = run(capsys, str(tmp_path))
    assert code == 0
    assert out == "valid: 2 file(s), 2 valid instance(s)\n"
    code, out, _ = run(capsys, "-o", "json", str(tmp_path))
    assert code == 0
    assert json.loads(out) == {
        "version": 1, "valid": True, "files": 2, "instances": ["db", "web"], "errors": [],
    }  # fmt: skip
    code, out, _ = run(capsys, "--format", "github", str(tmp_path))
    assert code == 0 and "::error" not in out


def test_a_broken_tree_gives_located_errors_in_every_format(
    broken_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, str(broken_tree))
    assert code == 2
    bad = broken_tree / "bad.yaml"
    assert f"error: {bad}:7:11: /spec/memory: " in out
    assert "twin.yaml" in out and "web" in out  # the duplicate name, across files
    assert out.splitlines()[-1] == "invalid: 3 file(s), 0 valid instance(s), 3 error(s)"

    code, out, _ = run(capsys, "-o", "json", str(broken_tree))
    assert code == 2
    document = json.loads(out)
    assert document["valid"] is False and document["instances"] == []
    memory = next(e for e in document["errors"] if e["pointer"] == "/spec/memory")
    assert (memory["file"], memory["line"], memory["column"]) == (str(bad), 7, 11)
    assert set(memory) == {"file", "line", "column", "pointer", "message", "hint", "text"}

    code, out, _ = run(capsys, "--format", "github", str(broken_tree))
    assert code == 2
    annotation = next(line for line in out.splitlines() if "memory" in line)
    assert annotation.startswith(f"::error file={bad},line=7,col=11,title=reconcile validate::")
    assert "/spec/memory: " in annotation


def test_several_paths_are_checked_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a pre-commit hook calls it: the staged files, named one by one."""
    (tmp_path / "a.yaml").write_text(manifest("web"))
    (tmp_path / "b.yaml").write_text(manifest("web"))
    code, out, _ = run(capsys, str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert code == 2
    assert "web" in out and "b.yaml" in out


def test_a_missing_path_is_invalid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, str(tmp_path / "nowhere"))
    assert code == 2
    assert "nowhere: no such file or directory" in err


def test_github_annotations_escape_what_would_end_the_command() -> None:
    from reconciler.cli.validate import _data, _property

    assert _data("50% of a\nline") == "50%25 of a%0Aline"
    assert _property("/srv/a,b:c.yaml") == "/srv/a%2Cb%3Ac.yaml"


def test_a_thousand_manifests_validate_without_libvirt_or_a_state_directory(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "m"
    for group in range(10):
        directory = tree / f"g{group}"
        directory.mkdir(parents=True)
        for index in range(100):
            name = f"vm-{group}-{index}"
            (directory / f"{name}.yaml").write_text(manifest(name))
    probe = (
        "import sys; from reconciler.cli import main; code = main.main(sys.argv[1:]); "
        "assert 'libvirt' not in sys.modules, 'libvirt imported'; sys.exit(code)"
    )
    env = {
        **os.environ,
        "LIBVIRT_DEFAULT_URI": "test:///nowhere",
        "RECONCILER_STATE_DIR": str(tmp_path / "no-state"),
        "HOME": str(tmp_path / "home"),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe, "validate", str(tree)],
        capture_output=True, text=True, cwd=PROJECT, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "valid: 1000 file(s), 1000 valid instance(s)\n"
    assert not (tmp_path / "no-state").exists()


def test_the_shipped_examples_validate_and_name_the_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from reconciler.manifests.export import SCHEMA_ID
    from reconciler.manifests.loader import instance_schema

    assert instance_schema()["$id"] == SCHEMA_ID
    trees = [
        PROJECT / "manifests",
        PROJECT / "examples" / "gitops" / "fleet",
        PROJECT / "examples" / "fleet",
    ]
    code, out, _ = run(capsys, *map(str, trees))
    assert code == 0, out
    for tree in trees:
        for path in tree.rglob("*.yaml"):
            assert path.read_text().startswith("# yaml-language-server: $schema="), path


def test_the_pre_commit_hooks_run_validate() -> None:
    import yaml

    hooks = yaml.safe_load((PROJECT / ".pre-commit-hooks.yaml").read_text())
    assert {hook["id"] for hook in hooks} == {"reconcile-validate", "reconcile-validate-system"}
    assert all(hook["entry"] == "reconcile validate" for hook in hooks)


def test_the_shipped_schemas_of_the_other_kinds_are_current() -> None:
    """Editors read them (examples/fleet names them); tools/write-schemas.py writes them."""
    import json

    from reconciler.manifests.loader import kind_schemas

    directory = PROJECT / "reconciler" / "manifests" / "schemas"
    for name, schema in kind_schemas().items():
        shipped = json.loads((directory / name).read_text())
        assert shipped == schema, f"{name} is out of date: run tools/write-schemas.py"
