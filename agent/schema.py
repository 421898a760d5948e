"""Declared shapes of documents (the agent's configuration, policy files): a decoded value
(YAML or JSON) checked against a dataclass, every problem collected as (location, message).

Decides whether a value has the declared shape, and normalises it (the models' ``_checks``:
CIDRs, addresses); it never reads files and never formats lines (``yamlpos`` maps each
location to ``path:line``). Written here instead of pydantic so that the agent's start
path loads no schema library (pydantic and its schemas cost 13.5 MiB of an idle agent's
60 MiB budget, docs/install.md). Conversions and messages are pydantic's lax mode,
which the files were first validated with: ``"80"`` is a valid ``int``, ``1`` a valid
``float``, ``yes`` a valid ``bool``; a missing field is "Field required".

A model is a ``@model`` class (a keyword-only dataclass). Per class, optional:
``_checks = {"field": fn}`` (value -> normalised value, or ValueError: the message),
``_before = {"field": fn}`` (the same, before the type is checked: removed settings),
``_extra = "allow"`` (unknown fields kept out of the model but not refused) and a
``_check(self)`` method run once every field is valid (ValueError: a message on the model).
Constructed directly, a model runs its checks (``Invalid`` on a bad value), as it does when
loaded with ``load``.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import MISSING
from typing import Any

from agent.schema_values import EXACT, NONE, converter, fail, mapping_message
from agent.schema_values import Range as Range  # the models' bounds, named with them

REQUIRED = "Field required"


class Invalid(ValueError):
    """``errors``: ``(location, message, value)`` per problem; ``location`` a tuple of keys and
    indexes from the loaded value's root (``("cluster", "nodes", 0, "pod_cidrs")``)."""

    def __init__(self, errors: list[tuple[tuple, str, Any]]) -> None:
        super().__init__("\n".join(f"{dotted(loc) + ': ' if loc else ''}{msg}" for loc, msg, _ in errors))
        self.errors = errors


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def model(cls):
    """A keyword-only dataclass whose instances are checked (``load`` or its constructor)."""
    cls.__post_init__ = _post_init
    cls = dataclasses.dataclass(kw_only=True)(cls)
    cls.from_obj = classmethod(load)
    cls.to_dict = to_dict
    return cls


def field(default: Any = MISSING, *, factory: Any = MISSING, alias: str | None = None, exclude: bool = False) -> Any:
    """A model field: ``alias`` its name in documents (``from``), ``exclude`` kept out of ``to_dict``."""
    meta = {"alias": alias, "exclude": exclude}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load(cls, data: Any, loc: tuple = ()):
    """``data`` (a mapping) as an instance of the model ``cls``, or ``Invalid`` naming every problem."""
    value, errors = convert(cls, data, loc)
    if errors:
        raise Invalid(errors)
    return value


def convert(cls, data: Any, loc: tuple = ()) -> tuple[Any, list]:
    """``(instance, [])``, or ``(None, errors)``: ``(location, message, value)`` per problem."""
    errors: list = []
    value = _plan(cls).convert_into(data, loc, errors)
    if value is NONE and not errors:  # a refusal that lost its reason is still a refusal
        errors.append((loc, "invalid", data))
    return (None, errors) if errors else (value, errors)


def to_dict(obj: Any, exclude_none: bool = False) -> Any:
    """A model as plain values (what ``load`` reads back), its excluded fields left out."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in _plan(type(obj)).fields:
            if f.exclude:
                continue
            v = getattr(obj, f.name)
            if v is None and exclude_none:
                continue
            out[f.name] = to_dict(v, exclude_none)
        return out
    if isinstance(obj, list):
        return [to_dict(v, exclude_none) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, exclude_none) for k, v in obj.items()}
    return obj


def _post_init(self) -> None:
    plan = _plan(type(self))
    errors: list = []
    for f in plan.fields:
        if f.check is not None:
            v = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, f.check(v))
            except ValueError as e:
                errors.append(((f.key,), str(e), v))
    if not errors and plan.model_check is not None:
        try:
            plan.model_check(self)
        except ValueError as e:
            errors.append(((), str(e), None))
    if errors:
        raise Invalid(errors)


class _NoType:
    """No value is of this type (a field without a shortcut)."""


class _Field:
    """One field of a model: its name, its key in documents (an alias), how it is read."""

    __slots__ = ("name", "key", "conv", "exact", "plain", "default", "factory", "model_default", "check", "before",
                 "exclude")

    def __init__(self, f: dataclasses.Field, check: Any, before: Any) -> None:
        self.name, self.key = f.name, f.metadata.get("alias") or f.name
        self.default, self.factory = f.default, f.default_factory
        self.model_default = getattr(f.default_factory, "__post_init__", None) is _post_init
        self.check, self.before, self.exclude = check, before, bool(f.metadata.get("exclude"))
        self.conv: Any = None
        self.exact: type = _NoType
        self.plain = True


class _Plan:
    """One model's fields with their converters, built once per class (lazily: a model may
    name another defined below it)."""

    def __init__(self, cls) -> None:
        self.cls = cls
        checks, before = getattr(cls, "_checks", {}), getattr(cls, "_before", {})
        self.extra = getattr(cls, "_extra", "forbid")
        self.model_check = getattr(cls, "_check", None)
        self.fields = [_Field(f, checks.get(f.name), before.get(f.name)) for f in dataclasses.fields(cls)]
        self.by_key = {f.key: f for f in self.fields}
        self.static = {f.name: f.default for f in self.fields if f.default is not MISSING}
        self.made = [f for f in self.fields if f.factory is not MISSING]
        self.required = [f for f in self.fields if f.default is MISSING and f.factory is MISSING]

    def resolve(self) -> None:
        hints = typing.get_type_hints(self.cls, vars(sys.modules[self.cls.__module__]), include_extras=True)
        for f in self.fields:
            f.conv = converter(hints[f.name], lambda tp: _plan(tp).convert_into)
            f.plain = f.before is None and f.check is None
            # a value of this exact type is taken as it is (no conversion, no check)
            f.exact = EXACT.get(f.conv, _NoType) if f.plain else _NoType

    def convert_into(self, v: Any, loc: tuple, errors: list) -> Any:
        """The instance, or ``NONE`` with the problems appended to ``errors`` in the
        model's field order (pydantic's), unknown fields last."""
        if type(v) is not dict and not isinstance(v, dict):
            return fail(errors, loc, mapping_message(v), v)
        # the common case first: the document's keys in its order, defaults copied in bulk;
        # on any problem, again in field order for the errors
        n = len(errors)
        obj = object.__new__(self.cls)
        d = obj.__dict__
        d.update(self.static)
        by_key = self.by_key
        for k, x in v.items():
            f = by_key.get(k)
            if f is None:
                if self.extra == "forbid" or not isinstance(k, str):  # as _ordered tells them
                    errors.append(None)
                continue
            if type(x) is f.exact:
                d[f.name] = x
                continue
            x = f.conv(x, loc + (k,), errors) if f.plain else self._one(f, x, loc, errors)
            if x is not NONE:
                d[f.name] = x
        for f in self.made:
            if f.name not in d:
                d[f.name] = self._default(f, loc, errors) if f.model_default else f.factory()
        for f in self.required:
            if f.name not in d:
                errors.append(None)
        if len(errors) != n:
            del errors[n:]
            return self._ordered(v, loc, errors)
        if self.model_check is not None:
            try:
                self.model_check(obj)
            except ValueError as e:
                return fail(errors, loc, str(e), v)
        return obj

    @staticmethod
    def _one(f: _Field, x: Any, loc: tuple, errors: list) -> Any:
        here = loc + (f.key,)
        if f.before is not None:
            try:
                x = f.before(x)
            except ValueError as e:
                return fail(errors, here, str(e), x)
        got = f.conv(x, here, errors)
        if got is NONE or f.check is None:
            return got
        try:
            return f.check(got)
        except ValueError as e:
            return fail(errors, here, str(e), x)

    @staticmethod
    def _default(f: _Field, loc: tuple, errors: list) -> Any:
        # a model's defaults are read as an empty mapping: unchecked, as pydantic leaves
        # defaults (NODE_IP from the environment is not the file's to refuse)
        return _plan(f.factory).convert_into({}, loc + (f.key,), errors) if f.model_default else f.factory()

    def _ordered(self, v: dict, loc: tuple, errors: list) -> Any:
        for f in self.fields:
            if f.key in v:
                self._one(f, v[f.key], loc, errors)
            elif f.default is MISSING and f.factory is MISSING:
                errors.append((loc + (f.key,), REQUIRED, None))
        for k, x in v.items():
            if not isinstance(k, str):
                errors.append((loc + (k,), "Keys should be strings", x))
            elif self.extra == "forbid" and k not in self.by_key:
                errors.append((loc + (k,), "unknown field", x))
        return NONE


_PLANS: dict[type, _Plan] = {}


def _plan(cls) -> _Plan:
    p = _PLANS.get(cls)
    if p is None:  # at first use, once every model of its module is defined
        p = _PLANS[cls] = _Plan(cls)
        p.resolve()
    return p
