"""Parse YAML into plain data while remembering where every value sits. Pure.

PyYAML's safe constructor is used for scalars only; mappings and sequences are built here so
that duplicate keys are caught and every JSON pointer maps to a line and column. PyYAML is
imported when a text is parsed: a pass whose files are all read already (the state
directory's manifest readings) never loads it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

# Aliases can make a small file expand into a huge tree ("billion laughs"); stop early.
MAX_NODES_PER_DOCUMENT = 100_000
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_STR_TAG = "tag:yaml.org,2002:str"
_MEMO_MAX_ENTRIES = 65536
_MEMO_MAX_LENGTH = 64
_scalar_tags: dict[tuple[str, tuple[bool, bool]], str] = {}


@functools.cache
def _loader_class() -> Any:
    """The safe loader (libyaml's, about 10 times faster, where PyYAML was built with it: the
    same nodes and marks, and the same safe constructor for scalars), with the tag of each
    short scalar remembered (a tag depends only on the text and its quoting: the safe loader
    has no path resolvers), and the resolver's path tracking (for path resolvers, of which it
    has none) skipped."""
    import yaml

    safe_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(safe_loader):  # type: ignore[misc,valid-type]
        def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
            if kind is not yaml.ScalarNode or len(value) > _MEMO_MAX_LENGTH:
                return str(super().resolve(kind, value, implicit))
            key = (value, implicit)
            tag = _scalar_tags.get(key)
            if tag is None:
                tag = str(super().resolve(kind, value, implicit))
                if len(_scalar_tags) < _MEMO_MAX_ENTRIES:
                    _scalar_tags[key] = tag
            return tag

        def descend_resolver(self, current_node: Any, current_index: Any) -> None:
            pass

        def ascend_resolver(self) -> None:
            pass

    return Loader


@dataclass(frozen=True, slots=True)
class Mark:
    """A 1-based position in the source text."""

    line: int
    column: int


@dataclass(slots=True)
class YamlDocument:
    """One YAML document: its data, the position of each value (by JSON pointer), of each
    mapping key (by the pointer of its value), and problems met while building it."""

    data: Any
    start: Mark
    # the parser's own marks (0-based), made Marks only when asked for
    value_marks: dict[str, yaml.Mark] = field(default_factory=dict)
    key_marks: dict[str, yaml.Mark] = field(default_factory=dict)
    problems: list[tuple[Mark, str, str]] = field(default_factory=list)  # mark, pointer, message

    def mark_of(self, pointer: str, *, key: bool = False) -> Mark:
        """The position of `pointer` (of its key when `key`), or of its nearest parent."""
        marks = self.key_marks if key else self.value_marks
        while True:
            if pointer in marks:
                return _mark(marks[pointer])
            if pointer in self.value_marks:
                return _mark(self.value_marks[pointer])
            if not pointer:
                return self.start
            pointer = pointer.rsplit("/", 1)[0]


class YamlSyntaxError(Exception):
    """The text is not well-formed YAML (or uses a tag the safe loader refuses)."""

    def __init__(self, mark: Mark, message: str) -> None:
        self.mark = mark
        self.message = message
        super().__init__(f"{mark.line}:{mark.column}: {message}")


def escape_pointer_token(token: str) -> str:
    """Escape one JSON pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _mark(yaml_mark: yaml.Mark | None) -> Mark:
    if yaml_mark is None:
        return Mark(1, 1)
    return Mark(yaml_mark.line + 1, yaml_mark.column + 1)


class _Builder:
    """Turns one composed node tree into data, recording marks and duplicate keys."""

    def __init__(self, loader: yaml.SafeLoader, document: YamlDocument) -> None:
        import yaml  # loaded already: the loader is PyYAML's

        self._yaml = yaml
        self._loader = loader
        self._document = document
        self._nodes = 0

    def build(self, node: yaml.Node, pointer: str) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES_PER_DOCUMENT:
            raise YamlSyntaxError(
                _mark(node.start_mark),
                f"document expands to more than {MAX_NODES_PER_DOCUMENT} nodes (alias bomb?)",
            )
        self._document.value_marks.setdefault(pointer, node.start_mark)
        yaml = self._yaml
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            raise YamlSyntaxError(_mark(node.start_mark), f"unsupported tag {node.tag!r}")
        if isinstance(node, yaml.MappingNode):
            return self._build_mapping(node, pointer)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, f"{pointer}/{index}") for index, item in enumerate(node.value)]
        if node.tag == _STR_TAG:  # what the safe constructor makes of it, without its calls
            return node.value
        return self._loader.construct_object(node, deep=True)

    def _build_mapping(self, node: yaml.MappingNode, pointer: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            key_mark = key_node.start_mark
            if isinstance(key_node, self._yaml.ScalarNode):
                key_value = (
                    key_node.value
                    if key_node.tag == _STR_TAG
                    else self._loader.construct_object(key_node)
                )
                key = key_value if isinstance(key_value, str) else str(key_node.value)
            else:
                self._document.problems.append(
                    (_mark(key_mark), pointer, "a mapping key must be a plain string")
                )
                continue
            child = f"{pointer}/{escape_pointer_token(key)}"
            if key in first_seen:
                first = _mark(first_seen[key])
                self._document.problems.append(
                    (_mark(key_mark), child, f"duplicate key {key!r} (first at line {first.line})")
                )
                continue
            first_seen[key] = key_mark
            self._document.key_marks[child] = key_mark
            result[key] = self.build(value_node, child)
        return result


def parse_documents(text: str) -> Iterator[YamlDocument]:
    """Yield each non-empty document of `text`; raise YamlSyntaxError on malformed YAML."""
    import yaml

    loader = _loader_class()(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            document = YamlDocument(data=None, start=_mark(node.start_mark))
            document.data = _Builder(loader, document).build(node, "")
            if document.data is None:
                continue
            yield document
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        message = " ".join(part for part in (err.context, err.problem) if part)
        raise YamlSyntaxError(_mark(mark), message or "malformed YAML") from err
    except yaml.YAMLError as err:
        raise YamlSyntaxError(Mark(1, 1), str(err)) from err
    finally:
        loader.dispose()
