"""Internal snapshots of a running domain's disks over QMP, for both drivers: the QMP
driver sends these commands on its own monitor, the libvirt driver through libvirt's
monitor pass-through. Pure: the commands and the reading of QEMU's answers.

All disks are snapshotted in one `transaction` of `blockdev-snapshot-internal-sync`, which
QEMU applies atomically with every disk drained: the snapshots are consistent with each
other, and the guest's I/O waits only while QEMU writes the snapshot tables.
"""

from __future__ import annotations

import os
from typing import Any

from reconciler.errors import DriverError


def format_nodes(query_block: Any, paths: tuple[str, ...], subject: str) -> dict[str, str]:
    """The format node under which QEMU has each of `paths` open (from `query-block`'s
    answer); DriverError for a path that no device of the domain has open."""
    found: dict[str, str] = {}
    for device in query_block if isinstance(query_block, list) else []:
        inserted = device.get("inserted") if isinstance(device, dict) else None
        if not isinstance(inserted, dict):
            continue
        node, file = inserted.get("node-name"), inserted.get("file")
        if isinstance(node, str) and isinstance(file, str):
            found[os.path.realpath(file)] = node
    nodes = {}
    for path in paths:
        node = found.get(os.path.realpath(path))
        if node is None:
            raise DriverError(subject, f"the running domain does not have {path} open")
        nodes[path] = node
    return nodes


def snapshot_transaction(nodes: dict[str, str], label: str) -> dict[str, Any]:
    """The arguments of the `transaction` that snapshots every node at once."""
    return {
        "actions": [
            {"type": "blockdev-snapshot-internal-sync", "data": {"device": node, "name": label}}
            for node in nodes.values()
        ]
    }


def snapshot_deletion(node: str, label: str) -> dict[str, Any]:
    """The arguments of `blockdev-snapshot-delete-internal-sync` for one node."""
    return {"device": node, "name": label}
