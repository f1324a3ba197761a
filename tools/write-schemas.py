#!/usr/bin/env python3
"""Write the schemas of the Profile and InstanceSet kinds beside the instance schema (for
editors: `# yaml-language-server: $schema=.../profile.schema.json`), from the code that
checks those documents. tests/unit/test_validate.py checks that the shipped ones are current.

    .venv/bin/python tools/write-schemas.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from reconciler.manifests.loader import kind_schemas  # noqa: E402


def main() -> None:
    directory = PROJECT / "reconciler" / "manifests" / "schemas"
    for name, schema in kind_schemas().items():
        (directory / name).write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {directory / name}")


if __name__ == "__main__":
    main()
