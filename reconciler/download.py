"""HTTP(S) downloads of base images: streamed, hashed on the fly, capped, resumable, retried.

The only module that speaks HTTP. Standard library only (http.client): the job needs exact
control over redirects (bounded, never to another scheme), Range requests and timeouts, which
a higher-level client would hide.

Transient failures (connection reset or refused, stall, short body, 5xx, 408, 429) are retried
with exponential backoff; a retry resumes with Range when the server honours it and restarts
from zero when it does not. Permanent failures (other 4xx, a body over the size cap, a
checksum mismatch, a redirect to another scheme) raise DownloadRefused at once.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from reconciler.errors import InstanceError, StepError
from reconciler.steps_clock import Clock

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


class DownloadRefused(InstanceError):
    """The download can never succeed as the manifest stands (404, checksum, size cap...)."""


class _Transient(Exception):
    """One attempt failed in a way worth retrying."""


@dataclass(slots=True)
class _State:
    """What has been received and hashed so far (reset when a server ignores Range)."""

    hasher: hashlib._Hash
    received: int = 0
    total: int | None = None


def download(
    url: str,
    out: BinaryIO,
    expected_sha256: str,
    limits: DownloadLimits = DownloadLimits(),
    progress: TransferCallback | None = None,
    clock: Clock | None = None,
) -> int:
    """Stream `url` into `out` (an empty file opened for writing) and verify its sha256.

    Returns the number of bytes written. Raises DownloadRefused or DownloadFailed.
    """
    clock = clock or Clock()
    state = _State(hashlib.sha256())
    attempt = 0
    while True:
        try:
            _attempt(url, out, state, limits, progress)
            break
        except _Transient as err:
            attempt += 1
            if attempt >= limits.attempts:
                raise DownloadFailed(f"download of {url} failed {attempt} times: {err}") from err
            delay = min(limits.backoff_cap, limits.backoff_initial * 2 ** (attempt - 1))
            LOG.info("download of %s: %s; retrying in %.1fs", url, err, delay)
            clock.sleep(delay)
    digest = state.hasher.hexdigest()
    if digest != expected_sha256:
        raise DownloadRefused(
            f"checksum mismatch for {url}: manifest says sha256 {expected_sha256}, "
            f"the server sent {digest} ({state.received} bytes); the file was not kept"
        )
    return state.received


def probe_size(url: str, timeout: float = 5.0) -> int | None:
    """The size the server announces for `url` (HEAD, following redirects), or None."""
    try:
        response, connection = _request(url, "HEAD", {}, DownloadLimits(stall_seconds=timeout))
    except (_Transient, DownloadRefused, OSError):
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
) -> None:
    headers = {"Range": f"bytes={state.received}-"} if state.received else {}
    response, connection = _request(url, "GET", headers, limits)
    try:
        if state.received and response.status == 206:
            _check_content_range(response, state.received)
        elif response.status == 200:
            if state.received:
                LOG.info("download of %s: server ignored Range; restarting", url)
            out.seek(0)
            out.truncate()
            state.hasher, state.received = hashlib.sha256(), 0
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
    url: str, method: str, headers: dict[str, str], limits: DownloadLimits
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    """Send the request, following at most `limits.max_redirects` same-scheme redirects."""
    first = url
    scheme = urlsplit(url).scheme
    for _hop in range(limits.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme != scheme or parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadRefused(f"redirect to {url!r} leaves {scheme}; refused")
        connection = _connection(parts.scheme, parts.hostname, parts.port, limits.stall_seconds)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            connection.request(method, target, headers={"User-Agent": USER_AGENT, **headers})
            response = connection.getresponse()
        except ssl.SSLCertVerificationError as err:
            connection.close()
            raise DownloadRefused(
                f"TLS certificate of {parts.hostname} not trusted: {err}"
            ) from err
        except (TimeoutError, OSError, http.client.HTTPException) as err:
            connection.close()
            raise _Transient(f"{type(err).__name__}: {err}") from err
        if response.status in REDIRECTS:
            location = response.getheader("Location")
            connection.close()
            if not location:
                raise DownloadRefused(f"redirect without Location from {url}")
            url = urljoin(url, location)
            continue
        if response.status in TRANSIENT_STATUS:
            connection.close()
            raise _Transient(f"HTTP {response.status} from {url}")
        if response.status >= 400:
            connection.close()
            raise DownloadRefused(f"HTTP {response.status} {response.reason} for {url}")
        return response, connection
    raise DownloadRefused(
        f"more than {limits.max_redirects} redirects for {first} (the last to {url})"
    )


def _connection(
    scheme: str, host: str, port: int | None, timeout: float
) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    return http.client.HTTPConnection(host, port, timeout=timeout)
