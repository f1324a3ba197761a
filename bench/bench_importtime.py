"""What a no-op `reconcile --once` imports, against another tree of the project.

Ten stopped instances under the QMP driver (no libvirt daemon needed), a state directory per
tree, bytecode caches written as installed programs have them (a set-up pass and a warm pass
first). Then --rounds rounds, the trees alternating, each round running the pass once plainly
(its wall time) and once under `python -X importtime` (the modules it imports); then, in a
process of its own, importing just those modules, one after another (-X importtime's own sum
is not used: the pass imports in two threads at once, whose times it counts against each
other). Reports the medians, and what only one tree imports.

    git worktree add /tmp/before REV
    .venv/bin/python bench/bench_importtime.py --before /tmp/before [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))
from tests.helpers import manifest_document, write_base_image  # noqa: E402

PYTHON = sys.executable
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="another tree (a worktree)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": PROJECT}
    root = Path(tempfile.mkdtemp(prefix="rcbi-", dir="/tmp"))
    try:
        base, sha = write_base_image(root)
        manifests = root / "m"
        manifests.mkdir()
        for index in range(10):
            name = f"rcbi-{index:02d}"
            document = manifest_document(
                name, base, sha, state="stopped", accelerator="tcg", networks=[]
            )
            (manifests / f"{name}.yaml").write_text(yaml.safe_dump(document))

        def command(side: str, *extra: str) -> list[str]:
            return [
                PYTHON, *extra, "-m", "reconciler", "--once", str(manifests),
                "--state-dir", str(root / side), "--driver", "qmp", "--image-dir", str(root),
            ]  # fmt: skip

        def run(side: str, *extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                command(side, *extra), cwd=trees[side], env=CHILD_ENV,
                capture_output=True, text=True, check=True,
            )  # fmt: skip

        for side in trees:
            run(side)  # set-up: defines the ten
            run(side)  # a no-op that fills every cache
        wall: dict[str, list[float]] = {side: [] for side in trees}
        imports: dict[str, list[float]] = {side: [] for side in trees}
        modules: dict[str, set[str]] = {}
        for _round in range(args.rounds):
            for side in trees:
                started = time.perf_counter()
                run(side)
                wall[side].append(time.perf_counter() - started)
                lines = run(side, "-X", "importtime").stderr.splitlines()
                modules[side] = {m.group(3) for line in lines if (m := IMPORT_LINE.match(line))}
                imports[side].append(import_seconds(trees[side], modules[side]))
        for side, tree in trees.items():
            print(
                f"{side:6s} ({tree}): no-op --once {statistics.median(wall[side]) * 1000:.0f} ms; "
                f"its {len(modules[side])} modules imported in "
                f"{statistics.median(imports[side]) * 1000:.0f} ms"
            )
        for one, other in (("before", "after"), ("after", "before")):
            only = sorted(modules[one] - modules[other])
            shown = [m for m in only if m.startswith("reconciler") or "." not in m]
            print(f"imported {one} only: {len(only)} modules; {' '.join(shown)}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


IMPORT_ALL = """
import importlib, sys, time
names = sys.argv[1:]
started = time.perf_counter()
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        pass
print(time.perf_counter() - started)
"""


def import_seconds(tree: Path, modules: set[str]) -> float:
    """How long importing `modules` takes, from `tree`, in a process that imports nothing else
    first (their names sorted: a parent before its children)."""
    done = subprocess.run(
        [PYTHON, "-c", IMPORT_ALL, *sorted(modules)], cwd=tree, env=CHILD_ENV,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(done.stdout)


if __name__ == "__main__":
    sys.exit(main())
