"""The workload registry and the admin body validator (agent.state.workloads)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.state.workloads import Registry, WorkloadError, canonical_ip, workload_from_json

BODY = {"uid": "u1", "name": "web", "namespace": "shop", "service_account": "web-sa",
        "ip": "198.19.0.2", "labels": {"app": "web"}, "http_ports": [8080]}


def test_identity_and_json_round_trip():
    w = workload_from_json(BODY)
    assert w.spiffe_id("cluster.local") == "spiffe://cluster.local/ns/shop/sa/web-sa"
    assert workload_from_json(w.to_json()) == w


@pytest.mark.parametrize(
    "patch, msg",
    [
        ({"ip": "300.1.1.1"}, "ip: '300.1.1.1' is not an IP address"),
        ({"uid": ""}, "uid: '' is not a valid name"),
        ({"namespace": "a/b"}, "namespace"),
        ({"http_ports": [0]}, "http_ports"),
        ({"http_ports": [True]}, "http_ports"),
        ({"labels": {"a": 1}}, "labels"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"ips": 5}, "ips: must be a list of IP addresses"),
    ],
)
def test_invalid_bodies(patch, msg):
    with pytest.raises(WorkloadError, match=msg):
        workload_from_json({**BODY, **patch})


def test_missing_required():
    with pytest.raises(WorkloadError, match="ip: required"):
        workload_from_json({"uid": "x", "name": "x"})


def test_registry_ip_conflict_changes_nothing():
    r = Registry()
    r.register(workload_from_json(BODY))
    with pytest.raises(WorkloadError, match="already belongs"):
        r.register(workload_from_json({**BODY, "uid": "u2"}))
    assert [w.uid for w in r] == ["u1"] and r.by_ip("198.19.0.2").uid == "u1"


def test_replace_moves_ip_and_remove_forgets():
    r = Registry()
    r.register(workload_from_json(BODY))
    ch = r.register(workload_from_json({**BODY, "ip": "198.19.0.9"}))
    assert ch.removed.ip == "198.19.0.2"
    assert r.by_ip("198.19.0.2") is None and r.by_ip("198.19.0.9").uid == "u1"
    assert r.remove("u1").removed.uid == "u1"
    assert len(r) == 0 and r.by_ip("198.19.0.9") is None
    assert r.remove("u1").removed is None


def test_node_equal_to_local_means_local():
    w = workload_from_json({**BODY, "node": "node-0"}, local_node="node-0")
    assert w.node is None
    assert workload_from_json({**BODY, "node": "node-1"}, local_node="node-0").node == "node-1"


@given(st.dictionaries(st.sampled_from(list(BODY) + ["node", "ips", "x"]),
                       st.one_of(st.text(max_size=8), st.integers(), st.none(), st.lists(st.integers(), max_size=3))))
def test_validator_never_crashes(body):
    try:
        workload_from_json(body)
    except WorkloadError:
        pass


def test_api_workloads_survive_a_restart_and_config_workloads_follow_reload(tmp_path):
    import trio
    import yaml

    from agent.app import Agent
    from agent.config import load_config
    from agent.errors import ApiError

    cfg_path = tmp_path / "config.yaml"
    doc = {"node": {"name": "n0", "address": "192.0.2.1"}, "state_dir": str(tmp_path / "state"),
           "workloads": [{"uid": "s1", "name": "static", "ip": "10.0.0.1"}]}
    cfg_path.write_text(yaml.safe_dump(doc))
    a = Agent(load_config(str(cfg_path)), str(cfg_path))
    a.reconcile_config_workloads([wc.to_dict(exclude_none=True) for wc in a.config.workloads])
    a.add_workload({"uid": "p1", "name": "pod", "ip": "10.0.0.2"})
    a.add_workload({"uid": "p2", "name": "gone", "ip": "10.0.0.3"})
    a.remove_workload("p2")

    # a restarted agent (same state_dir) knows the API's pods again, not the removed one
    b = Agent(load_config(str(cfg_path)), str(cfg_path))
    assert b.load_api_workloads() == 1 and {w.uid for w in b.registry} == {"p1"}

    # reload: the config's workloads are reconciled, peers follow; a bad one changes nothing
    b.reconcile_config_workloads([wc.to_dict(exclude_none=True) for wc in b.config.workloads])
    doc["workloads"] = [{"uid": "s2", "name": "static2", "ip": "10.0.0.4"}]
    doc["cluster"] = {"nodes": [{"name": "n1", "address": "192.0.2.2", "pod_cidrs": ["10.1.0.0/24"]}]}
    cfg_path.write_text(yaml.safe_dump(doc))
    r = trio.run(b.reload)
    assert r["config_workloads"] == 1 and r["cluster_changed"]
    assert {w.uid for w in b.registry} == {"p1", "s2"} and [p.name for p in b.view.peers] == ["n1"]
    doc["workloads"] = [{"uid": "s3", "name": "bad", "ip": "not-an-ip"}]
    cfg_path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ApiError) as e:
        trio.run(b.reload)
    assert e.value.status == 400 and {w.uid for w in b.registry} == {"p1", "s2"}


def _says(fn, v):
    try:
        return fn(v)
    except (ValueError, TypeError) as e:
        return type(e)


def _ipaddress(v):
    import ipaddress

    return str(ipaddress.ip_address(v))


@pytest.mark.parametrize("v", [
    "10.1.0.5", "0.0.0.0", "255.255.255.255", "010.1.0.5", "10.1.0.05", "1.2.3", "1.2.3.4.5", "256.1.1.1",
    " 1.2.3.4", "1.2.3.4\n", "1.2.3.4\x00", "\u0661.2.3.4", "0x1.2.3.4", "1.2.3.+4", "", "2001:DB8::1",
    "2001:db8:0:0:0:0:0:1", "::ffff:1.2.3.4", "fe80::1%eth0", 167837957, None, b"10.1.0.5", ["10.1.0.5"],
])
def test_canonical_ip_says_what_the_ipaddress_module_says(v):
    assert _says(canonical_ip, v) == _says(_ipaddress, v)


@given(st.ip_addresses().map(str) | st.text(alphabet="0123456789.:abcdefx%", max_size=20))
def test_canonical_ip_property(v):
    assert _says(canonical_ip, v) == _says(_ipaddress, v)


def _judged(body, **kw):
    try:
        return "ok", workload_from_json(body, **kw)
    except WorkloadError as e:
        return "error", str(e)


_KNOWN = workload_from_json(dict(BODY, ips=["198.19.0.2", "fd00::2"], node="node-b"))
_value = st.one_of(st.none(), st.integers(-1, 70000), st.booleans(), st.sampled_from(
    ["u1", "web", "shop", "web-sa", "198.19.0.2", "fd00::2", "fd00:0::2", "node-b", "node-a", "", "a b", "x/y"]),
    st.lists(st.sampled_from(["198.19.0.2", "fd00::2", "fd00:0::2", "10.0.0.1", 7]), max_size=3),
    st.dictionaries(st.sampled_from(["app", "tier", 1]), st.sampled_from(["web", "db", 2]), max_size=2))


@given(patch=st.dictionaries(st.sampled_from(sorted(BODY) + ["ips", "node"]), _value, max_size=4),
       local=st.sampled_from([None, "node-a", "node-b"]))
def test_a_known_workload_changes_nothing_but_the_work(patch, local):
    """``known`` (fields equal to a validated workload's are not checked again) gives
    exactly what validating the whole body gives, for bodies near and far from it."""
    body = dict(_KNOWN.to_json(), **patch)
    assert _judged(body, local_node=local, known=_KNOWN) == _judged(body, local_node=local)
    got = _judged(_KNOWN.to_json(), known=_KNOWN)
    assert got == ("ok", _KNOWN) and got[1].labels is _KNOWN.labels
