"""A faithful stand-in for the running agent behind the admin API: the real registry and
policy store, no data plane."""

from agent.errors import ApiError
from agent.rbac.loader import PolicyError, load_documents
from agent.rbac.store import PolicyStore
from agent.state.workloads import Registry, WorkloadError, workload_from_json


class FakeAgent:
    def __init__(self):
        self.registry = Registry()
        self.policies = PolicyStore()
        self.level = "info"
        self.reloads = self.drains = 0

    def status(self):
        return {"node": "fake", "version": "0", "uptime_s": 1, "ready": True, "workers": 1,
                "counts": {"workloads": len(self.registry)}}

    def list_workloads(self):
        return [w.to_json() for w in self.registry]

    def add_workload(self, body):
        try:
            w = workload_from_json(body)
            self.registry.register(w)
        except WorkloadError as e:
            raise ApiError(400, "invalid_workload", str(e)) from None
        return w.to_json()

    def remove_workload(self, uid):
        ch = self.registry.remove(uid)
        if ch.removed is None:
            raise ApiError(404, "not_found", f"no workload {uid}")
        return ch.removed.to_json()

    def list_policies(self):
        return self.policies.list()

    def apply_policies(self, text, source):
        try:
            docs = load_documents(text, source)
        except PolicyError as e:
            raise ApiError(400, "invalid_policy", str(e)) from None
        self.policies.apply(docs, source)
        return {"applied": [f"{d.namespace}/{d.name}" for d in docs]}

    def delete_policy(self, ns, name):
        if not self.policies.delete(ns, name):
            raise ApiError(404, "not_found", "no such policy")
        return {"deleted": f"{ns}/{name}"}

    def certs(self):
        return []

    def connections(self):
        return []

    def stats(self):
        return {"counters": {}}

    def set_log_level(self, level):
        if level not in ("debug", "info", "warning", "error"):
            raise ApiError(400, "invalid_level", level)
        self.level = level
        return {"level": level}

    async def reload(self):
        self.reloads += 1
        return {}

    async def drain(self):
        self.drains += 1
        return {"draining": True}

    def traffic_dump(self):
        return {"rules": [], "ejected": [], "clusters": {}}

    def config_dump(self):
        return {"status": self.status(), "workloads": self.list_workloads()}
