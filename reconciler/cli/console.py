"""`reconcile console NAME [-f]`: an instance's serial console log, printed (and followed).

It only reads STATE/instances/NAME/console.log, so it works while a daemon holds the state
directory, and needs no libvirt connection.
"""

from __future__ import annotations

import os
import re
import time
from typing import BinaryIO, TextIO

from reconciler.cli.options import Exit, Options
from reconciler.errors import ConfigError
from reconciler.manifests.loader import instance_schema

FOLLOW_POLL_SECONDS = 0.2
CHUNK = 64 * 1024


def run_console(options: Options, out: TextIO) -> int:
    """Print the console log of instance `options.name`; with `options.follow`, keep printing
    what the guest writes until interrupted (a log replaced by a restart is followed anew)."""
    name = options.name or ""
    name_pattern = instance_schema()["properties"]["metadata"]["properties"]["name"]["pattern"]
    if not re.search(name_pattern, name):
        raise ConfigError(f"{name!r} is not an instance name")
    state = options.state
    path = state.instance(name).console_log
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise ConfigError(f"no instance named {name} in {state.root}") from None
        raise ConfigError(
            f"instance {name} has no console log in {state.root} (it has not been started yet)"
        ) from None
    sink: BinaryIO | None = getattr(out, "buffer", None)
    try:
        _copy(stream, out, sink)
        while options.follow:
            if not _copy(stream, out, sink):
                if _replaced(stream, path):
                    stream.close()
                    stream = path.open("rb")
                    continue
                time.sleep(FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
    return Exit.OK


def _copy(stream: BinaryIO, out: TextIO, sink: BinaryIO | None) -> bool:
    """Copy what `stream` has now to the output; whether there was anything."""
    copied = False
    while chunk := stream.read(CHUNK):
        copied = True
        if sink is not None:
            out.flush()
            sink.write(chunk)
            sink.flush()
        else:
            out.write(chunk.decode(errors="replace"))
            out.flush()
    return copied


def _replaced(stream: BinaryIO, path: os.PathLike[str]) -> bool:
    """Whether the log at `path` is another file than the one read, or was truncated."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(stream.fileno())
    return (current.st_ino, current.st_dev) != (opened.st_ino, opened.st_dev) or (
        current.st_size < stream.tell()
    )
