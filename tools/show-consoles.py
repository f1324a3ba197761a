#!/usr/bin/env python3
"""Print the serial console logs of running instances whose names start with a prefix,
waiting (up to a deadline) for each guest to report that it is ready.

    tools/show-consoles.py STATE_DIR PREFIX [SECONDS]
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

# the test guest's last boot marker, or the boot-sector stand-in's only line
DONE = re.compile(r"reconciler-guest: ready|reconciler-bootsector: booted")


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    instances = Path(argv[1]) / "instances"
    deadline = time.monotonic() + (float(argv[3]) if len(argv) == 4 else 30.0)
    logs = sorted(instances.glob(f"{argv[2]}*/console.log"))
    if not logs:
        print(f"no console logs under {instances} (no instance started yet?)")
    for log in logs:
        while time.monotonic() < deadline and not DONE.search(log.read_text(errors="replace")):
            time.sleep(0.2)
        print(f"== {log}")
        print(log.read_text(errors="replace").replace("\r\n", "\n").rstrip() or "(empty)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
