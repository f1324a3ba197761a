"""The caches a process keeps in the state directory: read only as bounded, regular JSON, and
keyed by the stamps of the source files that made them (fileops.read_kept_json, build_stamp)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.fileops import build_stamp, read_kept_json


def test_a_kept_file_is_read_only_when_it_is_regular_json_within_its_bound(tmp_path: Path) -> None:
    kept = tmp_path / "kept.json"
    kept.write_text('{"version": 1}')
    assert read_kept_json(kept, 100) == {"version": 1}
    assert read_kept_json(kept, 5) is None  # larger than its bound

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert read_kept_json(fifo, 100) is None  # never waited on

    link = tmp_path / "link.json"
    link.symlink_to(kept)
    with pytest.raises(OSError):  # never followed
        read_kept_json(link, 100)
    with pytest.raises(OSError):
        read_kept_json(tmp_path / "none.json", 100)

    kept.write_text("[" * 100_000)
    with pytest.raises(ValueError):  # truncated, or nested beyond the parser
        read_kept_json(kept, 1_000_000)


def test_a_build_stamp_changes_with_any_source_file_or_extra_text(tmp_path: Path) -> None:
    sources = [tmp_path / "a.py", tmp_path / "b.py"]
    for source in sources:
        source.write_text("x = 1\n")
    stamp = build_stamp(sources, "catalogue")
    assert build_stamp(sources, "catalogue") == stamp
    assert build_stamp(sources, "another") != stamp

    os.utime(sources[1], ns=(1, 1))  # an edit of one file of the tree
    assert build_stamp(sources, "catalogue") != stamp
