"""The config drive as an ISO 9660 image (volume label `cidata`, Rock Ridge and Joliet, so the
guest sees cloud-init's long lowercase names), written with pycdlib.

The bytes are reproducible: files go in sorted by name, and every timestamp pycdlib would
take from the clock is a fixed one (pycdlib has no option for it, so its modules' view of
`time` is pinned while an image is built).
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
import types
from collections.abc import Iterator

from reconciler.planning.cloudinit import DriveContent

VOLUME_LABEL = "cidata"
FIXED_TIME = 946684800.0  # 2000-01-01T00:00:00Z
_clock_lock = threading.Lock()


def render_iso(content: DriveContent) -> bytes:
    """The ISO image holding `content`'s files at its root (pycdlib is imported here: a pass
    that makes no config drive does without it)."""
    import pycdlib
    import pycdlib.dates
    import pycdlib.headervd
    import pycdlib.pycdlib
    import pycdlib.utils

    iso = pycdlib.PyCdlib()
    modules = (pycdlib.dates, pycdlib.headervd, pycdlib.pycdlib, pycdlib.utils)
    with _fixed_clock(modules):
        iso.new(interchange_level=1, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
        for index, (name, data) in enumerate(content.files):
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"/{_short_name(name, index)};1",
                rr_name=name,
                joliet_path=f"/{name}",
            )
        output = io.BytesIO()
        iso.write_fp(output)
        iso.close()
    return output.getvalue()


def _short_name(name: str, index: int) -> str:
    """An ISO 9660 level-1 name (8.3, upper case) that is unique by position."""
    stem = re.sub(r"[^A-Z0-9]", "", name.upper())[:6] or "FILE"
    return f"{stem}{index:02d}."


@contextlib.contextmanager
def _fixed_clock(modules: tuple[types.ModuleType, ...]) -> Iterator[None]:
    """pycdlib's `modules` see a clock stopped at FIXED_TIME, in UTC."""
    fixed = types.SimpleNamespace(
        **{k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    )
    fixed.time = lambda: FIXED_TIME
    fixed.localtime = lambda seconds=None: time.gmtime(FIXED_TIME if seconds is None else seconds)
    with _clock_lock:
        saved = [module.time for module in modules]
        for module in modules:
            module.time = fixed  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for module, original in zip(modules, saved, strict=True):
                module.time = original  # type: ignore[attr-defined]
