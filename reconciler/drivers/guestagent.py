"""The QEMU guest agent's protocol, for both drivers: the request a command is sent as, the
reply decoded (a guest's words, so bounded and checked), and a client for the agent's socket
where no libvirt stands between (the QMP driver).

The agent speaks JSON, one object per line, over a virtio-serial port. Whatever a previous
client left unread may still come out of that port, so a client first synchronises: it sends
0xFF (which resets the agent's parser) and `guest-sync-delimited` with a random id; the agent
answers 0xFF then `{"return": id}`, and everything before is discarded (QEMU's qemu-ga
documentation, "guest-sync-delimited").
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from reconciler.errors import DriverError

MAX_REPLY_BYTES = 4 * 1024**2  # a reply longer than this is refused (the guest writes it)
DELIMITER = b"\xff"


def agent_request(command: str, arguments: dict[str, Any] | None = None) -> str:
    """The JSON text of one agent command."""
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    return json.dumps(request, separators=(",", ":"))


def decode_agent_reply(subject: str, reply: str | bytes) -> Any:
    """The `return` value of an agent's reply; DriverError naming `subject` for an error reply
    or anything that is not one (the guest controls these bytes)."""
    if len(reply) > MAX_REPLY_BYTES:
        raise DriverError(subject, f"the guest agent's reply is over {MAX_REPLY_BYTES} bytes")
    try:
        decoded = json.loads(reply)
    except (ValueError, UnicodeDecodeError) as err:
        raise DriverError(subject, "the guest agent's reply is not JSON") from err
    if not isinstance(decoded, dict):
        raise DriverError(subject, "the guest agent's reply is not a JSON object")
    if "error" in decoded:
        error = decoded["error"]
        text = error.get("desc") if isinstance(error, dict) else None
        raise DriverError(subject, f"the guest agent answered: {str(text or error)[:200]}")
    if "return" not in decoded:
        raise DriverError(subject, "the guest agent's reply has no result")
    return decoded["return"]


def agent_over_socket(path: Path, subject: str, request: str, timeout: float) -> Any:
    """Send one request to the agent behind QEMU's socket chardev at `path`; its result.
    Callers hold a lock per socket: QEMU takes one client at a time."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(max(0.1, timeout))
            connection.connect(str(path))
            reader = _Lines(connection, deadline, subject)
            token = secrets.randbelow(2**31)
            sync = agent_request("guest-sync-delimited", {"id": token})
            connection.sendall(DELIMITER + sync.encode() + b"\n")
            while True:
                reader.skip_to_delimiter()
                if decode_agent_reply(subject, reader.line()) == token:
                    break
            connection.sendall(request.encode() + b"\n")
            return decode_agent_reply(subject, reader.line())
    except FileNotFoundError as err:
        raise DriverError(subject, "no guest agent channel, or the domain is not running") from err
    except TimeoutError as err:
        raise DriverError(subject, f"the guest agent did not answer within {timeout:g} s") from err
    except OSError as err:
        raise DriverError(subject, f"the guest agent's socket: {err.strerror or err}") from err


class _Lines:
    """Bytes from the agent's socket, cut at newlines, within a deadline and a size bound."""

    def __init__(self, connection: socket.socket, deadline: float, subject: str) -> None:
        self._connection = connection
        self._deadline = deadline
        self._subject = subject
        self._buffer = b""

    def _more(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self._connection.settimeout(left)
        chunk = self._connection.recv(65536)
        if not chunk:
            raise DriverError(self._subject, "the guest agent's channel closed")
        self._buffer += chunk
        if len(self._buffer) > MAX_REPLY_BYTES:
            raise DriverError(self._subject, f"the guest agent sent over {MAX_REPLY_BYTES} bytes")

    def skip_to_delimiter(self) -> None:
        while DELIMITER not in self._buffer:
            self._buffer = b""
            self._more()
        self._buffer = self._buffer.split(DELIMITER, 1)[1]

    def line(self) -> bytes:
        while b"\n" not in self._buffer:
            self._more()
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line
