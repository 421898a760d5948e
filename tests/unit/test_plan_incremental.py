"""A slice change updates only its service's routing entries (agent.proxy.plan.with_services,
agent.state.layered): the view it gives equals a full rebuild, decisions included, and
the view it started from is left as it was."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ServiceConfig, parse_config
from agent.proxy.plan import EndpointHealth, build_view, plan_outbound, with_services
from agent.state.layered import Layered
from agent.state.workloads import Registry, workload_from_json
from tests.unit.test_plan import CONFIG  # its nodes; the services are each case's


def svc(name, vip, ports, eps, target=None, ns="shop"):
    return ServiceConfig(name=name, namespace=ns, vip=vip, ports=ports, endpoints=eps, target_port=target)


WEB = [svc("web", "198.20.0.10", [80], ["198.19.0.3", "198.19.1.2"], 8080)]
WEB_DUAL = [svc("web", "198.20.0.10", [80], ["198.19.0.3"], 8080), svc("web", "fd00::10", [80], ["fd00::3"], 8080)]
API = [svc("api:80", "198.20.0.11", [80], ["198.19.1.5"]), svc("api:443", "198.20.0.11", [443], ["198.19.1.5"], 8443)]
DB = [svc("db", "198.20.0.12", [5432, 5433], ["198.19.0.9"], ns="data")]


def view_of(services):
    cfg = parse_config(CONFIG)
    cfg.cluster.services = list(services)
    reg = Registry()
    reg.register(workload_from_json({"uid": "a", "name": "a", "namespace": "default", "ip": "198.19.0.2"},
                                    local_node="node-0"))
    return build_view(cfg, reg)


def delta_of(before, after):
    """What discovery's apply hands over: every entry of each service that changed
    (None: gone), a service's old entries first (agent.k8s.apply._services)."""
    def group(services):
        out = {}
        for s in services:
            out.setdefault((s.namespace, s.name.split(":")[0]), []).append(s)
        return out

    old, new, delta = group(before), group(after), {}
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        for s in old.get(key, []):
            delta.update(dict.fromkeys((s.vip, p) for p in s.ports))
        for s in new.get(key, []):
            delta.update({(s.vip, p): s for p in s.ports})
    return delta


def routes(view):
    return {key: [(p.kind, p.dst_ip, p.dst_port, p.service) for p in
                  plan_outbound("198.19.0.2", key[0], key[1], view, EndpointHealth(), 0.0)]
            for key in sorted(set(view.services) | {("198.20.0.10", 80), ("198.20.0.11", 443), ("fd00::10", 80)})}


CASES = {
    "endpoints change": (WEB + API + DB, [svc("web", "198.20.0.10", [80], ["198.19.1.7"], 8080)] + API + DB),
    "service added": (API, API + WEB),
    "service gone": (WEB + API + DB, WEB + DB),
    "every service gone": (WEB + API, []),
    "one of two ports gone": (API + DB, API[:1] + DB),
    "target port changes": (WEB, [svc("web", "198.20.0.10", [80], ["198.19.0.3", "198.19.1.2"], 9090)]),
    "second VIP (dual stack)": (WEB + DB, WEB_DUAL + DB),
    "second VIP gone": (WEB_DUAL + DB, WEB + DB),
    "VIP moves": (WEB + API, [svc("web", "198.20.0.99", [80], ["198.19.0.3"], 8080)] + API),
    "a port added": (DB, [svc("db", "198.20.0.12", [5432, 5433, 5434], ["198.19.0.9"], ns="data")]),
    "a second port renames the first": ([svc("api", "198.20.0.11", [80], ["198.19.1.5"])] + WEB, API + WEB),
    "nothing": (WEB + API, WEB + API),
}


@pytest.mark.parametrize("name", CASES)
def test_an_incremental_update_equals_a_full_rebuild(name):
    before, after = CASES[name]
    old = view_of(before)
    snapshot = (dict(old.services), dict(old.by_key), routes(old))
    got, want = with_services(old, delta_of(before, after)), view_of(after)
    assert dict(got.services) == dict(want.services) and len(got.services) == len(want.services)
    assert dict(got.by_key) == dict(want.by_key) and len(got.by_key) == len(want.by_key)
    assert routes(got) == routes(want)
    # the view a decision in flight holds is unchanged
    assert (dict(old.services), dict(old.by_key), routes(old)) == snapshot


def test_one_service_of_many_shares_the_rest():
    many = [svc(f"s{i}", f"198.21.{i // 250}.{i % 250}", [80], [f"198.19.1.{i % 250}"]) for i in range(1000)]
    old = view_of(many)
    changed = [svc("s7", "198.21.0.7", [80], ["198.19.0.3"])] + many[:7] + many[8:]
    new = with_services(old, delta_of(many, changed))
    assert new.services[("198.21.0.7", 80)].endpoints == ("198.19.0.3",)
    assert old.services[("198.21.0.7", 80)].endpoints == ("198.19.1.7",)
    assert new.services._base is old.services._base  # nothing copied but the change
    assert new.services[("198.21.0.8", 80)] is old.services[("198.21.0.8", 80)]


KEYS = st.integers(0, 12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, st.integers()), st.lists(st.dictionaries(KEYS, st.none() | st.integers()), max_size=12),
       st.integers(1, 5))
def test_layered_equals_a_dict_through_any_changes_and_folds(start, deltas, fold):
    model, maps = dict(start), [Layered(start)]
    Layered.FOLD, kept = fold, Layered.FOLD
    try:
        for delta in deltas:
            maps.append(maps[-1].changed(delta))
            for k, v in delta.items():
                model.pop(k, None) if v is None else model.__setitem__(k, v)
            m = maps[-1]
            assert dict(m) == model and len(m) == len(model) and sorted(m) == sorted(model)
            assert all((k in m) == (k in model) and m.get(k, "x") == model.get(k, "x") for k in range(13))
            with pytest.raises(KeyError):
                m[99]
        assert dict(maps[0]) == start  # every earlier map is as it was
    finally:
        Layered.FOLD = kept
