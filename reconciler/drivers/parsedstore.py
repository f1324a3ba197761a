"""Machines parsed from libvirt domain XML, kept in the state directory between processes by a
digest of the text, so that a pass over domains whose definitions have not changed parses no
XML (libvirt still formats each definition: the text is what the digest is of).

The file (STATE/parsed-definitions.json) is JSON through model.codec, never pickle: versioned,
keyed by this build of the parser and the model (their files' stamps), read as a regular file
only, bounded, and ignored whole when anything about it is wrong; an entry that does not decode
to a Machine is parsed again. It keeps the definitions this process parsed or used, the most
recently used first, up to MAX_KEPT (and, after each listing, a few more than it used); it is
written when the driver closes, atomically, and only when it would say something new.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from reconciler.drivers.libvirt_xml import parse_domain_xml
from reconciler.fileops import build_stamp, read_kept_json, write_atomically
from reconciler.model.codec import CodecError, decode, encode
from reconciler.model.machine import Machine

VERSION = 1
MAX_KEPT = 65536
MAX_STORE_BYTES = 256 * 1024 * 1024
_PACKAGE = Path(__file__).resolve().parent.parent
_BUILD_FILES = ("drivers/libvirt_xml.py", "model/machine.py", "model/codec.py")


class ParsedDefinitions:
    """parse_domain_xml, remembered across processes in `path` (None: in this one only)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stored: dict[str, Any] = _read(path) if path is not None else {}
        self._used: collections.OrderedDict[str, Machine] = collections.OrderedDict()
        self._changed = False
        self._listed = False  # a listing saw every domain: what it did not use is stale

    def parse(self, xml: str) -> Machine:
        """The Machine `xml` describes (DomainXmlError as parse_domain_xml raises it)."""
        key = hashlib.sha256(xml.encode()).hexdigest()
        with self._lock:
            machine = self._used.get(key)
            if machine is not None:
                self._used.move_to_end(key)
                return machine
            raw = self._stored.get(key)
        machine = _decoded(raw)
        parsed = machine is None
        if machine is None:
            machine = parse_domain_xml(xml)
        with self._lock:
            self._used[key] = machine
            self._changed |= parsed
            while len(self._used) > MAX_KEPT:
                self._used.popitem(last=False)
        return machine

    def trim(self, listed: int) -> None:
        """Keep the most recently used definitions only, a few more than a listing of
        `listed` domains uses (a daemon's redefinitions would otherwise pile up)."""
        with self._lock:
            self._listed = True
            while len(self._used) > 2 * listed + 64:
                self._used.popitem(last=False)

    def save(self) -> None:
        """Write what this process used, when that is not what the file holds already (an
        error is logged by the caller's choice: this is a cache)."""
        if self._path is None:
            return
        with self._lock:
            if not self._changed and (not self._listed or set(self._used) == set(self._stored)):
                return
            machines = {key: encode(m) for key, m in reversed(self._used.items())}
            if not self._listed:  # a lookup or two: what the file kept still holds
                kept = [(k, v) for k, v in self._stored.items() if k not in machines]
                machines.update(kept[: max(0, MAX_KEPT - len(machines))])
            self._changed = False
        data = {"version": VERSION, "context": context_key(), "machines": machines}
        write_atomically(self._path, json.dumps(data, separators=(",", ":")).encode())
        with self._lock:
            self._stored = machines


def context_key() -> str:
    """This build of the parser and the model: their files' stamps."""
    return build_stamp(_PACKAGE / name for name in _BUILD_FILES)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_kept_json(path, MAX_STORE_BYTES)
    except (OSError, ValueError):
        return {}
    if type(data) is not dict or data.get("version") != VERSION:
        return {}
    if data.get("context") != context_key() or type(data.get("machines")) is not dict:
        return {}
    machines: dict[str, Any] = data["machines"]
    return machines


def _decoded(raw: Any) -> Machine | None:
    if raw is None:
        return None
    try:
        return decode(Machine, raw)
    except CodecError:
        return None
