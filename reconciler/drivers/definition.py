"""A Machine as JSON: the QMP driver's persistent (and live) definitions, in the model's own
terms rather than libvirt's XML. `{"version": 1, "machine": {...}}`, every field by its name
(model.codec, `full`: defaults written too, so that a file says everything), enums by value,
tuples as lists; reading checks every value's type against the Machine's.

Definitions written as libvirt XML by earlier versions are read once and written anew (see
QmpDriver._definition).
"""

from __future__ import annotations

import functools
import json

from reconciler.model.codec import CodecError, decode, encode
from reconciler.model.machine import Machine

DEFINITION_VERSION = 1


class DefinitionError(Exception):
    """A definition file that is not a Machine (never leaves the driver)."""


def machine_to_json(machine: Machine) -> str:
    return json.dumps(
        {"version": DEFINITION_VERSION, "machine": encode(machine, full=True)}, indent=1
    )


@functools.lru_cache(maxsize=16384)
def machine_from_json(text: str) -> Machine:
    """The Machine a definition file holds (kept by its text: a pass reads every instance's
    definition, and most have not changed since the last)."""
    try:
        document = json.loads(text)
    except ValueError as err:
        raise DefinitionError(f"not JSON: {err}") from err
    if not isinstance(document, dict) or document.get("version") != DEFINITION_VERSION:
        raise DefinitionError(f"not a definition of version {DEFINITION_VERSION}")
    try:
        return decode(Machine, document.get("machine"), "machine")
    except CodecError as err:
        raise DefinitionError(str(err)) from err
