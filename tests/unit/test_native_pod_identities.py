"""native_identity.py (the native engine) pushes the map local pod address -> SPIFFE ID (the certificate the core
presents on a pod's :15008) whole, and only when the registry's content changed."""

from types import SimpleNamespace

from agent.config import parse_config
from agent.proxy.native import NativeEngine
from agent.rbac.store import PolicyStore
from agent.state.workloads import Registry, workload_from_json


class Core:
    def __init__(self):
        self.pushed = []

    def set_pod_identities(self, pairs):
        self.pushed.append(list(pairs))

    def set_generation(self, g):
        pass


def pod(uid, ip, ns="shop", sa="web-sa", node=None, ip6=None):
    body = {"uid": uid, "name": uid, "namespace": ns, "service_account": sa, "ip": ip}
    if ip6:
        body["ips"] = [ip, ip6]
    if node:
        body["node"] = node
    return workload_from_json(body)


def test_pushed_whole_on_change_only():
    reg, core = Registry(), Core()
    eng = NativeEngine(SimpleNamespace(registry=reg, config=parse_config("{}"), policies=PolicyStore(), view=None),
                       core, None)
    eng.ids.sync_pod_identities("cluster.local")
    assert core.pushed == [[]]
    reg.register(pod("web", "198.19.0.2", ip6="fd00:686d::2"))
    reg.register(pod("far", "198.19.1.2", node="node-1"))  # another node's pod: not ours to present
    eng.ids.sync_pod_identities("cluster.local")
    web = "spiffe://cluster.local/ns/shop/sa/web-sa"
    assert core.pushed[-1] == [("198.19.0.2", web), ("fd00:686d::2", web)]
    eng.ids.sync_pod_identities("cluster.local")  # nothing changed: nothing pushed
    reg.register(pod("web", "198.19.0.2", ip6="fd00:686d::2"))  # re-registered, same content
    eng.ids.sync_pod_identities("cluster.local")
    assert len(core.pushed) == 2
    reg.register(pod("db", "198.19.0.3", ns="data", sa="db-sa"))
    reg.remove("web")
    eng.ids.sync_pod_identities("cluster.local")
    assert core.pushed[-1] == [("198.19.0.3", "spiffe://cluster.local/ns/data/sa/db-sa")]
