"""Downloads from a real, misbehaving HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.clock import Clock
from reconciler.images.download import (
    DownloadFailed,
    DownloadLimits,
    DownloadRefused,
    download,
    probe_size,
)
from tests.httpserver import Behaviour, ImageServer, image_server

BODY = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(BODY).hexdigest()
FAST = DownloadLimits(stall_seconds=1.0, attempts=4, backoff_initial=0.01)
NO_SLEEP = Clock(sleep=lambda _seconds: None)


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with image_server() as running:
        yield running


def fetch(url: str, sha: str = SHA, limits: DownloadLimits = FAST) -> bytes:
    out = io.BytesIO()
    download(url, out, sha, limits, clock=NO_SLEEP)
    return out.getvalue()


def test_plain_download_and_size_probe(server: ImageServer) -> None:
    served = server.serve("/a.raw", Behaviour(BODY))
    assert fetch(server.url("/a.raw")) == BODY
    assert served.gets == 1
    assert probe_size(server.url("/a.raw")) == len(BODY)
    assert probe_size(server.url("/missing")) is None


def test_connection_dropped_half_way_resumes_with_range(server: ImageServer) -> None:
    served = server.serve("/a.raw", Behaviour(BODY, drop_after=len(BODY) // 2))
    assert fetch(server.url("/a.raw")) == BODY
    assert served.ranges == ["", f"bytes={len(BODY) // 2}-"]


def test_dropped_and_range_ignored_restarts_cleanly(server: ImageServer) -> None:
    served = server.serve("/a.raw", Behaviour(BODY, drop_after=1000000, honour_range=False))
    assert fetch(server.url("/a.raw")) == BODY
    assert served.gets == 2 and served.completed == 1


def test_500_then_200_is_retried(server: ImageServer) -> None:
    served = server.serve("/a.raw", Behaviour(BODY, fail_first=2))
    assert fetch(server.url("/a.raw")) == BODY
    assert served.gets == 3


def test_persistent_500_gives_up_as_transient(server: ImageServer) -> None:
    server.serve("/a.raw", Behaviour(BODY, fail_first=99, fail_status=503))
    with pytest.raises(DownloadFailed, match="failed 4 times: HTTP 503"):
        fetch(server.url("/a.raw"))


def test_404_is_permanent_at_once(server: ImageServer) -> None:
    served = server.serve("/a.raw", Behaviour(BODY, status=404))
    with pytest.raises(DownloadRefused, match="HTTP 404"):
        fetch(server.url("/a.raw"))
    assert served.gets == 1


def test_stall_is_detected_and_resumed(server: ImageServer) -> None:
    served = server.serve("/a.raw", Behaviour(BODY, stall_after=1 << 20, stall_seconds=3))
    # stalls on the first request only; the retry resumes where the stall began
    assert fetch(server.url("/a.raw")) == BODY
    assert served.ranges[0] == "" and served.ranges[1].startswith("bytes=")


def test_wrong_body_is_a_checksum_mismatch(server: ImageServer) -> None:
    server.serve("/a.raw", Behaviour(BODY[:-1] + bytes([BODY[-1] ^ 1])))
    with pytest.raises(DownloadRefused, match="checksum mismatch"):
        fetch(server.url("/a.raw"))


def test_size_cap(server: ImageServer) -> None:
    server.serve("/a.raw", Behaviour(BODY))
    limits = DownloadLimits(max_bytes=1024, attempts=2, backoff_initial=0.01)
    with pytest.raises(DownloadRefused, match="size cap"):
        fetch(server.url("/a.raw"), limits=limits)


def test_redirects_are_followed_but_bounded_and_never_change_scheme(server: ImageServer) -> None:
    server.serve("/a.raw", Behaviour(BODY))
    server.serve("/old", Behaviour(redirect_to="/a.raw"))
    assert fetch(server.url("/old")) == BODY
    server.serve("/loop", Behaviour(redirect_to="/loop-2"))
    server.serve("/loop-2", Behaviour(redirect_to="/loop"))
    with pytest.raises(DownloadRefused, match="redirects") as refused:
        fetch(server.url("/loop"))
    assert str(refused.value).startswith(f"more than 5 redirects for {server.url('/loop')} (")
    server.serve("/tls", Behaviour(redirect_to="https://127.0.0.1:1/a.raw"))
    with pytest.raises(DownloadRefused, match="leaves http"):
        fetch(server.url("/tls"))
    server.serve("/file", Behaviour(redirect_to="file:///etc/passwd"))
    with pytest.raises(DownloadRefused, match="leaves http"):
        fetch(server.url("/file"))


def test_https_with_an_untrusted_certificate_is_refused_at_once(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with image_server(tls=context) as server:
        served = server.serve("/a.raw", Behaviour(BODY))
        url = server.url("/a.raw")
        assert url.startswith("https://127.0.0.1:")
        with pytest.raises(DownloadRefused, match="not trusted"):
            fetch(url)
    assert served.gets == 0
