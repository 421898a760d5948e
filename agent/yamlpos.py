"""YAML documents with the line of every value, so errors read ``path:line: message``.

Decides nothing; it only parses. PyYAML's composer keeps a mark on every node; we turn
the node tree into plain Python values and remember, for each location (a tuple of keys
and indexes, as pydantic reports them), the 1-based line it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def load_all(text: str, path: str = "<input>") -> list[Doc]:
    """Every non-empty document in ``text``; raises YamlError with ``path:line``."""
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
    finally:
        loader.dispose()
    return docs


def load_one(text: str, path: str = "<input>") -> Doc:
    docs = load_all(text, path)
    if not docs:
        return Doc(data={}, path=path)
    if len(docs) > 1:
        raise YamlError(f"{docs[1].where()}: expected one document, found {len(docs)}")
    return docs[0]


def pydantic_errors(doc: Doc, err: Any, prefix: tuple = ()) -> list[str]:
    """pydantic ``ValidationError`` -> ``path:line: a.b[0]: message`` lines."""
    out = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        dotted = ""
        for part in prefix + tuple(e["loc"]):
            dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] in ("model_type", "model_attributes_type", "dict_type"):
            # pydantic names the internal class ("instance of SourceM"); say what to write
            got = e.get("input")
            msg = ("must be a mapping, but it is empty (are the lines below it indented under it?)" if got is None
                   else f"must be a mapping, not {type(got).__name__} {got!r:.40}")
        out.append(f"{doc.where(loc)}: {dotted + ': ' if dotted else ''}{msg}")
    return out


def load_model(text: str, path: str, model, what: str):
    """One YAML mapping validated into ``model``: ``(doc, instance)``, or YamlError whose
    str() holds every problem as ``path:line: field: message`` (one per line)."""
    from pydantic import ValidationError

    doc = load_one(text, path)
    if not isinstance(doc.data, dict):
        raise YamlError(f"{doc.where()}: {what} must be a mapping")
    try:
        return doc, model.model_validate(doc.data)
    except ValidationError as e:
        raise YamlError("\n".join(pydantic_errors(doc, e))) from None
