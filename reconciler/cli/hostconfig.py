"""The host's configuration file: the settings a host keeps for every command, so that the
commands of the README work as typed (`reconcile plan manifests/`, `reconcile status`).

    # /etc/reconciler/config.yaml ($RECONCILER_CONFIG; an empty value: no file)
    state-dir: /var/lib/reconciler
    image-dir: [/srv/images]          # added to --image-dir and $RECONCILER_IMAGE_DIRS
    driver: libvirt                   # libvirt | qmp
    connect: qemu:///system           # a libvirt URI
    host: hv-a                        # this host's slice (run, --once, plan)
    ca-bundle: /etc/ssl/private-ca.pem
    metrics-address: 127.0.0.1:9177  # the daemon's /metrics, /healthz and /readyz
    catalogue:                        # images by name: over the shipped catalogue
      debian-12: {url: http://mirror.internal/debian/bookworm/latest/}

The keys are the long options'. A flag wins over the environment ($RECONCILER_STATE_DIR,
$RECONCILER_DRIVER, $LIBVIRT_DEFAULT_URI), the environment over the file; image directories
add up. The file is the host's, never the manifests': it is read only from its fixed place
(or $RECONCILER_CONFIG), never from a manifest tree, since a pusher must not widen what the
host allows; one that other users may write is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError
from reconciler.fileops import InputFileRefused, read_input_file

ENV_CONFIG = "RECONCILER_CONFIG"
DEFAULT_CONFIG = Path("/etc/reconciler/config.yaml")
MAX_CONFIG_BYTES = 64 * 1024
_STRINGS = ("state-dir", "driver", "connect", "host", "ca-bundle", "metrics-address")
_KEYS = (*_STRINGS, "image-dir", "catalogue")


def config_path() -> Path | None:
    """The configuration file in force: $RECONCILER_CONFIG (empty: none), else the default
    one when it exists."""
    configured = os.environ.get(ENV_CONFIG)
    if configured is not None:
        return Path(configured) if configured else None
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def read_config(path: Path) -> dict[str, Any]:
    """The settings in `path`, checked (ConfigError names the file and what is wrong)."""
    import yaml

    try:
        if os.stat(path).st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                f"{path}: other users may write it, so it is not used (chmod go-w {path})"
            )
        text = read_input_file(path, None, MAX_CONFIG_BYTES)
    except OSError as err:
        raise ConfigError(f"configuration file {path}: {err.strerror or err}") from err
    except InputFileRefused as err:
        raise ConfigError(f"configuration file {path}: {err}") from err
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings ({', '.join(_KEYS)})")
    unknown = sorted(str(key) for key in data if key not in _KEYS)
    if unknown:
        known = ", ".join(_KEYS)
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} (known: {known})")
    for key in _STRINGS:
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{path}: {key} must be a string")
    dirs = data.get("image-dir", [])
    if isinstance(dirs, str):
        dirs = [dirs]
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise ConfigError(f"{path}: image-dir must be a directory or a list of directories")
    if data.get("driver", "libvirt") not in ("libvirt", "qmp"):
        raise ConfigError(f"{path}: driver must be libvirt or qmp")
    if "catalogue" in data:  # checked now, like every setting (images.catalogue says how)
        from reconciler.images.catalogue import catalogue_in_force

        catalogue_in_force(data["catalogue"], str(path))
    return {**data, "image-dir": dirs}
