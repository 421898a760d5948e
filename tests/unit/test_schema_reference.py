"""agent/schema.py's models agree with the pydantic models they replaced (kept verbatim in
tests/unit/reference/): the same documents accepted with the same values, the same ones
refused with the same ``path:line: field: message`` lines. Documents are drawn from the
models' own field names, with values of every kind a YAML file gives (numbers as strings,
``yes``, addresses, CIDRs good and bad, lists, mappings, nothing)."""

from __future__ import annotations

import functools
import types
import typing

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from agent import config, schema, yamlpos
from agent.rbac import loader
from tests.unit.reference import pydantic_config as ref_config
from tests.unit.reference import pydantic_policy as ref_policy

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70_000), st.floats(-10, 1e6, allow_nan=False),
    st.sampled_from(["", "x", "80", " 12 ", "+5", "1_000", "1.5", "true", "no", "Yes", "off", "10.0.0.1", "10.0.0.0/8",
                     "10.0.0.0/33", "::1", "fd00::/64", "nftables", "pf", "native", "trio", "hbone", "all", "1", "gzip",
                     "STRICT", "ALLOW", "deny", "CUSTOM", "cluster.local", "Bad.Domain", "10.0.0.5:15012",
                     "[fd00::5]:15012", "security.istio.io/v1", "AuthorizationPolicy", "PeerAuthentication",
                     "8080", "99999", "a" * 254,
                     # edges (tests/unit/test_schema_probes.py): "80.0" is 80, " yes" no boolean, fullwidth
                     # digits no number, unicode spaces stripped, bytes decoded, infinity no integer
                     "80.0", " yes", "\uff18\uff10", "\xa080", b"80", float("inf")]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.lists(SCALARS, max_size=2).map(tuple),
                   st.dictionaries(st.sampled_from(["a", "app", "8080", "0", 1, None]), SCALARS, max_size=2))


STRINGS = st.sampled_from(["x", "10.0.0.1", "fd00::5", "10.0.0.0/8", "10.1.0.0/16", "cluster.local", "8080",
                           "10.0.0.5:15012", "web", "ns/sa", "/run/hostmesh/x.sock"])
TYPED = {str: STRINGS | st.sampled_from([1.5, None, 7]), int: st.integers(0, 70_000) | st.sampled_from(["80", " 9 ", "1_000", 3.0, True]),
         float: st.floats(0.001, 1e5) | st.integers(1, 9) | st.sampled_from(["2.5", "1e3"]),
         bool: st.booleans() | st.sampled_from(["yes", "off", "true", 0, 1, 1.0]), typing.Any: VALUES,
         dict: st.dictionaries(st.sampled_from(["kind", "name"]), STRINGS, max_size=2), type(None): st.none()}


def typed(tp, depth: int):
    """Values of the type ``tp`` (as pydantic would accept them, conversions included)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return documents(tp, depth + 1)
    if tp in TYPED:
        return TYPED[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([typed(a, depth) for a in args])
    if origin is list:
        return st.lists(typed(args[0], depth), max_size=2)
    if origin is dict:
        return st.dictionaries(st.sampled_from(["8080", "app", "15008", 7]), typed(args[1], depth), max_size=2)
    return VALUES


@functools.cache
def documents(model: type[BaseModel], depth: int = 0):
    """Mappings with ``model``'s field names (rarely an unknown one): values mostly of the
    field's type, sometimes of any kind; nested models drawn the same way (4 levels)."""
    fields = {}
    for name, info in model.model_fields.items():
        if depth > 4:
            fields[info.alias or name] = VALUES
        else:
            good = typed(info.annotation, depth)
            fields[info.alias or name] = st.integers(0, 8).flatmap(lambda i, good=good: good if i else VALUES)
    return st.fixed_dictionaries({}, optional={**fields, "bogus": VALUES}).filter(lambda d: "bogus" not in d or
                                                                                    len(d) % 3 == 0)


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _reworded(lines: list[str]) -> list[str]:
    """pydantic's lines with the two wordings agent/schema.py changed: a value that is
    neither of ``str | int`` is one line (pydantic: one per member, ``ports[1].str: ...``
    and ``ports[1].int: ...``), and a key that is not a string is named without pydantic's
    ``.[key]``."""
    out: list[str] = []
    for line in lines:
        line = line.replace(".[key]: ", ": ")
        head, sep, _ = line.partition(".int: Input should be a valid integer")
        if sep and out and out[-1] == f"{head}.str: Input should be a valid string":
            out[-1] = f"{head}: Input should be a valid string or integer"
            continue
        out.append(line)
    return out


def old(model, data, prefix=()):
    doc = yamlpos.Doc(data=data, path="p")
    try:
        return "ok", _plain(model.model_validate(data).model_dump())
    except ValidationError as e:
        return "refused", _reworded(yamlpos.pydantic_errors(doc, e, prefix))


def new(model, data, prefix=()):
    doc = yamlpos.Doc(data=data, path="p")
    value, errors = schema.convert(model, data)
    if errors:
        return "refused", yamlpos.schema_errors(doc, errors, prefix)
    return "ok", _plain(schema.to_dict(value))


@settings(max_examples=400, deadline=None)
@given(documents(ref_config.Config))
def test_configurations_load_as_pydantic_loaded_them(data):
    assert new(config.Config, data) == old(ref_config.Config, data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["AuthorizationPolicy", "PeerAuthentication"]), documents(ref_policy.AuthzSpecM),
       documents(ref_policy.PeerSpecM), documents(ref_policy.MetaM))
def test_policy_specs_load_as_pydantic_loaded_them(kind, authz, peer, meta):
    spec = authz if kind == "AuthorizationPolicy" else peer
    new_model, old_model = ((loader.AuthzSpecM, ref_policy.AuthzSpecM) if kind == "AuthorizationPolicy"
                            else (loader.PeerSpecM, ref_policy.PeerSpecM))
    assert new(new_model, spec, ("spec",)) == old(old_model, spec, ("spec",))
    doc = {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": meta, "spec": spec}
    got, want = new(loader.DocM, doc), old(ref_policy.DocM, doc)
    if want[0] == "ok":  # MetaM keeps unknown keys (pydantic: in its dump; here: not a field)
        want[1]["metadata"] = {k: v for k, v in want[1]["metadata"].items() if k in got[1]["metadata"]}
    assert got == want
