"""Read disk image headers in Python: format detection and qcow2 facts, no qemu-img.

Used two ways: to inspect untrusted base images before qemu-img ever sees them (detect every
format whose signature matches), and to observe our own overlays cheaply on every pass (read
the qcow2 header of a file we know is qcow2; guest-writable disks are never format-probed).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_EXT_END = 0x00000000
QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
QCOW2_EXT_FEATURE_TABLE = 0x6803F857
QCOW2_EXT_BITMAPS = 0x23852875
QCOW2_EXT_FULL_DISK_ENCRYPTION = 0x0537BE77
QCOW2_EXT_EXTERNAL_DATA_FILE = 0x44415441
QCOW2_INCOMPAT_DIRTY = 1 << 0
QCOW2_INCOMPAT_CORRUPT = 1 << 1
QCOW2_INCOMPAT_EXTERNAL_DATA = 1 << 2
QCOW2_INCOMPAT_COMPRESSION = 1 << 3
QCOW2_INCOMPAT_EXTENDED_L2 = 1 << 4
QCOW2_KNOWN_INCOMPAT = (
    QCOW2_INCOMPAT_DIRTY
    | QCOW2_INCOMPAT_CORRUPT
    | QCOW2_INCOMPAT_EXTERNAL_DATA
    | QCOW2_INCOMPAT_COMPRESSION
    | QCOW2_INCOMPAT_EXTENDED_L2
)
HEADER_READ_BYTES = 64 * 1024
MAX_BACKING_NAME = 1023


class HeaderError(Exception):
    """The file's header is not what it must be."""


@dataclass(frozen=True, slots=True)
class Qcow2Header:
    """The facts a qcow2 header states."""

    version: int
    virtual_size: int
    cluster_bits: int
    encrypted: bool
    incompatible_features: int
    backing_file: str | None
    backing_format: str | None
    external_data_file: str | None
    snapshot_count: int = 0  # entries in its internal snapshot table


def read_head(path: str, size: int = HEADER_READ_BYTES) -> bytes:
    """The first `size` bytes of the file (fewer if it is shorter)."""
    with open(path, "rb") as stream:
        return stream.read(size)


# an overlay's header, extensions and backing file name come first: qemu-img writes them in
# the first few hundred bytes
OVERLAY_FIRST_READ_BYTES = 4096


def read_overlay_header(path: str) -> Qcow2Header:
    """What `parse_qcow2_header(read_head(path))` gives, reading only the first 4 KiB when the
    header names a backing file that lies there (the extensions then end before it, so more
    bytes could not change the answer); otherwise the whole head is read. Raises OSError or
    HeaderError."""
    with open(path, "rb") as stream:
        head = stream.read(OVERLAY_FIRST_READ_BYTES)
        try:
            header = parse_qcow2_header(head)
        except HeaderError:
            header = None
        if header is not None and header.backing_file is not None:
            return header
        if len(head) == OVERLAY_FIRST_READ_BYTES:
            head += stream.read(HEADER_READ_BYTES - len(head))
    return parse_qcow2_header(head)


def parse_qcow2_header(head: bytes) -> Qcow2Header:
    """Parse a qcow2 header (versions 2 and 3) and its extensions from the file's first bytes."""
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        raise HeaderError("not a qcow2 file (bad magic)")
    (version, backing_offset, backing_size, cluster_bits, virtual_size, crypt_method) = (
        struct.unpack_from(">IQIIQI", head, 4)
    )
    if version not in (2, 3):
        raise HeaderError(f"unknown qcow2 version {version}")
    incompatible = 0
    header_length = 72
    if version == 3:
        if len(head) < 104:
            raise HeaderError("truncated qcow2 v3 header")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        header_length = struct.unpack_from(">I", head, 100)[0]
        if header_length < 104 or header_length > len(head):
            raise HeaderError(f"bad qcow2 header length {header_length}")
    backing_file = None
    if backing_offset:
        if backing_size > MAX_BACKING_NAME or backing_offset + backing_size > len(head):
            raise HeaderError("qcow2 backing file name out of bounds")
        raw_name = head[backing_offset : backing_offset + backing_size]
        backing_file = raw_name.decode("utf-8", errors="replace")
    extensions = _parse_extensions(head, header_length, backing_offset or len(head))
    return Qcow2Header(
        version=version,
        virtual_size=virtual_size,
        cluster_bits=cluster_bits,
        encrypted=crypt_method != 0,
        incompatible_features=incompatible,
        backing_file=backing_file,
        backing_format=extensions.get(QCOW2_EXT_BACKING_FORMAT),
        external_data_file=extensions.get(QCOW2_EXT_EXTERNAL_DATA_FILE),
        snapshot_count=struct.unpack_from(">I", head, 60)[0],
    )


def _parse_extensions(head: bytes, offset: int, limit: int) -> dict[int, str]:
    """Header extensions that carry strings, by type (others are skipped)."""
    found: dict[int, str] = {}
    limit = min(limit, len(head))
    while offset + 8 <= limit:
        ext_type, ext_length = struct.unpack_from(">II", head, offset)
        offset += 8
        if ext_type == QCOW2_EXT_END:
            break
        if offset + ext_length > len(head):
            raise HeaderError("qcow2 header extension out of bounds")
        if ext_type in (QCOW2_EXT_BACKING_FORMAT, QCOW2_EXT_EXTERNAL_DATA_FILE):
            found[ext_type] = head[offset : offset + ext_length].decode("utf-8", "replace")
        offset += (ext_length + 7) & ~7
    return found


# Signatures of formats we detect. Everything but raw and qcow2 is refused as a base.
def _is_vmdk(head: bytes) -> bool:
    return head[:4] == b"KDMV" or head[:4] == b"COWD" or b"# Disk DescriptorFile" in head[:1024]


def _is_vhd(head: bytes, tail: bytes) -> bool:
    return head[:8] == b"conectix" or tail[-512:-504] == b"conectix"


def detect_formats(path: str) -> list[str]:
    """Every format whose signature the file carries. Raw is what remains when none match.

    A file can match several (a polyglot); callers must insist on exactly one.
    """
    head = read_head(path)
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        stream.seek(max(0, size - 512))
        tail = stream.read(512)
    found = []
    if head[:4] == QCOW2_MAGIC:
        found.append("qcow2")
    if _is_vmdk(head):
        found.append("vmdk")
    if head[:8] == b"vhdxfile":
        found.append("vhdx")
    if _is_vhd(head, tail):
        found.append("vpc")
    if len(head) >= 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        found.append("vdi")
    if head[:4] == b"QED\x00":
        found.append("qed")
    if head[:6] == b"LUKS\xba\xbe":
        found.append("luks")
    if head[:4] == b"QEVM":
        found.append("qemu-savevm")
    if head[:4] == b"OOOM":
        found.append("cloop")
    if head[:16] == b"WithoutFreeSpace" or head[:16] == b"WithouFreSpacExt":
        found.append("parallels")
    if head[:32].startswith(b"Bochs Virtual HD Image"):
        found.append("bochs")
    if _is_iso9660(path):
        found.append("iso")
    return found or ["raw"]


def _is_iso9660(path: str) -> bool:
    with open(path, "rb") as stream:
        stream.seek(0x8001)
        return stream.read(5) == b"CD001"


def image_virtual_size(path: str, image_format: str) -> int:
    """The disk size an image holds: a qcow2's header says it, a raw file is its own size.
    Raises OSError or HeaderError."""
    if image_format == "qcow2":
        return parse_qcow2_header(read_head(path)).virtual_size
    return os.path.getsize(path)


# the snapshot table (qcow2 specification, "Snapshot table"): at most QEMU's own limit of
# entries, each a fixed part, extra data, an id and a name, padded to 8 bytes
QCOW2_MAX_SNAPSHOTS = 65536
_SNAPSHOT_FIXED = struct.Struct(">QIHHIIQII")  # l1 offset, l1 size, id size, name size, date
# (seconds, nanoseconds), VM clock, VM state size, extra data size


@dataclass(frozen=True, slots=True)
class Qcow2Snapshot:
    """One internal snapshot, as the image's snapshot table states it."""

    id: str
    name: str
    date: float  # seconds since the epoch
    vm_state_size: int  # bytes of saved guest memory and devices (0: the disk only)
    virtual_size: int | None  # the disk's size then (extra data, qcow2 v3; None: not said)


def read_qcow2_snapshots(path: str) -> tuple[Qcow2Snapshot, ...]:
    """The internal snapshots of the qcow2 file at `path`, in the table's order; HeaderError
    when the table is not what the specification says (an entry past the end of the file, a
    count over QEMU's limit, a name that is not UTF-8)."""
    with open(path, "rb") as stream:
        head = stream.read(72)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            raise HeaderError(f"{path} is not a qcow2 image")
        count, offset = struct.unpack_from(">IQ", head, 60)
        if count == 0:
            return ()
        if count > QCOW2_MAX_SNAPSHOTS:
            raise HeaderError(
                f"{path} claims {count} snapshots (QEMU allows {QCOW2_MAX_SNAPSHOTS})"
            )
        size = os.fstat(stream.fileno()).st_size
        found = []
        for _ in range(count):
            stream.seek(offset)
            fixed = stream.read(_SNAPSHOT_FIXED.size)
            if len(fixed) < _SNAPSHOT_FIXED.size or offset + _SNAPSHOT_FIXED.size > size:
                raise HeaderError(f"{path}: a snapshot table entry lies past the end of the file")
            _l1, _l1_size, id_size, name_size, seconds, nanos, _clock, vm_state, extra_size = (
                _SNAPSHOT_FIXED.unpack(fixed)
            )
            rest = stream.read(extra_size + id_size + name_size)
            if len(rest) < extra_size + id_size + name_size:
                raise HeaderError(f"{path}: a snapshot table entry lies past the end of the file")
            extra = rest[:extra_size]
            virtual_size = struct.unpack_from(">Q", extra, 8)[0] if extra_size >= 16 else None
            try:
                ident = rest[extra_size : extra_size + id_size].decode()
                name = rest[extra_size + id_size :].decode()
            except UnicodeDecodeError as err:
                raise HeaderError(f"{path}: a snapshot's name is not UTF-8") from err
            found.append(Qcow2Snapshot(ident, name, seconds + nanos / 1e9, vm_state, virtual_size))
            length = _SNAPSHOT_FIXED.size + extra_size + id_size + name_size
            offset += length + (-length % 8)
        return tuple(found)


_OFFSET_MASK = 0x00FFFFFFFFFFFE00  # host offsets in L1 and L2 entries (bits 9 to 55)
_COMPRESSED = 1 << 62
_EXTENDED_L2 = 1 << 4  # incompatible feature: L2 entries of 128 bits (subclusters)
MAX_L1_ENTRIES = 32 * 1024 * 1024  # QEMU's own limit


@dataclass(frozen=True, slots=True)
class SnapshotSpace:
    """The space a qcow2 file's internal snapshots hold: bytes of clusters that only
    snapshots use (`total`), and, by label, those that only that snapshot uses (what deleting
    it frees)."""

    total: int
    exclusive: dict[str, int]


def snapshot_space(path: str) -> SnapshotSpace:
    """What the snapshots of the qcow2 file at `path` hold on disk, from its L1 and L2 tables
    (the active image's and each snapshot's): bounded reads, HeaderError for a table that
    points outside the file."""
    with open(path, "rb") as stream:
        head = stream.read(104)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            raise HeaderError(f"{path} is not a qcow2 image")
        version, cluster_bits = (
            struct.unpack_from(">I", head, 4)[0],
            struct.unpack_from(">I", head, 20)[0],
        )
        if not 9 <= cluster_bits <= 21:
            raise HeaderError(f"{path}: cluster size 2^{cluster_bits} is not one qcow2 allows")
        l1_size, l1_offset = struct.unpack_from(">IQ", head, 36)
        count, table = struct.unpack_from(">IQ", head, 60)
        if count == 0:
            return SnapshotSpace(0, {})
        extended = version == 3 and bool(struct.unpack_from(">Q", head, 72)[0] & _EXTENDED_L2)
        size = os.fstat(stream.fileno()).st_size
        reader = _ClusterReader(stream, size, cluster_bits, extended, path)
        active = reader.clusters(l1_offset, l1_size)
        by_label: dict[str, set[int]] = {}
        offset = table
        for _ in range(min(count, QCOW2_MAX_SNAPSHOTS)):
            fixed = reader.read(offset, _SNAPSHOT_FIXED.size)
            snap_l1, snap_l1_size, id_size, name_size, *_rest, extra_size = _SNAPSHOT_FIXED.unpack(
                fixed
            )
            name_at = offset + _SNAPSHOT_FIXED.size + extra_size + id_size
            name = reader.read(name_at, name_size).decode(errors="replace")
            used = reader.clusters(snap_l1, snap_l1_size)
            used |= reader.table_clusters(snap_l1, snap_l1_size)
            by_label[name] = used - active
            length = _SNAPSHOT_FIXED.size + extra_size + id_size + name_size
            offset += length + (-length % 8)
    cluster = 1 << cluster_bits
    every = set().union(*by_label.values()) if by_label else set()
    exclusive = {}
    for label, used in by_label.items():
        others = set().union(*(u for other, u in by_label.items() if other != label))
        exclusive[label] = len(used - others) * cluster
    return SnapshotSpace(len(every) * cluster, exclusive)


class _ClusterReader:
    """Reads L1 and L2 tables of one qcow2 file, within its size."""

    def __init__(self, stream: Any, size: int, cluster_bits: int, extended: bool, path: str):
        self.stream, self.size, self.bits, self.path = stream, size, cluster_bits, path
        self.entry = 16 if extended else 8
        self.l2_entries = (1 << cluster_bits) // self.entry
        self._l2: dict[int, set[int]] = {}

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise HeaderError(f"{self.path}: a table lies past the end of the file")
        self.stream.seek(offset)
        data: bytes = self.stream.read(length)
        return data

    def l2_offsets(self, l1_offset: int, l1_size: int) -> list[int]:
        if l1_size > MAX_L1_ENTRIES:
            raise HeaderError(f"{self.path}: an L1 table of {l1_size} entries")
        data = self.read(l1_offset, l1_size * 8) if l1_size else b""
        entries = struct.unpack(f">{l1_size}Q", data)
        return [entry & _OFFSET_MASK for entry in entries if entry & _OFFSET_MASK]

    def table_clusters(self, l1_offset: int, l1_size: int) -> set[int]:
        """The clusters of the L1 table itself."""
        first = l1_offset >> self.bits
        last = (l1_offset + max(l1_size * 8, 1) - 1) >> self.bits
        return set(range(first, last + 1))

    def clusters(self, l1_offset: int, l1_size: int) -> set[int]:
        """The host clusters an L1 table reaches: its L2 tables and their data clusters."""
        found: set[int] = set()
        for l2 in self.l2_offsets(l1_offset, l1_size):
            found.add(l2 >> self.bits)
            found |= self._data(l2)
        return found

    def _data(self, l2: int) -> set[int]:
        known = self._l2.get(l2)
        if known is not None:
            return known
        data = self.read(l2, self.l2_entries * self.entry)
        found = set()
        for index in range(self.l2_entries):
            entry = struct.unpack_from(">Q", data, index * self.entry)[0]
            if entry & _COMPRESSED:
                offset = entry & ((1 << (62 - (self.bits - 8))) - 1)
            else:
                offset = entry & _OFFSET_MASK
            if offset:
                found.add(offset >> self.bits)
        self._l2[l2] = found
        return found
