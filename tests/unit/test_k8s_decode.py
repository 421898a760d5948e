"""Decoding API bytes (agent.k8s.decode): the pruned object an event or list page
decodes to gives exactly the slim (and resourceVersion, key) the whole object gives,
for any object, with msgspec and with the standard library fallback; ERROR events keep
their whole Status; a watch stream cut anywhere gives the same lines."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.k8s import decode
from agent.k8s.listing import scan_list, watch_lines
from agent.k8s.model import key_of, resource_version, slim
from tests.unit import k8s_objects as k

KINDS = ["pods", "nodes", "services", "endpointslices", "authorizationpolicies"]
junk = st.recursive(st.none() | st.booleans() | st.integers(-3, 70000) | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
BASE = {
    "pods": k.pod("web-1", "10.0.0.5", labels={"app": "web", "hostmesh.io/capture": "enabled"},
                  annotations={"hostmesh.io/http-ports": "8080, 9090", "other": "x"}, deleting="2026-11-23T08:00:00Z"),
    "nodes": k.node("node-b", "192.0.2.7", "10.1.0.0/24", ip6="fd00::7"),
    "services": k.service("web", "10.96.0.10", [{"name": "http", "port": 80, "targetPort": "http"}]),
    "endpointslices": k.endpointslice("web", ["10.0.0.5", "10.0.0.6"], [{"name": "http", "port": 8080}]),
    "authorizationpolicies": k.authz("allow-web", action="ALLOW", rules=[{"from": [{"source": {"namespaces": ["x"]}}]}]),
}


def _paths(obj, prefix=()):
    """Every (path) into an object, so a mutation can land anywhere."""
    yield prefix
    if isinstance(obj, dict):
        for key, v in obj.items():
            yield from _paths(v, (*prefix, key))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@st.composite
def objects(draw):
    kind = draw(st.sampled_from(KINDS))
    obj = json.loads(json.dumps(BASE[kind]))
    paths = [p for p in _paths(obj) if p]
    for _ in range(draw(st.integers(0, 3))):  # replace, drop or add something anywhere
        path = draw(st.sampled_from(paths))
        parent = obj
        try:
            for step in path[:-1]:
                parent = parent[step]
            how = draw(st.sampled_from(["replace", "drop", "add"]))
            if how == "replace":
                parent[path[-1]] = draw(junk)
            elif how == "drop" and isinstance(parent, dict):
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=4))] = draw(junk)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the path
        paths = [p for p in _paths(obj) if p]
    return kind, obj


def _outcome(fn):
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001 - both paths must fail alike
        return "error", type(e).__name__


def _judged(kind, obj):
    return _outcome(lambda: (slim(kind, obj, k.NODE), key_of(obj), resource_version(obj)))


@pytest.fixture(params=["msgspec", "stdlib"])
def decoder(request, monkeypatch):
    if request.param == "msgspec":
        if not decode.HAVE_MSGSPEC:
            pytest.skip("msgspec not installed")
    else:
        monkeypatch.setattr(decode, "msgspec", None)
    return request.param


@settings(max_examples=300)
@given(case=objects(), etype=st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]))
def test_a_pruned_event_means_what_the_whole_object_means(case, etype):
    kind, obj = case
    line = json.dumps({"type": etype, "object": obj}).encode()
    for use in ([decode.msgspec, None] if decode.HAVE_MSGSPEC else [None]):
        saved, decode.msgspec = decode.msgspec, use
        try:
            got_type, pruned = decode.decode_event(kind, line)
        finally:
            decode.msgspec = saved
        assert got_type == etype
        assert _judged(kind, pruned) == _judged(kind, obj)


@settings(max_examples=100)
@given(cases=st.lists(objects(), max_size=6), meta=st.dictionaries(st.sampled_from(["resourceVersion", "continue"]),
                                                                   st.text(max_size=6)))
def test_a_pruned_list_page_means_what_the_whole_page_means(cases, meta):
    kind = cases[0][0] if cases else "pods"
    items = [o for kd, o in cases if kd == kind]
    data = json.dumps({"kind": "List", "metadata": meta, "items": items}).encode()
    for use in ([decode.msgspec, None] if decode.HAVE_MSGSPEC else [None]):
        saved, decode.msgspec = decode.msgspec, use
        seen: list = []
        try:
            rest = decode.decode_list(kind, data, seen.append)
        finally:
            decode.msgspec = saved
        assert [_judged(kind, o) for o in seen] == [_judged(kind, o) for o in items]
        assert rest.get("metadata") == meta


def test_the_pruned_pod_drops_what_discovery_ignores(decoder):
    line = json.dumps({"type": "MODIFIED", "object": BASE["pods"]}).encode()
    _, pruned = decode.decode_event("pods", line)
    assert pruned == BASE["pods"] if decoder == "stdlib" else pruned == {
        "metadata": BASE["pods"]["metadata"],
        "spec": {"nodeName": k.NODE, "serviceAccountName": "web", "hostNetwork": False},
        "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}]}}


def test_an_error_event_keeps_its_whole_status(decoder):
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
              "message": "too old resource version: 5 (9)"}
    for kind in KINDS:
        assert decode.decode_event(kind, json.dumps({"type": "ERROR", "object": status}).encode()) == ("ERROR", status)


@pytest.mark.parametrize("line", [b'{"type": "ADDED", "object": {', b"[1]", b"", b'{"type": "ADDED"} x'])
def test_malformed_events_raise_value_error(decoder, line):
    with pytest.raises(ValueError):
        decode.decode_event("pods", line)


def test_malformed_list_raises_value_error(decoder):
    with pytest.raises(ValueError):
        decode.decode_list("pods", b'{"items": [{}', lambda o: None)


def test_list_fallback_is_the_item_scanner():
    data = json.dumps(k.lst("PodList", [BASE["pods"]], "7")).encode()
    seen: list = []
    assert scan_list(data.decode(), seen.append) == {"apiVersion": "v1", "kind": "PodList",
                                                     "metadata": {"resourceVersion": "7"}}
    assert seen == [BASE["pods"]]


@given(lines=st.lists(st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\n", b"x")), max_size=8),
       cuts=st.lists(st.integers(0, 200), max_size=10), blank=st.booleans())
def test_watch_lines_whatever_the_chunking(lines, cuts, blank):
    stream = b"".join(line + b"\n" + (b"\n" if blank else b"") for line in lines) + b"partial"
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    got = [line for batch in watch_lines(chunks) for line in batch]
    assert got == [line for line in lines if line.strip()]
    assert all(batch for batch in watch_lines(chunks))  # no empty hand-overs
