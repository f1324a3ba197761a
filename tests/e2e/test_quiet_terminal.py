"""Nothing libvirt says reaches the terminal: a whole `--once`, the first open of a new
embedded root included, with libvirt told to log everything to stderr, writes only the
reconciler's own lines there; libvirt's go to STATE/libvirt.log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import private_state_dir
from tests.helpers import unique_name, write_base_image, write_manifest

# libvirt's log line: "2026-12-06 13:15:22.948+0000: 18527: info : libvirt version: ..."
LIBVIRT_LINE = re.compile(r"\d+: (debug|info|warning|error) : ")


def test_a_pass_writes_no_libvirt_line_to_the_terminal(tmp_path: Path) -> None:
    base, sha = write_base_image(tmp_path)
    manifests = tmp_path / "m"
    manifests.mkdir()
    name = unique_name()
    write_manifest(manifests, name, base, sha)
    (manifests / "broken.yaml").write_text("kind: [\n")  # an error of ours, on stderr
    noisy = {**os.environ, "LIBVIRT_LOG_OUTPUTS": "1:stderr", "LIBVIRT_LOG_FILTERS": "1:*"}
    with private_state_dir("rcn-") as state:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "--once", str(manifests),
             "--state-dir", str(state), "--image-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300, env=noisy, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr  # the broken file
        assert f"{name}: started domain" in done.stdout
        assert not LIBVIRT_LINE.search(done.stdout + done.stderr), done.stderr[:2000]
        assert "broken.yaml:2:1: /: malformed YAML" in done.stderr  # ours still shows
        log = (state / "libvirt.log").read_text(errors="replace")
        assert "info : libvirt version" in log and " debug : " in log
