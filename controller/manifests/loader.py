"""Strict YAML loading of manifest files, keeping the line of every value.

PyYAML composes each document into a node tree (marks included); we convert the
nodes to plain values ourselves so that duplicate keys, merge keys, exotic tags
and alias bombs are refused instead of silently accepted or expanded.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Files (and request bodies) larger than this are refused before parsing."""

MAX_ALIAS_NODES = 100_000
"""Nodes that aliases may expand to, per file; a billion-laughs bomb stops here."""

MAX_DEPTH = 100
"""Deepest nesting of mappings and lists accepted in a document."""

FieldPath = tuple[str | int, ...]
"""Where a value sits in a document: mapping keys and list indexes."""

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_NULL = _TAG + "null"
_MAP = _TAG + "map"
_SEQ = _TAG + "seq"

# PyYAML's C composer is several times faster; the pure-Python one is the fallback.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_IMPLICIT_FIRST = frozenset(k for k in _BaseLoader.yaml_implicit_resolvers if k)
_RESOLVED: dict[str, str] = {}
"""Tags of plain scalars that may have an implicit type (`3`, `no`, `1920x1080`): manifests
repeat them, and PyYAML tries its regular expressions one by one."""
_RESOLVED_MAX = 10_000


class _YamlLoader(_BaseLoader):  # type: ignore[misc]
    """The safe loader, cheaper where the composer calls back into Python for every node."""

    yaml_path_resolvers: ClassVar[dict[Any, Any]] = {}
    """No path resolvers, even if some are added to PyYAML's loaders: a tag depends on the
    scalar alone."""

    # Around every node the composer tells the resolver where it is, which matters only
    # to path resolvers. A builtin taking the same arguments costs no Python frame.
    descend_resolver = staticmethod(operator.is_)  # (parent, index): result ignored
    ascend_resolver = staticmethod(tuple)  # (): result ignored

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        """The tag of a node without an explicit one (as PyYAML's resolver decides it)."""
        if kind is not ScalarNode:
            return _MAP if kind is MappingNode else _SEQ  # PyYAML's defaults
        if not implicit[0] or (value and value[0] not in _IMPLICIT_FIRST):
            return _STR  # quoted, or plain but no implicit type starts with this character
        tag = _RESOLVED.get(value)
        if tag is None:
            tag = str(super().resolve(kind, value, implicit))
            if len(_RESOLVED) < _RESOLVED_MAX and len(value) <= 64:
                _RESOLVED[value] = tag
        return tag


if None in _BaseLoader.yaml_implicit_resolvers:  # a wildcard resolver: no shortcut is safe
    del _YamlLoader.resolve

_SIMPLE_FIELD = re.compile(r"[A-Za-z0-9_-]+")


def format_field(path: FieldPath) -> str:
    """Dotted field path: `spec.command[3]`, `metadata.labels["ffrtmp.io/zone"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_FIELD.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


@dataclass(frozen=True, order=True)
class Problem:
    """One finding about a manifest file; `str()` is `file:line: field.path: message`."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        if self.field:
            return f"{self.path}:{self.line}: {self.field}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


class LineMap:
    """The 1-based line of every value (and of every mapping key) of one document.

    A map built by `deferred` is computed on first use: files that load cleanly have
    their lines worked out only when an error has to point at one.
    """

    __slots__ = ("_keys", "_source", "_values")

    def __init__(
        self, values: Mapping[FieldPath, int], keys: Mapping[FieldPath, int] | None = None
    ) -> None:
        self._values = values
        self._keys: Mapping[FieldPath, int] = keys if keys is not None else {}
        self._source: Callable[[], LineMap] | None = None

    @classmethod
    def deferred(cls, source: Callable[[], LineMap]) -> LineMap:
        """A map that `source()` builds the first time it is read."""
        lines = cls({})
        lines._source = source
        return lines

    def _built(self) -> None:
        source = self._source
        if source is not None:
            real = source()
            self._values, self._keys = real.values, real.keys
            self._source = None

    @property
    def values(self) -> Mapping[FieldPath, int]:
        """Line of the value at each path."""
        self._built()
        return self._values

    @property
    def keys(self) -> Mapping[FieldPath, int]:
        """Line of the mapping key naming each path."""
        self._built()
        return self._keys

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LineMap):
            return NotImplemented
        return self.values == other.values and self.keys == other.keys

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LineMap({dict(self.values)!r}, {dict(self.keys)!r})"

    def line_of(self, path: FieldPath) -> int:
        """Line of the value at `path`, else of its nearest recorded ancestor."""
        values = self.values
        for end in range(len(path), -1, -1):
            line = values.get(path[:end])
            if line is not None:
                return line
        return 1

    def key_line_of(self, path: FieldPath) -> int:
        """Line of the mapping key naming `path`, else the line of its value."""
        line = self.keys.get(path)
        return line if line is not None else self.line_of(path)

    def has(self, path: FieldPath) -> bool:
        """True when the document holds a value at `path`."""
        return path in self.values

    def rooted_at(self, prefix: FieldPath) -> LineMap:
        """The lines of the value at `prefix`, with paths made relative to it."""
        n = len(prefix)
        return LineMap(
            {p[n:]: line for p, line in self.values.items() if p[:n] == prefix},
            {p[n:]: line for p, line in self.keys.items() if p[:n] == prefix and len(p) > n},
        )

    def children(self) -> dict[str | int, LineMap]:
        """`rooted_at((head,))` for every first path element, built in one pass."""
        # One pass instead of one scan per child: an apply body of n items is linear, not n².
        values: dict[str | int, dict[FieldPath, int]] = {}
        keys: dict[str | int, dict[FieldPath, int]] = {}
        for p, line in self.values.items():
            if p:
                values.setdefault(p[0], {})[p[1:]] = line
        for p, line in self.keys.items():
            if len(p) > 1:
                keys.setdefault(p[0], {})[p[1:]] = line
        return {
            head: LineMap(values.get(head, {}), keys.get(head, {}))
            for head in values.keys() | keys.keys()
        }


_NO_LINES = LineMap({})


@dataclass(frozen=True)
class Document:
    """One declared object's raw mapping, with where it came from."""

    path: str
    index: int
    line: int
    data: dict[str, Any]
    lines: LineMap


@dataclass(frozen=True)
class LoadResult:
    """The documents of one file, and the problems that kept others out."""

    documents: tuple[Document, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the file loaded without any problem."""
        return not self.problems


class _LoadError(Exception):
    """Stops converting one document; carries where and why."""

    def __init__(self, line: int, path: FieldPath, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _short(tag: str) -> str:
    return tag.replace(_TAG, "!!")


def _describe_key(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Converter:
    """Turns the node trees of one file into plain values and a LineMap per document."""

    def __init__(self) -> None:
        self._constructor = SafeConstructor()
        self._seen: set[int] = set()
        self._expanded = 0
        self._open: set[int] = set()

    def document(self, root: Node) -> tuple[Any, LineMap]:
        """Convert one document's root node."""
        values: dict[FieldPath, int] = {(): _line(root)}
        keys: dict[FieldPath, int] = {}
        data = self._value(root, (), 0, False, values, keys)
        return data, LineMap(values, keys)

    def _count(self, node: Node, path: FieldPath, in_alias: bool) -> bool:
        # A node met a second time is an alias; everything below it is an expansion.
        in_alias = in_alias or id(node) in self._seen
        self._seen.add(id(node))
        if in_alias:
            self._expanded += 1
            if self._expanded > MAX_ALIAS_NODES:
                raise _LoadError(
                    _line(node), (), f"aliases expand to more than {MAX_ALIAS_NODES} nodes"
                )
        return in_alias

    def _value(
        self,
        node: Node,
        path: FieldPath,
        depth: int,
        in_alias: bool,
        values: dict[FieldPath, int],
        keys: dict[FieldPath, int],
    ) -> Any:
        if depth > MAX_DEPTH:
            raise _LoadError(_line(node), path, f"nested deeper than {MAX_DEPTH} levels")
        in_alias = self._count(node, path, in_alias)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            raise _LoadError(_line(node), path, "recursive alias (a value contains itself)")
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self._sequence(node, path, depth, in_alias, values, keys)
            if isinstance(node, MappingNode):
                return self._mapping(node, path, depth, in_alias, values, keys)
        finally:
            self._open.discard(id(node))
        raise _LoadError(_line(node), path, "unsupported YAML node")

    def _sequence(
        self,
        node: SequenceNode,
        path: FieldPath,
        depth: int,
        in_alias: bool,
        values: dict[FieldPath, int],
        keys: dict[FieldPath, int],
    ) -> list[Any]:
        if node.tag != _TAG + "seq":
            raise _LoadError(_line(node), path, f"unsupported YAML tag {_short(node.tag)}")
        out: list[Any] = []
        for index, item in enumerate(node.value):
            item_path = (*path, index)
            values[item_path] = _line(item)
            out.append(self._value(item, item_path, depth + 1, in_alias, values, keys))
        return out

    def _mapping(
        self,
        node: MappingNode,
        path: FieldPath,
        depth: int,
        in_alias: bool,
        values: dict[FieldPath, int],
        keys: dict[FieldPath, int],
    ) -> dict[str, Any]:
        if node.tag != _TAG + "map":
            raise _LoadError(_line(node), path, f"unsupported YAML tag {_short(node.tag)}")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = _line(key_node)
            if key_node.tag == _TAG + "merge":
                raise _LoadError(
                    key_line, path, "merge keys (<<) are not supported; write the fields out"
                )
            key = self._scalar(key_node, path) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                shown = _describe_key(key) if isinstance(key_node, ScalarNode) else "a collection"
                raise _LoadError(
                    key_line, path, f"mapping keys must be strings (got {shown}; quote it)"
                )
            child = (*path, key)
            if key in out:
                raise _LoadError(
                    key_line, child, f"duplicate key (first at line {keys[child]})"
                )
            keys[child] = key_line
            # A collection is located by its key; a scalar by where the scalar is written.
            values[child] = _line(value_node) if isinstance(value_node, ScalarNode) else key_line
            out[key] = self._value(value_node, child, depth + 1, in_alias, values, keys)
        return out

    def _scalar(self, node: ScalarNode, path: FieldPath) -> Any:
        tag = node.tag
        try:
            if tag == _TAG + "str":
                return node.value
            if tag == _TAG + "null":
                return None
            if tag == _TAG + "bool":
                return self._constructor.construct_yaml_bool(node)
            if tag == _TAG + "int":
                return self._constructor.construct_yaml_int(node)
            if tag == _TAG + "float":
                return self._constructor.construct_yaml_float(node)
        except ValueError:
            # int() refuses numbers with thousands of digits (CPython's int_max_str_digits).
            raise _LoadError(_line(node), path, "number too large") from None
        if tag == _TAG + "timestamp":
            # A date-like value (`2026-01-01`) is kept as written, not turned into a datetime.
            return node.value
        raise _LoadError(_line(node), path, f"unsupported YAML tag {_short(tag)}")


def _offset_line(data: bytes | str, offset: int) -> int:
    newline: Any = b"\n" if isinstance(data, bytes) else "\n"
    return int(data.count(newline, 0, offset)) + 1


def _decode(data: bytes, path: str) -> str | Problem:
    """UTF-8 text of `data`, or the problem that makes it binary junk."""
    nul = data.find(b"\0")
    if nul >= 0:
        return Problem(
            path,
            _offset_line(data, nul),
            "",
            f"binary data (NUL byte at offset {nul}); a manifest must be UTF-8 text",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Problem(
            path,
            _offset_line(data, exc.start),
            "",
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
        )


def _too_large(size: int, path: str) -> Problem:
    return Problem(
        path, 1, "", f"file too large: {size} bytes (limit {MAX_MANIFEST_BYTES} bytes)"
    )


def _tab_at(text: str, line: int, column: int) -> bool:
    """True when the error mark sits on a tab (libyaml does not say so itself)."""
    start = 0
    for _ in range(line):
        start = text.find("\n", start) + 1
        if start == 0:
            return False
    return text[start + column : start + column + 1] == "\t"


def _yaml_problem(exc: yaml.YAMLError, text: str, path: str) -> Problem:
    """A PyYAML error as a Problem at its line, in words a user can act on."""
    if isinstance(exc, yaml.reader.ReaderError):
        return Problem(
            path,
            _offset_line(text, exc.position),
            "",
            f"invalid character U+{exc.character:04X} ({exc.reason})"
            if isinstance(exc.character, int)
            else f"invalid character ({exc.reason})",
        )
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        problem = exc.problem or "invalid YAML"
        if mark is not None and _tab_at(text, int(mark.line), int(mark.column)):
            return Problem(path, line, "", "YAML syntax error: tab character; indent with spaces")
        context = f" ({exc.context})" if exc.context else ""
        return Problem(path, line, "", f"YAML syntax error: {problem}{context}")
    return Problem(path, 1, "", f"YAML error: {exc}")


def _roots(text: str) -> Iterator[Node | None]:
    yield from yaml.compose_all(text, Loader=_YamlLoader)


def _declared(data: Any, lines: LineMap, item_lists: bool) -> Iterator[tuple[Any, LineMap]]:
    """The object mappings a document declares (several for an item list)."""
    if item_lists and isinstance(data, dict) and set(data) == {"items"}:
        data, lines = data["items"], lines.rooted_at(("items",))
    if item_lists and isinstance(data, list):
        children = lines.children()
        for index, item in enumerate(data):
            yield item, children.get(index, _NO_LINES)
        return
    yield data, lines


class _NotSimple(Exception):
    """The quick conversion met something only the careful one judges (and words)."""


_CONSTRUCTOR = SafeConstructor()


def _quick_scalar(node: ScalarNode) -> Any:
    tag, value = node.tag, node.value
    if tag == _TAG + "int":
        if value.isascii() and value.isdigit() and (value[0] != "0" or value == "0"):
            return int(value)
        return _CONSTRUCTOR.construct_yaml_int(node)
    if tag == _NULL:
        return None
    if tag == _TAG + "bool":
        return _CONSTRUCTOR.construct_yaml_bool(node)
    if tag == _TAG + "float":
        return _CONSTRUCTOR.construct_yaml_float(node)
    if tag == _TAG + "timestamp":
        return value
    raise _NotSimple


def _quick_value(node: Node, depth: int) -> Any:
    """`_Converter._value` for a tree without aliases, recording no lines; `_NotSimple` on
    anything the careful conversion would refuse."""
    if depth > MAX_DEPTH:
        raise _NotSimple
    cls = type(node)
    if cls is ScalarNode:
        return node.value if node.tag == _STR else _quick_scalar(node)  # type: ignore[arg-type]
    if cls is MappingNode and node.tag == _MAP:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is not ScalarNode or key_node.tag != _STR:
                raise _NotSimple
            key = key_node.value
            if key in out:
                raise _NotSimple
            if type(value_node) is ScalarNode and value_node.tag == _STR and depth < MAX_DEPTH:
                out[key] = value_node.value  # the common case, without a call
            else:
                out[key] = _quick_value(value_node, depth + 1)
        return out
    if cls is SequenceNode and node.tag == _SEQ:
        return [_quick_value(item, depth + 1) for item in node.value]
    raise _NotSimple


class _DeferredLines:
    """The line maps of a cleanly loaded text, worked out by the careful load when first read."""

    def __init__(self, text: str, path: str, item_lists: bool = False) -> None:
        self._text = text
        self._path = path
        self._item_lists = item_lists
        self._maps: list[LineMap] | None = None

    def lines(self, index: int) -> LineMap:
        """The line map of the text's document number `index`."""
        maps = self._maps
        if maps is None:
            loaded = _load_careful(self._text, self._path, self._item_lists)
            maps = [d.lines for d in loaded.documents]
            self._maps = maps
        if index >= len(maps):  # the careful load read the text otherwise: nothing finer known
            return LineMap({(): 1})
        return maps[index]


def _load_quick(text: str, path: str) -> tuple[Document, ...] | None:
    """The documents of a text that holds only plain mappings and nothing to refuse, else None.

    Most files are like that; for them the values are converted without the bookkeeping
    of aliases and lines (the lines are deferred). Anything else is left to the careful
    load, so that its problems and messages are the only ones.
    """
    if "&" in text:
        return None  # anchors, hence aliases, may be used: only the careful load counts them
    deferred = _DeferredLines(text, path)
    documents: list[Document] = []
    try:
        for root in _roots(text):
            if root is None or (type(root) is ScalarNode and root.tag == _NULL):
                continue
            if type(root) is not MappingNode:
                return None
            data = _quick_value(root, 0)
            index = len(documents)
            lines = LineMap.deferred(partial(deferred.lines, index))
            documents.append(Document(path, index, _line(root), data, lines))
    except Exception:  # the careful load meets it again, and reports it
        return None
    return tuple(documents)


class _NotPlainJson(Exception):
    """The JSON text holds something the YAML reading of it would judge differently."""


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _NotPlainJson  # a duplicate key: the careful load words it
    return out


def _json_float(literal: str) -> float:
    if "." not in literal:
        raise _NotPlainJson  # `1e5` is a string to YAML 1.1, a number to JSON
    return float(literal)


def _json_constant(_: str) -> Any:
    raise _NotPlainJson  # NaN, Infinity: not JSON, and not numbers to YAML


def _shallow(value: Any, depth: int = 0) -> bool:
    """True when no value of decoded JSON is nested deeper than the careful load allows."""
    if depth > MAX_DEPTH:
        return False
    kind = type(value)
    items = value.values() if kind is dict else value if kind is list else ()
    for item in items:
        inner = type(item)
        if (inner is dict or inner is list) and not _shallow(item, depth + 1):
            return False
    return True


def _load_json_line(text: str, path: str) -> tuple[Document, ...] | None:
    """The objects of a one-line JSON item list (what API clients send), else None.

    Read with the C JSON parser; every object is on line 1, and the detailed line map
    (for an error that needs one) comes from the careful load when first read. Anything
    the YAML reading would judge otherwise (duplicate keys, `1e5`, NaN, deep nesting,
    an item that is not a mapping) is left to the careful load.
    """
    body = text.strip()
    if body[:1] not in ("{", "[") or "\n" in body or "\r" in body or "\\ud" in body.lower():
        return None  # not one line of JSON; or surrogate escapes, which YAML reads its own way
    try:
        data = json.loads(body, object_pairs_hook=_json_pairs, parse_float=_json_float,
                          parse_constant=_json_constant)
    except (_NotPlainJson, ValueError, RecursionError):
        return None
    if isinstance(data, dict) and set(data) == {"items"}:
        data = data["items"]
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) for item in items) or not _shallow(data):
        return None
    deferred = _DeferredLines(text, path, item_lists=True)
    return tuple(
        Document(path, index, 1, item, LineMap.deferred(partial(deferred.lines, index)))
        for index, item in enumerate(items)
    )


def load_text(text: str | bytes, path: str, *, item_lists: bool = False) -> LoadResult:
    """Load every document of one manifest text (`item_lists`: JSON lists, `{"items": []}`)."""
    # `item_lists` serves `POST /apply`, whose JSON bodies are a list or {"items": [...]}.
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MANIFEST_BYTES:
        return LoadResult(problems=(_too_large(size, path),))
    if isinstance(text, bytes):
        decoded = _decode(text, path)
        if isinstance(decoded, Problem):
            return LoadResult(problems=(decoded,))
        text = decoded
    elif "\0" in text:
        nul = text.index("\0")
        message = f"binary data (NUL character at offset {nul}); a manifest must be text"
        return LoadResult(problems=(Problem(path, _offset_line(text, nul), "", message),))
    quick = _load_json_line(text, path) if item_lists else _load_quick(text, path)
    if quick is not None:
        return LoadResult(quick)
    return _load_careful(text, path, item_lists)


def _load_careful(text: str, path: str, item_lists: bool) -> LoadResult:
    """Load a text converting every node with its line, judging aliases, tags and keys."""
    converter = _Converter()
    documents: list[Document] = []
    problems: list[Problem] = []
    try:
        for root in _roots(text):
            if root is None or (isinstance(root, ScalarNode) and root.tag == _TAG + "null"):
                continue  # an empty document declares nothing
            try:
                data, lines = converter.document(root)
            except _LoadError as exc:
                problems.append(Problem(path, exc.line, format_field(exc.path), exc.message))
                continue
            for item, item_lines in _declared(data, lines, item_lists):
                if not isinstance(item, dict):
                    shown = "a list" if isinstance(item, list) else "a scalar"
                    problems.append(
                        Problem(
                            path,
                            item_lines.line_of(()),
                            "",
                            f"a manifest document must be a mapping (got {shown})",
                        )
                    )
                    continue
                documents.append(
                    Document(path, len(documents), item_lines.line_of(()), item, item_lines)
                )
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, text, path))
    except RecursionError:
        # Only the pure-Python composer recurses; libyaml stops at its own depth limit.
        problems.append(Problem(path, 1, "", f"nested deeper than {MAX_DEPTH} levels"))
    return LoadResult(tuple(documents), tuple(problems))


def load_file(path: str | Path, display: str | None = None) -> LoadResult:
    """Load one manifest file, refusing oversized ones before reading them whole."""
    shown = display if display is not None else str(path)
    try:
        with open(path, "rb") as stream:
            # Reading one byte past the limit catches files that grow after a stat().
            data = stream.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                stream.seek(0, 2)
                return LoadResult(problems=(_too_large(stream.tell(), shown),))
    except OSError as exc:
        return LoadResult(problems=(Problem(shown, 1, "", f"cannot read: {exc.strerror}"),))
    return load_text(data, shown)
