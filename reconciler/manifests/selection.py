"""Which instances of a manifest tree one reconciler manages: its host's slice. Pure.

An instance naming a host (`spec.host`) belongs to the reconciler started with that `--host`
and to no other; one naming none belongs to reconcilers started without `--host`. A
`--selector` (labels, `key=value,...`) narrows either further. Instances outside the slice
are ignored: not planned, not checked against this host's libvirt, never pruned as orphans
of it. Manifest errors stay those of the whole tree, so that the prune guard still sees a
broken checkout.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from reconciler.errors import ConfigError
from reconciler.manifests.loader import LoadResult
from reconciler.model.desired import InstanceSpec

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Selection:
    host: str | None = None
    labels: tuple[tuple[str, str], ...] = ()  # every one must match

    @classmethod
    def parse(cls, host: str | None, selector: str | None) -> Selection:
        if host is not None and not _HOST.match(host):
            raise ConfigError(f"--host {host!r} is not a host name")
        labels: list[tuple[str, str]] = []
        for term in (selector or "").split(","):
            if not term.strip():
                continue
            key, equals, value = term.partition("=")
            key, value = key.strip(), value.strip()
            if not equals or not _LABEL.match(key) or len(value) > 63:
                raise ConfigError(
                    f"--selector term {term.strip()!r} is not key=value (a label key, then "
                    "a value of at most 63 characters)"
                )
            labels.append((key, value))
        return cls(host, tuple(labels))

    @property
    def everything(self) -> bool:
        return self.host is None and not self.labels

    def selects(self, spec: InstanceSpec) -> bool:
        if spec.host != self.host:
            return False
        have = dict(spec.labels)
        return all(have.get(key) == value for key, value in self.labels)

    def describe(self) -> str:
        parts = [f"host {self.host}" if self.host else "no host"]
        parts += [f"{key}={value}" for key, value in self.labels]
        return ", ".join(parts)


def select(load: LoadResult, selection: Selection) -> tuple[LoadResult, frozenset[str]]:
    """`load` cut to the instances `selection` takes, and the names it leaves to others."""
    taken = tuple(spec for spec in load.instances if selection.selects(spec))
    ignored = frozenset(spec.name for spec in load.instances) - {s.name for s in taken}
    return dataclasses.replace(load, instances=taken), ignored
