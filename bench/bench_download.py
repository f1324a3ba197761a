"""Base image download into the cache vs `curl -s -o FILE URL && sha256sum FILE`.

Serves a 1 GiB file from `python -m http.server` on 127.0.0.1 and measures, alternating, the
median of --repeat rounds of:
  - curl + sha256sum: the shell pipeline;
  - the cache fetch: a fresh process running ImageCache.ensure, i.e. download with sha256 on
    the fly, Python header inspection, `qemu-img info` under limits, fsync, atomic rename;
then once: `reconcile --once` of 10 instances (test:/// driver) that share the same new base,
counting the GET requests the server saw (one expected).

    .venv/bin/python bench/bench_download.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
FETCH = """
import sys
from pathlib import Path
from reconciler.model.desired import ImageFormat, ImageSource
from reconciler.images.cache import ImageCache
from reconciler.images.qemuimg import QemuImg
from reconciler.images.sources import SourcePolicy
from reconciler.statedir import StateDir
cache = ImageCache(StateDir(Path(sys.argv[3])), QemuImg(), SourcePolicy())
cache.ensure(ImageSource(sys.argv[1], sys.argv[2], ImageFormat.RAW))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=PROJECT, env=CHILD_ENV, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rcd-", dir="/var/tmp"))
    served = work / "www"
    served.mkdir()
    image = served / "image.raw"
    block = os.urandom(16 * 1024 * 1024)
    digest = hashlib.sha256()
    with image.open("wb") as out:
        for _ in range(args.size_mib // 16):
            out.write(block)
            digest.update(block)
    sha = digest.hexdigest()
    port = free_port()
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [PYTHON, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(served), str(port)],
        stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/image.raw"
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["curl", "-sfI", url], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("http.server did not start")
            time.sleep(0.1)
        curl, ours = [], []
        for round_ in range(args.repeat):
            target = work / f"curl-{round_}.raw"
            curl.append(timed(["bash", "-c", f"curl -s -o {target} {url} && sha256sum {target}"]))
            target.unlink()
            state = work / f"state-{round_}"
            ours.append(timed([PYTHON, "-c", FETCH, url, sha, str(state)]))
            shutil.rmtree(state)
        gets_before = (work / "server.log").read_text().count("GET /image.raw")
        manifests = work / "manifests"
        manifests.mkdir()
        spec = {
            "vcpus": 1,
            "memory": "128MiB",
            "disk": {"size": "2GiB"},
            "image": {"source": url, "sha256": sha, "format": "raw"},
        }
        documents = [
            {
                "apiVersion": "reconciler/v1alpha1",
                "kind": "Instance",
                "metadata": {"name": f"rcd-{index}"},
                "spec": spec,
            }
            for index in range(10)
        ]
        (manifests / "ten.yaml").write_text(yaml.safe_dump_all(documents))
        ten = timed(
            [PYTHON, "-m", "reconciler", "--once", str(manifests), "--connect", "test:///default",
             "--state-dir", str(work / "state-ten")]
        )  # fmt: skip
        time.sleep(0.5)
        gets = (work / "server.log").read_text().count("GET /image.raw") - gets_before
    finally:
        server.terminate()
        server.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    def rounds(values: list[float]) -> str:
        return ", ".join(f"{value:.2f}" for value in values)

    curl_s, ours_s = statistics.median(curl), statistics.median(ours)
    print(f"image: {args.size_mib} MiB over http://127.0.0.1 (python -m http.server)")
    print(f"curl -s -o FILE URL && sha256sum FILE: {curl_s:6.2f} s   (rounds: {rounds(curl)})")
    print(f"reconciler cache fetch:                {ours_s:6.2f} s   (rounds: {rounds(ours)})")
    print(f"ratio cache fetch / curl pipeline:     {ours_s / curl_s:6.2f}")
    print(f"10 instances sharing the new base (--once, test:///): {ten:.2f} s, {gets} download(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
