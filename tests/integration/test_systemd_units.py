"""The systemd units in contrib/systemd, as `systemd-analyze verify` reads them: every
directive known, every value parsed, every command they run present (the reconciler's
`reconcile` as a clone installs it, `/bin/kill` for a reload). systemd itself need not run:
the set-up installs the package for its analyser, so a host without it fails here instead
of skipping."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))
INSTALLED = "/opt/reconciler/.venv/bin/reconcile"  # where the units expect the clone's entry point


def test_every_shipped_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyser = shutil.which("systemd-analyze")
    assert analyser is not None, "systemd-analyze is missing: tools/setup-host.sh installs it"
    assert [unit.name for unit in UNITS] == [
        "reconciler-git.service", "reconciler-guests.service", "reconciler.service",
    ]  # fmt: skip
    for unit in UNITS:
        text = unit.read_text()
        assert INSTALLED in text, unit.name
        # the unit as installed from this clone: its entry point where the clone has it
        (tmp_path / unit.name).write_text(
            text.replace(INSTALLED, str(ROOT / ".venv/bin/reconcile"))
        )
    checked = subprocess.run(
        [analyser, "verify", "--man=no", *(unit.name for unit in UNITS)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    # verify exits 0 on an unknown directive or an unparsable value too: it only says so
    assert checked.stdout + checked.stderr == ""


def test_the_analyser_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd directive and value are reported."""
    analyser = shutil.which("systemd-analyze")
    assert analyser is not None, "systemd-analyze is missing: tools/setup-host.sh installs it"
    broken = (ROOT / "contrib/systemd/reconciler.service").read_text()
    broken = broken.replace(INSTALLED, "/bin/true").replace("Type=notify", "Type=notyfy")
    (tmp_path / "broken.service").write_text(broken + "\n[Service]\nRestartSecs=5s\n")
    checked = subprocess.run(
        [analyser, "verify", "--man=no", "broken.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "notyfy" in checked.stderr and "RestartSecs" in checked.stderr
