#!/usr/bin/env python3
"""Build a small Debian 12 cloud image: real cloud-init and openssh-server, from Debian's
package mirror only, bootable under BIOS, with no loop device and no mount.

    tools/cloud-image/build-cloud-image.py OUTPUT_DIR [CACHE_DIR]      (as root)

Writes OUTPUT_DIR/reconciler-cloud.qcow2 (compressed) and prints its sha256. Cached: a second
run with the same inputs (this script, and the mirror's versions of the packages it names)
does nothing; the downloaded packages are kept in CACHE_DIR/debs.

How: debootstrap (minbase, plus the packages below) into a directory; the image adjusted
there (no SSH host keys and no machine-id, so that every instance makes its own; a generated
locale; cloud-init limited to the NoCloud and ConfigDrive datasources and told to keep
/etc/hosts); the root file system made from the directory with `mkfs.ext4 -d`; a FAT boot
partition with SYSLINUX, the kernel and the initramfs Debian's initramfs-tools made (mtools,
`syslinux --offset`; the MBR code from the image's own syslinux-common); both written into
one MBR-partitioned disk file.

Facts this relies on (Debian 12, cloud-init 22.4): minbase does not resolve
python3-cffi-backend-api-min, so python3-cffi-backend is named; cloud-init's locale module
fails unless a locale is generated; sudo complains until /etc/hosts knows the new hostname
(manage_etc_hosts); without dbus and libpam-systemd nothing acts on the ACPI power button.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

NAME = "reconciler-cloud"
SUITE = "bookworm"
PACKAGES = (
    "linux-image-amd64", "cloud-init", "openssh-server", "python3-cffi-backend", "locales",
    "dbus", "libpam-systemd", "systemd-sysv", "udev", "ifupdown", "isc-dhcp-client", "sudo",
    "netbase", "syslinux-common",
)  # fmt: skip
# kernel modules no guest of ours loads (the initramfs keeps its own copies)
UNUSED_MODULES = (
    "sound", "drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/infiniband",
    "drivers/staging", "drivers/iio", "drivers/bluetooth", "drivers/isdn", "drivers/usb",
    "drivers/net/ethernet", "drivers/hwmon", "drivers/platform", "drivers/thunderbolt",
    "drivers/input/touchscreen", "drivers/video", "net/wireless", "net/mac80211", "net/bluetooth",
)  # fmt: skip
TRIMMED = ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt", "var/lib/apt/lists")
SECTOR = 512
BOOT_START = 2048  # sectors: 1 MiB
BOOT_BYTES = 96 * 1024**2
ROOT_LABEL = "rcroot"
ROOT_UUID = "0b7e3c5a-1c2d-4e5f-8a9b-52434c4f5544"  # fixed: the same inputs, the same image
EPOCH = 946684800
CLOUD_CFG = """\
# reconciler's cloud image: the datasources a config drive can be, and /etc/hosts kept
datasource_list: [NoCloud, ConfigDrive, None]
manage_etc_hosts: true
"""
SYSLINUX_CFG = f"""\
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8 net.ifnames=0
"""


def run(*command: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH), "MTOOLS_SKIP_CHECK": "1",
           "E2FSPROGS_FAKE_TIME": str(EPOCH), "DEBIAN_FRONTEND": "noninteractive"}  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"build-cloud-image: {' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def mirror() -> str:
    """The Debian mirror the host's apt uses (deb.debian.org when it names none)."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = path.read_text()
        except OSError:
            continue
        found = re.search(r"(?:URIs:|^deb)\s+(https?://\S+/debian)/?\s", text, re.MULTILINE)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def input_key() -> str:
    """This script and the mirror's candidate version of each named package."""
    policy = run("apt-cache", "policy", *PACKAGES)
    versions = re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", policy, re.MULTILINE)
    if len(versions) != len(PACKAGES):
        run("apt-get", "update", "-qq")
        versions = re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)",
                              run("apt-cache", "policy", *PACKAGES), re.MULTILINE)  # fmt: skip
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(repr(sorted(versions)).encode())
    return digest.hexdigest()[:16]


def bootstrap(root: Path, debs: Path) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    run("debootstrap", "--variant=minbase", f"--cache-dir={debs}",
        f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror())  # fmt: skip


def adjust(root: Path) -> None:
    """What makes the directory a cloud image: each instance its own keys and machine-id."""
    (root / "etc/locale.gen").write_text("en_US.UTF-8 UTF-8\n")
    run("chroot", str(root), "locale-gen")
    (root / "etc/default/locale").write_text("LANG=en_US.UTF-8\n")
    (root / "etc/fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 defaults 0 1\n")
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n"
    )
    (root / "etc/cloud/cloud.cfg.d/90-reconciler.cfg").write_text(CLOUD_CFG)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for trimmed in TRIMMED:
        shutil.rmtree(root / trimmed, ignore_errors=True)
        (root / trimmed).mkdir(parents=True, exist_ok=True)
    for translations in (root / "usr/share/locale").iterdir():  # messages in other languages
        if translations.is_dir():
            shutil.rmtree(translations)
    (modules,) = (root / "usr/lib/modules").iterdir()
    for unused in UNUSED_MODULES:
        shutil.rmtree(modules / "kernel" / unused, ignore_errors=True)
    run("chroot", str(root), "depmod", modules.name)
    for cache in (root / "var/cache/debconf").glob("*-old"):
        cache.unlink()
    run("find", str(root), "-newermt", f"@{EPOCH}", "-exec", "touch", "-h", "-d", f"@{EPOCH}",
        "{}", "+")  # fmt: skip


def root_filesystem(root: Path, image: Path) -> int:
    """An ext4 image of `root` with room to spare; its size in bytes."""
    used = int(run("du", "-sb", str(root)).split()[0])
    size = (used * 3 // 2 + 64 * 1024**2) // 1024**2 * 1024**2
    run("mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-U", ROOT_UUID,
        "-E", f"hash_seed={ROOT_UUID},root_owner=0:0", "-d", str(root), str(image),
        f"{size // 1024}k")  # fmt: skip
    return size


def disk(root: Path, work: Path, output: Path) -> None:
    rootfs = work / "root.ext4"
    root_bytes = root_filesystem(root, rootfs)
    root_start = BOOT_START + BOOT_BYTES // SECTOR
    total = root_start * SECTOR + root_bytes
    raw = work / "disk.raw"
    with raw.open("wb") as stream:
        stream.truncate(total)
    boot_sectors = BOOT_BYTES // SECTOR
    image = f"{raw}@@{BOOT_START * SECTOR}"
    run("mformat", "-i", image, "-T", str(boot_sectors), "-h", "64", "-s", "32",
        "-H", str(BOOT_START), "-N", "52434c44", "-v", "RCBOOT", "::")  # fmt: skip
    staging = work / "boot"
    staging.mkdir()
    (kernel,) = (root / "boot").glob("vmlinuz-*")
    (initrd,) = (root / "boot").glob("initrd.img-*")
    shutil.copyfile(kernel, staging / "vmlinuz")
    shutil.copyfile(initrd, staging / "initrd.img")
    (staging / "syslinux.cfg").write_text(SYSLINUX_CFG)
    for path in staging.iterdir():
        os.utime(path, (EPOCH, EPOCH))
    run("mcopy", "-m", "-i", image, *(str(p) for p in sorted(staging.iterdir())), "::/")
    run("syslinux", "--install", "--offset", str(BOOT_START * SECTOR), str(raw))
    mbr = (root / "usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    boot = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff",
                       BOOT_START, boot_sectors)  # fmt: skip
    linux = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                        root_start, root_bytes // SECTOR)  # fmt: skip
    with raw.open("r+b") as stream:
        stream.write(mbr)
        stream.seek(440)
        stream.write(b"RCC1\0\0" + boot + linux + b"\0" * 32 + b"\x55\xaa")
        stream.seek(root_start * SECTOR)
        with rootfs.open("rb") as source:
            shutil.copyfileobj(source, stream, 16 * 1024**2)
    rootfs.unlink()
    made = work / "out.qcow2"
    run("qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(made))
    os.replace(made, output)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    output_dir = Path(argv[1]).resolve()
    cache = Path(argv[2] if len(argv) == 3 else output_dir.parent / "cloud-image").resolve()
    output = output_dir / f"{NAME}.qcow2"
    key = input_key()
    stamp = cache / f"{key}.built"
    if stamp.exists() and output.exists() and stamp.read_text() == _sum(output):
        return 0
    if os.geteuid() != 0:
        raise SystemExit("build-cloud-image: debootstrap and chroot need root")
    output_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        work = Path(scratch)
        root = work / "root"
        bootstrap(root, cache / "debs")
        adjust(root)
        disk(root, work, output)
    stamp.write_text(_sum(output))
    print(_sum(output), end="")
    return 0


def _sum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1024**2):
            digest.update(chunk)
    return f"{digest.hexdigest()}  {path.name}\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
