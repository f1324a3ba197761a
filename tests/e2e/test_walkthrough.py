"""The README's offline GitOps walk-through, run as it is written there: the block between its
`walk-through` markers is extracted from README.md and run by bash, so that the README cannot
drift from what works. Its own state directory, configuration file, HOME and TMPDIR."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import private_state_dir

ROOT = Path(__file__).resolve().parents[2]


def walkthrough_script() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- walk-through: begin[^\n]*-->\n```sh\n(.*?)```\n<!-- walk-through: end -->",
        text,
        re.DOTALL,
    )
    assert block is not None, "the README's walk-through block is missing"
    return block.group(1)


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"  # what make demo writes: the examples' image directory
    config.write_text(f"image-dir: [{ROOT / 'build' / 'images'}]\n")
    config.chmod(0o644)
    home = tmp_path / "home"
    home.mkdir()
    with private_state_dir("rcg-") as state:
        environment = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "RECONCILER_CONFIG": str(config),
            "RECONCILER_STATE_DIR": str(state),
            "HOME": str(home),
            "TMPDIR": str(tmp_path),
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walkthrough_script()],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "valid: 1 file(s), 1 valid instance(s)" in done.stdout
        assert "walk-web: 4 step(s), disruption none" in done.stdout
        assert "walk-web: started domain" in done.stdout
        status = done.stdout.split("no daemon runs on", 1)[1]  # the last command's table
        (row,) = [line for line in status.splitlines() if line.split()[:1] == ["walk-web"]]
        assert row.split()[1:3] == ["running", "running"], row
