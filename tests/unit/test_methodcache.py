"""The dataclass method cache (reconciler.methodcache): a second process compiles none of the
methods the first one did, the methods behave the same, and a cache file that anyone else
could have written, or that is not one, is ignored (its code is never run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import dataclasses, json, sys
import reconciler.cli.main
from reconciler import methodcache
from reconciler.model.desired import PortForward
forward = PortForward(2222, 22)
try:
    forward.host = 1
    frozen = False
except dataclasses.FrozenInstanceError:
    frozen = True
print(json.dumps({
    "compiled": methodcache.compiled,
    "path": str(methodcache.cache_path()),
    "same": forward == PortForward(2222, 22) and hash(forward) == hash(PortForward(2222, 22)),
    "repr": repr(forward),
    "frozen": frozen,
}))
"""


def probe(prefix: Path, write: bool = True) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)  # not the source tree's __pycache__
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """A prefix whose cache a first process wrote: the prefix, the cache file, what it said."""
    prefix = tmp_path_factory.mktemp("pycache")
    first = probe(prefix)
    return prefix, Path(str(first["path"])), first


def test_a_second_process_compiles_no_dataclass_method(
    warm: tuple[Path, Path, dict[str, object]],
) -> None:
    prefix, cache, first = warm
    assert cache.is_relative_to(prefix) and cache.is_file()
    assert isinstance(first["compiled"], int) and first["compiled"] > 100
    second = probe(prefix)
    assert second["compiled"] == 0
    for result in (first, second):
        assert result["same"] is True and result["frozen"] is True
        assert str(result["repr"]).startswith("PortForward(host=2222, guest=22, protocol=")


@pytest.mark.parametrize("spoil", ["garbage", "other-writable", "other-owner", "symlink"])
def test_a_cache_file_anyone_else_could_have_written_or_not_one_is_ignored(
    warm: tuple[Path, Path, dict[str, object]], tmp_path: Path, spoil: str
) -> None:
    _prefix, good, _first = warm
    prefix = tmp_path / "pycache"
    cache = prefix / good.relative_to(_prefix)
    cache.parent.mkdir(parents=True)
    if spoil == "symlink":
        cache.symlink_to(good)
    else:
        shutil.copyfile(good, cache)
    if spoil == "garbage":
        cache.write_bytes(cache.read_bytes()[:100] + b"\x00" * 100)
    elif spoil == "other-writable":
        cache.chmod(0o666)
    elif spoil == "other-owner":
        os.chown(cache, 65534, 65534)
    result = probe(prefix, write=False)
    assert isinstance(result["compiled"], int) and result["compiled"] > 100  # none of it used
    assert result["same"] is True and result["frozen"] is True


def test_no_cache_is_written_where_bytecode_is_not(tmp_path: Path) -> None:
    result = probe(tmp_path, write=False)
    assert result["compiled"] and not Path(str(result["path"])).exists()
