#!/usr/bin/env python3
"""Build the reconciler test guest: a small BIOS-bootable x86-64 disk image from Debian 12
packages only, with no loop devices, mounts or root-only steps.

    tools/guest/build-guest-image.py OUTPUT_DIR [CACHE_DIR]

Writes OUTPUT_DIR/reconciler-guest.raw and .qcow2 (compressed), and prints their sha256. The
same packages give the same bytes; a second run with unchanged inputs does nothing.

Contents: an MBR (SYSLINUX's mbr.bin) and one FAT partition holding SYSLINUX, the Debian kernel
(unpacked from its package, never installed on the host) and an initramfs with busybox-static,
Debian's QEMU guest agent (qemu-ga, with the libraries it loads), the modules the guest needs
(virtio, SATA/IDE, CD-ROM, iso9660, vfat, ACPI button, NICs, virtio console) and
tools/guest/init.sh as /init. Host tools used: apt-get download, dpkg-deb, mtools, syslinux,
qemu-img.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = "reconciler-guest"
KERNEL_METAPACKAGE = "linux-image-amd64"
PACKAGES = ("busybox-static", "syslinux-common", "syslinux-efi")
# the QEMU guest agent, Debian's own, with the libraries it loads (found by the package's own
# dynamic loader: see library_closure)
AGENT = "usr/sbin/qemu-ga"
AGENT_PACKAGES = (
    "qemu-guest-agent", "libc6", "libglib2.0-0", "libnuma1", "libudev1", "liburing2",
    "libpcre2-8-0",
)  # fmt: skip
LOADER = "lib64/ld-linux-x86-64.so.2"
LIBRARY_DIR = "lib/x86_64-linux-gnu"
MODULES = (
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "ata_piix", "ahci", "ata_generic",
    "sd_mod", "sr_mod", "isofs", "vfat", "nls_cp437", "nls_iso8859-1", "nls_ascii", "button",
    "evdev", "e1000", "8139cp", "virtio_balloon", "pvpanic_mmio", "i6300esb", "virtio_console",
)  # fmt: skip
DISK_BYTES = 24 * 1024**2
PARTITION_START = 2048  # sectors: 1 MiB
SECTOR = 512
EPOCH = 946684800  # 2000-01-01, the timestamp of every file in the image
SYSLINUX_CFG = """\
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0,115200 quiet loglevel=3 panic=10
"""
# the same for UEFI: SYSLINUX's EFI loader runs from /EFI/BOOT (the removable-media path that
# OVMF boots) and reads its configuration there; the kernel and initrd stay at the root
EFI_SYSLINUX_CFG = SYSLINUX_CFG.replace("KERNEL vmlinuz", "KERNEL /vmlinuz").replace(
    "INITRD initrd.gz", "INITRD /initrd.gz"
)


def run(*command: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"build-guest-image: {' '.join(command)} failed:\n{done.stderr}")
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the metapackage currently depends on."""
    try:
        depends = run("apt-cache", "depends", KERNEL_METAPACKAGE)
    except SystemExit:
        depends = ""
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*)", depends)
    if match is None:
        run("apt-get", "update", "-qq")
        match = re.search(
            r"Depends: (linux-image-[0-9][^\s]*)", run("apt-cache", "depends", KERNEL_METAPACKAGE)
        )
    if match is None:
        raise SystemExit(f"build-guest-image: cannot resolve {KERNEL_METAPACKAGE}")
    return match.group(1)


def download(packages: list[str], debs: Path) -> list[Path]:
    """The .deb of each package in `debs`, downloading the ones missing."""
    debs.mkdir(parents=True, exist_ok=True)
    found = []
    for package in packages:
        matches = sorted(debs.glob(f"{package}_*.deb"))
        if not matches:
            run("apt-get", "download", "-q", package, cwd=debs)
            matches = sorted(debs.glob(f"{package}_*.deb"))
        found.append(matches[-1])
    return found


def input_key(debs: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in [*debs, Path(__file__), HERE / "init.sh"]:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def module_closure(module_dir: Path) -> list[Path]:
    """Wanted modules and their dependencies (from each .ko's modinfo), dependencies first."""
    by_name = {p.stem.replace("-", "_"): p for p in module_dir.rglob("*.ko")}
    ordered: list[Path] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise SystemExit(f"build-guest-image: no module {name} (wanted by {trail})")
        if path in ordered or name in trail:
            return
        depends = re.search(rb"\0depends=([^\0]*)\0", b"\0" + path.read_bytes())
        for dependency in depends.group(1).decode().split(",") if depends else []:
            if dependency:
                visit(dependency, (*trail, name))
        if path not in ordered:
            ordered.append(path)

    for module in MODULES:
        visit(module, ())
    return ordered


def inside(root: Path, path: Path) -> Path:
    """`path` (under `root`) with its symlinks resolved inside `root`: an absolute link target
    names a file of the unpacked packages, never one of the host."""
    seen = 0
    while path.is_symlink():
        target = Path(os.readlink(path))
        path = root / target.relative_to("/") if target.is_absolute() else path.parent / target
        seen += 1
        if seen > 16:
            raise SystemExit(f"build-guest-image: a symlink loop at {path}")
    return path


def library_closure(root: Path, program: str) -> dict[str, bytes]:
    """The shared libraries `program` loads, by their name in the guest's library directory,
    as resolved by the packages' own dynamic loader (`ld.so --list`), which runs here: the
    guest is x86-64 like the host. A library found outside the unpacked packages is missing
    from AGENT_PACKAGES."""
    search = f"{root / LIBRARY_DIR}:{root / 'usr' / LIBRARY_DIR}"
    listing = run(str(inside(root, root / LOADER)), "--library-path", search, "--list",
                  str(root / program))  # fmt: skip
    found: dict[str, bytes] = {}
    for line in listing.splitlines():
        match = re.match(r"\s*(\S+) => (\S+) \(", line)
        if match is None or match.group(1).startswith("/"):
            continue  # the vDSO, or the loader itself
        path = Path(match.group(2))
        if not path.is_relative_to(root):
            raise SystemExit(f"build-guest-image: {program} needs {path}: add its package")
        found[match.group(1)] = inside(root, path).read_bytes()
    return found


def cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive of (name, mode, data, rdev) with fixed owners and times."""
    out = bytearray()
    for inode, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        encoded = name.encode() + b"\0"
        fields = (
            inode,
            mode,
            0,
            0,
            1,
            EPOCH,
            len(data),
            0,
            0,
            rdev >> 8,
            rdev & 0xFF,
            len(encoded),
            0,
        )
        out += b"070701" + b"".join(f"{value:08X}".encode() for value in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_initramfs(root: Path, modules: list[Path], module_dir: Path) -> bytes:
    directory, regular, executable, char = 0o040755, 0o100644, 0o100755, 0o020600
    entries = [
        (name, directory, b"", 0)
        for name in (
            "bin",
            "dev",
            "etc",
            "lib",
            "lib/modules",
            "mnt",
            "proc",
            "run",
            "sbin",
            "sys",
            "tmp",
        )
    ]
    entries.append(("dev/console", char, b"", (5 << 8) | 1))
    entries.append(("bin/busybox", executable, (root / "bin" / "busybox").read_bytes(), 0))
    entries.append(("init", executable, (HERE / "init.sh").read_bytes(), 0))
    for name in ("lib64", "lib/x86_64-linux-gnu", "usr", "usr/sbin"):
        entries.append((name, directory, b"", 0))
    entries.append((LOADER, executable, inside(root, root / LOADER).read_bytes(), 0))
    for library, data in sorted(library_closure(root, AGENT).items()):
        entries.append((f"{LIBRARY_DIR}/{library}", executable, data, 0))
    entries.append((AGENT, executable, (root / AGENT).read_bytes(), 0))
    names = [str(path.relative_to(module_dir)) for path in modules]
    entries.append(("etc/modules.order", regular, ("\n".join(names) + "\n").encode(), 0))
    made = {"lib/modules"}
    for path, name in zip(modules, names, strict=True):
        parts = Path("lib/modules", name).parent.parts
        for depth in range(3, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent not in made:
                made.add(parent)
                entries.append((parent, directory, b"", 0))
        entries.append((f"lib/modules/{name}", regular, path.read_bytes(), 0))
    return gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0)


def build_disk(root: Path, kernel: Path, initrd: bytes, work: Path, output: Path) -> None:
    disk = work / "disk.raw"
    with disk.open("wb") as stream:
        stream.truncate(DISK_BYTES)
    sectors = DISK_BYTES // SECTOR - PARTITION_START
    image = f"{disk}@@{PARTITION_START * SECTOR}"
    run(
        "mformat",
        "-i",
        image,
        "-T",
        str(sectors),
        "-h",
        "64",
        "-s",
        "32",
        "-H",
        str(PARTITION_START),
        "-N",
        "52454347",
        "-v",
        "RCGUEST",
        "::",
    )
    files = {
        "vmlinuz": kernel.read_bytes(),
        "initrd.gz": initrd,
        "syslinux.cfg": SYSLINUX_CFG.encode(),
    }
    staging = work / "files"
    staging.mkdir()
    for name, data in files.items():
        (staging / name).write_bytes(data)
        os.utime(staging / name, (EPOCH, EPOCH))
    run("mcopy", "-m", "-i", image, *(str(staging / name) for name in files), "::/")
    efi = {
        "BOOTX64.EFI": (root / "usr/lib/SYSLINUX.EFI/efi64/syslinux.efi").read_bytes(),
        "ldlinux.e64": (root / "usr/lib/syslinux/modules/efi64/ldlinux.e64").read_bytes(),
        "syslinux.cfg": EFI_SYSLINUX_CFG.encode(),
    }
    efi_staging = work / "efi"
    efi_staging.mkdir()
    for name, data in efi.items():
        (efi_staging / name).write_bytes(data)
        os.utime(efi_staging / name, (EPOCH, EPOCH))
    run("mmd", "-i", image, "::/EFI", "::/EFI/BOOT")
    run("mcopy", "-m", "-i", image, *(str(efi_staging / name) for name in efi), "::/EFI/BOOT/")
    run("syslinux", "--install", "--offset", str(PARTITION_START * SECTOR), str(disk))
    mbr = (root / "usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    entry = struct.pack(
        "<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff", PARTITION_START, sectors
    )
    with disk.open("r+b") as stream:
        stream.write(mbr)
        stream.seek(440)
        stream.write(b"RCG1\0\0" + entry + b"\0" * 48 + b"\x55\xaa")
    _fix_fat_timestamps(disk, PARTITION_START * SECTOR)
    raw, qcow2 = output / f"{NAME}.raw", output / f"{NAME}.qcow2"
    shutil.copyfile(disk, work / "out.raw")
    run(
        "qemu-img",
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        str(disk),
        str(work / "out.qcow2"),
    )
    os.replace(work / "out.raw", raw)
    os.replace(work / "out.qcow2", qcow2)


def _fix_fat_timestamps(disk: Path, offset: int) -> None:
    """Give every root directory entry the fixed timestamp (the installer stamps 'now')."""
    with disk.open("r+b") as stream:
        stream.seek(offset)
        boot = stream.read(512)
        bytes_per_sector, _, reserved, fats, root_entries = struct.unpack_from("<HBHBH", boot, 11)
        fat_sectors = struct.unpack_from("<H", boot, 22)[0]
        root = offset + (reserved + fats * fat_sectors) * bytes_per_sector
        stream.seek(root)
        table = bytearray(stream.read(root_entries * 32))
        date = ((2000 - 1980) << 9) | (1 << 5) | 1
        for index in range(0, len(table), 32):
            if table[index] in (0x00, 0xE5):
                continue
            struct.pack_into("<BHHH", table, index + 13, 0, 0, date, date)  # created, accessed
            struct.pack_into("<HH", table, index + 22, 0, date)  # written
        stream.seek(root)
        stream.write(table)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    output = Path(argv[1]).resolve()
    cache = Path(argv[2] if len(argv) == 3 else output.parent / "guest").resolve()
    debs = download([kernel_package(), *PACKAGES, *AGENT_PACKAGES], cache / "debs")
    key = input_key(debs)
    stamp = cache / f"{key}.built"
    outputs = [output / f"{NAME}.raw", output / f"{NAME}.qcow2"]
    if (
        stamp.exists()
        and all(path.exists() for path in outputs)
        and stamp.read_text() == _sums(outputs)
    ):
        return 0
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        work = Path(scratch)
        root = work / "root"
        for deb in debs:
            run("dpkg-deb", "-x", str(deb), str(root))
        (module_dir,) = (root / "lib" / "modules").iterdir()
        (kernel,) = (root / "boot").glob("vmlinuz-*")
        initrd = build_initramfs(root, module_closure(module_dir), module_dir)
        build_disk(root, kernel, initrd, work, output)
    sums = _sums(outputs)
    stamp.write_text(sums)
    print(sums, end="")
    return 0


def _sums(paths: list[Path]) -> str:
    return "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in paths)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
