"""agent/schema_fast.py never accepts what agent/schema.py refuses, and what it accepts
reads the same: documents drawn from the policy models' own fields (the drawing of
tests/unit/test_schema_reference.py), each converted both ways."""

import json

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import schema, schema_fast
from agent.bench.cluster import Cluster
from agent.rbac import loader
from tests.unit.reference import pydantic_policy as ref
from tests.unit.test_schema_reference import documents

PAIRS = [(loader.AuthzSpecM, ref.AuthzSpecM), (loader.PeerSpecM, ref.PeerSpecM), (loader.MetaM, ref.MetaM)]


def plain(v):
    if isinstance(v, msgspec.Struct):
        return {f: plain(getattr(v, f)) for f in v.__struct_fields__}
    if hasattr(v, "__dataclass_fields__"):
        return {f: plain(getattr(v, f)) for f in v.__dataclass_fields__}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def agree(cls, data) -> bool:
    fast = schema_fast.convert(cls, data)
    slow, errors = schema.convert(cls, data)
    if fast is not None:
        assert not errors, (data, errors)
        assert plain(fast) == plain(slow)
    return fast is not None


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(range(len(PAIRS))).flatmap(lambda i: st.tuples(st.just(i), documents(PAIRS[i][1]))))
def test_the_fast_path_agrees_with_the_checker(case):
    i, data = case
    agree(PAIRS[i][0], data)


def test_a_watched_policy_takes_the_fast_path():
    obj = json.loads(Cluster(1000).policy(3))
    assert agree(loader.DocM, obj) and agree(loader.AuthzSpecM, obj["spec"])
    assert not agree(loader.AuthzSpecM, {"rules": [{"to": [{"operation": {"ports": [True]}}]}]})  # the checker's
    assert loader.load_object(obj, "p")[0].rules[0].operations[0].ports == (8080,)
