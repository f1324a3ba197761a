#!/usr/bin/env python3
"""Print what an HTTP URL answers, retrying (up to a deadline) while nothing listens yet.

Usage: tools/reach.py URL [SECONDS]
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    deadline = time.monotonic() + (float(argv[2]) if len(argv) == 3 else 30.0)
    while True:
        try:
            with urllib.request.urlopen(argv[1], timeout=10) as answer:
                print(answer.read().decode(errors="replace").rstrip())
                return 0
        except (urllib.error.URLError, OSError) as err:
            if time.monotonic() > deadline:
                print(f"(no answer from {argv[1]}: {err})")
                return 1
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
