"""The config drive's files (cloud-init NoCloud): meta-data, user-data and network-config,
from an instance's guest configuration. Pure: the same inputs give the same bytes.

user-data is the manifest's, with the SSH keys and injected files merged in: into the
cloud-config itself when user-data is one (or when there is none), or as a cloud-config part
beside the script in a MIME multi-part message when user-data is a script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from reconciler.model.desired import GuestConfig

CLOUD_CONFIG_HEADER = "#cloud-config\n"
# a fixed boundary, so that the bytes are reproducible: the parts are base64, whose lines never
# start with "--"
MIME_BOUNDARY = "==reconciler-config-drive-part=="


@dataclass(frozen=True, slots=True)
class DriveContent:
    """The files of a config drive, by name, and a digest of them all."""

    files: tuple[tuple[str, bytes], ...]

    @property
    def digest(self) -> str:
        hasher = hashlib.sha256()
        for name, data in self.files:
            hasher.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return hasher.hexdigest()

    def file(self, name: str) -> bytes | None:
        return dict(self.files).get(name)

    def describe(self) -> str:
        """The files with their digests (never their contents: user-data holds secrets)."""
        return ", ".join(
            f"{name} sha256:{hashlib.sha256(data).hexdigest()[:12]}" for name, data in self.files
        )


def drive_content(config: GuestConfig, name: str, instance_id: str) -> DriveContent:
    """What the config drive of instance `name` holds."""
    hostname = config.hostname or name
    meta = {"instance-id": instance_id, "local-hostname": hostname}
    files = [
        ("meta-data", _dump(meta).encode()),
        ("user-data", user_data(config)),
    ]
    if config.network_config is not None:
        files.append(("network-config", config.network_config))
    return DriveContent(tuple(sorted(files)))


def user_data(config: GuestConfig) -> bytes:
    """The user-data the guest gets (see the module's docstring)."""
    extra = _cloud_config_additions(config)
    given = config.user_data
    if given is None:
        return (
            (CLOUD_CONFIG_HEADER + _dump(extra)).encode() if extra else CLOUD_CONFIG_HEADER.encode()
        )
    if not extra:
        return given
    text = given.decode()
    if text.startswith("#cloud-config"):
        import yaml  # here: only a cloud-config that gets additions is read

        merged: dict[str, Any] = yaml.safe_load(text) or {}
        for key, values in extra.items():
            existing = merged.get(key)
            merged[key] = (list(existing) if isinstance(existing, list) else []) + values
        return (CLOUD_CONFIG_HEADER + _dump(merged)).encode()
    return _multipart(
        [
            ("text/cloud-config", "part-001.cfg", (CLOUD_CONFIG_HEADER + _dump(extra)).encode()),
            ("text/x-shellscript", "part-002.sh", given),
        ]
    )


def _cloud_config_additions(config: GuestConfig) -> dict[str, list[Any]]:
    extra: dict[str, list[Any]] = {}
    if config.authorized_keys:
        extra["ssh_authorized_keys"] = list(config.authorized_keys)
    if config.files:
        extra["write_files"] = [
            {
                "path": file.path,
                "encoding": "b64",
                "content": base64.b64encode(file.content).decode(),
                **({"permissions": file.permissions} if file.permissions else {}),
                **({"owner": file.owner} if file.owner else {}),
            }
            for file in config.files
        ]
    return extra


def _multipart(parts: list[tuple[str, str, bytes]]) -> bytes:
    """A MIME multi-part message as cloud-init reads it (each part base64, so any bytes go)."""
    lines = [
        'Content-Type: multipart/mixed; boundary="' + MIME_BOUNDARY + '"',
        "MIME-Version: 1.0",
        "",
    ]
    for content_type, filename, data in parts:
        lines += [
            f"--{MIME_BOUNDARY}",
            f'Content-Type: {content_type}; charset="utf-8"',
            "MIME-Version: 1.0",
            "Content-Transfer-Encoding: base64",
            f'Content-Disposition: attachment; filename="{filename}"',
            "",
            *_wrap(base64.b64encode(data).decode()),
        ]
    lines += [f"--{MIME_BOUNDARY}--", ""]
    return "\n".join(lines).encode()


def _wrap(text: str, width: int = 76) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def _dump(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)


def login_user(config: GuestConfig) -> str | None:
    """The user to log into the guest as, from its cloud-config: `user` (a name, or a mapping
    with one), else the first named entry of `users` that is not `default`, else
    `system_info.default_user.name`. None when it names none (the image's own default user,
    which only the image knows: `reconcile ssh --user`)."""
    data = config.user_data
    if data is None or not data.startswith(CLOUD_CONFIG_HEADER.encode()):
        return None
    import yaml  # here: most instances have no cloud-config, and a no-op pass no YAML

    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError:
        return None
    if not isinstance(document, dict):
        return None
    candidates: list[Any] = [document.get("user")]
    users = document.get("users")
    if isinstance(users, list):
        candidates += users
    system = document.get("system_info")
    if isinstance(system, dict) and isinstance(system.get("default_user"), dict):
        candidates.append(system["default_user"])
    for candidate in candidates:
        name = candidate.get("name") if isinstance(candidate, dict) else candidate
        if isinstance(name, str) and name != "default" and _USER_NAME.match(name):
            return name
    return None


_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
