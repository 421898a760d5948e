"""The fast path of ``agent.schema`` for documents read often (a policy per watch event):
msgspec structs derived from a model, which accept exactly what the model accepts when
every value already has its declared type (``strict``), checks included.

Decides nothing of its own: ``convert(cls, data)`` is the instance (a struct with the
model's field names, read like the model) or None, and on None the caller asks
``agent.schema.convert`` for the answer and its errors. It must never accept what
``agent.schema`` refuses (tests/unit/test_schema_fast.py draws documents to show it),
so only models whose ``_before`` functions return every accepted value unchanged use it.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any, Union

from agent.schema_values import Range

_STRUCTS: dict[type, Any] = {}


def load() -> None:
    """Load msgspec, so that ``convert`` runs from now on (for a large set of documents)."""
    import msgspec  # noqa: F401


def convert(cls, data: Any):
    """``data`` as ``cls`` (its struct), or None when msgspec's strict reading refuses it,
    or when msgspec is not loaded: importing it is 1.3 MiB of an idle agent, so this path
    runs where it already is (Kubernetes discovery decodes every watch event with it, and
    a watch event is where speed counts: docs/policy.md "One policy changed") or once a
    large file asked for it (``load``); an agent reading a few policy files keeps the checker."""
    msgspec = sys.modules.get("msgspec")
    if msgspec is None:
        return None
    struct = _STRUCTS.get(cls) or _struct(cls)
    try:
        return msgspec.convert(data, struct, strict=True)
    except msgspec.ValidationError:
        return None


def _struct(cls):
    import msgspec

    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]), include_extras=True)
    checks = {**getattr(cls, "_before", {}), **getattr(cls, "_checks", {})}
    fields, rename = [], {}
    for f in dataclasses.fields(cls):
        tp = _type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, tp, f.default))
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            if dataclasses.is_dataclass(factory):
                factory = _STRUCTS.get(factory) or _struct(factory)
            fields.append((f.name, tp, msgspec.field(default_factory=factory)))
        else:
            fields.append((f.name, tp))
        if f.metadata.get("alias"):
            rename[f.name] = f.metadata["alias"]
    model_check = getattr(cls, "_check", None)

    def post_init(self):
        # the model's checks, as agent.schema runs them (a ValueError: msgspec refuses)
        for name, check in checks.items():
            setattr(self, name, check(getattr(self, name)))
        if model_check is not None:
            model_check(self)

    ns = {"__post_init__": post_init} if checks or model_check else {}
    # unsorted fields: required ones may follow defaults (keyword-only, as the models)
    s = msgspec.defstruct(cls.__name__, fields, kw_only=True, rename=rename or None, namespace=ns,
                          forbid_unknown_fields=getattr(cls, "_extra", "forbid") == "forbid")
    _STRUCTS[cls] = s
    return s


def _type(tp: Any) -> Any:
    import msgspec

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _STRUCTS.get(tp) or _struct(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        r = next(a for a in args[1:] if isinstance(a, Range))
        meta = {k: v for k, v in dataclasses.asdict(r).items() if v is not None}
        return typing.Annotated[_type(args[0]), msgspec.Meta(**meta)]
    if origin is Union or origin is types.UnionType:
        return Union[tuple(_type(a) for a in args)]  # noqa: UP007 (built from a tuple)
    if origin is list:
        return list[_type(args[0])]
    if origin is dict:
        return dict[_type(args[0]), _type(args[1])]
    return tp

