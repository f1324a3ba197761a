"""Helpers shared by the test suites: manifests, specs and the tiny base image."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from reconciler.layout import StateLayout
from reconciler.model.desired import (
    CpuSpec,
    DesiredState,
    ImageFormat,
    ImageSource,
    InstanceSpec,
)

PROJECT = Path(__file__).resolve().parent.parent


def bootsector_image_bytes() -> bytes:
    """The same bytes tools/make-bootsector-image.py writes."""
    spec = importlib.util.spec_from_file_location(
        "make_bootsector_image", PROJECT / "tools" / "make-bootsector-image.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data: bytes = module.boot_sector().ljust(module.IMAGE_BYTES, b"\0")
    return data


def write_base_image(directory: Path) -> tuple[Path, str]:
    """Write the boot-sector image into `directory`; return its path and sha256."""
    data = bootsector_image_bytes()
    path = directory / "bootsector.raw"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def run_bounded(
    command: Sequence[str],
    timeout: float,
    state_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(command, capture_output, text) that, past `timeout`, fails the test with
    what the process was doing: it gets SIGABRT first, so Python's faulthandler (enabled for
    the whole suite) prints every thread's stack, to the terminal or, once the libvirt driver
    has routed descriptor 2, to STATE/libvirt.log, whose tail is quoted."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            try:
                stdout, stderr = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            log = StateLayout(state_dir).libvirt_log if state_dir is not None else None
            tail = log.read_text(errors="replace")[-12000:] if log and log.is_file() else ""
            raise AssertionError(
                f"{' '.join(command)} still ran after {timeout} s\n--- stdout\n{stdout}"
                f"\n--- stderr\n{stderr}\n--- {log}\n{tail}"
            ) from None
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


_T = TypeVar("_T")


def poll(
    condition: Callable[[], _T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    broken: Callable[[], str | None] = lambda: None,
    context: Callable[[], str] = lambda: "",
) -> _T:
    """The one polling loop of the tests: `condition()` until it returns something true,
    which is returned, or fail after `timeout` seconds saying `what` was awaited (and
    `context()`). `broken()` is asked every round: a message fails the test at once (a daemon
    that exited will not make the condition true)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        failure = broken()
        assert failure is None, f"{failure} while waiting for {what}\n{context()}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{context()}")
        time.sleep(interval)


def unique_name(prefix: str = "rct") -> str:
    """A domain name no user would have: rct-<random>-..."""
    return f"{prefix}-{secrets.token_hex(3)}"


def manifest_document(
    name: str, image: Path, sha256: str | None, image_format: str = "raw", **spec_overrides: Any
) -> dict[str, Any]:
    source: dict[str, Any] = {"source": str(image), "format": image_format}
    if sha256 is not None:
        source["sha256"] = sha256
    convert_to = spec_overrides.pop("image_convert_to", None)
    if convert_to is not None:
        source["convertTo"] = convert_to
    spec: dict[str, Any] = {
        "state": "running",
        "vcpus": 1,
        "memory": "64MiB",
        "image": source,
        "disk": {"size": "64MiB"},
        "shutdownTimeoutSeconds": 1,
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "reconciler/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": name},
        "spec": spec,
    }


def write_manifest(
    directory: Path,
    name: str,
    image: Path,
    sha256: str | None,
    image_format: str = "raw",
    **spec_overrides: Any,
) -> Path:
    """Write one manifest file NAME.yaml (no sha256 in it when None); returns its path."""
    path = directory / f"{name}.yaml"
    document = manifest_document(name, image, sha256, image_format, **spec_overrides)
    path.write_text(yaml.safe_dump(document))
    return path


def make_spec(name: str = "web", **overrides: Any) -> InstanceSpec:
    """An InstanceSpec for pure tests."""
    values: dict[str, Any] = {
        "name": name,
        "manifest": Path("manifests/web.yaml"),
        "state": DesiredState.RUNNING,
        "vcpus": 1,
        "memory_bytes": 128 * 1024**2,
        "image": ImageSource(Path("/images/base.raw"), "a" * 64, ImageFormat.RAW),
        "disk_bytes": 2 * 1024**3,
        "accelerator": None,
        "cpu": CpuSpec(),
        "shutdown_timeout_seconds": 60,
    }
    values.update(overrides)
    return InstanceSpec(**values)


def free_port(span: int = 1) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a forward of a test guest),
    with the `span - 1` ports after it free too (one per member of a set)."""
    for _attempt in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + span > 65536:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first + 1, first + span):
                    other = stack.enter_context(socket.socket())
                    other.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {span} free ports in a row")
