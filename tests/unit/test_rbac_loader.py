"""Policy files: every rejection names the file, the line and the field (agent.rbac.loader)."""

import json
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import yamlpos
from agent.rbac import loader
from agent.rbac.loader import PolicyError, load_documents, to_document

GOOD = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: shop}
spec:
  action: DENY
  rules:
    - from:
        - source:
            ipBlocks: ["10.0.0.0/8"]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""


def test_many_documents_and_json():
    docs = load_documents(GOOD, "f.yaml")
    assert [(d.kind, d.name) for d in docs] == [("AuthorizationPolicy", "a"), ("PeerAuthentication", "strict")]
    j = json.dumps([{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": "j", "namespace": "x"}, "spec": {}}])
    assert load_documents(j, "f.json")[0].name == "j"


@pytest.mark.parametrize("change, expect", [
    (("10.0.0.0/8", "10.0.0.0/33"), "f.yaml:9: spec.rules[0].from[0].source.ipBlocks: '10.0.0.0/33' is not a CIDR"),
    (("ipBlocks", "ipBlock"), "f.yaml:9: spec.rules[0].from[0].source.ipBlock: unknown field"),
    (("action: DENY", "action: MAYBE"), "f.yaml:5: spec.action:"),
    (("action: DENY", "action: CUSTOM"), "f.yaml:5: spec.action: CUSTOM"),
    (("security.istio.io/v1\nkind: Auth", "security.istio.io/v2\nkind: Auth"), "f.yaml:1: apiVersion:"),
    (("- from:", "- when: [{key: bogus.key, values: [x]}]\n      from:"), "f.yaml:7: spec.rules[0].when[0].key:"),
    (("{mode: STRICT}", "{mode: STRICTER}"), "f.yaml:14: spec.mtls.mode:"),
])
def test_rejections_have_file_line_and_field(change, expect):
    with pytest.raises(PolicyError) as e:
        load_documents(GOOD.replace(*change), "f.yaml")
    assert str(e.value).startswith(expect), str(e.value)


def test_bad_port():
    text = GOOD.replace('- from:\n        - source:\n            ipBlocks: ["10.0.0.0/8"]',
                        '- to:\n        - operation:\n            ports: ["99999"]')
    with pytest.raises(PolicyError, match=r"f.yaml:9: spec.rules\[0\].to\[0\].operation.ports: '99999' is not a port"):
        load_documents(text, "f.yaml")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_loader_never_crashes_and_every_rejection_has_a_line(text):
    try:
        load_documents(text, "h.yaml")
    except PolicyError as e:
        for line in str(e).splitlines():
            parts = line.split(":")
            assert parts[0] == "h.yaml" and parts[1].isdigit(), line


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["action", "rules", "selector", "bogus"]),
                       st.one_of(st.text(max_size=5), st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
                                                               max_size=2)), max_size=3))
def test_structured_garbage_specs(spec):
    doc = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "n", "namespace": "x"}, "spec": spec}
    try:
        load_documents(json.dumps(doc), "g.json")
    except PolicyError as e:
        assert str(e).startswith("g.json:")


EVERY_FIELD = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: every, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  action: AUDIT
  selector: {matchLabels: {app: web, tier: front}}
  rules:
    - from:
        - source: {principals: ["cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/c/*"], notPrincipals: ["*x"],
                   namespaces: [a], notNamespaces: [b],
                   ipBlocks: [10.0.0.0/8, "2001:db8::/32"], notIpBlocks: [10.1.0.0/16]}
        - source: {serviceAccounts: [a/b, own], notServiceAccounts: [c/d]}
        - source: {remoteIpBlocks: [192.0.2.0/24]}
      to:
        - operation: {ports: ["80", "8080"], notPorts: ["9090"], methods: [GET], notMethods: [DELETE],
                      paths: ["/api/*"], notPaths: ["/admin"], hosts: ["*.shop"], notHosts: [evil.shop]}
      when:
        - {key: source.ip, values: [10.0.0.1], notValues: [10.0.0.2]}
        - {key: "request.headers[x-user]", values: ["alice"]}
    - {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: pa, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {"8080": {mode: PERMISSIVE}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: shop}
spec: {}
"""


def test_to_document_round_trips_every_field():
    docs = load_documents(EVERY_FIELD, "every.yaml")
    again = load_documents(json.dumps([to_document(d) for d in docs]), "again.json")
    assert again == docs and len(docs) == 3
    assert to_document(docs[0])["metadata"]["annotations"] == {"istio.io/dry-run": "true"}

class _Watched(dict):
    """A parsed document that can be watched (plain dicts take no weak references)."""

def test_each_parsed_document_is_freed_once_validated_not_all_at_the_end():
    # dropping 10,000 parsed documents at once is one long stretch holding the GIL
    # beside the deciding thread; each is freed as the next one is validated
    refs, alive_at_pull = [], []

    def parsed():
        for i in range(6):
            alive_at_pull.append(sum(r() is not None for r in refs))
            data = _Watched(apiVersion="security.istio.io/v1", kind="AuthorizationPolicy",
                     metadata={"name": f"p{i}", "namespace": "ns"}, spec={})
            refs.append(weakref.ref(data))
            yield yamlpos.Doc(data=data, path="p.yaml")
            del data

    docs = loader._validated(parsed())
    assert [d.name for d in docs] == [f"p{i}" for i in range(6)]
    assert max(alive_at_pull) <= 1, alive_at_pull  # only the one being validated
