"""OpenPGP signatures of the checksum files distributions publish: checked with `gpgv`, the
verification-only tool apt uses (from the gpgv package, installed wherever gnupg is), against
one keyring file and a list of allowed key fingerprints. Nothing here trusts a key because it
is in the keyring: the signature must be good, made by a key (or a subkey of a key) whose
fingerprint the catalogue entry names.

Two shapes: a detached signature beside the file (Debian's `SHA512SUMS.sign`, Ubuntu's
`SHA256SUMS.gpg`), and a clearsigned file (Fedora's `CHECKSUM`), of which only the signed
text is returned: lines outside the signature never reach the checksum parser.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import InstanceError

GPGV_SECONDS = 30
MAX_SIGNED_BYTES = 16 * 1024 * 1024  # a checksum file is kilobytes; a signature, less


class SignatureError(InstanceError):
    """A checksum file whose signature is missing, bad, or made by a key not allowed."""


@dataclass(frozen=True, slots=True)
class Verified:
    """What a good signature says: the signed bytes, and the key that made it."""

    text: bytes
    fingerprint: str  # the primary key's, upper-case hex
    created: float | None  # when the signature was made (seconds since the epoch)


def normal_fingerprint(text: str) -> str:
    """A fingerprint as published ("DF9B 9C49 ...", any case) as upper-case hex."""
    return "".join(text.split()).upper()


def verify(
    signed: bytes,
    signature: bytes | None,
    keyring: Path,
    fingerprints: tuple[str, ...],
    what: str,
) -> Verified:
    """Check `signed` (a detached `signature` of it, or, with None, `signed` clearsigned)
    with the keys of `keyring`, accepting only a key of `fingerprints`; SignatureError
    saying why not. `what` names the file in the messages."""
    allowed = {normal_fingerprint(f) for f in fingerprints}
    if not allowed:
        raise SignatureError(f"{what}: no signing key is named for it in the catalogue")
    if not keyring.is_file():
        raise SignatureError(
            f"{what}: the keyring {keyring} does not exist (install the distribution's "
            "keyring, or name one in the host configuration)"
        )
    with tempfile.TemporaryDirectory(prefix="reconciler-gpgv-") as scratch:
        data = Path(scratch) / "signed"
        data.write_bytes(signed)
        output = Path(scratch) / "output"
        command = ["gpgv", "--homedir", scratch, "--status-fd", "1", "--keyring",
                   str(keyring.absolute())]  # fmt: skip
        if signature is None:
            command += ["--output", str(output), str(data)]
        else:
            detached = Path(scratch) / "signature"
            detached.write_bytes(signature)
            command += [str(detached), str(data)]
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=GPGV_SECONDS, check=False,
                env={**os.environ, "LC_ALL": "C"},
            )  # fmt: skip
        except FileNotFoundError as err:
            raise SignatureError(f"{what}: gpgv is not installed (Debian: gpgv)") from err
        except subprocess.TimeoutExpired as err:
            raise SignatureError(f"{what}: gpgv took more than {GPGV_SECONDS}s") from err
        status = _status(done.stdout.decode("utf-8", "replace"))
        text = signed if signature is not None else _read(output)
    return _judge(status, done.returncode, allowed, what, text)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read(MAX_SIGNED_BYTES)
    except OSError:
        return b""


def _status(text: str) -> list[list[str]]:
    """gpgv's machine-readable status lines, each split in words."""
    return [line.split()[1:] for line in text.splitlines() if line.startswith("[GNUPG:] ")]


def _judge(
    status: list[list[str]], code: int, allowed: set[str], what: str, text: bytes
) -> Verified:
    """The verdict on gpgv's status lines: exactly one good, valid signature by an allowed
    key, and no bad one."""
    words = {line[0] for line in status if line}
    if "BADSIG" in words:
        raise SignatureError(f"{what}: BAD signature: the file is not what was signed")
    if "NO_PUBKEY" in words or "ERRSIG" in words:
        key = next((line[1] for line in status if line and line[0] == "ERRSIG"), "?")
        raise SignatureError(
            f"{what}: signed by key {key}, which the keyring does not hold (not one of the "
            f"allowed keys: {', '.join(sorted(allowed))})"
        )
    valid = [line for line in status if line and line[0] == "VALIDSIG"]
    if code != 0 or not valid or "GOODSIG" not in words:
        raise SignatureError(f"{what}: no good signature found (gpgv exited {code})")
    if len(valid) > 1:
        raise SignatureError(f"{what}: more than one signature: refused")
    line = valid[0]
    signer = line[1].upper()
    primary = line[10].upper() if len(line) > 10 else signer
    if signer not in allowed and primary not in allowed:
        raise SignatureError(
            f"{what}: signed by key {primary}, which is not one the catalogue allows for it "
            f"({', '.join(sorted(allowed))})"
        )
    created = float(line[3]) if len(line) > 3 and line[3].isdigit() else None
    if not text:
        raise SignatureError(f"{what}: the signed text is empty")
    return Verified(text, primary, created)
