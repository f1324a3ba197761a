"""Build the wheel and the sdist (`make dist`), recording the commit they are built from.

The tracked files are copied into a scratch directory first, so that the build leaves nothing
in the checkout (no build/, no egg-info) and takes nothing git does not track; the commit goes
in reconciler/COMMIT, which `reconcile --version` prints. Built with `python -m build
--no-isolation`: the build backend is the virtualenv's (setuptools), so no network is needed.

    .venv/bin/python tools/build-dist.py [OUTDIR]     (default: dist)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(outdir: Path) -> list[Path]:
    """Build into `outdir`; return the files made (a wheel and an sdist)."""
    files = (
        subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reconciler-dist-") as scratch:
        tree = Path(scratch) / "src"
        for name in filter(None, files):
            source = ROOT / name
            if source.is_file() and not source.is_symlink():
                target = tree / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        (tree / "reconciler" / "COMMIT").write_text(commit + "\n")
        before = set(outdir.iterdir())
        subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(tree)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return sorted(set(outdir.iterdir()) - before)


if __name__ == "__main__":
    for path in build(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")):
        print(path)
