"""A decoded policy object is validated as it is (agent.rbac.loader.load_object): the same
policies, or the same ``path:line: message`` errors, as its JSON text through
``load_documents`` (what discovery did before: dump each watched object and parse it again)."""

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import yamlpos
from agent.bench.cluster import Cluster
from agent.k8s.model import policy_doc
from agent.rbac.loader import PolicyError, load_documents, load_object
from tests.unit.k8s_objects import authz
from tests.unit.test_rbac_loader import EVERY_FIELD, GOOD


def outcome(fn, *args):
    try:
        return fn(*args)
    except PolicyError as e:
        return ("error", str(e))


def same(obj, path="kubernetes:AuthorizationPolicy/shop/x"):
    before = copy.deepcopy(obj)
    got, want = outcome(load_object, obj, path), outcome(load_documents, json.dumps(obj), path)
    assert got == want
    assert obj == before  # the watched object is never changed
    return got


def yaml_docs(text):
    return [d.data for d in yamlpos.load_documents(text, "t.yaml")]


REJECTIONS = [("10.0.0.0/8", "10.0.0.0/33"), ("ipBlocks", "ipBlock"), ("action: DENY", "action: MAYBE"),
              ("action: DENY", "action: CUSTOM"), ("security.istio.io/v1\nkind: Auth", "security.istio.io/v2\nkind: Auth"),
              ("- from:", "- when: [{key: bogus.key, values: [x]}]\n      from:"), ("{mode: STRICT}", "{mode: STRICTER}")]


def documents():
    """Every policy document the loader's tests and the discovery bench use."""
    out = yaml_docs(GOOD) + yaml_docs(EVERY_FIELD)
    for change in REJECTIONS:
        out += yaml_docs(GOOD.replace(*change))
    c = Cluster(2000)
    out += [policy_doc(json.loads(c.policy(p)), "authorizationpolicies") for p in range(5)]
    out += [authz("deny-all", action="DENY", rules=[{}]), authz("typo", action="DENY", rulez=[]),
            policy_doc(authz("typo", action="DENY", rulez=[]), "authorizationpolicies"),
            {"kind": "List", "items": yaml_docs(GOOD)}, "not a mapping", None, [], yaml_docs(EVERY_FIELD),
            {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "d"}}]
    return out


@pytest.mark.parametrize("i", range(len(documents())))
def test_a_decoded_document_loads_as_its_json_does(i):
    same(documents()[i])


def test_the_cases_cover_both_outcomes():
    results = [outcome(load_object, d, "p") for d in documents()]
    assert sum(isinstance(r, tuple) for r in results) >= 9 and sum(isinstance(r, list) and r != [] for r in results) >= 8


def test_bounds_give_the_same_errors():
    deep: dict = {}
    node = deep
    for _ in range(yamlpos.MAX_DEPTH + 2):
        node["a"] = node = {}
    assert same({"kind": "AuthorizationPolicy", "spec": deep})[1].endswith(f"nesting deeper than {yamlpos.MAX_DEPTH} levels")
    assert same([{}, deep])[1].startswith("kubernetes:AuthorizationPolicy/shop/x:1: nesting deeper")
    many = [{"kind": "AuthorizationPolicy"}] * (yamlpos.MAX_DOCUMENTS + 1)
    assert same(many)[1].endswith(f"more than {yamlpos.MAX_DOCUMENTS} documents")


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                       lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                       max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["action", "rules", "selector", "bogus", "mtls", "portLevelMtls"]), JSONISH,
                       max_size=3), st.sampled_from(["AuthorizationPolicy", "PeerAuthentication", "Other"]))
def test_structured_garbage_gives_the_same_outcome(spec, kind):
    same({"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": {"name": "n", "namespace": "x"},
          "spec": spec})
