"""YAML and JSON documents with the line of every value, so errors read
``path:line: message``; parsing bounded so that no document can stall the agent.

Decides nothing; it only parses. PyYAML's composer keeps a mark on every node; we turn
the node tree into plain Python values and remember, for each location (a tuple of keys
and indexes, as ``agent.schema`` reports them), the 1-based line it came from.

Bounds (one place, each with its reason; docs/policy.md "Loading"): text size, number
of documents, nesting depth, and values reached through aliases. A "billion laughs"
(nested anchors, 400 bytes that expand to 43 million values) is refused from the node
graph before anything is expanded, as Kubernetes refuses "excessive aliasing". Never
expand an alias before ``_check_graph`` has measured it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # pragma: no branch - the fallback is for platforms without a wheel
    import ryaml
except ImportError:  # pragma: no cover
    ryaml = None

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# 16 MiB: 10,000 policies are ~4 MiB of YAML; the admin API refuses bodies over 8 MiB.
MAX_BYTES = 16 << 20
# Documents per file or request: 20,000 is twice the policy benchmark's set.
MAX_DOCUMENTS = 20_000
# A policy is 9 levels deep, a config 5; ryaml stops at 128, libyaml at 1000.
MAX_DEPTH = 64
# Values reached through aliases, beyond the values written: anchors for shared
# fragments are fine, exponential expansion is not (Kubernetes' go-yaml refuses
# "excessive aliasing"; this is a fixed, smaller budget).
MAX_ALIAS_EXPANSION = 10_000


class YamlError(ValueError):
    """A document that is not YAML; ``str()`` is ``path:line: message``."""


@dataclass
class Doc:
    data: Any
    path: str
    line: int = 1
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, loc: tuple | list) -> int:
        """The line of ``loc``, or of its nearest enclosing value that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.line

    def where(self, loc: tuple | list = ()) -> str:
        return f"{self.path}:{self.line_of(loc)}"


def _convert(node: yaml.Node, loc: tuple, lines: dict[tuple, int], loader) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for k, v in node.value:
            key = loader.construct_object(k, deep=True)
            if isinstance(key, list):
                raise YamlError(f"line {k.start_mark.line + 1}: a mapping key cannot be a list")
            if key in out:
                raise YamlError(f"line {k.start_mark.line + 1}: duplicate key {key!r}")
            out[key] = _convert(v, loc + (key,), lines, loader)
            lines[loc + (key,)] = k.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, loc + (i,), lines, loader) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def check_size(text: str, path: str) -> None:
    n = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if n > MAX_BYTES:
        raise YamlError(f"{path}:1: {n} bytes, more than the limit of {MAX_BYTES} bytes")


def _check_graph(root: yaml.Node, path: str) -> None:
    """Depth and alias expansion of one document's node graph, measured without
    expanding anything: each distinct node is visited once (memoized by identity)."""
    _Graph(path).visit(root, 0)


class _Graph:
    # a class, not nested functions: a recursive closure is a reference cycle per call,
    # garbage only the cyclic collector frees (it is paused while policies load)
    def __init__(self, path: str) -> None:
        self.path = path
        self.memo: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
        self.active: set[int] = set()
        self.distinct = 0

    def _where(self, node: yaml.Node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}"

    def visit(self, node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        hit = self.memo.get(key)
        if hit is not None:
            if depth + hit[1] > MAX_DEPTH:
                raise YamlError(f"{self._where(node)}: nesting deeper than {MAX_DEPTH} levels")
            return hit
        if key in self.active:
            raise YamlError(f"{self._where(node)}: recursive alias")
        if depth > MAX_DEPTH:
            raise YamlError(f"{self._where(node)}: nesting deeper than {MAX_DEPTH} levels")
        self.distinct += 1
        size, height = 1, 0
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            self.active.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else [c for kv in node.value for c in kv]
            for child in children:
                s, h = self.visit(child, depth + 1)
                size += s
                height = max(height, h + 1)
                if size - self.distinct > MAX_ALIAS_EXPANSION:
                    raise YamlError(f"{self._where(child)}: excessive aliasing: more than {MAX_ALIAS_EXPANSION} "
                                    "values reached through aliases")
            self.active.discard(key)
        self.memo[key] = (size, height)
        return size, height


def load_all(text: str, path: str = "<input>") -> list[Doc]:
    """Every non-empty document in ``text``; raises YamlError with ``path:line``."""
    check_size(text, path)
    try:
        # libyaml's parser when present: ~10x faster on large policy files
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise YamlError(f"{path}:{line}: not valid YAML: character {e.character!r} is not allowed") from None
    docs: list[Doc] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if len(docs) >= MAX_DOCUMENTS:
                raise YamlError(f"{path}:{node.start_mark.line + 1}: more than {MAX_DOCUMENTS} documents")
            _check_graph(node, path)
            lines: dict[tuple, int] = {}
            try:
                data = _convert(node, (), lines, loader)
            except YamlError as e:
                raise YamlError(f"{path}:{str(e).removeprefix('line ')}") from None
            if data is None:
                continue
            docs.append(Doc(data=data, path=path, line=node.start_mark.line + 1, lines=lines))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlError(f"{path}:{line}: not valid YAML: {e.problem or e}") from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise YamlError(f"{path}:{line}: not valid YAML: character {e.character!r} is not allowed") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{path}:1: not valid YAML: {e}") from None
    except RecursionError:  # the pure-Python composer, without libyaml
        raise YamlError(f"{path}:1: nesting deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    return docs


# Text the fast path leaves to the bounded composer: anchors or aliases (``&a``, ``*a``
# as a token), and document syntax other than plain ``---`` separator lines.
_ANCHORISH = re.compile(r"(?:^|[\s\[\]{},:])[&*][^\s\[\]{},]")
_ODD_MARKERS = re.compile(r"^(?:---[ \t]*[^\s]|\.\.\.|%)", re.M)


def _check_tree(data: Any, path: str, line: int = 1) -> None:
    """The nesting depth of parsed values (JSON, the native YAML parser)."""
    if _too_deep(data, MAX_DEPTH):
        raise YamlError(f"{path}:{line}: nesting deeper than {MAX_DEPTH} levels")


def _too_deep(v: Any, left: int) -> bool:
    """Whether a container ``left`` levels below ``v`` or deeper holds one (recursion
    bounded by ``left``: a quarter of an explicit stack's cost, paid per watch event)."""
    if left == 0:
        return True
    for c in v.values() if isinstance(v, dict) else v:
        if isinstance(c, (dict, list)) and _too_deep(c, left - 1):
            return True
    return False


def _line_at(text: str, i: int) -> int:
    return text.count("\n", 0, i) + 1


def load_json(text: str, path: str) -> list[Doc]:
    """A JSON document, or a list of them; a list is decoded one element at a time, so
    a parse never holds the interpreter for the whole text (parsing runs beside the
    thread that decides connections, which needs the GIL back quickly)."""
    check_size(text, path)
    dec = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    try:
        if not text.startswith("[", i):
            data, end = dec.raw_decode(text, i)
            if text[end:].strip():
                raise YamlError(f"{path}:{_line_at(text, end)}: not valid JSON: extra data after the document")
            if isinstance(data, (dict, list)):
                _check_tree(data, path)
            return [Doc(data=data, path=path, line=1)]
        docs: list[Doc] = []
        i = _skip_ws(text, i + 1)
        line, counted = 1, 0
        while not text.startswith("]", i):
            if len(docs) >= MAX_DOCUMENTS:
                raise YamlError(f"{path}:{_line_at(text, i)}: more than {MAX_DOCUMENTS} documents")
            line, counted = line + text.count("\n", counted, i), i
            data, i = dec.raw_decode(text, i)
            if isinstance(data, (dict, list)):
                _check_tree(data, path, line)
            docs.append(Doc(data=data, path=path, line=line))
            i = _skip_ws(text, i)
            if text.startswith(",", i):
                i = _skip_ws(text, i + 1)
            elif not text.startswith("]", i):
                raise YamlError(f"{path}:{_line_at(text, i)}: not valid JSON: expected ',' or ']'")
        if text[i + 1:].strip():
            raise YamlError(f"{path}:{_line_at(text, i + 1)}: not valid JSON: extra data after the list")
        return docs
    except json.JSONDecodeError as e:
        raise YamlError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    except RecursionError:
        raise YamlError(f"{path}:1: nesting deeper than {MAX_DEPTH} levels") from None


def object_docs(data: Any, path: str) -> list[Doc]:
    """What ``load_json(json.dumps(data), path)`` gives, from the decoded value itself (a
    watch event's object): the same documents, the same depth and count errors. The byte
    bound is not applied: it guards a parse, and this value is already in memory."""
    if not isinstance(data, list):
        if isinstance(data, dict):
            _check_tree(data, path)
        return [Doc(data=data, path=path, line=1)]
    for i, item in enumerate(data):  # in load_json's order: a deep early item is named first
        if i >= MAX_DOCUMENTS:
            raise YamlError(f"{path}:1: more than {MAX_DOCUMENTS} documents")
        if isinstance(item, (dict, list)):
            _check_tree(item, path)
    return [Doc(data=item, path=path, line=1) for item in data]


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i


def _split_documents(text: str) -> list[str]:
    """Documents separated by plain ``---`` lines, found with one short ``find`` per
    document (a regular expression over megabytes holds the GIL for tens of ms)."""
    parts, start = [], 0
    if text.startswith("---"):
        nl = text.find("\n")
        if not text[:nl if nl >= 0 else len(text)].strip("- \t"):
            start = nl + 1 if nl >= 0 else len(text)
    while True:
        i = text.find("\n---", start)
        if i < 0:
            parts.append(text[start:])
            return parts
        nl = text.find("\n", i + 4)
        end = nl if nl >= 0 else len(text)
        if text[i + 4:end].strip(" \t"):  # "---" followed by content: not a plain separator
            raise _NotPlain
        parts.append(text[start:i + 1])
        start = end + 1 if nl >= 0 else len(text)


class _NotPlain(Exception):
    pass


def load_fast(text: str, path: str) -> list[Doc] | None:
    """YAML without line numbers, by the native parser, one document per call; None
    when the text needs the bounded composer (anchors, aliases, unusual markers) or
    no native parser is installed. Raises YamlError/ValueError on invalid text (the
    caller then re-reads it with ``load_all`` for the lines)."""
    check_size(text, path)
    if ryaml is None:
        return None
    try:
        parts = _split_documents(text)
    except _NotPlain:
        return None
    if len(parts) > MAX_DOCUMENTS:
        raise YamlError(f"{path}:1: more than {MAX_DOCUMENTS} documents")
    docs = []
    for part in parts:
        if _ANCHORISH.search(part) or _ODD_MARKERS.search(part):
            return None
        data = ryaml.loads(part)
        if data is None:
            continue
        if isinstance(data, (dict, list)):
            _check_tree(data, path)
        docs.append(Doc(data=data, path=path))
    return docs


def load_documents(text: str, path: str, lines: bool = True) -> list[Doc]:
    """Policy-style input: JSON (a document or a list) or YAML (one or many documents),
    bounded; ``lines=False`` tries the fast path first."""
    if text.lstrip().startswith(("{", "[")):
        return load_json(text, path)
    if not lines:
        docs = load_fast(text, path)
        if docs is not None:
            return docs
    return load_all(text, path)


def load_one(text: str, path: str = "<input>") -> Doc:
    docs = load_all(text, path)
    if not docs:
        return Doc(data={}, path=path)
    if len(docs) > 1:
        raise YamlError(f"{docs[1].where()}: expected one document, found {len(docs)}")
    return docs[0]


def _line(doc: Doc, loc: tuple, msg: str) -> str:
    from agent.schema import dotted

    return f"{doc.where(loc)}: {dotted(loc) + ': ' if loc else ''}{msg}"


def schema_errors(doc: Doc, errors: list, prefix: tuple = ()) -> list[str]:
    """``agent.schema`` problems -> ``path:line: a.b[0]: message`` lines."""
    return [_line(doc, prefix + loc, msg) for loc, msg, _ in errors]


def pydantic_errors(doc: Doc, err: Any, prefix: tuple = ()) -> list[str]:
    """pydantic ``ValidationError`` -> ``path:line: a.b[0]: message`` lines (the models that
    still use pydantic: the lab's topology, the CA service's settings)."""
    from agent.schema import mapping_message

    out = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] in ("model_type", "model_attributes_type", "dict_type"):
            msg = mapping_message(e.get("input"))  # pydantic names the internal class; say what to write
        out.append(_line(doc, prefix + tuple(e["loc"]), msg))
    return out


def load_model(text: str, path: str, model, what: str):
    """One YAML mapping validated into ``model`` (an ``agent.schema`` model, or a pydantic one):
    ``(doc, instance)``, or YamlError whose str() holds every problem as
    ``path:line: field: message`` (one per line)."""
    doc = load_one(text, path)
    if not isinstance(doc.data, dict):
        raise YamlError(f"{doc.where()}: {what} must be a mapping")
    if not hasattr(model, "model_validate"):
        from agent import schema

        value, errors = schema.convert(model, doc.data)
        if errors:
            raise YamlError("\n".join(schema_errors(doc, errors)))
        return doc, value
    from pydantic import ValidationError

    try:
        return doc, model.model_validate(doc.data)
    except ValidationError as e:
        raise YamlError("\n".join(pydantic_errors(doc, e))) from None
