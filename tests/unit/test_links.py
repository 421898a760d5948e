"""The link watcher's pure part: host routes from /proc, and which addresses vanished
with their interface (agent.capture.links)."""

from agent.capture.links import gone_workloads, parse_routes, vanished
from agent.state.workloads import Registry, workload_from_json

ROUTE4 = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
h-0\t020013C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
h-1\t030013C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
ROUTE6 = (
    "fd000000000000000000000000000002 80 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000400 00000001 00000000 00000001     h-0\n"
    "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000002 00000000 00000001     h-0\n"
    "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000000 00000003 00000000 00200001       lo\n"
)


def test_host_routes_per_interface():
    assert parse_routes(ROUTE4, ROUTE6) == {"h-0": {"198.19.0.2", "fd00::2"}, "h-1": {"198.19.0.3"}}


def test_vanished_interfaces_and_moved_addresses():
    before = {"h-0": {"198.19.0.2"}, "h-1": {"198.19.0.3"}, "h-2": {"198.19.0.4"}}
    now = {"h-1": {"198.19.0.3"}, "h-9": {"198.19.0.4"}}  # h-2's pod moved to h-9
    assert vanished(before, now, {"lo", "eth0", "h-1", "h-9"}) == {"h-0": {"198.19.0.2"}}
    assert vanished(before, before, {"h-0", "h-1", "h-2"}) == {}


def test_only_local_workloads_are_removed():
    r = Registry()
    r.register(workload_from_json({"uid": "a", "name": "a", "ip": "198.19.0.2"}))
    r.register(workload_from_json({"uid": "b", "name": "b", "ip": "198.19.1.2", "node": "node-1"}, local_node="node-0"))
    assert gone_workloads(r, {"198.19.0.2", "198.19.1.2", "10.9.9.9"}) == ["a"]
