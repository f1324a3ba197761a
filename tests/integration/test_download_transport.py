"""Proxies (as curl reads them from the environment) and CA bundles, against a real server, a
real proxy and a CA that the test makes, all on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from reconciler.cli import main as cli
from reconciler.clock import Clock
from reconciler.errors import ConfigError
from reconciler.images.cache import ImageCache
from reconciler.images.download import (
    DownloadLimits,
    DownloadRefused,
    ProxyRefused,
    Transport,
    download,
    probe_size,
)
from reconciler.images.qemuimg import QemuImg
from reconciler.images.sources import SourcePolicy
from reconciler.model.desired import ImageFormat, ImageSource
from reconciler.statedir import StateDir
from tests.httpserver import Behaviour, image_server, make_test_ca, proxy_server

BODY = os.urandom(1024 * 1024 + 7)
SHA = hashlib.sha256(BODY).hexdigest()
FAST = DownloadLimits(stall_seconds=2.0, attempts=3, backoff_initial=0.01)
NO_SLEEP = Clock(sleep=lambda _seconds: None)


def fetch(url: str, transport: Transport) -> bytes:
    out = io.BytesIO()
    download(url, out, SHA, FAST, clock=NO_SLEEP, transport=transport)
    return out.getvalue()


def test_plain_http_goes_through_http_proxy(tmp_path: Path) -> None:
    with image_server() as server, proxy_server() as proxy:
        server.serve("/a.raw", Behaviour(BODY))
        url = server.url("/a.raw")
        transport = Transport.from_environment({"http_proxy": proxy.url})
        assert fetch(url, transport) == BODY
        assert probe_size(url, transport) == len(BODY)
        assert proxy.requests == [f"GET {url}", f"HEAD {url}"]


def test_https_goes_through_a_connect_tunnel_and_trusts_the_named_ca(tmp_path: Path) -> None:
    ca, tls = make_test_ca(tmp_path)
    with image_server(tls=tls) as server, proxy_server() as proxy:
        served = server.serve("/a.raw", Behaviour(BODY))
        url = server.url("/a.raw")
        environment = {"HTTPS_PROXY": proxy.url}
        with pytest.raises(DownloadRefused, match="not trusted"):  # the system store lacks it
            fetch(url, Transport.from_environment(environment))
        assert served.gets == 0
        assert fetch(url, Transport.from_environment(environment, ca_bundle=ca)) == BODY
        host_port = url.split("/")[2]
        assert proxy.requests == [f"CONNECT {host_port}", f"CONNECT {host_port}"]


def test_ssl_cert_file_is_honoured_as_openssl_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, tls = make_test_ca(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with image_server(tls=tls) as server:
        server.serve("/a.raw", Behaviour(BODY))
        assert fetch(server.url("/a.raw"), Transport()) == BODY


def test_no_proxy_hosts_and_networks_go_direct() -> None:
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    with image_server() as server:
        server.serve("/a.raw", Behaviour(BODY))
        for no_proxy in ("127.0.0.1", "localhost, 127.0.0.0/8", "*"):
            transport = Transport.from_environment({"http_proxy": dead, "NO_PROXY": no_proxy})
            assert fetch(server.url("/a.raw"), transport) == BODY


def test_a_refusing_proxy_fails_at_once_and_is_not_blamed_on_the_source(tmp_path: Path) -> None:
    ca, tls = make_test_ca(tmp_path)
    with image_server(tls=tls) as server, proxy_server("refuse") as proxy:
        served = server.serve("/a.raw", Behaviour(BODY))
        url = server.url("/a.raw")
        transport = Transport.from_environment({"https_proxy": proxy.url}, ca_bundle=ca)
        with pytest.raises(ProxyRefused, match=r"proxy 127\.0\.0\.1:\d+ refused to connect to"):
            fetch(url, transport)
        assert len(proxy.requests) == 1  # not retried
        # through the cache: the instance fails, and nothing is remembered against the URL
        state = StateDir(tmp_path / "state")
        cache = ImageCache(state, QemuImg(), SourcePolicy(), FAST, transport=transport)
        image = ImageSource(url, SHA, ImageFormat.RAW)
        with pytest.raises(ProxyRefused):
            cache.ensure(image)
        cache.failures.raise_if_recorded(image)
        assert served.gets == 0


def test_a_proxy_that_wants_credentials_gets_them_from_the_url() -> None:
    with image_server() as server, proxy_server("auth", "user:p@ss") as proxy:
        server.serve("/a.raw", Behaviour(BODY))
        url = server.url("/a.raw")
        without = Transport.from_environment({"http_proxy": proxy.url})
        with pytest.raises(ProxyRefused, match="wants authentication"):
            fetch(url, without)
        with_credentials = Transport.from_environment(
            {"http_proxy": proxy.url.replace("http://", "http://user:p%40ss@")}
        )
        assert fetch(url, with_credentials) == BODY


@pytest.mark.parametrize(
    ("environment", "scheme", "expected"),
    [
        ({"HTTP_PROXY": "http://p:3128"}, "http", None),  # curl ignores it (CGI header)
        ({"http_proxy": "p:3128"}, "http", "p:3128"),
        ({"HTTPS_PROXY": "http://p:3128"}, "https", "p:3128"),
        ({"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"}, "https", "a:1"),
        ({"ALL_PROXY": "http://p"}, "https", "p:1080"),
        ({"ALL_PROXY": "http://p", "no_proxy": ".example.com"}, "https", None),
    ],
)
def test_proxy_variables_are_read_as_curl_reads_them(
    environment: dict[str, str], scheme: str, expected: str | None
) -> None:
    proxy = Transport.from_environment(environment).proxy_for(scheme, "img.example.com")
    assert (None if proxy is None else str(proxy)) == expected


@pytest.mark.parametrize("value", ["socks5://p:1080", "https://p:3128", "http://p:notaport"])
def test_a_proxy_we_cannot_use_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError, match="HTTPS_PROXY="):
        Transport.from_environment({"HTTPS_PROXY": value})


def test_cli_reports_a_missing_ca_bundle_and_an_unusable_proxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["plan", str(tmp_path), "--connect", "test:///default", "--state-dir", str(tmp_path)]
    assert cli.main([*common, "--ca-bundle", str(tmp_path / "none.pem")]) == 2
    assert "--ca-bundle" in capsys.readouterr().err
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    assert cli.main(common) == 2
    assert "only http:// proxies are supported" in capsys.readouterr().err
