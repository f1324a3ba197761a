"""`reconcile images lock|outdated|update|pull`: images by name and their lock file.

    images lock [DIR]              resolve the names DIR's manifests use that its lock does
                                   not hold, write them (and drop entries no manifest uses)
    images outdated [DIR]          names whose distribution published a newer image
    images update [NAME...] [--dir DIR]
                                   move the lock to the newest images (all names, or these)
    images pull NAME [--from PATH] [--dir DIR]
                                   fill the cache with a locked image ahead of time: from its
                                   URL, or from a directory or tarball carried to the host

Resolving fetches the catalogue entry's checksum file and checks its signature (see
images.byname); `--once` resolves the names missing from the lock the same way, except in
pull mode, which only reads the lock the repository holds. Every command here that writes
takes the state directory (the cache) for its time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from reconciler.cli.options import Exit, Options
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.manifests.loader import LoadResult, load_manifests
from reconciler.model.imagelock import ImageName, LockedImage, lock_key

if TYPE_CHECKING:
    from reconciler.images.cache import ImageCache

BUSY = "a daemon or another command uses the state directory; try again when it is done"


def add_images_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    images = commands.add_parser(
        "images",
        parents=[common],
        help="images by name: lock, list outdated, update the lock, pull into the cache",
    )
    images.add_argument(
        "images_action", metavar="ACTION", choices=("lock", "outdated", "update", "pull"),
        help="lock: resolve the names not locked yet; outdated: list newer images; "
        "update: move the lock to them; pull: fill the cache ahead of time",
    )  # fmt: skip
    images.add_argument(
        "words", metavar="ARG", nargs="*",
        help="lock and outdated: DIR; update: the names (default all); pull: the name",
    )  # fmt: skip
    images.add_argument(
        "--dir", dest="images_dir", metavar="DIR", type=Path, default=None,
        help="update and pull: the manifest directory (default: the current directory)",
    )  # fmt: skip
    images.add_argument(
        "--from", dest="images_from", metavar="PATH", type=Path, default=None,
        help="pull: take the image from this directory or tarball instead of its URL "
        "(checked against the lock's sha256 all the same)",
    )  # fmt: skip
    images.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="outdated's format"
    )


def image_options(given: dict[str, Any]) -> dict[str, Any]:
    """The images command's words as Options fields: the action, DIR, the names."""
    action = str(given["images_action"])
    words = list(given.get("words") or ())
    directory = given.get("images_dir")
    if action in ("lock", "outdated"):
        if len(words) > 1:
            raise ConfigError(f"images {action} takes one DIR at most")
        if words and directory is not None:
            raise ConfigError(f"images {action}: give DIR or --dir, not both")
        directory = Path(words[0]) if words else directory
        words = []
    elif action == "pull" and len(words) != 1:
        raise ConfigError("images pull takes one NAME")
    if given.get("images_from") is not None and action != "pull":
        raise ConfigError("--from goes with images pull")
    return {
        "action": action,
        "directory": directory or Path("."),
        "names": tuple(words),
        "source_path": given.get("images_from"),
    }


def run_images(options: Options, out: TextIO) -> int:
    directory = options.directory
    if not directory.exists():
        raise ConfigError(f"{directory}: no such file or directory")
    if options.action == "outdated":
        return _outdated(options, out)
    from reconciler.cli.context import locked_state

    with locked_state(options, BUSY, for_driver=False) as state:
        cache = _cache(options, state)
        if options.action == "lock":
            return _lock(options, cache, out)
        if options.action == "update":
            return _update(options, cache, out)
        return _pull(options, cache, out)


def resolve_unlocked(options: Options, load: LoadResult, err: TextIO) -> bool:
    """`--once`: resolve the names the manifests use that the lock does not hold, and write
    the lock beside them; whether anything was written (the manifests are then read again).
    Failures are said on `err`; their instances stay unlocked (a manifest error)."""
    if not load.unlocked or options.git is not None:
        return False
    from reconciler.images.byname import lock_missing

    cache = _cache(options, options.state)
    print(f"reconcile: resolving {len(load.unlocked)} image name(s) from the catalogue", file=err)
    written, failed = lock_missing(
        options.directory, load.unlocked, options.catalogue(), cache, *_network(options)
    )
    for locked in written:
        print(f"reconcile: locked {_described(locked)}", file=err)
    for name, why in failed.items():
        print(f"reconcile: image {name}: {why}", file=err)
    return bool(written)


def _cache(options: Options, state: Any) -> ImageCache:
    from reconciler.images.cache import ImageCache
    from reconciler.images.qemuimg import QemuImg

    settings = options.settings()
    return ImageCache(
        state,
        QemuImg(),
        settings.sources,
        settings.download_limits,
        transport=settings.transport,
    )


def _network(options: Options) -> tuple[Any, Any]:
    settings = options.settings()
    return settings.transport, settings.download_limits


def _in_use(options: Options) -> tuple[LoadResult, set[ImageName]]:
    """The manifests, and every image name they use (locked or not)."""
    load = load_manifests(options.directory)
    used = set(load.unlocked)
    for spec in load.instances:
        if spec.image.name is not None:
            used.add(spec.image.name)
    return load, used


def _lock(options: Options, cache: ImageCache, out: TextIO) -> int:
    from reconciler.images.byname import lock_path, read_lock, resolve, write_lock

    path = lock_path(options.directory)
    _load, used = _in_use(options)
    current = read_lock(path)
    missing = [name for name in used if not _held(current, name)]
    found, failed = resolve(missing, options.catalogue(), cache, *_network(options))
    kept = {key: entry for key, entry in current.items() if _used(entry, key, used)}
    for key in sorted(set(current) - set(kept)):
        print(f"dropped {key}: no manifest uses it", file=out)
    for key in sorted(found):
        print(f"locked {_described(found[key])}", file=out)
    merged = {**kept, **found}
    if merged != current:
        write_lock(path, merged)
    for name, why in failed.items():
        print(f"reconcile: image {name}: {why}", file=sys.stderr)
    if not missing and merged == current:
        print(f"{path}: every name in use is locked ({len(current)})", file=out)
    return Exit.FAILED if failed else Exit.OK


def _held(lock: dict[str, LockedImage], name: ImageName) -> bool:
    entry = lock.get(name.key) or lock.get(lock_key(name.name, name.arch))
    return entry is not None and entry.named(name)


def _used(entry: LockedImage, key: str, used: set[ImageName]) -> bool:
    return any(name.key == key or (_held({key: entry}, name)) for name in used)


def _newer(
    options: Options, names: tuple[str, ...]
) -> tuple[list[tuple[str, LockedImage, Any]], int]:
    """Each lock entry (of `names`, default all) whose distribution publishes another image
    now, with what it publishes; and how many entries could not be looked up."""
    from reconciler.images.byname import entry_for, find_published, lock_path, read_lock

    lock = read_lock(lock_path(options.directory))
    unknown = set(names) - {entry.name for entry in lock.values()}
    if unknown:
        raise ConfigError(f"not in the lock file: {', '.join(sorted(unknown))}")
    catalogue = options.catalogue()
    transport, limits = _network(options)
    newer, failures = [], 0
    for key, entry in sorted(lock.items()):
        if names and entry.name not in names:
            continue
        wanted = ImageName(entry.name, entry.arch, entry.variant)
        try:
            published = find_published(
                entry_for(wanted, catalogue), entry.arch, entry.variant, transport, limits
            )
        except ReconcilerError as err:  # said per name; the others still count
            print(f"reconcile: image {key}: {err}", file=sys.stderr)
            failures += 1
            continue
        if not published.same_image(entry):
            newer.append((key, entry, published))
    return newer, failures


def _outdated(options: Options, out: TextIO) -> int:
    newer, failures = _newer(options, ())
    if options.output == "json":
        rows = [
            {"key": key, "locked": _row(entry), "newest": _row(published)}
            for key, entry, published in newer
        ]
        json.dump({"outdated": rows}, out, indent=2)
        out.write("\n")
    elif not newer:
        print("every locked image is the newest its distribution publishes", file=out)
    else:
        print(f"{'IMAGE':32} {'LOCKED':22} NEWEST", file=out)
        for key, entry, published in newer:
            print(f"{key:32} {_when(entry):22} {_when(published)}", file=out)
    return Exit.FAILED if failures else Exit.OK


def _update(options: Options, cache: ImageCache, out: TextIO) -> int:
    from reconciler.images.byname import lock_path, lock_published, read_lock, write_lock

    path = lock_path(options.directory)
    newer, failures = _newer(options, options.names)
    lock = read_lock(path)
    moved = False
    for key, entry, published in newer:
        try:
            lock[key] = lock_published(published, cache)
        except ReconcilerError as err:  # said per name; the others still move
            print(f"reconcile: image {key}: {err}", file=sys.stderr)
            failures += 1
            continue
        moved = True
        print(f"updated {key}: {_when(entry)} -> {_when(lock[key])}", file=out)
    if moved:
        write_lock(path, lock)
    if not newer:
        print("every locked image is the newest its distribution publishes", file=out)
    return Exit.FAILED if failures else Exit.OK


def _pull(options: Options, cache: ImageCache, out: TextIO) -> int:
    from reconciler.images.byname import lock_path, read_lock, resolve, write_lock
    from reconciler.model.desired import ImageFormat, ImageSource
    from reconciler.model.imagelock import host_architecture

    (name,) = options.names
    path = lock_path(options.directory)
    lock = read_lock(path)
    entries = [entry for entry in lock.values() if entry.name == name]
    if not entries:
        if options.source_path is not None:
            raise ConfigError(
                f"{name} is not in the lock file {path}: lock it first on a host that can "
                "reach its distribution (the lock says which bytes to take from --from)"
            )
        found, failed = resolve(
            [ImageName(name, host_architecture())], options.catalogue(), cache, *_network(options)
        )
        for why in failed.values():  # a name the catalogue lacks, a refused signature...
            raise why
        write_lock(path, {**lock, **found})
        entries = list(found.values())
        print(f"locked {_described(entries[0])}", file=out)
    for entry in entries:  # the lock says the bytes: nothing is resolved again here
        image = ImageSource(entry.url, entry.sha256, ImageFormat(entry.format))
        if options.source_path is not None:
            use = cache.import_carried(image, options.source_path)
        else:
            use = cache.ensure(image)
        said = "fetched into" if use.fetched else "already in"
        print(f"{entry.name} ({entry.arch}, {entry.variant}): {said} the cache as "
              f"{use.path.name}", file=out)  # fmt: skip
    return Exit.OK


def _described(locked: LockedImage) -> str:
    return f"{locked.name} ({locked.arch}, {locked.variant}): {locked.url} ({_when(locked)})"


def _when(image: Any) -> str:
    published = image.published or "date unknown"
    return f"{published[:10]} {image.digest[:12]}"


def _row(image: Any) -> dict[str, Any]:
    return {
        "url": image.url,
        "algorithm": image.algorithm,
        "digest": image.digest,
        "published": image.published,
        "size": image.size,
    }
