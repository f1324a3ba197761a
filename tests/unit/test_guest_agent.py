"""The guest agent's protocol as a hostile guest plays it: the QMP driver's client over the
agent's socket (a UNIX socket server stands in for QEMU's chardev and the guest behind it)
synchronises past stale bytes, and refuses garbage, an error, an endless reply and silence
with a DriverError that says which, within its deadline."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.drivers.guestagent import (
    MAX_REPLY_BYTES,
    agent_over_socket,
    agent_request,
    decode_agent_reply,
)
from reconciler.errors import DriverError

Guest = Callable[[socket.socket, bytes], None]  # the connection, what the client sent first


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[Callable[[Guest], Path]]:
    servers: list[socket.socket] = []

    def serve(guest: Guest) -> Path:
        path = tmp_path / f"agent{len(servers)}.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen(1)
        servers.append(server)

        def run() -> None:
            connection, _ = server.accept()
            with connection:
                first = connection.recv(65536)
                guest(connection, first)

        threading.Thread(target=run, daemon=True).start()
        return path

    yield serve
    for server in servers:
        server.close()


def sync_token(first: bytes) -> int:
    assert first.startswith(b"\xff")  # the parser reset, then guest-sync-delimited
    request = json.loads(first[1:].split(b"\n")[0])
    assert request["execute"] == "guest-sync-delimited"
    return int(request["arguments"]["id"])


def test_stale_bytes_and_an_old_sync_reply_are_skipped(
    agent_socket: Callable[[Guest], Path],
) -> None:
    def guest(connection: socket.socket, first: bytes) -> None:
        token = sync_token(first)
        connection.sendall(b'{"return": {"half of an old reply"' + b"\xff" + b'{"return": 7}\n')
        connection.sendall(b"\xff" + json.dumps({"return": token}).encode() + b"\n")
        connection.recv(65536)  # the command
        connection.sendall(b'{"return": {"version": "7.2.0"}}\n')

    path = agent_socket(guest)
    reply = agent_over_socket(path, "ask", agent_request("guest-info"), 5)
    assert reply == {"version": "7.2.0"}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"not json at all\n", "is not JSON"),
        (b"[1, 2]\n", "is not a JSON object"),
        (b'{"error": {"class": "GenericError", "desc": "no such file \\u0007"}}\n', "answered"),
        (b'{"neither": 1}\n', "has no result"),
    ],
)
def test_a_reply_that_is_not_a_result_is_an_error(
    agent_socket: Callable[[Guest], Path], answer: bytes, message: str
) -> None:
    def guest(connection: socket.socket, first: bytes) -> None:
        connection.sendall(b"\xff" + json.dumps({"return": sync_token(first)}).encode() + b"\n")
        connection.recv(65536)
        connection.sendall(answer)

    with pytest.raises(DriverError, match=message):
        agent_over_socket(agent_socket(guest), "ask", agent_request("guest-ping"), 5)


def test_an_endless_reply_is_cut_off(agent_socket: Callable[[Guest], Path]) -> None:
    def guest(connection: socket.socket, first: bytes) -> None:
        connection.sendall(b"\xff" + json.dumps({"return": sync_token(first)}).encode() + b"\n")
        connection.recv(65536)
        chunk = b"x" * 65536
        try:
            for _ in range(MAX_REPLY_BYTES // len(chunk) + 2):
                connection.sendall(chunk)
        except OSError:
            pass  # the client hung up: what is wanted

    with pytest.raises(DriverError, match="sent over"):
        agent_over_socket(agent_socket(guest), "ask", agent_request("guest-ping"), 10)


def test_a_silent_guest_times_out_on_time(agent_socket: Callable[[Guest], Path]) -> None:
    def guest(connection: socket.socket, first: bytes) -> None:
        time.sleep(3)

    started = time.monotonic()
    with pytest.raises(DriverError, match=r"did not answer within 0\.5 s"):
        agent_over_socket(agent_socket(guest), "ask", agent_request("guest-ping"), 0.5)
    assert time.monotonic() - started < 2


def test_no_socket_is_said(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no guest agent channel"):
        agent_over_socket(tmp_path / "none.sock", "ask", agent_request("guest-ping"), 1)


def test_replies_over_the_bound_are_refused_before_parsing() -> None:
    with pytest.raises(DriverError, match="over"):
        decode_agent_reply("ask", b"[" * (MAX_REPLY_BYTES + 1))
    assert decode_agent_reply("ask", '{"return": 3}') == 3
