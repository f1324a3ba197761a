"""HTTP(S) downloads of base images: streamed, hashed on the fly, capped, resumable, retried.

The only module that speaks HTTP. Standard library only (http.client): the job needs exact
control over redirects (bounded, never to another scheme), Range requests and timeouts, which
a higher-level client would hide; http.client also tunnels HTTPS through a proxy (CONNECT).

Proxies are read from the environment as curl reads them (`http_proxy` in lower case only,
`HTTPS_PROXY` / `https_proxy`, `ALL_PROXY`, and `NO_PROXY` with host suffixes, `*` and IP
networks); HTTPS servers are checked against the system CA store, or a CA bundle when one is
named (`--ca-bundle`; OpenSSL's `SSL_CERT_FILE` and `SSL_CERT_DIR` work as usual).

Transient failures (connection reset or refused, stall, short body, 5xx, 408, 429) are retried
with exponential backoff; a retry resumes with Range when the server honours it and restarts
from zero when it does not. Permanent failures (other 4xx, a body over the size cap, a
checksum mismatch, a redirect to another scheme) raise DownloadRefused at once.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from reconciler.clock import Clock
from reconciler.errors import ConfigError, InstanceError, StepError

if TYPE_CHECKING:  # imported where used: a pass with local sources never speaks HTTP
    import http.client
    import ssl

LOG = logging.getLogger(__name__)
CHUNK = 1024 * 1024
USER_AGENT = "reconciler"
REDIRECTS = (301, 302, 303, 307, 308)
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)

# bytes received so far, total expected (None when unknown)
TransferCallback = Callable[[int, int | None], None]


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    """How far a download may go before it is given up."""

    max_bytes: int = 64 * 1024**3
    stall_seconds: float = 30.0
    max_redirects: int = 5
    attempts: int = 6
    backoff_initial: float = 0.5
    backoff_cap: float = 30.0


class DownloadFailed(StepError):
    """The download failed after every retry (transient causes); a later pass may succeed."""


class ProxyRefused(DownloadFailed):
    """The proxy would not carry the request (CONNECT refused, 407): not retried in this pass,
    and not remembered as the source's fault."""


DEFAULT_PROXY_PORT = 1080  # as curl


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where it listens and the Proxy-Authorization it needs, if any."""

    host: str
    port: int
    authorization: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Proxy-Authorization": self.authorization} if self.authorization else {}

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Transport:
    """How image servers are reached: the proxy for each scheme ("all" for any), the hosts
    reached directly, and the CA bundle HTTPS servers are checked against (None: the system's)."""

    proxies: Mapping[str, Proxy] = field(default_factory=dict)
    no_proxy: tuple[str, ...] = ()
    ca_bundle: Path | None = None

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] = os.environ, ca_bundle: Path | None = None
    ) -> Transport:
        """Proxies as curl reads them. Raises ConfigError for a proxy we cannot use."""
        names = {
            "http": ("http_proxy",),  # never HTTP_PROXY: a CGI sets it from a request header
            "https": ("https_proxy", "HTTPS_PROXY"),
            "all": ("all_proxy", "ALL_PROXY"),
        }
        proxies = {}
        for scheme, variables in names.items():
            for variable in variables:
                if environ.get(variable):
                    proxies[scheme] = _parse_proxy(variable, environ[variable])
                    break
        no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
        entries = tuple(e.strip().lower() for e in no_proxy.replace(" ", ",").split(",") if e)
        if ca_bundle is not None and not ca_bundle.is_file():
            raise ConfigError(f"--ca-bundle {ca_bundle}: no such file")
        return cls(proxies, entries, ca_bundle)

    def proxy_for(self, scheme: str, host: str) -> Proxy | None:
        """The proxy a request to `host` over `scheme` goes through (None: direct)."""
        proxy = self.proxies.get(scheme) or self.proxies.get("all")
        if proxy is None or _bypassed(host, self.no_proxy):
            return None
        return proxy

    def tls_context(self) -> ssl.SSLContext:
        import ssl

        if self.ca_bundle is None:
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=str(self.ca_bundle))


def _parse_proxy(variable: str, value: str) -> Proxy:
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(
            f"{variable}={value}: only http:// proxies are supported "
            "(HTTPS goes through them with CONNECT)"
        )
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
    try:
        port = parts.port or DEFAULT_PROXY_PORT
    except ValueError as err:
        raise ConfigError(f"{variable}={value}: {err}") from err
    return Proxy(parts.hostname, port, authorization)


def _bypassed(host: str, no_proxy: tuple[str, ...]) -> bool:
    """curl's NO_PROXY: `*`, a host name and its subdomains, or an IP address or network."""
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy:
        entry = entry.lstrip(".").strip("[]")
        if entry == "*" or host == entry or host.endswith("." + entry):
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


class DownloadRefused(InstanceError):
    """The download can never succeed as the manifest stands (404, checksum, size cap...)."""


class _Transient(Exception):
    """One attempt failed in a way worth retrying."""


class DownloadTotals:
    """What every download of this process received, and how many failed (after their
    retries): the daemon's metrics read them. Safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.failed = 0

    def add(self, received: int, failed: bool) -> None:
        with self._lock:
            self.received += received
            self.failed += failed


TOTALS = DownloadTotals()


@dataclass(slots=True)
class _State:
    """What has been received and hashed so far (reset when a server ignores Range)."""

    hasher: hashlib._Hash
    received: int = 0
    total: int | None = None
    also: hashlib._Hash | None = None  # a second checksum (the sha512 a distribution signs)

    def restart(self) -> None:
        self.hasher, self.received = hashlib.sha256(), 0
        if self.also is not None:
            self.also = hashlib.new(self.also.name)


def download(
    url: str,
    out: BinaryIO,
    expected_sha256: str,
    limits: DownloadLimits = DownloadLimits(),
    progress: TransferCallback | None = None,
    clock: Clock | None = None,
    transport: Transport = Transport(),
) -> int:
    """Stream `url` into `out` (an empty file opened for writing) and verify its sha256.

    Returns the number of bytes written. Raises DownloadRefused or DownloadFailed.
    """
    state = download_any(url, out, limits, transport, clock, progress)
    digest = state.hasher.hexdigest()
    if digest != expected_sha256:
        TOTALS.add(0, failed=True)
        raise DownloadRefused(
            f"checksum mismatch for {url}: manifest says sha256 {expected_sha256}, "
            f"the server sent {digest} ({state.received} bytes); the file was not kept"
        )
    return state.received


def download_published(
    url: str,
    out: BinaryIO,
    algorithm: str,
    expected: str,
    limits: DownloadLimits = DownloadLimits(),
    transport: Transport = Transport(),
    clock: Clock | None = None,
) -> str:
    """Stream `url` into `out` and verify it against the `algorithm` checksum a distribution
    signed (sha256 or sha512); returns its sha256. Raises DownloadRefused or DownloadFailed."""
    state = download_any(url, out, limits, transport, clock, also=algorithm)
    assert state.also is not None
    digest = state.also.hexdigest()
    if digest != expected:
        TOTALS.add(0, failed=True)
        raise DownloadRefused(
            f"checksum mismatch for {url}: the signed checksum file says {algorithm} "
            f"{expected}, the server sent {digest} ({state.received} bytes); the file was "
            "not kept"
        )
    return state.hasher.hexdigest()


def fetch_small(
    url: str,
    max_bytes: int,
    limits: DownloadLimits = DownloadLimits(),
    transport: Transport = Transport(),
    clock: Clock | None = None,
) -> bytes:
    """The body of `url`, a small file (a checksum file, its signature), at most `max_bytes`,
    through the same transport, retries and redirects as an image; what vouches for it is
    checked by the caller (a signature). Raises DownloadRefused or DownloadFailed."""
    out = io.BytesIO()
    download_any(url, out, dataclasses.replace(limits, max_bytes=max_bytes), transport, clock)
    return out.getvalue()


def download_any(
    url: str,
    out: BinaryIO,
    limits: DownloadLimits,
    transport: Transport,
    clock: Clock | None = None,
    progress: TransferCallback | None = None,
    also: str | None = None,
) -> _State:
    """Stream `url` into `out` with retries; what was received (its sha256 computed, and its
    `also` checksum)."""
    clock = clock or Clock()
    state = _State(hashlib.sha256(), also=None if also is None else hashlib.new(also))
    attempt = 0
    while True:
        try:
            _attempt(url, out, state, limits, progress, transport)
            TOTALS.add(state.received, failed=False)
            return state
        except DownloadRefused:
            TOTALS.add(state.received, failed=True)
            raise
        except _Transient as err:
            attempt += 1
            if attempt >= limits.attempts:
                TOTALS.add(state.received, failed=True)
                raise DownloadFailed(f"download of {url} failed {attempt} times: {err}") from err
            delay = min(limits.backoff_cap, limits.backoff_initial * 2 ** (attempt - 1))
            LOG.info("download of %s: %s; retrying in %.1fs", url, err, delay)
            clock.sleep(delay)


def probe_size(url: str, transport: Transport = Transport(), timeout: float = 5.0) -> int | None:
    """The size the server announces for `url` (HEAD, following redirects), or None."""
    limits = DownloadLimits(stall_seconds=timeout)
    try:
        response, connection = _request(url, "HEAD", {}, limits, transport)
    except (_Transient, DownloadRefused, DownloadFailed, OSError):
        return None
    try:
        length = response.getheader("Content-Length")
        return int(length) if length and length.isdigit() else None
    finally:
        connection.close()


def _attempt(
    url: str,
    out: BinaryIO,
    state: _State,
    limits: DownloadLimits,
    progress: TransferCallback | None,
    transport: Transport,
) -> None:
    headers = {"Range": f"bytes={state.received}-"} if state.received else {}
    response, connection = _request(url, "GET", headers, limits, transport)
    try:
        if state.received and response.status == 206:
            _check_content_range(response, state.received)
        elif response.status == 200:
            if state.received:
                LOG.info("download of %s: server ignored Range; restarting", url)
            out.seek(0)
            out.truncate()
            state.restart()
        else:
            raise DownloadRefused(f"unexpected HTTP status {response.status} for {url}")
        length = response.getheader("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        state.total = None if remaining is None else state.received + remaining
        if state.total is not None and state.total > limits.max_bytes:
            raise DownloadRefused(
                f"{url} is {state.total} bytes, over the size cap of {limits.max_bytes}"
            )
        _copy_body(response, out, state, limits, progress)
        if state.total is not None and state.received != state.total:
            raise _Transient(f"body ended after {state.received} of {state.total} bytes")
    finally:
        connection.close()


def _copy_body(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    state: _State,
    limits: DownloadLimits,
    progress: TransferCallback | None,
) -> None:
    import http.client

    while True:
        try:
            chunk = response.read1(CHUNK)
        except TimeoutError as err:
            raise _Transient(f"stalled: nothing received for {limits.stall_seconds:.0f}s") from err
        except (http.client.IncompleteRead, ConnectionError, OSError) as err:
            raise _Transient(f"connection lost: {err}") from err
        if not chunk:
            return
        state.received += len(chunk)
        if state.received > limits.max_bytes:
            raise DownloadRefused(f"download exceeds the size cap of {limits.max_bytes} bytes")
        state.hasher.update(chunk)
        if state.also is not None:
            state.also.update(chunk)
        out.write(chunk)
        if progress is not None:
            progress(state.received, state.total)


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _check_content_range(response: http.client.HTTPResponse, offset: int) -> None:
    match = _CONTENT_RANGE.fullmatch(response.getheader("Content-Range", "").strip())
    if match is None or int(match.group(1)) != offset:
        raise _Transient(
            f"server resumed at the wrong place ({response.getheader('Content-Range')})"
        )


def _request(
    url: str,
    method: str,
    headers: dict[str, str],
    limits: DownloadLimits,
    transport: Transport,
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    """Send the request, following at most `limits.max_redirects` same-scheme redirects."""
    import http.client
    import ssl

    first = url
    scheme = urlsplit(url).scheme
    for _hop in range(limits.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme != scheme or parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadRefused(f"redirect to {url!r} leaves {scheme}; refused")
        proxy = transport.proxy_for(parts.scheme, parts.hostname)
        via = f" via proxy {proxy}" if proxy else ""
        connection, target, extra = _connection(parts, proxy, transport, limits.stall_seconds)
        try:
            connection.request(
                method, target, headers={"User-Agent": USER_AGENT, **extra, **headers}
            )
            response = connection.getresponse()
        except ssl.SSLCertVerificationError as err:
            connection.close()
            raise DownloadRefused(
                f"TLS certificate of {parts.hostname} not trusted: {err}"
            ) from err
        except OSError as err:
            connection.close()
            if proxy is not None and str(err).startswith("Tunnel connection failed"):
                raise ProxyRefused(
                    f"proxy {proxy} refused to connect to {parts.netloc}: "
                    f"{str(err).removeprefix('Tunnel connection failed: ')}"
                ) from err
            raise _Transient(f"{type(err).__name__}{via}: {err}") from err
        except http.client.HTTPException as err:
            connection.close()
            raise _Transient(f"{type(err).__name__}{via}: {err}") from err
        if proxy is not None and response.status == 407:
            connection.close()
            raise ProxyRefused(f"proxy {proxy} wants authentication (HTTP 407) for {url}")
        if response.status in REDIRECTS:
            location = response.getheader("Location")
            connection.close()
            if not location:
                raise DownloadRefused(f"redirect without Location from {url}")
            url = urljoin(url, location)
            continue
        if response.status in TRANSIENT_STATUS:
            connection.close()
            raise _Transient(f"HTTP {response.status} from {url}{via}")
        if response.status >= 400:
            connection.close()
            raise DownloadRefused(f"HTTP {response.status} {response.reason} for {url}")
        return response, connection
    raise DownloadRefused(
        f"more than {limits.max_redirects} redirects for {first} (the last to {url})"
    )


def _connection(
    parts: SplitResult, proxy: Proxy | None, transport: Transport, timeout: float
) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """A connection for `parts`, the request target to send on it, and extra headers.

    Through a proxy, plain HTTP asks the proxy for the absolute URL; HTTPS opens a CONNECT
    tunnel and checks the server's certificate against its own host name as usual.
    """
    import http.client

    host = parts.hostname or ""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        if proxy is None:
            connection = http.client.HTTPSConnection(
                host, parts.port, timeout=timeout, context=transport.tls_context()
            )
            return connection, target, {}
        tunnel = http.client.HTTPSConnection(
            proxy.host, proxy.port, timeout=timeout, context=transport.tls_context()
        )
        tunnel.set_tunnel(host, parts.port or 443, headers=proxy.headers)
        return tunnel, target, {}
    if proxy is None:
        return http.client.HTTPConnection(host, parts.port, timeout=timeout), target, {}
    forward = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
    return forward, f"http://{parts.netloc}{target}", proxy.headers
