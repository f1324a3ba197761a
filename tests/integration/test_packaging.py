"""The package as a host installs it: `make dist` builds a wheel and an sdist
(tools/build-dist.py, `python -m build`), the wheel installs into a fresh virtualenv, and
its `reconcile` says which version and commit it is and validates manifests. No network: the
fresh virtualenv gets the wheel alone (--no-deps, --no-index) and finds the dependencies, as
installed from PyPI, in this virtualenv's site-packages (a .pth file)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from importlib import import_module  # noqa: E402


def test_the_wheel_installs_and_runs_with_its_version_and_commit(tmp_path: Path) -> None:
    built = import_module("build-dist").build(tmp_path / "dist")
    (wheel,) = [path for path in built if path.suffix == ".whl"]
    assert [path.name for path in built if path.name.endswith(".tar.gz")] == [
        "reconciler-0.1.0.tar.gz"
    ]
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "reconciler/COMMIT" in names
        assert "reconciler/manifests/schemas/instance.schema.json" in names
        assert archive.read("reconciler/COMMIT").decode().strip() == head
        metadata = archive.read("reconciler-0.1.0.dist-info/METADATA").decode()
        entry_points = archive.read("reconciler-0.1.0.dist-info/entry_points.txt").decode()
    for requirement in ("libvirt-python", "PyYAML", "jsonschema", "watchdog", "pycdlib"):
        assert f"Requires-Dist: {requirement}" in metadata
    assert "reconcile = reconciler.cli.main:console" in entry_points

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    reconcile = venv / "bin" / "reconcile"
    outside = {**os.environ, "RECONCILER_CONFIG": ""}
    version = subprocess.run(
        [str(reconcile), "--version"], capture_output=True, text=True, env=outside,
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"reconcile 0.1.0 (commit {head[:12]})"
    where = subprocess.run(
        [str(python), "-c", "import reconciler; print(reconciler.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(venv)), where  # the wheel's, not this checkout's
    validated = subprocess.run(
        [str(reconcile), "validate", str(ROOT / "manifests")], capture_output=True, text=True,
        env=outside, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "valid instance(s)" in validated.stdout
