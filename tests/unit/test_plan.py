"""Routing decisions, table-driven (agent.proxy.plan)."""

import pytest

from agent.config import parse_config
from agent.proxy.plan import EndpointHealth, Refuse, Route, build_view, plan_inbound, plan_outbound
from agent.state.workloads import Registry, workload_from_json

CONFIG = """
node: {name: node-0, address: 198.18.0.1}
cluster:
  pod_cidrs: [198.19.0.0/24]
  nodes:
    - {name: node-0, address: 198.18.0.1, pod_cidrs: [198.19.0.0/24]}
    - {name: node-1, address: 198.18.0.2, pod_cidrs: [198.19.1.0/24, "fd00:686d:1::/48"]}
  services:
    - {name: web, namespace: shop, vip: 198.20.0.10, ports: [80], target_port: 8080,
       endpoints: [198.19.0.3, 198.19.1.2, 198.19.1.3]}
"""


@pytest.fixture
def view():
    reg = Registry()
    for body in [
        {"uid": "a", "name": "a", "namespace": "default", "ip": "198.19.0.2"},
        {"uid": "b", "name": "b", "namespace": "default", "ip": "198.19.0.3"},
        {"uid": "c", "name": "c", "namespace": "shop", "ip": "198.19.1.2", "node": "node-1"},
    ]:
        reg.register(workload_from_json(body, local_node="node-0"))
    return build_view(parse_config(CONFIG), reg)


@pytest.mark.parametrize(
    "src, dst, port, expect",
    [
        ("198.19.0.2", "198.19.0.3", 80, ("local", "198.19.0.3", None)),
        ("198.19.0.2", "198.19.1.2", 80, ("tunnel", "198.19.1.2", "node-1")),
        # in node-1's CIDR but not registered: still tunnelled to the owning node
        ("198.19.0.2", "198.19.1.99", 80, ("tunnel", "198.19.1.99", "node-1")),
        ("198.19.0.2", "fd00:686d:1::5", 80, ("tunnel", "fd00:686d:1::5", "node-1")),
        ("198.19.0.2", "198.18.0.254", 9092, ("passthrough", "198.18.0.254", None)),
        ("198.19.0.9", "198.19.0.3", 80, "unknown_source"),  # not an enrolled pod
        ("198.19.1.2", "198.19.0.3", 80, "unknown_source"),  # a remote pod cannot be a local source
        ("198.19.0.2", "198.19.0.3", 15008, "loop"),
        ("198.19.0.2", "198.19.0.3", 15021, "loop"),
    ],
)
def test_outbound(view, src, dst, port, expect):
    plans = plan_outbound(src, dst, port, view, EndpointHealth(), 0.0)
    assert len(plans) == 1
    p = plans[0]
    if isinstance(expect, str):
        assert isinstance(p, Refuse) and p.reason == expect
    else:
        assert isinstance(p, Route)
        assert (p.kind, p.dst_ip, p.node_name) == expect


def test_egress_deny(view):
    view.egress = "deny"
    [p] = plan_outbound("198.19.0.2", "198.18.0.254", 80, view, EndpointHealth(), 0.0)
    assert isinstance(p, Refuse) and p.reason == "egress_denied" and p.status == 403


def test_vip_round_robin_spreads_and_maps_port(view):
    health = EndpointHealth()
    firsts = [plan_outbound("198.19.0.2", "198.20.0.10", 80, view, health, 0.0)[0] for _ in range(9)]
    assert {p.dst_port for p in firsts} == {8080}
    counts = {}
    for p in firsts:
        counts[p.dst_ip] = counts.get(p.dst_ip, 0) + 1
    assert counts == {"198.19.0.3": 3, "198.19.1.2": 3, "198.19.1.3": 3}
    assert {p.service for p in firsts} == {"shop/web"}


def test_vip_skips_recently_failed_endpoint_then_retries_it(view):
    health = EndpointHealth(eject_s=10)
    health.mark_failed("198.19.1.2", now=100.0)
    for _ in range(6):
        plans = plan_outbound("198.19.0.2", "198.20.0.10", 80, view, health, 105.0)
        assert plans[0].dst_ip != "198.19.1.2"
        assert plans[-1].dst_ip == "198.19.1.2"  # still tried last, not forgotten
    # after the ejection window it is back in the rotation
    firsts = [plan_outbound("198.19.0.2", "198.20.0.10", 80, view, health, 111.0)[0].dst_ip for _ in range(3)]
    assert sorted(firsts) == ["198.19.0.3", "198.19.1.2", "198.19.1.3"]


def test_least_conn(view):
    view.balance = "least_conn"
    health = EndpointHealth(active={"198.19.0.3": 5, "198.19.1.2": 0, "198.19.1.3": 2})
    plans = plan_outbound("198.19.0.2", "198.20.0.10", 80, view, health, 0.0)
    assert [p.dst_ip for p in plans] == ["198.19.1.2", "198.19.1.3", "198.19.0.3"]


@pytest.mark.parametrize(
    "dst, port, expect",
    [
        ("198.19.0.3", 80, "local"),
        ("198.19.0.99", 80, "unknown_destination"),
        ("198.19.1.2", 80, "unknown_destination"),  # remote pod: not ours to serve
        ("198.19.0.3", 15008, "loop"),
    ],
)
def test_inbound(view, dst, port, expect):
    p = plan_inbound(dst, port, view)
    if expect == "local":
        assert isinstance(p, Route) and p.dst.uid == "b"
    else:
        assert isinstance(p, Refuse) and p.reason == expect


def test_drain_sees_a_replacement_listener_on_every_port():
    from agent.drain import listeners_on, listening_inodes, replacement_present

    head = "  sl  local_address rem_address   st tx:rx tr:tm retr uid timeout inode\n"

    def row(port, inode, st="0A"):
        return f"   0: 0100007F:{port:04X} 00000000:0000 {st} 0:0 0:0 0 0 0 {inode} 1\n"

    old = head + row(15001, 11) + row(15001, 12) + row(15008, 13) + row(15001, 99, st="01")
    assert listeners_on(old, 15001) == 2
    before = listening_inodes(old, [15001, 15008])
    assert before == {15001: {"11", "12"}, 15008: {"13"}}
    assert not replacement_present(old, before)
    # a sibling worker's listeners were there before the drain: not a replacement
    assert not replacement_present(old + row(15001, 12), before)
    # the replacement opened :15001 but not yet :15008
    assert not replacement_present(old + row(15001, 21), before)
    assert replacement_present(old + row(15001, 21) + row(15008, 22), before)
    # the old listeners gone (closed by a sibling) does not matter
    assert replacement_present(head + row(15001, 21) + row(15008, 22), before)


def test_request_migration_sysctl(tmp_path):
    from agent.drain import enable_request_migration

    f = tmp_path / "tcp_migrate_req"
    f.write_text("0\n")
    assert enable_request_migration(str(f)) is None and f.read_text().strip() == "1"
    assert "could not be set" in enable_request_migration(str(tmp_path / "missing"))
