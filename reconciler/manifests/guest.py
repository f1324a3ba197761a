"""The guest-facing parts of a manifest: config drive inputs (hostname, cloud-init user-data
and network-config, SSH keys, injected files) and network interfaces, read from a
schema-valid `spec` into GuestConfig and NetworkSpec values. Pure apart from reading the
files a manifest names, which must lie inside the manifest directory.

Every problem is reported through `fail(pointer, message)`, so it is located like any other
manifest error.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reconciler.fileops import InputFileRefused, read_input_file
from reconciler.model.desired import (
    DEFAULT_NETWORKS,
    GuestConfig,
    InjectedFile,
    NetworkSpec,
    NicModel,
    NicType,
    PortForward,
    PortProtocol,
)
from reconciler.sizes import format_size

# one file on the config drive, and the drive's whole content (cloud-init reads it into memory)
MAX_GUEST_FILE_BYTES = 16 * 1024**2
MAX_GUEST_CONFIG_BYTES = 32 * 1024**2

Fail = Callable[[str, str], None]


def guest_config(
    spec: dict[str, Any],
    manifest: Path | Callable[[str], Path],
    confine: Path,
    fail: Fail,
    named: list[Path] | None = None,
) -> GuestConfig:
    """The config drive's inputs from `spec`, with the files it names read (inside `confine`;
    each one's path is added to `named`, whether it could be read or not). A file's name is
    relative to the manifest that wrote it: `manifest` is that file, or says it by pointer
    (a field a profile gave)."""
    origin = manifest if callable(manifest) else (lambda _pointer: manifest)
    cloud = spec.get("cloudInit", {})
    user_data: bytes | None = None
    if "userData" in cloud:
        user_data = cloud["userData"].encode()
    elif "userDataFile" in cloud:
        pointer = "/spec/cloudInit/userDataFile"
        user_data = read_guest_file(
            origin(pointer), confine, cloud["userDataFile"], pointer, fail, named
        )
    pointer = (
        "/spec/cloudInit/userDataFile" if "userDataFile" in cloud else "/spec/cloudInit/userData"
    )
    if user_data is not None:
        _check_user_data(user_data, pointer, fail)
    network_config = _network_config(cloud.get("networkConfig"), fail)
    files = []
    for index, item in enumerate(spec.get("files", [])):
        if "content" in item:
            content: bytes | None = item["content"].encode()
        else:
            pointer = f"/spec/files/{index}/source"
            content = read_guest_file(
                origin(pointer), confine, item["source"], pointer, fail, named
            )
        if content is not None:
            files.append(
                InjectedFile(item["path"], content, item.get("permissions"), item.get("owner"))
            )
    paths = [item["path"] for item in spec.get("files", [])]
    _reject_repeats(paths, "/spec/files", "path", "path", fail)
    config = GuestConfig(
        hostname=spec.get("hostname"),
        user_data=user_data,
        network_config=network_config,
        authorized_keys=tuple(spec.get("ssh", {}).get("authorizedKeys", [])),
        files=tuple(files),
        instance_id=cloud.get("instanceId"),
    )
    total = sum(len(f.content) for f in config.files) + len(user_data or b"")
    if total > MAX_GUEST_CONFIG_BYTES:
        fail(
            "/spec",
            f"the config drive would hold {format_size(total)}, more than the maximum of "
            f"{format_size(MAX_GUEST_CONFIG_BYTES)} (user-data and files together)",
        )
    return config


def read_guest_file(
    manifest: Path,
    confine: Path,
    name: str,
    pointer: str,
    fail: Fail,
    named: list[Path] | None = None,
) -> bytes | None:
    """A file named by a manifest (relative to it), if it lies inside `confine` once every
    symlink is followed and is not too large; None after reporting why not. Its path is added
    to `named`."""
    path = manifest.parent / name
    if named is not None:
        named.append(path)
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(confine):
        shown = f"{name} (which resolves to {real})" if real != path else name
        fail(pointer, f"{shown} is outside the manifest directory {confine}")
        return None
    try:
        return read_input_file(
            path, confine, MAX_GUEST_FILE_BYTES, name, " for a file on the config drive"
        )
    except InputFileRefused as err:
        fail(pointer, str(err))
        return None


def _check_user_data(data: bytes, pointer: str, fail: Fail) -> None:
    """user-data must be a cloud-config (a YAML mapping) or a script, in text."""
    import yaml

    if b"\0" in data:
        fail(pointer, "user-data contains a NUL byte (expected text)")
        return
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        fail(pointer, f"user-data is not UTF-8 text (byte {err.start})")
        return
    first = text.split("\n", 1)[0].rstrip()
    if first == "#cloud-config":
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            fail(pointer, f"user-data is not valid YAML{where}: {getattr(err, 'problem', err)}")
            return
        if parsed is not None and not isinstance(parsed, dict):
            fail(pointer, "user-data's cloud-config must be a mapping (key: value lines)")
    elif not first.startswith("#!"):
        fail(
            pointer,
            f"user-data starts with {first[:40]!r}: expected a cloud-config (first line "
            "#cloud-config) or a script (first line #!)",
        )


def _network_config(value: Any, fail: Fail) -> bytes | None:
    import yaml

    if value is None:
        return None
    if isinstance(value, dict):
        return yaml.safe_dump(value, sort_keys=True, default_flow_style=False).encode()
    if "\0" in value:
        fail("/spec/cloudInit/networkConfig", "networkConfig contains a NUL byte")
        return None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        fail("/spec/cloudInit/networkConfig", "networkConfig is not valid YAML")
        return None
    if not isinstance(parsed, dict):
        fail("/spec/cloudInit/networkConfig", "networkConfig must be a mapping (version: ...)")
        return None
    return str(value).encode()


def networks(spec: dict[str, Any], fail: Fail) -> tuple[NetworkSpec, ...]:
    """The interfaces `spec` asks for (one user-mode virtio interface when it says nothing)."""
    if "networks" not in spec:
        return DEFAULT_NETWORKS
    result = []
    for index, item in enumerate(spec["networks"]):
        ports = tuple(
            PortForward(
                port["host"],
                port["guest"],
                PortProtocol(port.get("protocol", PortProtocol.TCP)),
                port.get("address", "127.0.0.1"),
                port.get("guestAddress"),
            )
            for port in item.get("ports", [])
        )
        bindings = [f"{p.address}:{p.host}/{p.protocol.value}" for p in ports]
        _reject_repeats(bindings, f"/spec/networks/{index}/ports", "host", "host port", fail)
        result.append(
            NetworkSpec(
                type=NicType(item["type"]),
                source=item.get("source"),
                model=NicModel(item.get("model", NicModel.VIRTIO)),
                mac=item.get("mac"),
                ports=ports,
            )
        )
    macs = [nic.mac for nic in result]
    _reject_repeats(macs, "/spec/networks", "mac", "mac", fail)
    forwarded: set[str] = set()  # host ports of the interfaces before
    for index, nic in enumerate(result):
        bound = {f"{p.address}:{p.host}/{p.protocol.value}" for p in nic.ports}
        for binding in sorted(bound & forwarded):
            fail(f"/spec/networks/{index}/ports", f"host port {binding} is forwarded twice")
        forwarded |= bound
    return tuple(result)


USER_SUBNET = ipaddress.IPv4Network("10.0.2.0/24")  # QEMU's user-mode network


def aim_forwards(
    spec: dict[str, Any], interfaces: tuple[NetworkSpec, ...], fail: Fail
) -> tuple[NetworkSpec, ...]:
    """The port forwards aimed at the guest's static address, when the network configuration
    gives the one (user-mode) interface a static address: QEMU's user-mode network sends a
    forward with no guest address to its first DHCP address, 10.0.2.15, which the guest then
    does not have. A static address outside 10.0.2.0/24 on that interface is an error: the
    guest would be unreachable, its forwards would go nowhere. With several interfaces nothing
    says which address is whose: `ports[].guestAddress` says it."""
    statics = _static_addresses(spec.get("cloudInit", {}).get("networkConfig"))
    if not statics or len(interfaces) != 1 or interfaces[0].type is not NicType.USER:
        return interfaces
    inside = [a for a in statics if a in USER_SUBNET]
    if not inside:
        shown = ", ".join(str(a) for a in statics)
        fail(
            "/spec/cloudInit/networkConfig",
            f"static address {shown} on a user-mode interface: QEMU's user-mode network is "
            f"{USER_SUBNET} (gateway 10.0.2.2), so the guest would be unreachable and its port "
            "forwards would go nowhere; use an address from 10.0.2.4 to 10.0.2.254",
        )
        return interfaces
    nic = interfaces[0]
    aimed = tuple(
        port if port.guest_address else dataclasses.replace(port, guest_address=str(inside[0]))
        for port in nic.ports
    )
    return (dataclasses.replace(nic, ports=aimed),)


def _static_addresses(config: Any) -> list[ipaddress.IPv4Address]:
    """The static IPv4 addresses a cloud-init network configuration (version 1 or 2, a
    mapping or its YAML text) gives its interfaces; [] when it gives none or cannot be read."""
    import yaml

    if isinstance(config, str):
        try:
            config = yaml.safe_load(config)
        except yaml.YAMLError:
            return []
    if not isinstance(config, dict):
        return []
    texts: list[Any] = []
    ethernets = config.get("ethernets")
    if isinstance(ethernets, dict):  # version 2
        for interface in ethernets.values():
            if isinstance(interface, dict) and isinstance(interface.get("addresses"), list):
                texts += interface["addresses"]
    entries = config.get("config")
    if isinstance(entries, list):  # version 1
        for entry in entries:
            subnets = entry.get("subnets") if isinstance(entry, dict) else None
            for subnet in subnets if isinstance(subnets, list) else []:
                if isinstance(subnet, dict) and subnet.get("type") == "static":
                    texts.append(subnet.get("address"))
    addresses = []
    for text in texts:
        try:
            address = ipaddress.ip_interface(str(text).strip()).ip
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv4Address):
            addresses.append(address)
    return addresses


def _reject_repeats(
    values: Sequence[str | None], pointer: str, key: str, what: str, fail: Fail
) -> None:
    """Report, at `pointer/INDEX/key`, each value given a second time in a list (None values
    are not compared)."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value is None:
            continue
        if value in seen:
            fail(f"{pointer}/{index}/{key}", f"{what} {value} is given twice")
        seen.add(value)
