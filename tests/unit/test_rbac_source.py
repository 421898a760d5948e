"""Item 1 of issue 15: who the source is comes from the verified identity only; a
``Forwarded`` claim is used for the address, and only when consistent with the peer."""

import time
from types import MappingProxyType, SimpleNamespace

import pytest

from agent.proxy.conns import Conn
from agent.proxy.enforce import attrs
from agent.proxy.forwarded import claimed_source
from agent.state.workloads import Registry, Workload

TD = "cluster.local"
OTHER = Workload("u-o", "other", "other", "other-sa", ("10.1.0.9",), MappingProxyType({}), frozenset(), "node-1")
CLIENT = Workload("u-c", "client", "front", "client-sa", ("10.1.0.2",), MappingProxyType({}), frozenset(), "node-1")


LOCAL = Workload("u-l", "web", "shop", "web-sa", ("10.0.0.2",), MappingProxyType({}), frozenset(), None)
NODES = [SimpleNamespace(name="node-1", address="192.0.2.1", address6="2001:db8::1", pod_cidrs=["10.1.0.0/24"]),
         SimpleNamespace(name="node-2", address="192.0.2.2", address6=None, pod_cidrs=["10.2.0.0/24"])]


def agent():
    import ipaddress

    from agent.proxy.plan import PeerNode

    reg = Registry()
    for w in (OTHER, CLIENT, LOCAL):
        reg.register(w)
    peers = [PeerNode(n.name, n.address, tuple(ipaddress.ip_network(c) for c in n.pod_cidrs)) for n in NODES]
    a = SimpleNamespace(registry=reg, counters={}, view=SimpleNamespace(peers=peers),
                        config=SimpleNamespace(identity=SimpleNamespace(trust_domain=TD),
                                               cluster=SimpleNamespace(nodes=NODES)))
    a.count = lambda name, n=1: a.counters.__setitem__(name, a.counters.get(name, 0) + n)
    return a


@pytest.mark.parametrize("peer, claim, expect, mismatch", [
    ("192.0.2.1", ("10.1.0.2", 5555), ("10.1.0.2", 5555, "client"), 0),  # consistent: believed
    ("2001:db8::1", ("10.1.0.2", 5555), ("10.1.0.2", 5555, "client"), 0),  # the peer over IPv6
    ("192.0.2.1", ("10.1.0.9", 4444), ("192.0.2.1", 0, None), 1),  # another identity's pod
    ("192.0.2.1", ("10.1.0.77", 4444), ("10.1.0.77", 4444, None), 0),  # unknown, in the peer's CIDR
    ("192.0.2.1", ("10.2.0.5", 4444), ("192.0.2.1", 0, None), 1),  # another node's pod CIDR
    ("192.0.2.2", ("10.1.0.2", 5555), ("192.0.2.2", 0, None), 1),  # right identity, wrong node
    ("192.0.2.1", ("10.0.0.2", 4444), ("192.0.2.1", 0, None), 1),  # one of this node's pods
    ("192.0.2.1", ("198.51.100.7", 1), ("198.51.100.7", 1, None), 0),  # outside every CIDR: an address
    ("192.0.2.1", None, ("192.0.2.1", 0, None), 0),  # no claim: the peer node itself
])
def test_forwarded_is_believed_only_when_consistent(peer, claim, expect, mismatch):
    a = agent()
    ip, port, w = claimed_source(a, f"spiffe://{TD}/ns/front/sa/client-sa", peer, claim)
    assert (ip, port, w.name if w else None) == expect
    assert a.counters.get("tunnel_forwarded_mismatch", 0) == mismatch


@pytest.mark.parametrize("principal, ns", [
    ("spiffe://cluster.local/ns/front/sa/client-sa", "front"),
    ("spiffe://cluster.local/ns/front/sa/client-sa/extra", None),
    ("spiffe://cluster.local/nsx/front/sa/client-sa", None),
    (None, None),
])
def test_source_namespace_is_the_verified_identitys_never_the_registry_entry(principal, ns):
    c = Conn("inbound", "tunnel", "10.1.0.9", 1, "10.0.0.2", 8080, time.time(), 0.0)
    c.src, c.src_principal = OTHER, principal  # even a registry entry of another namespace
    assert attrs(c).src_namespace == ns
