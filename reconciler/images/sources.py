"""Where base images may come from: the scheme allowlist and the allowed local directories.

A local source (a path or a file:// URL) is resolved with every symlink followed and must
then lie inside one of the configured image directories; anything else is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from reconciler.errors import InstanceError

ALLOWED_SCHEMES = ("http", "https")
ENV_IMAGE_DIRS = "RECONCILER_IMAGE_DIRS"


class SourceRefused(InstanceError):
    """A source outside what configuration allows."""


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """Directories that local sources must resolve into (after following symlinks)."""

    image_dirs: tuple[Path, ...] = field(default=())

    @classmethod
    def from_settings(cls, dirs: Sequence[Path], manifest_root: Path) -> SourcePolicy:
        """The manifest directory itself, the --image-dir options and $RECONCILER_IMAGE_DIRS."""
        root = manifest_root if manifest_root.is_dir() else manifest_root.parent
        extra = [Path(p) for p in os.environ.get(ENV_IMAGE_DIRS, "").split(":") if p]
        return cls(tuple(Path(os.path.realpath(d)) for d in (root, *dirs, *extra)))

    def resolve_local(self, source: Path) -> Path:
        """`source` with symlinks resolved, if it lies inside an allowed directory."""
        real = Path(os.path.realpath(source))
        for directory in self.image_dirs:
            if real == directory or real.is_relative_to(directory):
                return real
        allowed = ", ".join(str(d) for d in self.image_dirs) or "none configured"
        shown = f"{source} (which resolves to {real})" if real != source else str(source)
        raise SourceRefused(
            f"image source {shown} is outside the allowed image directories ({allowed}); "
            "allow its directory with --image-dir, or under image-dir in the host's "
            "configuration file (/etc/reconciler/config.yaml)"
        )


def check_url(url: str) -> None:
    """Refuse URLs whose scheme is not allowlisted or that carry no host."""
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES or not parts.hostname:
        raise SourceRefused(f"image URL {url!r} is not an http(s) URL with a host")
