"""Load instance manifests from files into Desired state, collecting every user error. Pure
apart from reading the files.

Each file is read whole; each YAML document in it is validated against
schemas/instance.schema.json, and every problem is reported with file:line:column, the JSON
pointer of the field and what was expected. Valid instances of other files are unaffected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from reconciler.errors import (
    EXCERPT_CHARACTERS,
    ConfigError,
    ManifestError,
    SourceLocation,
    excerpt,
)
from reconciler.fileops import InputFileRefused, read_input_file
from reconciler.manifests.filecache import (
    FileStamp,
    ManifestFileCache,
    NamedFile,
    Reading,
    stamp,
)
from reconciler.manifests.guest import aim_forwards, guest_config, networks
from reconciler.manifests.profiles import (
    PROFILE_KIND,
    MergedDocument,
    Profile,
    merge_profiles,
    profile_document_schema,
    without_nulls,
)
from reconciler.manifests.sets import SET_KIND, SET_LABEL, members, set_document_schema
from reconciler.manifests.shape import (
    DISK_ALIGNMENT,
    machine_settings,
    probes,
    restore_points_for,
    rollout_policy,
    snapshot_policy,
)
from reconciler.manifests.yamlsource import (
    YamlDocument,
    YamlSyntaxError,
    escape_pointer_token,
    parse_documents,
)
from reconciler.model.desired import (
    Accelerator,
    CpuMode,
    CpuSpec,
    DesiredState,
    ImageFormat,
    ImageSource,
    InstanceSpec,
)
from reconciler.model.imagelock import (
    LOCK_FILE,
    MAX_LOCK_BYTES,
    ImageName,
    LockedImage,
    host_architecture,
    parse_lock,
)
from reconciler.sizes import format_size, parse_size, round_up

if TYPE_CHECKING:  # imported when a document is validated (not every command does)
    import jsonschema

MANIFEST_SUFFIXES = (".yaml", ".yml")
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DOCUMENTS_PER_FILE = 1000  # instances in one file; a fleet that big splits its files
MAX_INSTANCES_PER_FILE = 1000  # instance sets' members counted: a file is never more work
MAX_ERRORS_PER_FILE = 50  # reported per file; the rest are counted ("and N more")
MIN_MEMORY_BYTES = 16 * 1024**2


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Instances that loaded cleanly, every error found, and the names that invalid
    documents claim (so that nothing acts on those instances this pass). `valid_documents`:
    the content keys of the documents the schema accepted (see `document_key`)."""

    instances: tuple[InstanceSpec, ...]
    errors: tuple[ManifestError, ...]
    files: tuple[Path, ...]
    invalid_names: frozenset[str]
    valid_documents: frozenset[str] = frozenset()
    sets: tuple[tuple[str, int], ...] = ()  # each valid instance set, and its replicas
    unlocked: tuple[ImageName, ...] = ()  # images named that the lock file does not hold


@dataclass(frozen=True, slots=True)
class ImageLock:
    """The lock file of a manifest root, as read for one load: its entries, or why it cannot
    be used (every instance that names an image then fails, none other)."""

    path: Path
    entries: dict[str, LockedImage]
    error: str | None = None
    catalogue: frozenset[str] | None = None  # the names a lock may be given (None: unknown)

    @classmethod
    def of(cls, root: Path, catalogue: Collection[str] | None = None) -> ImageLock:
        """The lock file beside the manifests of `root` (a directory, or a manifest file):
        refused when it leads out of that directory, is not a regular file, is too big, or
        is wrong anywhere (it is the repository's: every byte is the pusher's)."""
        directory = root if root.is_dir() else root.parent
        path = directory / LOCK_FILE
        names = None if catalogue is None else frozenset(catalogue)
        if not os.path.lexists(path):
            return cls(path, {}, None, names)
        try:
            raw = read_input_file(path, Path(os.path.realpath(directory)), MAX_LOCK_BYTES)
            return cls(path, parse_lock(raw, str(path)), None, names)
        except (InputFileRefused, ConfigError) as err:
            return cls(path, {}, str(err), names)


def schema_text() -> str:
    """The instance JSON Schema shipped with the package, as text."""
    return _schema_text()


@cache
def _schema_text() -> str:
    # beside this module (the package is installed as files): importlib.resources would
    # cost an eighth of the CLI's import time
    return (Path(__file__).parent / "schemas" / "instance.schema.json").read_text()


@cache
def instance_schema() -> dict[str, Any]:
    """The instance JSON Schema shipped with the package."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def document_key(data: Any) -> str | None:
    """A key for "this schema accepted this content": the digest of the schema and of the
    document as JSON (None when the document holds what JSON cannot say, a YAML timestamp:
    such a document is always validated). Validity is a function of the two alone, so a
    key a run recorded lets a later run skip the schema for the same content."""
    try:
        content = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None
    digest = hashlib.sha256(_schema_digest())
    digest.update(content.encode())
    return digest.hexdigest()


@cache
def _schema_digest() -> bytes:
    return hashlib.sha256(_schema_text().encode()).digest()


@cache
def _validator() -> jsonschema.Draft202012Validator:
    """The instance schema's validator (the schema itself is checked against its meta-schema
    by the tests, not on every run: that took a tenth of a second of each validating pass)."""
    import jsonschema

    return jsonschema.Draft202012Validator(instance_schema())


def kind_schemas() -> dict[str, dict[str, Any]]:
    """The schemas of the other kinds, for editors, by file name (shipped beside the
    instance schema; tools/write-schemas.py writes them, a test checks they are current)."""
    base = instance_schema()
    found = {}
    for file, schema, title in (
        ("profile.schema.json", profile_document_schema(base), "Profile"),
        ("instance-set.schema.json", set_document_schema(base), "InstanceSet"),
    ):
        found[file] = {
            **schema,
            "$schema": base["$schema"],
            "$id": base["$id"].replace("instance.schema.json", file),
            "title": title,
            "$defs": base.get("$defs", {}),
        }
    return found


@cache
def _set_validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(set_document_schema(instance_schema()))


@cache
def _profile_validator() -> jsonschema.Draft202012Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(profile_document_schema(instance_schema()))


def find_manifest_files(root: Path) -> list[Path]:
    """Every *.yaml / *.yml file under `root` (or `root` itself), skipping hidden entries."""
    if root.exists() and not root.is_dir():  # a file named on the command line, of any kind
        return [root]
    found: list[Path] = []
    for directory, subdirs, filenames in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(
            Path(directory, name)
            for name in sorted(filenames)
            if not name.startswith(".") and name.endswith(MANIFEST_SUFFIXES)
        )
    return found


def load_manifests(
    root: Path,
    known_valid: Collection[str] = frozenset(),
    cache: ManifestFileCache | None = None,
    catalogue: Collection[str] | None = None,
) -> LoadResult:
    """Load every manifest under `root`. Never raises for user mistakes: they are returned."""
    return load_paths([root], known_valid, cache, catalogue)


def load_paths(
    roots: Iterable[Path],
    known_valid: Collection[str] = frozenset(),
    cache: ManifestFileCache | None = None,
    catalogue: Collection[str] | None = None,
) -> LoadResult:
    """Load every manifest under each of `roots` (files or directories), checked against each
    other as one tree (names, MACs). Files a manifest names must lie in its root. A document
    whose `document_key` is in `known_valid` skips the schema (an earlier run validated that
    content); everything else, the cross-document checks included, runs as always. A file
    whose reading `cache` holds, unchanged since, is not read again (nor the files it names);
    what it gave takes part in the cross-document checks as if it had been. `catalogue`: the
    image names that can be resolved (a name the lock lacks and the catalogue too is said to
    be unknown; None: not known here)."""
    valid: set[str] = set()
    files: list[Path] = []
    seen: set[Path] = set()
    errors: list[ManifestError] = []
    invalid_names: set[str] = set()
    loaded: list[tuple[InstanceSpec, SourceLocation]] = []
    claimed: list[tuple[str, SourceLocation]] = []  # names of invalid documents, and where
    results: list[_FileLoad] = []
    unread: list[tuple[Path, Path, _Parsed, ImageLock]] = []  # files not held, parsed
    for root in roots:
        confine = Path(os.path.realpath(root if root.is_dir() else root.parent))
        lock: ImageLock | None = None  # read when a file of this root is read
        for path in find_manifest_files(root):
            if path in seen:
                continue
            seen.add(path)
            files.append(path)
            kept = _cached(path, confine, cache)
            if kept is not None:
                results.append(kept)
            else:
                lock = lock or ImageLock.of(root, catalogue)
                unread.append((path, confine, parse_manifest_file(path, confine), lock))
    # the profiles come from the files read now (a file that defines one is never kept)
    index, profile_errors = profile_index([(p, c, parsed) for p, c, parsed, _l in unread])
    errors.extend(profile_errors)
    for path, confine, parsed, lock in unread:
        results.append(_load_file(path, confine, parsed, known_valid, cache, index, lock))
    sets: dict[str, int] = {}
    unlocked: set[ImageName] = set()
    for file_instances, file_errors, file_claims, file_valid, file_sets, file_unlocked in results:
        sets.update(file_sets)
        unlocked.update(file_unlocked)
        valid.update(file_valid)
        loaded.extend(file_instances)
        errors.extend(file_errors)
        invalid_names.update(file_claims)
        claimed.extend(file_claims.items())
    if cache is not None:
        cache.keep_only(seen)
    instances, duplicate_errors, duplicated = _reject_duplicate_names(loaded, claimed)
    errors.extend(duplicate_errors)
    invalid_names.update(duplicated)
    for reject in (_reject_shared_macs, _reject_shared_ports):
        shared_errors, shared = reject(loaded)
        errors.extend(shared_errors)
        invalid_names.update(shared)
    return LoadResult(
        instances=tuple(i for i in instances if i.name not in invalid_names),
        errors=tuple(errors),
        files=tuple(files),
        invalid_names=frozenset(invalid_names),
        valid_documents=frozenset(valid),
        sets=tuple(sorted(sets.items())),
        unlocked=tuple(sorted(unlocked, key=lambda name: name.key)),
    )


_FileLoad = tuple[
    list[tuple[InstanceSpec, SourceLocation]],
    list[ManifestError],
    dict[str, SourceLocation],
    frozenset[str],
    tuple[tuple[str, int], ...],  # the file's valid instance sets, and their replicas
    frozenset[ImageName],  # the images it names that the lock does not hold
]


# a file's YAML documents and its stamp before it was read, or the error that stopped it
_Parsed = tuple[list[YamlDocument], ManifestError | None, FileStamp]


def _cached(path: Path, confine: Path, cache: ManifestFileCache | None) -> _FileLoad | None:
    """What reading `path` gave, when `cache` holds it and it still holds."""
    if cache is None:
        return None
    reading = cache.get(path, confine, stamp(path))
    if reading is None:
        return None
    kept: _FileLoad = reading.result
    return kept


def _load_file(
    path: Path,
    confine: Path,
    parsed: _Parsed,
    known_valid: Collection[str],
    cache: ManifestFileCache | None,
    profiles: dict[str, Profile | None],
    lock: ImageLock,
) -> _FileLoad:
    """One parsed file's load (and the keys of its valid documents), kept in `cache` unless
    it defines or uses a profile (its result then depends on other files); a file that
    names an image by name names the lock file too (its reading holds while the lock does)."""
    valid: set[str] = set()
    named: list[Path] = []
    sets: dict[str, int] = {}
    unlocked: set[ImageName] = set()
    instances, errors, claims = load_manifest_file(
        path, confine, known_valid, valid, named, profiles=profiles, parsed=parsed, sets=sets,
        lock=lock, unlocked=unlocked,
    )  # fmt: skip
    result: _FileLoad = (
        instances,
        errors,
        claims,
        frozenset(valid),
        tuple(sets.items()),
        frozenset(unlocked),
    )
    documents, _error, before = parsed
    shared = any(_kind(d.data) == PROFILE_KIND or _profiles_listed(d.data) for d in documents)
    if cache is not None and not shared:
        cache.put(path, Reading(before, confine, tuple(NamedFile.now(p) for p in named), result))
    return result


def _instance_documents(
    path: Path,
    documents: list[YamlDocument],
    errors: list[ManifestError],
    sets: dict[str, int] | None = None,
) -> Iterable[YamlDocument]:
    """The instance documents of a file: its Instance documents, and the members of each
    valid InstanceSet (the errors of an invalid one go to `errors`); profiles are skipped
    (load_paths checks them)."""
    count = 0
    for document in documents:
        kind = _kind(document.data)
        if kind == PROFILE_KIND:
            continue
        if kind != SET_KIND:
            count += 1
            yield document
            continue
        problems = validate_document(path, document, schema=_set_validator())
        if problems:
            errors.extend(problems)
            continue
        replicas = document.data["spec"]["replicas"]
        if count + replicas > MAX_INSTANCES_PER_FILE:
            errors.append(
                ManifestError(
                    _location(path, document, "/spec/replicas"),
                    "/spec/replicas",
                    f"this file would stand for more than {MAX_INSTANCES_PER_FILE} instances "
                    "(sets' members counted); the set is not used: split the file",
                )
            )
            continue
        count += replicas
        found, placeholder_problems = members(path, document)
        if sets is not None and not placeholder_problems:
            sets[document.data["metadata"]["name"]] = document.data["spec"]["replicas"]
        errors.extend(
            ManifestError(_location(path, document, pointer), pointer, message)
            for pointer, message in placeholder_problems
        )
        yield from found


def _said_of_instance(
    path: Path, document: YamlDocument, errors: list[ManifestError]
) -> list[ManifestError]:
    """Errors found at a field a profile gave an instance are reported at the profile's line,
    saying which instance they broke (a profile several instances use breaks each)."""
    name = _claimed_name(document.data)
    in_set = _set_of(document)
    said = []
    for error in errors:
        if in_set is not None:  # said once for the set, not once per member
            assert isinstance(document, MergedDocument)
            message = f"{error.message} (in the members of instance set {in_set!r})"
            pointer = error.pointer  # a profile's field, as the profile's file has it
            if error.location.path == str(path):  # the template's field
                pointer = document.source_of(error.pointer)[2]
            error = ManifestError(error.location, pointer, message, error.hint)
        elif error.location.path != str(path):
            message = f"{error.message} (merged into instance {name!r} of {path})"
            error = ManifestError(error.location, error.pointer, message, error.hint)
        said.append(error)
    return said


def _set_of(document: YamlDocument) -> str | None:
    """The instance set a member document was made for (None: not a member)."""
    if not isinstance(document, MergedDocument):
        return None
    labels = (document.data.get("metadata") or {}).get("labels") or {}
    value = labels.get(SET_LABEL)
    return value if isinstance(value, str) else None


def _kind(data: Any) -> Any:
    return data.get("kind") if isinstance(data, dict) else None


def _profiles_listed(data: Any) -> bool:
    spec = data.get("spec") if isinstance(data, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("template"), dict):
        spec = spec["template"]  # an instance set's members list the template's
    return isinstance(spec, dict) and bool(spec.get("profiles"))


def parse_manifest_file(path: Path, confine: Path) -> _Parsed:
    """A file's YAML documents (its stamp taken before the read: a change while reading
    shows next time), or the one error that stops it: a refused or unreadable file, not
    UTF-8, malformed YAML, too many documents."""
    before = stamp(path)
    try:  # a link out of the tree, a FIFO, a device: refused unread (never quoted back)
        raw = read_input_file(path, confine, MAX_MANIFEST_BYTES)
    except InputFileRefused as err:
        return [], ManifestError(SourceLocation(str(path), 1, 1), "", str(err)), before
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        message = f"not UTF-8 text (byte {err.start})"
        return [], ManifestError(SourceLocation(str(path), 1, 1), "", message), before
    try:
        documents = list(itertools.islice(parse_documents(text), MAX_DOCUMENTS_PER_FILE + 1))
    except YamlSyntaxError as err:
        location = SourceLocation(str(path), err.mark.line, err.mark.column)
        return [], ManifestError(location, "", f"malformed YAML: {err.message}"), before
    if len(documents) > MAX_DOCUMENTS_PER_FILE:
        location = SourceLocation(str(path), *_line_column(documents[-1]))
        message = (
            f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file; the rest is not read "
            "and none of the file's instances is used (split the file)"
        )
        return [], ManifestError(location, "", message), before
    return documents, None, before


def profile_index(
    parsed: list[tuple[Path, Path, _Parsed]],
) -> tuple[dict[str, Profile | None], list[ManifestError]]:
    """The valid profiles of the parsed files by name, and the errors of the others (a
    profile document the profile schema refuses, a name defined twice: both refused)."""
    found: dict[str, list[Profile]] = {}
    broken: set[str] = set()
    errors: list[ManifestError] = []
    for path, _confine, (documents, _error, _stamp) in parsed:
        for document in documents:
            if _kind(document.data) != PROFILE_KIND:
                continue
            checked = dataclasses.replace(document, data=without_nulls(document.data))
            problems = validate_document(path, checked, schema=_profile_validator())
            name = _claimed_name(document.data)
            if problems:
                errors.extend(problems)
                if name is not None:
                    broken.add(name)
                continue
            assert name is not None  # the schema requires it
            found.setdefault(name, []).append(Profile(name, path, document))
    index: dict[str, Profile | None] = dict.fromkeys(broken)
    for name, profiles in found.items():
        if len(profiles) == 1 and name not in broken:
            index[name] = profiles[0]
            continue
        index[name] = None
        for number, profile in enumerate(profiles):
            other = profiles[1] if number == 0 else profiles[0]
            where = _location(other.path, other.document, "/metadata/name")
            errors.append(
                ManifestError(
                    _location(profile.path, profile.document, "/metadata/name"),
                    "/metadata/name",
                    f"profile name {name!r} is also defined at {where}",
                    "names must be unique across all manifests",
                )
            )
    return index, errors


def load_manifest_file(
    path: Path,
    confine: Path | None = None,
    known_valid: Collection[str] = frozenset(),
    valid: set[str] | None = None,
    named: list[Path] | None = None,
    *,
    profiles: dict[str, Profile | None] | None = None,
    parsed: _Parsed | None = None,
    sets: dict[str, int] | None = None,
    lock: ImageLock | None = None,
    unlocked: set[ImageName] | None = None,
) -> tuple[
    list[tuple[InstanceSpec, SourceLocation]], list[ManifestError], dict[str, SourceLocation]
]:
    """Load one file: its valid instances (with where each is named), its errors, and the
    names its invalid documents claim (with where). Files the manifest names (user-data,
    injected files) must lie inside `confine` (default: the manifest's own directory); their
    paths are added to `named`. The keys of the documents the schema accepts are added to
    `valid`. An instance that lists profiles gets them merged in from `profiles` (a
    profile document itself is checked by load_paths, and skipped here); `parsed`: the
    file as parse_manifest_file read it already. An image named by name is looked up in
    `lock` (default: the lock file beside the file); those it does not hold are added to
    `unlocked`."""
    confine = confine or Path(os.path.realpath(path.parent))
    lock = lock or ImageLock.of(path)
    documents, failure, _before = parsed or parse_manifest_file(path, confine)
    if failure is not None:
        return [], [failure], {}

    instances: list[tuple[InstanceSpec, SourceLocation]] = []
    errors: list[ManifestError] = []
    claims: dict[str, SourceLocation] = {}
    for original in _instance_documents(path, documents, errors, sets):
        document: YamlDocument = original
        merged, problems, used = merge_profiles(path, original, profiles or {})
        if problems:
            errors.extend(
                ManifestError(_location(path, original, pointer), pointer, message)
                for pointer, message in problems
            )
            name = _claimed_name(original.data)
            if name is not None:
                claims[name] = _location(path, original, "/metadata/name")
            continue
        if merged is not None:
            document = merged
        key = document_key(document.data)
        document_errors = validate_document(path, document, key is not None and key in known_valid)
        if not document_errors and key is not None and valid is not None:
            valid.add(key)
        if not document_errors:
            spec, conversion_errors = _to_instance_spec(
                path, document, confine, named, lock, unlocked
            )
            document_errors = sorted(
                conversion_errors, key=lambda e: (e.location.line, e.location.column)
            )
            if spec is not None and not document_errors:
                if used:
                    recorded = tuple(dict.fromkeys((p.name, p.digest) for p in used))
                    spec = dataclasses.replace(spec, profiles=recorded)
                instances.append((spec, _location(path, document, "/metadata/name")))
                continue
        else:  # every check that can run on what parsed, so that errors do not come in rounds
            reported = {error.pointer for error in document_errors}
            document_errors += [
                error
                for error in _checks_on_what_parsed(path, document, confine, named)
                if error.pointer not in reported
            ]
            document_errors.sort(key=lambda e: (e.location.line, e.location.column, e.pointer))
        if merged is not None or original is not document or _set_of(original):
            document_errors = _said_of_instance(path, original, document_errors)
        errors.extend(document_errors)
        name = _claimed_name(document.data)
        if name is not None:
            claims[name] = _location(path, document, "/metadata/name")
    # a set's template error, once for all its members
    unique = list({str(error): error for error in errors}.values())
    return instances, _capped_errors(path, unique), claims


_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _checks_on_what_parsed(
    path: Path, document: YamlDocument, confine: Path, named: list[Path] | None
) -> list[ManifestError]:
    """The checks beyond the schema (sizes, the files a manifest names, repeated paths, MACs
    and host ports) on a document the schema refused: each part of the spec is checked as
    far as its shape allows, so that one round of fixes answers every error."""
    errors: list[ManifestError] = []

    def fail(pointer: str, message: str) -> None:
        errors.append(ManifestError(_location(path, document, pointer), pointer, message))

    data = document.data
    spec = data.get("spec") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        return []
    parts: tuple[Callable[[], object], ...] = (
        lambda: _size_or_error(spec["memory"], "/spec/memory", fail),
        lambda: _size_or_error(spec["disk"]["size"], "/spec/disk/size", fail),
        lambda: guest_config(spec, _origin(path, document), confine, fail, named),
        lambda: networks(spec, fail),
    )
    for part in parts:
        try:
            part()
        except _MALFORMED:  # that part's shape is wrong: the schema said so already
            continue
    return errors


def _line_column(document: YamlDocument) -> tuple[int, int]:
    return document.start.line, document.start.column


def _capped_errors(path: Path, errors: list[ManifestError]) -> list[ManifestError]:
    """The first MAX_ERRORS_PER_FILE errors, and one more that counts the rest."""
    if len(errors) <= MAX_ERRORS_PER_FILE:
        return errors
    rest = len(errors) - MAX_ERRORS_PER_FILE
    location = errors[MAX_ERRORS_PER_FILE].location
    summary = ManifestError(location, "", f"and {rest} more error(s) in {path.name}, not shown")
    return [*errors[:MAX_ERRORS_PER_FILE], summary]


def validate_document(
    path: Path,
    document: YamlDocument,
    schema_known_valid: bool = False,
    schema: jsonschema.Draft202012Validator | None = None,
) -> list[ManifestError]:
    """Every problem in one document: YAML-level ones (duplicate keys) and schema ones (not
    looked for again when `schema_known_valid`)."""
    errors = [
        ManifestError(SourceLocation(str(path), mark.line, mark.column), pointer, message)
        for mark, pointer, message in document.problems
    ]
    seen: set[str] = set()
    schema_errors = (
        () if schema_known_valid else (schema or _validator()).iter_errors(document.data)
    )
    for error in schema_errors:
        for manifest_error in _schema_errors(path, document, error):
            if str(manifest_error) not in seen:  # "required" repeats per missing field
                seen.add(str(manifest_error))
                errors.append(manifest_error)
        if len(errors) > MAX_ERRORS_PER_FILE:  # the file reports no more than that
            break
    errors.sort(key=lambda e: (e.location.line, e.location.column, e.pointer))
    return errors


def _pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + escape_pointer_token(str(part)) for part in parts)


def _child(pointer: str, key: object) -> str:
    return f"{pointer}/{escape_pointer_token(str(key))}"


def _rollout_group(document: YamlDocument) -> str:
    """The instances a rollout policy is shared by: an instance set's members, else those
    of the profile that wrote the policy, else this instance alone."""
    in_set = _set_of(document)
    if in_set is not None:
        return f"set/{in_set}"
    writer: YamlDocument = document
    pointer = "/spec/rollout"
    while isinstance(writer, MergedDocument):
        _path, source, there = writer.source_of(pointer)
        if source is writer:
            break
        writer, pointer = source, there
    if _kind(writer.data) == PROFILE_KIND:
        return f"profile/{writer.data['metadata']['name']}"
    return f"instance/{document.data['metadata']['name']}"


def _origin(path: Path, document: YamlDocument) -> Callable[[str], Path]:
    """The file that wrote each pointer of `document` (a profile's, for the fields it gave):
    what a relative path there is relative to."""
    if isinstance(document, MergedDocument):
        return lambda pointer: document.source_of(pointer)[0]
    return lambda _pointer: path


def _location(
    path: Path, document: YamlDocument, pointer: str, *, key: bool = False
) -> SourceLocation:
    """Where `pointer` is written: in `path`, or, for a field a profile gave an instance, in
    the profile's file."""
    if isinstance(document, MergedDocument):
        path, _source, _there = document.source_of(pointer)
    mark = document.mark_of(pointer, key=key)
    return SourceLocation(str(path), mark.line, mark.column)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "nothing (null)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return excerpt(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


_YAML11_HINT = (
    "YAML reads unquoted yes/no/on/off/true/false as booleans and digits as numbers; "
    "quote the value"
)


def _schema_errors(
    path: Path, document: YamlDocument, error: jsonschema.ValidationError
) -> list[ManifestError]:
    """Turn one jsonschema error into one or more ManifestErrors with positions."""
    pointer = _pointer(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    expected = schema.get("x-expected", "")
    value = error.instance
    if error.validator == "additionalProperties" and isinstance(value, dict):
        known = set(schema.get("properties", {}))
        allowed = ", ".join(sorted(known))
        return [
            ManifestError(
                _location(path, document, _child(pointer, key), key=True),
                _child(pointer, key),
                f"unknown field {_quoted_key(key)}",
                f"expected one of: {allowed}" if allowed else "",
            )
            for key in sorted(set(value) - known)
        ]
    if error.validator == "required" and isinstance(value, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [name for name in required if name not in value]
        return [
            ManifestError(
                _location(path, document, pointer),
                _child(pointer, name),
                f"missing required field {name!r}",
                f"expected {expected}" if expected else "",
            )
            for name in missing
        ]
    if error.validator == "type":
        message = f"expected {expected or error.validator_value}, got {_describe(value)}"
        scalar_for_string = "string" in str(error.validator_value) and isinstance(
            value, bool | int | float
        )
        hint = _YAML11_HINT if scalar_for_string and "quote" not in expected else ""
        return [ManifestError(_location(path, document, pointer), pointer, message, hint)]
    if "propertyNames" in error.absolute_schema_path:  # a bad key: the error is the key's own
        key = value if isinstance(value, str) else str(value)
        message = f"{excerpt(key)} is not a valid key"
        return [
            ManifestError(
                _location(path, document, _child(pointer, key), key=True),
                _child(pointer, key),
                message,
                f"expected {expected}" if expected else "",
            )
        ]
    if expected:
        message = f"{_describe(value)} is not valid (expected {expected})"
        hint = _YAML11_HINT if isinstance(value, bool) else ""
        return [ManifestError(_location(path, document, pointer), pointer, message, hint)]
    # jsonschema's own message quotes the whole value: only a short one is let through
    short = not isinstance(value, str | dict | list) or len(repr(value)) <= EXCERPT_CHARACTERS
    message = error.message if short else f"{_describe(value)} is not valid ({error.validator})"
    return [ManifestError(_location(path, document, pointer), pointer, message)]


def _quoted_key(key: object) -> str:
    text = str(key)
    return repr(text) if len(text) <= EXCERPT_CHARACTERS else excerpt(text)


def _claimed_name(data: Any) -> str | None:
    if isinstance(data, dict):
        metadata = data.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
            name: str = metadata["name"]
            return name
    return None


def image_name(image: dict[str, Any]) -> ImageName:
    """The image a schema-valid `image: {name, arch, variant}` asks for."""
    return ImageName(image["name"], image.get("arch") or host_architecture(), image.get("variant"))


def _named_image(
    image: dict[str, Any],
    lock: ImageLock,
    named: list[Path] | None,
    unlocked: set[ImageName] | None,
) -> ImageSource | None:
    """The source the lock pins for an image by name (None: the lock does not hold it, or
    cannot be used)."""
    if named is not None:
        named.append(lock.path)
    wanted = image_name(image)
    plain = ImageName(wanted.name, wanted.arch)
    entry = lock.entries.get(wanted.key) or lock.entries.get(plain.key)
    if entry is None or not entry.named(wanted):
        known = lock.catalogue is None or wanted.name in lock.catalogue
        if lock.error is None and known and unlocked is not None:
            unlocked.add(wanted)
        return None
    return ImageSource(
        entry.url,
        entry.sha256,
        ImageFormat(entry.format),
        ImageFormat(image["convertTo"]) if "convertTo" in image else None,
        wanted,
    )


def _unlocked_error(
    path: Path, document: YamlDocument, image: dict[str, Any], lock: ImageLock
) -> ManifestError:
    pointer = "/spec/image/name"
    if lock.error is not None:
        message = f"the image lock file cannot be used: {lock.error}"
        return ManifestError(_location(path, document, pointer), pointer, message)
    if lock.catalogue is not None and image["name"] not in lock.catalogue:
        return ManifestError(
            _location(path, document, pointer),
            pointer,
            f"image {image['name']!r} is not in the catalogue",
            f"expected one of: {', '.join(sorted(lock.catalogue))} (the host configuration's "
            "catalogue: adds names)",
        )
    return ManifestError(
        _location(path, document, pointer),
        pointer,
        f"image {image_name(image)} is not in the lock file {lock.path}",
        "`reconcile images lock DIR` resolves it from the catalogue and writes the lock; "
        "`reconcile --once DIR` does too, except in pull mode, which only reads the lock",
    )


def resolve_image_source(manifest: Path, source: str) -> Path | str:
    """An http(s) URL as it is; a file:// URL as its (absolute) path; a local path relative to
    the manifest's directory."""
    if source.startswith(("http://", "https://")):
        return source
    if source.startswith("file://"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL names host {parts.netloc!r}; only local files work")
        return Path(unquote(parts.path))
    candidate = Path(source)
    if not candidate.is_absolute():
        candidate = manifest.parent / candidate
    return candidate


def _to_instance_spec(
    path: Path,
    document: YamlDocument,
    confine: Path,
    named: list[Path] | None = None,
    lock: ImageLock | None = None,
    unlocked: set[ImageName] | None = None,
) -> tuple[InstanceSpec | None, list[ManifestError]]:
    """Build the InstanceSpec from a schema-valid document; unit errors are ManifestErrors.
    The files it names are added to `named`; an image by name not in `lock`, to
    `unlocked`."""
    data: dict[str, Any] = document.data
    spec: dict[str, Any] = data["spec"]
    errors: list[ManifestError] = []

    def fail(pointer: str, message: str) -> None:
        errors.append(ManifestError(_location(path, document, pointer), pointer, message))

    memory = _size_or_error(spec["memory"], "/spec/memory", fail)
    if memory is not None and memory < MIN_MEMORY_BYTES:
        fail("/spec/memory", f"{spec['memory']!r} is too small (expected at least 16MiB)")
    disk = _size_or_error(spec["disk"]["size"], "/spec/disk/size", fail)
    if disk is not None and disk == 0:
        fail("/spec/disk/size", "a disk of 0 bytes is not a disk (expected e.g. 20GiB)")
    for pointer, size in (("/spec/memory", memory), ("/spec/disk/size", disk)):
        limit = size_maximum(pointer)
        if size is not None and size > limit:
            fail(pointer, f"{format_size(size)} is more than the maximum of {format_size(limit)}")
    image = spec["image"]
    image_source: ImageSource | None = None
    if "name" in image:
        image_source = _named_image(image, lock or ImageLock.of(path), named, unlocked)
        if image_source is None:
            errors.append(_unlocked_error(path, document, image, lock or ImageLock.of(path)))
    else:
        try:
            image_source = ImageSource(
                resolve_image_source(
                    _origin(path, document)("/spec/image/source"), image["source"]
                ),
                image.get("sha256"),
                ImageFormat(image["format"]),
                ImageFormat(image["convertTo"]) if "convertTo" in image else None,
            )
        except ValueError as err:
            fail("/spec/image/source", str(err))
    guest = guest_config(spec, _origin(path, document), confine, fail, named)
    interfaces = aim_forwards(spec, networks(spec, fail), fail)
    settings = machine_settings(
        spec,
        memory,
        fail,
        lambda text, pointer: _size_or_error(text, pointer, fail),
        size_maximum("/spec/disk/size"),
    )
    settings.update(probes(spec, interfaces, fail))
    settings.update(snapshot_policy(spec, fail))
    settings.update(rollout_policy(spec, _rollout_group(document)))
    restore_points_for(settings)
    if errors or memory is None or disk is None or image_source is None:
        return None, errors
    cpu = spec.get("cpu", {})
    accelerator = spec.get("accelerator")
    labels = data["metadata"].get("labels", {})
    return (
        InstanceSpec(
            name=data["metadata"]["name"],
            manifest=path,
            host=spec.get("host"),
            state=DesiredState(spec.get("state", DesiredState.RUNNING)),
            vcpus=spec["vcpus"],
            memory_bytes=round_up(memory, 1024),
            image=image_source,
            disk_bytes=round_up(disk, DISK_ALIGNMENT),
            accelerator=Accelerator(accelerator) if accelerator else None,
            cpu=CpuSpec(CpuMode(cpu.get("mode", CpuMode.DEFAULT)), cpu.get("model")),
            shutdown_timeout_seconds=spec.get("shutdownTimeoutSeconds", 60),
            labels=tuple(sorted(labels.items())),
            allow_replace=spec.get("allowReplace", False),
            guest=guest,
            networks=interfaces,
            **settings,
        ),
        [],
    )


@cache
def size_maximum(pointer: str) -> int:
    """The largest size the schema allows at `pointer` (its `x-maximum`), in bytes."""
    node: dict[str, Any] = instance_schema()
    for token in pointer.strip("/").split("/"):
        node = node["properties"][token]
    return parse_size(node["x-maximum"])


def _size_or_error(text: str, pointer: str, fail: Any) -> int | None:
    try:
        return parse_size(text)
    except ValueError as err:
        fail(pointer, f"{err} (expected e.g. 20GiB)")
        return None


class DuplicateNameError(ManifestError):
    """The same instance name in two places; both are rejected."""

    def __init__(self, location: SourceLocation, name: str, other: SourceLocation) -> None:
        super().__init__(
            location,
            "/metadata/name",
            f"instance name {name!r} is also defined at {other}",
            "names must be unique across all manifests",
        )


def _reject_duplicate_names(
    loaded: list[tuple[InstanceSpec, SourceLocation]],
    claimed: Iterable[tuple[str, SourceLocation]] = (),
) -> tuple[list[InstanceSpec], list[ManifestError], set[str]]:
    """The instances whose name is unique, an error at each place of a repeated name, and the
    repeated names. `claimed`: the names invalid documents give, and where: a name repeated
    there is a duplicate too, so that an invalid document never takes a valid one's place
    without a word."""
    by_name: dict[str, list[SourceLocation]] = {}
    for name, location in [*((spec.name, where) for spec, where in loaded), *claimed]:
        by_name.setdefault(name, []).append(location)
    errors: list[ManifestError] = []
    for name, locations in by_name.items():
        if len(locations) > 1:
            for index, location in enumerate(locations):
                other = locations[1] if index == 0 else locations[0]
                errors.append(DuplicateNameError(location, name, other))
    duplicated = {name for name, locations in by_name.items() if len(locations) > 1}
    return [spec for spec, _ in loaded if spec.name not in duplicated], errors, duplicated


def _reject_shared_macs(
    loaded: list[tuple[InstanceSpec, SourceLocation]],
) -> tuple[list[ManifestError], set[str]]:
    """An error at each instance that gives a MAC another instance gives too, and their
    names (derived MACs are kept apart when they are chosen, see planning.network)."""
    return _reject_shared(
        loaded, lambda spec: [nic.mac for nic in spec.networks if nic.mac is not None], "mac"
    )


def _reject_shared_ports(
    loaded: list[tuple[InstanceSpec, SourceLocation]],
) -> tuple[list[ManifestError], set[str]]:
    """An error at each instance that forwards a host port (address, port, protocol) another
    instance forwards too, and their names: only one of them could ever listen on it."""
    return _reject_shared(
        loaded,
        lambda spec: [
            f"{port.address}:{port.host}/{port.protocol.value}"
            for nic in spec.networks
            for port in nic.ports
        ],
        "host port",
    )


def _reject_shared(
    loaded: list[tuple[InstanceSpec, SourceLocation]],
    values_of: Callable[[InstanceSpec], list[str]],
    what: str,
) -> tuple[list[ManifestError], set[str]]:
    """An error at each instance that gives a value (of `values_of`) that another instance
    gives too, naming the others and where they are, and the names of all of them."""
    owners: dict[str, list[tuple[str, SourceLocation]]] = {}
    for spec, location in loaded:
        for value in dict.fromkeys(values_of(spec)):
            owners.setdefault(value, []).append((spec.name, location))
    errors: list[ManifestError] = []
    names: set[str] = set()
    for value, users in owners.items():
        if len({name for name, _ in users}) < 2:
            continue
        for name, location in users:
            others = ", ".join(f"{o} ({where})" for o, where in users if o != name)
            errors.append(
                ManifestError(
                    location, "/spec/networks", f"{what} {value} is also given by {others}"
                )
            )
            names.add(name)
    return errors, names
