"""No-op passes at scale: N managed instances (defined, not started), one manifest file each.

For each N, in a fresh state directory (libvirt's embedded driver unless --driver qmp), a set-up
pass (not measured) fetches nothing (the base is local), makes N qcow2 overlays and defines N
domains with `state: stopped`. Then, medians of --repeat runs, each a process of its own as a
user runs it:

  - `reconcile validate DIR`          schema and cross-file checks only
  - `reconcile plan DIR`              no-op plan (exit 0 with --detailed-exitcode)
  - `reconcile --once DIR`            no-op pass (checked to write nothing under the state)
  - the daemon's full resync          SIGHUP to `reconcile DIR`, until status shows the pass

and the time per instance. A profile of one no-op --once (cProfile, cumulative) splits it into
start-up (imports), load (YAML and specs), validate (the schema), observe (the driver and the
disk headers) and plan.

    .venv/bin/python bench/bench_scale.py [-n 100 1000 5000] [--repeat 3]
        [--driver libvirt|qmp|libvirtd]

(libvirtd: a libvirt daemon the bench starts, as the tests do, reached at its socket: a daemon
URI, with no embedded open to pay.)

With --hosts K: N x K manifests in one directory, K state directories (one per host, each
with --host): each host's no-op plan and --once over its slice, and a check that each defined
only its own instances.

    .venv/bin/python bench/bench_scale.py -n 1000 --hosts 3
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))
RECONCILE = [sys.executable, "-m", "reconciler"]
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

from tests.helpers import manifest_document, write_base_image  # noqa: E402
from tests.libvirtd import Libvirtd  # noqa: E402


def write_manifests(
    directory: Path, count: int, base: Path, sha: str, host: str | None = None
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    extra = {} if host is None else {"host": host}
    for index in range(count):
        name = f"rcbench-{host + '-' if host else ''}{index:05d}"
        document = manifest_document(
            name, base, sha, state="stopped", accelerator="tcg", networks=[], **extra
        )
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(document))


def run(command: list[str], *, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=CHILD_ENV, cwd=PROJECT)
    elapsed = time.perf_counter() - start
    if done.returncode not in ok:
        raise SystemExit(
            f"{command} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr}"
        )
    return elapsed, done.stdout


def snapshot(state: Path) -> dict[str, int]:
    return {
        str(path): path.stat().st_mtime_ns
        for top in ("instances", "images", "libvirt/etc")
        for path in (state / top).rglob("*")
        if path.is_file() and not path.name.endswith(".log")
    }


def profile_once(common: list[str], manifests: Path) -> dict[str, float]:
    """One no-op --once in a child process under cProfile: seconds per phase."""
    out = Path(tempfile.mkstemp(suffix=".prof")[1])
    # cProfile sees one thread: the pass's workers run in the main thread here, one by one
    code = (
        "import cProfile, sys\n"
        "profile = cProfile.Profile()\n"
        "profile.enable()\n"
        "from reconciler.cli import main\n"
        "from reconciler.loop import workers\n"
        "def drain(pool):\n"
        "    while (name := pool._queue.get(timeout=0)) is not None:\n"
        "        try:\n"
        "            pool._handle(name)\n"
        "        finally:\n"
        "            pool._queue.done(name)\n"
        "    pool._queue.close()\n"
        "workers.WorkerPool.drain = drain\n"
        "code = main.main(sys.argv[2:])\n"
        "profile.disable()\n"
        "profile.dump_stats(sys.argv[1])\n"
        "sys.exit(code)\n"
    )
    run([sys.executable, "-c", code, str(out), "--once", str(manifests), *common])
    stats = pstats.Stats(str(out), stream=io.StringIO())
    out.unlink()
    cumulative: dict[str, float] = {}
    for (filename, _, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        key = "/".join(Path(filename).parts[-2:]) + f":{function}"
        cumulative[key] = max(cumulative.get(key, 0.0), entry[3])

    def phase(*keys: str) -> float:
        return sum(cumulative.get(key, 0.0) for key in keys)

    validate = phase("manifests/loader.py:validate_document")
    return {
        "start-up": phase("<frozen importlib._bootstrap>:_find_and_load"),
        "load": phase("manifests/loader.py:load_paths") - validate,
        "validate": validate,
        "observe": phase("loop/observe.py:observe_instance"),
        "plan": phase("planning/plan.py:plan_instance"),
        "total": max(cumulative.values()),
    }


def resync_seconds(common: list[str], manifests: Path, root: Path, repeat: int) -> float:
    """The daemon's full pass over every instance: `reconcile --once DIR` while the daemon
    runs forwards it (the daemon rereads DIR, enqueues every name and answers when all are
    done); the first one (it waits for the start-up pass) is not counted."""
    log = (root / "daemon.log").open("ab")
    process = subprocess.Popen(
        [*RECONCILE, str(manifests), *common, "--resync", "1h"],
        stdout=log, stderr=subprocess.STDOUT, env=CHILD_ENV, cwd=PROJECT,
    )  # fmt: skip
    control = root / "s" / "control.sock"
    try:
        deadline = time.monotonic() + 600
        while not control.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"no daemon: {(root / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.05)
        forwarded = [*RECONCILE, "--once", str(manifests), *common]
        run(forwarded)
        return statistics.median(run(forwarded)[0] for _ in range(repeat))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)


def connection(driver: str, root: Path) -> tuple[list[str], Libvirtd | None]:
    """The options that choose the driver; for `libvirtd`, a libvirt daemon started here (as
    the tests start one: its own root and socket), to be killed by the caller."""
    if driver != "libvirtd":
        return ["--driver", driver], None
    daemon = Libvirtd(root / "libvirtd")
    daemon.prepare()
    daemon.start()
    return ["--connect", daemon.uri], daemon


def measure(count: int, repeat: int, driver: str, keep: bool) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix=f"rcsb{count}-", dir="/tmp"))
    images, manifests, state = root / "src", root / "m", root / "s"
    images.mkdir()
    chosen, daemon = connection(driver, root)
    try:
        base, sha = write_base_image(images)
        write_manifests(manifests, count, base, sha)
        common = ["--state-dir", str(state), "--image-dir", str(images), *chosen]
        setup, _ = run([*RECONCILE, "--once", str(manifests), *common])
        figures: dict[str, list[float]] = {"validate": [], "plan": [], "once": []}
        for _ in range(repeat):
            figures["validate"].append(run([*RECONCILE, "validate", str(manifests)])[0])
            plan = [*RECONCILE, "plan", "--detailed-exitcode", str(manifests), *common]
            figures["plan"].append(run(plan)[0])
            before = snapshot(state)
            figures["once"].append(run([*RECONCILE, "--once", str(manifests), *common])[0])
            if snapshot(state) != before:
                raise SystemExit("the no-op --once changed files under the state directory")
        medians = {key: statistics.median(values) for key, values in figures.items()}
        medians["resync"] = resync_seconds(common, manifests, root, repeat)
        return {"n": count, "setup": setup, **medians, "profile": profile_once(common, manifests)}
    finally:
        if daemon is not None:  # its domains are defined in its own root, under `root`
            daemon.kill()
        if not keep:  # nothing runs (state: stopped); the embedded root goes with the directory
            shutil.rmtree(root, ignore_errors=True)


def measure_hosts(count: int, hosts: int, repeat: int, driver: str) -> None:
    """One directory of count x hosts manifests, `hosts` state directories standing for as
    many hosts, each with --host: each one's no-op plan and --once (over its own slice of
    `count`), and a check that each defined only its own slice."""
    root = Path(tempfile.mkdtemp(prefix=f"rcsh{count}-", dir="/tmp"))
    images, manifests = root / "src", root / "m"
    images.mkdir()
    names = [f"hv-{chr(ord('a') + i)}" for i in range(hosts)]
    try:
        base, sha = write_base_image(images)
        for host in names:
            write_manifests(manifests, count, base, sha, host)
        print(f"{count * hosts} instances in one directory, {hosts} hosts of {count} each")
        for host in names:
            state = root / host
            common = [
                *("--state-dir", str(state), "--image-dir", str(images), "--driver", driver),
                *("--host", host),
            ]
            setup, out = run([*RECONCILE, "--once", str(manifests), *common])
            left = f"{count * (hosts - 1)} instance(s) left to other hosts"
            if left not in out:
                raise SystemExit(f"{host}: the pass did not keep to its slice:\n{out[:2000]}")
            plan = [*RECONCILE, "plan", "--detailed-exitcode", str(manifests), *common]
            plans = [run(plan)[0] for _ in range(repeat)]
            onces = [run([*RECONCILE, "--once", str(manifests), *common])[0] for _ in range(repeat)]
            defined = sorted(p.name for p in (state / "instances").iterdir())
            if len(defined) != count or not all(n.startswith(f"rcbench-{host}-") for n in defined):
                raise SystemExit(f"{host}: instances made outside its slice: {defined[:5]}...")
            print(
                f"  {host}: set-up {setup:.1f} s, no-op plan {statistics.median(plans):.3f} s, "
                f"no-op --once {statistics.median(onces):.3f} s, {len(defined)} instances, "
                "none of another host's",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-n", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--driver",
        choices=("libvirt", "qmp", "libvirtd"),
        default="libvirt",
        help="libvirt: the embedded driver; libvirtd: a libvirt daemon this bench starts",
    )
    parser.add_argument("--keep", action="store_true", help="keep the state directories")
    parser.add_argument(
        "--hosts",
        type=int,
        default=0,
        help="instead: N x HOSTS manifests in one directory, one state directory per host",
    )
    args = parser.parse_args()
    if args.hosts:
        if args.driver == "libvirtd":
            parser.error("--hosts stands for hosts of their own: the embedded driver or qmp")
        for count in args.n:
            measure_hosts(count, args.hosts, args.repeat, args.driver)
        return 0
    print(
        f"{'N':>6} {'setup':>8} {'validate':>9} {'plan':>7} {'--once':>7} {'resync':>7} "
        f"{'once/inst':>10}  profile of one --once (s)"
    )
    for count in args.n:
        row = measure(count, args.repeat, args.driver, args.keep)
        profile = row["profile"]
        assert isinstance(profile, dict)
        shares = " ".join(f"{k} {v:.3f}" for k, v in profile.items())
        print(
            f"{count:>6} {row['setup']:>8.1f} {row['validate']:>9.3f} {row['plan']:>7.3f} "
            f"{row['once']:>7.3f} {row['resync']:>7.3f} "
            f"{1000 * float(row['once']) / count:>8.2f}ms  {shares}",  # type: ignore[arg-type]
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
