"""Untrusted-image inspection: what a base image must be before it is cached or used.

First in Python, from the file's own headers, before qemu-img ever opens it (exactly one
detected format, equal to the declared one; a qcow2 may not point at other files); then
`qemu-img info`, told the format and run under resource limits, must agree.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.errors import StepError, UnsafeImageError
from reconciler.images.diskheaders import (
    QCOW2_INCOMPAT_EXTERNAL_DATA,
    QCOW2_KNOWN_INCOMPAT,
    HeaderError,
    detect_formats,
    parse_qcow2_header,
    read_head,
)
from reconciler.images.qemuimg import QemuImg
from reconciler.model.desired import ImageFormat


def inspect_base_image(path: Path, declared: ImageFormat) -> None:
    """Refuse an image qemu-img must not see: ambiguous or undeclared format, or a qcow2 that
    points at other files. Raises UnsafeImageError naming the problem."""
    try:
        formats = detect_formats(str(path))
    except OSError as err:
        raise UnsafeImageError(f"cannot read image {path}: {err.strerror}") from err
    if len(formats) != 1:
        raise UnsafeImageError(f"image matches several formats ({', '.join(formats)}); refused")
    found = formats[0]
    if found != declared.value:
        raise UnsafeImageError(
            f"image is declared {declared.value} but its header says {found}; refused"
        )
    if declared is ImageFormat.QCOW2:
        _inspect_qcow2(path)


def _inspect_qcow2(path: Path) -> None:
    try:
        header = parse_qcow2_header(read_head(str(path)))
    except (HeaderError, OSError) as err:
        raise UnsafeImageError(f"unreadable qcow2 image: {err}") from err
    if header.backing_file is not None:
        raise UnsafeImageError(
            f"qcow2 image names a backing file ({header.backing_file!r}); refused"
        )
    if header.external_data_file is not None or header.incompatible_features & (
        QCOW2_INCOMPAT_EXTERNAL_DATA
    ):
        raise UnsafeImageError("qcow2 image uses an external data file; refused")
    unknown = header.incompatible_features & ~QCOW2_KNOWN_INCOMPAT
    if unknown:
        raise UnsafeImageError(f"qcow2 image has unknown incompatible features {unknown:#x}")
    if header.encrypted:
        raise UnsafeImageError("qcow2 image is encrypted; refused")


def check_with_qemu_img(path: Path, declared: ImageFormat, qemu_img: QemuImg) -> None:
    """After the Python inspection passed: qemu-img, told the format, must agree."""
    try:
        info = qemu_img.info(path, declared.value)
    except StepError as err:
        raise UnsafeImageError(
            f"qemu-img cannot read the image as {declared.value}: {err}"
        ) from err
    if info.get("format") != declared.value:
        raise UnsafeImageError(f"qemu-img reads the image as {info.get('format')!r}; refused")
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise UnsafeImageError(f"qemu-img sees a backing file ({backing!r}); refused")
    specific = info.get("format-specific", {}).get("data", {})
    if isinstance(specific, dict) and specific.get("data-file"):
        raise UnsafeImageError("qemu-img sees an external data file; refused")
