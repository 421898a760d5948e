"""Discovery's live state, kept one event at a time: what each event changes, in
O(size of the change), for the shell to carry out.

Pure: no I/O, no clock. ``Index`` holds the slims of every watched kind
(``agent.k8s.model.slim``) and what follows from them incrementally: which pod holds
each address (the ``claims``), the workload body each pod contributes, which
EndpointSlices belong to which service. ``put``/``remove`` take one object; an object
whose slim equals the stored one changes nothing and costs one comparison. What changed
accumulates until ``take``: workload bodies by uid (None: gone), service keys, whether
the nodes changed, policy keys. A relist streams into the same state page by page
(``begin_relist``/``put``/``end_relist``: what was not seen again is removed), so there
is never a second copy. The invariant, tested by property: after any sequence of
events the workloads, services, nodes and policies equal ``agent.k8s.model.desired``
over a fresh list of the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.k8s.model import (
    KINDS,
    POLICY_KINDS,
    grant,
    key_of,
    service_entries,
    slice_service,
    slim,
    split_nodes,
)


@dataclass
class Changes:
    workloads: dict[str, dict | None] = field(default_factory=dict)  # uid -> body, None: gone
    services: set[str] = field(default_factory=set)  # "ns/name" whose entries may differ
    nodes: bool = False
    policies: set[tuple[str, str]] = field(default_factory=set)  # (kind, "ns/name")

    def __bool__(self) -> bool:
        return bool(self.workloads or self.services or self.nodes or self.policies)


class Index:
    def __init__(self, this_node: str) -> None:
        self.node = this_node
        self.objects: dict[str, dict[str, object]] = {k: {} for k in KINDS}
        self.versions: dict[str, str | None] = {k: None for k in KINDS}
        self.claims: dict[str, tuple[str, ...]] = {}  # ip -> keys of the workload pods listing it
        self.out: dict[str, dict] = {}  # pod key -> the body it contributes (the addresses it won)
        self.conflicts: dict[str, tuple[str, ...]] = {}  # pod key -> addresses it lost, for the log
        self.slices_of: dict[str, set[str]] = {}  # service key -> its slices' keys
        self.pending = Changes()
        self._seen: dict[str, set[str]] = {}  # kind -> keys seen by the relist under way

    # ---- the Cache interface (the shell and the tests feed raw objects) ----------------------
    def replace(self, kind: str, items: list[dict], version: str | None) -> None:
        """A whole list result: the kind is exactly ``items`` now."""
        self.begin_relist(kind)
        for o in items:
            self.put(kind, key_of(o), slim(kind, o, self.node))
        self.end_relist(kind, version)

    def event(self, kind: str, etype: str, obj: dict) -> bool:
        """A watch event; True when something discovery uses changed."""
        return self.apply_event(kind, etype, key_of(obj), slim(kind, obj, self.node)
                                if etype in ("ADDED", "MODIFIED") else None, (obj.get("metadata") or {})
                                .get("resourceVersion"))

    def apply_event(self, kind: str, etype: str, key: str, value, rv: str | None) -> bool:
        """A watch event already slimmed (the shell slims beside the event loop)."""
        if rv:
            self.versions[kind] = rv
        if etype == "DELETED":
            return self.remove(kind, key)
        if etype in ("ADDED", "MODIFIED"):
            return self.put(kind, key, value)
        return False  # BOOKMARK: only the version moves

    def forget(self, kind: str) -> None:
        """410 Gone: the version is too old; the next list starts afresh."""
        self.versions[kind] = None

    def begin_relist(self, kind: str) -> None:
        self._seen[kind] = set()

    def end_relist(self, kind: str, version: str | None) -> None:
        seen = self._seen.pop(kind, set())
        for key in [k for k in self.objects[kind] if k not in seen]:
            self.remove(kind, key)
        self.versions[kind] = version

    # ---- one object ------------------------------------------------------------------------
    def put(self, kind: str, key: str, value) -> bool:
        """``value``: the object's slim (None: nothing discovery keeps, as if deleted)."""
        if kind in self._seen:
            self._seen[kind].add(key)
        if value is None:
            return self.remove(kind, key)
        objs = self.objects[kind]
        old = objs.get(key)
        if old == value:
            return False
        if kind == "pods" and value.rank[-1] == key:
            key = value.rank[-1]  # one string for the key and the rank's tie-break (20,000 of them)
        objs[key] = value
        self._changed(kind, key, old, value)
        return True

    def remove(self, kind: str, key: str) -> bool:
        old = self.objects[kind].pop(key, None)
        if old is None:
            return False
        self._changed(kind, key, old, None)
        return True

    def _changed(self, kind: str, key: str, old, new) -> None:
        p = self.pending
        if kind == "pods":
            self._pod_changed(key, old, new)
        elif kind == "nodes":
            p.nodes = True
        elif kind == "services":
            p.services.add(key)
        elif kind == "endpointslices":
            for s in (old, new):
                svc = slice_service(s) if s is not None else None
                if svc is None:
                    continue
                p.services.add(svc)
                members = self.slices_of.setdefault(svc, set())
                if s is new:
                    members.add(key)
                elif new is None or slice_service(new) != svc:
                    members.discard(key)
                    if not members:
                        del self.slices_of[svc]
        else:
            p.policies.add((kind, key))

    # ---- pods: addresses two pods claim ----------------------------------------------------
    def _pod_changed(self, key: str, old, new) -> None:
        old_ips = old.body["ips"] if old is not None else []
        new_ips = new.body["ips"] if new is not None else []
        for ip in old_ips:
            if ip not in new_ips:
                rest = tuple(k for k in self.claims.get(ip, ()) if k != key)
                if rest:
                    self.claims[ip] = rest
                else:
                    self.claims.pop(ip, None)
        for ip in new_ips:
            have = self.claims.get(ip, ())
            if key not in have:
                self.claims[ip] = (*have, key)
        affected = {key}
        for ip in (*old_ips, *new_ips):
            affected.update(self.claims.get(ip, ()))
        if len(affected) == 1:  # no address shared with another pod: only this one
            self._emit(key)
            return
        for k in sorted(affected):
            self._emit(k)

    def _holder(self, ip: str) -> str:
        pods = self.objects["pods"]
        return max(self.claims[ip], key=lambda k: pods[k].rank)

    def _name(self, key: str) -> str:
        b = self.objects["pods"][key].body
        return f"{b['namespace']}/{b['name']}"

    def _emit(self, key: str) -> None:
        """Recompute what pod ``key`` contributes; note the uids whose body changed."""
        view = self.objects["pods"].get(key)
        body, lost = None, ()
        if view is not None:
            b, claims = view.body, self.claims
            # an address no other pod claims is this pod's (nearly every address)
            won = [ip for ip in b["ips"] if len(claims[ip]) == 1 or self._holder(ip) == key]
            if len(won) < len(b["ips"]):
                lost = tuple(f"pod {b['namespace']}/{b['name']}: {ip} is held by pod {self._name(self._holder(ip))}"
                             for ip in b["ips"] if ip not in won)
            body = grant(b, won) if won else None
        if lost:
            self.conflicts[key] = lost
        else:
            self.conflicts.pop(key, None)
        before = self.out.get(key)
        if before is body or before == body:
            return
        if before is not None and (body is None or before["uid"] != body["uid"]):
            self.pending.workloads[before["uid"]] = None
        if body is None:
            del self.out[key]
        else:
            self.out[key] = body
            self.pending.workloads[body["uid"]] = body

    # ---- what the shell reads ----------------------------------------------------------------
    def take(self) -> Changes:
        """What changed since the last ``take``."""
        c, self.pending = self.pending, Changes()
        return c

    def workloads(self) -> dict[str, dict]:
        return {b["uid"]: b for b in self.out.values()}

    def service_entries(self, key: str) -> list[dict]:
        svc = self.objects["services"].get(key)
        if svc is None:
            return []
        slices = self.objects["endpointslices"]
        return service_entries(svc, [slices[k] for k in sorted(self.slices_of.get(key, ()))])

    def nodes(self) -> tuple[list[dict], dict | None]:
        return split_nodes(self.objects["nodes"].values(), self.node)

    def policy_doc(self, kind: str, key: str) -> dict | None:
        return self.objects[kind].get(key) if kind in POLICY_KINDS else None

    def all_conflicts(self) -> set[str]:
        return {line for lines in self.conflicts.values() for line in lines}
