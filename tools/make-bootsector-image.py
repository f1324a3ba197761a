#!/usr/bin/env python3
"""Write a tiny raw disk image whose boot sector prints one line on the serial port, then halts.

A stand-in guest for the examples and tests until a real one is built: SeaBIOS boots it under
TCG or KVM, and `reconciler-bootsector: booted` appears in the console log. The output is the
same bytes on every run (its sha256 is in manifests/*.yaml).

    tools/make-bootsector-image.py OUTPUT
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

IMAGE_BYTES = 1024 * 1024
MESSAGE = b"reconciler-bootsector: booted\r\n\0"


def boot_sector() -> bytes:
    """16-bit real-mode code: print MESSAGE to COM1, then halt with interrupts on, forever."""
    code = bytearray(
        [
            0x31, 0xC0,        # xor ax, ax
            0x8E, 0xD8,        # mov ds, ax
            0xBA, 0xF8, 0x03,  # mov dx, 0x3f8 (COM1)
            0xBE, 0x00, 0x00,  # mov si, MESSAGE (patched below)
            0xFC,              # cld
            0xAC,              # next: lodsb
            0x84, 0xC0,        # test al, al
            0x74, 0x03,        # jz halt
            0xEE,              # out dx, al
            0xEB, 0xF8,        # jmp next
            0xFB,              # halt: sti
            0xF4,              # hlt
            0xEB, 0xFC,        # jmp halt
        ]
    )  # fmt: skip
    address = 0x7C00 + len(code)
    code[8:10] = address.to_bytes(2, "little")
    sector = bytes(code) + MESSAGE
    return sector.ljust(510, b"\0") + b"\x55\xaa"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    output = Path(argv[1])
    data = boot_sector().ljust(IMAGE_BYTES, b"\0")
    if output.exists() and output.read_bytes() == data:
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, output)
    print(f"{output}: sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
