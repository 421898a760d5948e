"""What a value of each declared type converts to (agent/schema.py's models): ``str``,
``int``, ``float``, ``bool``, ``Literal``, optional and union types, lists, mappings, and
bounds (``Annotated[int, Range(ge=1)]``), each the way pydantic's lax mode converted it,
with its message. A converter is ``fn(value, loc, errors) -> value``; on a problem it
appends ``(loc, message, value)`` to ``errors`` and returns ``NONE``. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

# pydantic's: digits (``_`` between them), optionally ``.0``, ``.00``...: "80.0" is 80
_INT = re.compile(r"([+-]?[0-9](?:_?[0-9])*)(?:\.0+)?")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})

@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number (``Annotated[int, Range(ge=1)]``) or lengths of a string."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None


NONE = object()  # a converter's "no value" (an error was recorded)


def fail(errors: list, loc: tuple, msg: str, v: Any) -> Any:
    errors.append((loc, msg, v))
    return NONE


def _str(v, loc, errors):
    if type(v) is str:
        return v
    if isinstance(v, str):  # a subclass: its plain value, as pydantic (and msgspec) take it
        return str(v)
    if type(v) is bytes or type(v) is bytearray:  # YAML's !!binary: pydantic decoded it
        try:
            return v.decode()
        except UnicodeDecodeError:
            return fail(errors, loc, "Input should be a valid string, unable to parse raw data as a unicode string", v)
    return fail(errors, loc, "Input should be a valid string", v)


def _text(v):
    """``bytes`` or a str subclass as the string pydantic parses numbers and booleans from
    (undecodable bytes: a string that parses as nothing)."""
    if type(v) is bytes:
        return v.decode("utf-8", "replace")
    return str(v) if isinstance(v, str) and type(v) is not str else v


def _int(v, loc, errors):
    v = _text(v)
    t = type(v)
    if t is int:
        return v
    if t is bool:
        return int(v)
    if t is float:
        if not math.isfinite(v):
            return fail(errors, loc, "Input should be a finite number", v)
        if v.is_integer():
            return int(v)
        return fail(errors, loc, "Input should be a valid integer, got a number with a fractional part", v)
    if t is str:
        m = _INT.fullmatch(v.strip())
        if m:
            try:
                return int(m[1])
            except ValueError:  # beyond Python's 4,300 digits (pydantic's bound too)
                return fail(errors, loc, "Unable to parse input string as an integer, exceeded maximum size", v)
        return fail(errors, loc, "Input should be a valid integer, unable to parse string as an integer", v)
    return fail(errors, loc, "Input should be a valid integer", v)


def _float(v, loc, errors):
    v = _text(v)
    t = type(v)
    if t is float:
        return v
    if t is int or t is bool:
        return float(v)
    if t is str:
        try:
            s = v.strip()
            if not s.isascii():  # float() reads "\uff18\uff10" (fullwidth 80) as 80.0; pydantic refuses it
                raise ValueError
            return float(s)
        except ValueError:
            return fail(errors, loc, "Input should be a valid number, unable to parse string as a number", v)
    return fail(errors, loc, "Input should be a valid number", v)


def _bool(v, loc, errors):
    v = _text(v)
    t = type(v)
    if t is bool:
        return v
    if (t is int or t is float) and v in (0, 1):
        return v == 1
    if t is int and not -(2**63) <= v < 2**63:  # pydantic reads no wider int as a boolean
        return fail(errors, loc, "Input should be a valid boolean", v)
    if t is int or t is str or (t is float and v.is_integer()):
        s = v.lower() if t is str else None  # not stripped: pydantic refuses " yes"
        if s in _TRUE or s in _FALSE:
            return s in _TRUE
        return fail(errors, loc, "Input should be a valid boolean, unable to interpret input", v)
    return fail(errors, loc, "Input should be a valid boolean", v)


def _any(v, loc, errors):
    return v


def mapping_message(got: Any) -> str:
    """What to say of a value where a mapping belongs (pydantic's names its own classes)."""
    return ("must be a mapping, but it is empty (are the lines below it indented under it?)" if got is None
            else f"must be a mapping, not {type(got).__name__} {got!r:.40}")


def _dict_any(v, loc, errors):
    return v if isinstance(v, dict) else fail(errors, loc, mapping_message(v), v)


def _literal(values: tuple):
    shown = [repr(x) for x in values]
    msg = "Input should be " + (" or ".join(shown) if len(shown) < 3 else ", ".join(shown[:-1]) + " or " + shown[-1])

    def conv(v, loc, errors):
        for x in values:
            if v == x and (type(v) is type(x) or isinstance(x, str) and isinstance(v, str)):
                return x
        return fail(errors, loc, msg, v)
    return conv


def _optional(inner):
    def conv(v, loc, errors):
        return None if v is None else inner(v, loc, errors)
    return conv


def _union(convs: list):
    def conv(v, loc, errors):
        for c in convs:
            trial: list = []
            out = c(v, loc, trial)
            if not trial:
                return out
        return fail(errors, loc, "Input should be a valid string or integer", v)
    return conv


def _list(inner):
    exact = EXACT.get(inner)

    def conv(v, loc, errors):
        if type(v) is not list:
            if not isinstance(v, (list, tuple, set, frozenset)):  # what pydantic (and msgspec) read as a list
                return fail(errors, loc, "Input should be a valid list", v)
            v = list(v)
        if exact is not None and all(type(x) is exact for x in v):
            return v[:]
        out, n = [], len(errors)
        for i, x in enumerate(v):
            out.append(inner(x, loc + (i,), errors))
        return out if len(errors) == n else NONE
    return conv


def _dict(kconv, vconv):
    exact = (EXACT.get(kconv), EXACT.get(vconv))

    def conv(v, loc, errors):
        if not isinstance(v, dict):
            return fail(errors, loc, mapping_message(v), v)
        if exact[0] is str and exact[1] is str and all(type(k) is str and type(x) is str for k, x in v.items()):
            return dict(v)
        out, n = {}, len(errors)
        for k, x in v.items():
            kk = kconv(k, loc + (k,), errors)
            out[kk] = vconv(x, loc + (k,), errors)
        return out if len(errors) == n else NONE
    return conv


def _ranged(inner, r: Range):
    def conv(v, loc, errors):
        out = inner(v, loc, errors)
        if out is NONE:
            return out
        # "not >=": NaN compares false both ways, and pydantic refuses it at every bound
        # (the upper one named first, as pydantic checks it first)
        if r.le is not None and not out <= r.le:
            return fail(errors, loc, f"Input should be less than or equal to {r.le}", v)
        if r.ge is not None and not out >= r.ge:
            return fail(errors, loc, f"Input should be greater than or equal to {r.ge}", v)
        if r.gt is not None and not out > r.gt:
            return fail(errors, loc, f"Input should be greater than {r.gt}", v)
        if r.min_length is not None and len(out) < r.min_length:
            s = "" if r.min_length == 1 else "s"
            return fail(errors, loc, f"String should have at least {r.min_length} character{s}", v)
        if r.max_length is not None and len(out) > r.max_length:
            return fail(errors, loc, f"String should have at most {r.max_length} characters", v)
        return out
    return conv


_SIMPLE = {str: _str, int: _int, float: _float, bool: _bool, Any: _any, dict: _dict_any}
EXACT = {_str: str, _int: int, _float: float, _bool: bool}


def converter(tp: Any, of_model: Callable[[type], Any]):
    """The converter of the type ``tp``; ``of_model(cls)`` gives a model's (agent.schema)."""
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return of_model(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _ranged(converter(args[0], of_model), next(a for a in args[1:] if isinstance(a, Range)))
    if origin is Literal:
        return _literal(args)
    if origin is Union or origin is types.UnionType:
        rest = [a for a in args if a is not type(None)]
        inner = converter(rest[0], of_model) if len(rest) == 1 else _union([converter(a, of_model) for a in rest])
        return _optional(inner) if len(rest) < len(args) else inner
    if origin is list:
        return _list(converter(args[0], of_model))
    if origin is dict:
        return _dict(converter(args[0], of_model), converter(args[1], of_model))
    if tp is type(None):
        return _literal((None,))
    raise TypeError(f"no converter for {tp!r}")
