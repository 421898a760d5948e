"""Kubernetes objects -> what the agent knows: workloads, peer nodes, services, policies.

Pure: no I/O, no clock. ``slim`` is the only reader of API objects: it keeps the
fields hostmesh uses and nothing else (never ``managedFields``, annotations it ignores,
status it ignores), so two objects with equal slims mean the same to discovery and an
event whose slim equals the stored one changes nothing. ``Cache`` holds the slims of
every watched kind (a relist replaces a kind wholesale, so objects deleted while a
watch was down disappear); ``desired`` turns it into the agent's whole state, one pod
per address: the reference that ``agent.k8s.index`` (what the shell runs, one event at
a time) must always equal. ``agent.k8s.reconcile`` plans how to get there.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field

from agent.state.workloads import canonical_ip

# Pod annotation naming the ports that speak HTTP/1.1 (L7 policy), e.g. "8080,9090".
HTTP_PORTS_ANNOTATION = "hostmesh.io/http-ports"
# Pod label or annotation that keeps a pod out of the mesh (capture opt-out).
OPT_OUT = ("hostmesh.io/capture", "disabled")

KINDS = ("pods", "nodes", "services", "endpointslices", "authorizationpolicies", "peerauthentications",
         "destinationrules", "virtualservices")
POLICY_KINDS = {"authorizationpolicies": "AuthorizationPolicy", "peerauthentications": "PeerAuthentication",
                "destinationrules": "DestinationRule", "virtualservices": "VirtualService"}
# networking.istio.io kinds (traffic rules, agent/traffic); the others are security.istio.io
TRAFFIC_KINDS = ("destinationrules", "virtualservices")
# Node labels kept for locality load balancing (docs/traffic.md).
LOCALITY_LABELS = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone")


def key_of(obj: dict) -> str:
    m = obj.get("metadata") or {}
    return f"{m.get('namespace') or ''}/{m.get('name') or ''}"


def resource_version(obj: dict) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


@dataclass
class Cache:
    """The last known objects per kind (their slims), and the resourceVersion to resume
    each watch. The reference state: ``agent.k8s.index.Index`` is what the shell runs."""

    objects: dict[str, dict[str, object]] = field(default_factory=lambda: {k: {} for k in KINDS})
    versions: dict[str, str | None] = field(default_factory=lambda: {k: None for k in KINDS})

    def replace(self, kind: str, items: list[dict], version: str | None) -> None:
        """A list result: the kind is exactly ``items`` now."""
        self.objects[kind] = {}
        for o in items:
            self._put(kind, o)
        self.versions[kind] = version

    def _put(self, kind: str, obj: dict) -> None:
        v = slim(kind, obj)
        if v is None:
            self.objects[kind].pop(key_of(obj), None)
        else:
            self.objects[kind][key_of(obj)] = v

    def event(self, kind: str, etype: str, obj: dict) -> bool:
        """A watch event; True when the objects changed (a bookmark only moves the version)."""
        rv = resource_version(obj)
        if rv:
            self.versions[kind] = rv
        if etype == "BOOKMARK":
            return False
        if etype == "DELETED":
            return self.objects[kind].pop(key_of(obj), None) is not None
        if etype in ("ADDED", "MODIFIED"):
            self._put(kind, obj)
            return True
        return False

    def forget(self, kind: str) -> None:
        """410 Gone: the version is too old; the next list starts afresh."""
        self.versions[kind] = None


# ---- pods -> workloads ----------------------------------------------------------------


def _ips(st: dict) -> list[str]:
    """A pod's addresses (its ``status``), canonical, each once."""
    ips = [p.get("ip") for p in st.get("podIPs") or [] if p.get("ip")]
    if not ips and st.get("podIP"):
        ips = [st["podIP"]]
    out: list[str] = []
    for ip in ips:
        try:
            ip = canonical_ip(ip)
        except ValueError:
            continue
        if ip not in out:
            out.append(ip)
    return out


def _http_ports(value: str | None) -> list[int]:
    if not value:  # nearly every pod: no annotation
        return []
    out = []
    for part in (value or "").replace(" ", "").split(","):
        if part.isdigit() and 0 < int(part) < 65536:
            out.append(int(part))
    return sorted(set(out))


def pod_workload(pod: dict, this_node: str | None) -> dict | None:
    """The admin API's workload body for a pod, or None when it is not a mesh workload:
    host-network pods (they share the node's address), pods without an IP yet, pods
    neither Running nor Pending, and pods that opted out. Identity: the pod's namespace and service account."""
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    # Running, or Pending once the CNI gave it an address (its containers may be starting,
    # its peers may already connect). Succeeded/Failed pods hold no address any more;
    # Unknown means its node stopped reporting — nothing to route to with confidence.
    if spec.get("hostNetwork") or st.get("phase") not in ("Running", "Pending"):
        return None
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if labels.get(OPT_OUT[0]) == OPT_OUT[1] or annotations.get(OPT_OUT[0]) == OPT_OUT[1]:
        return None
    ips = _ips(st)
    if not ips or not meta.get("uid") or not meta.get("name"):
        return None
    node = spec.get("nodeName")
    # names many pods share (namespace, account, node, label keys and values) are
    # interned: one string each instead of one per pod
    return {
        "uid": meta["uid"], "name": meta["name"], "namespace": _intern(meta.get("namespace") or "default"),
        "service_account": _intern(spec.get("serviceAccountName") or "default"), "ip": ips[0], "ips": ips,
        "labels": {intern(str(k)): intern(str(v)) for k, v in labels.items()},  # str() gives a str
        "http_ports": _http_ports(annotations.get(HTTP_PORTS_ANNOTATION)),
        "node": None if node == this_node else _intern(node) if isinstance(node, str) else node,
    }


def _intern(s):
    return intern(s) if type(s) is str else s


intern = sys.intern


@dataclass(frozen=True, slots=True)
class PodView:
    """What discovery keeps of a pod that is a mesh workload: who wins an address two
    pods claim (``rank``) and its workload body (``node`` as the pod names it unless the
    view was made for a node, then None for that node's own pods)."""

    rank: tuple
    body: dict


def _claim_rank(pod: dict) -> tuple:
    """Who keeps an address two pods claim: a pod not being deleted, then the newer one.
    (A terminating pod's object keeps ``status.podIPs`` after the CNI released the
    address, and the address can already belong to a new pod on the same node.)"""
    m = pod.get("metadata") or {}
    return (m.get("deletionTimestamp") is None, _intern(m.get("creationTimestamp") or ""), m.get("uid") or "",
            key_of(pod))


def pod_view(pod: dict, this_node: str | None = None) -> PodView | None:
    body = pod_workload(pod, this_node)
    return None if body is None else PodView(_claim_rank(pod), body)


# ---- slims: the fields discovery reads ----------------------------------------------------

# annotations of policies that are never policy (kubectl's copy of the whole object)
_POLICY_ANNOTATIONS_DROPPED = ("kubectl.kubernetes.io/last-applied-configuration",)


def slim_service(svc: dict) -> dict:
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    return {"metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "spec": {k: spec[k] for k in ("type", "clusterIP", "clusterIPs", "ports") if k in spec}}


def slice_service(s: dict) -> str | None:
    """The ``ns/name`` of the service an EndpointSlice belongs to."""
    meta = s.get("metadata") or {}
    svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    return f"{meta.get('namespace') or ''}/{svc}" if svc else None


def slim_slice(s: dict) -> dict:
    """Only ready endpoints' addresses (the only ones routed to) and the ports."""
    meta = s.get("metadata") or {}
    svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    addrs = [a for ep in s.get("endpoints") or [] if (ep.get("conditions") or {}).get("ready") is not False
             for a in ep.get("addresses") or []]
    return {"metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                         "labels": {"kubernetes.io/service-name": svc} if svc else {}},
            "ports": [{k: p[k] for k in ("name", "port") if k in p} for p in s.get("ports") or []],
            "endpoints": [{"addresses": addrs}] if addrs else []}


def policy_doc(obj: dict, kind: str) -> dict:
    """An Istio object as the policy loader takes it (no uid/resourceVersion/generation:
    unknown fields are errors there)."""
    meta = obj.get("metadata") or {}
    m = {"name": meta.get("name"), "namespace": meta.get("namespace")}
    ann = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _POLICY_ANNOTATIONS_DROPPED}
    if ann:
        m["annotations"] = ann
    group = "networking.istio.io/v1" if kind in TRAFFIC_KINDS else "security.istio.io/v1"
    return {"apiVersion": obj.get("apiVersion") or group, "kind": POLICY_KINDS[kind],
            "metadata": m, "spec": obj.get("spec") or {}}


def slim(kind: str, obj: dict, this_node: str | None = None):
    """What discovery keeps of an object of ``kind``; None: nothing (not a workload,
    a node without an address)."""
    if kind == "pods":
        return pod_view(obj, this_node)
    if kind == "nodes":
        return node_entry(obj)
    if kind == "services":
        return slim_service(obj)
    if kind == "endpointslices":
        return slim_slice(obj)
    return policy_doc(obj, kind)


# ---- nodes, services -------------------------------------------------------------------


def node_entry(node: dict) -> dict | None:
    """A peer node: its InternalIP (v4, and v6 if any) and pod CIDRs."""
    meta, spec, st = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    v4 = v6 = None
    for a in st.get("addresses") or []:
        if a.get("type") != "InternalIP":
            continue
        try:
            ip = ipaddress.ip_address(a.get("address", ""))
        except ValueError:
            continue
        if ip.version == 4 and v4 is None:
            v4 = str(ip)
        elif ip.version == 6 and v6 is None:
            v6 = str(ip)
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    if not meta.get("name") or not (v4 or v6):
        return None
    labels = {k: str(v) for k, v in (meta.get("labels") or {}).items() if k in LOCALITY_LABELS}
    out = {"name": meta["name"], "address": v4 or v6, "address6": v6 if v4 else None, "pod_cidrs": list(cidrs)}
    return {**out, "labels": labels} if labels else out


def service_entries(svc: dict, slices: list[dict]) -> list[dict]:
    """One ``cluster.services`` entry per service port (the routing view's service has
    a single target port): the ClusterIPs, and the ready endpoints' addresses from the
    service's EndpointSlices, whose ports resolve named target ports."""
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    vips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"]
    if not vips or spec.get("type") == "ExternalName":
        return []
    addrs: list[str] = []
    for s in slices:
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            addrs += ep.get("addresses") or []
    out = []
    tcp = [p for p in spec.get("ports") or [] if (p.get("protocol") or "TCP") == "TCP" and p.get("port")]
    for p in tcp:
        target = p.get("targetPort", p["port"])
        if not isinstance(target, int):  # a named port: the slices know its number
            target = next((sp.get("port") for s in slices for sp in s.get("ports") or []
                           if sp.get("name") == p.get("name") and sp.get("port")), None)
        for vip in vips:
            suffix = f":{p['port']}" if len(tcp) > 1 else ""
            out.append({"name": f"{meta.get('name')}{suffix}", "namespace": meta.get("namespace") or "default",
                        "vip": vip, "ports": [int(p["port"])], "endpoints": sorted(set(addrs)),
                        "target_port": int(target) if target else None})
    return out


def slices_by_service(slices: dict[str, dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in slices.values():
        svc = slice_service(s)
        if svc:
            out.setdefault(svc, []).append(s)
    return out


# ---- the whole desired state ------------------------------------------------------------


@dataclass
class Desired:
    workloads: dict[str, dict]  # uid -> workload body
    nodes: list[dict]
    services: list[dict]
    policy_docs: list[dict]  # Istio documents, each loaded on its own (a bad one is skipped)
    this_node: dict | None  # this node's own entry (address, pod CIDRs)
    conflicts: list[str] = field(default_factory=list)  # addresses two pods claimed (logged)


def grant(body: dict, ips: list[str]) -> dict:
    """``body`` holding only ``ips`` (some of its addresses went to other pods)."""
    return body if ips == body["ips"] else dict(body, ip=ips[0], ips=ips)


def pod_workloads(views, this_node: str | None) -> tuple[dict[str, dict], list[str]]:
    """Workload bodies by uid (from pod views), each address held by one pod only; and
    what lost an address to another pod, for the log."""
    workloads: dict[str, dict] = {}
    conflicts: list[str] = []
    claimed: dict[str, str] = {}  # ip -> "ns/name" holding it
    for v in sorted(views, key=lambda v: v.rank, reverse=True):
        w = v.body
        if w["node"] is not None and w["node"] == this_node:
            w = dict(w, node=None)
        ips = [ip for ip in w["ips"] if ip not in claimed]
        for ip in w["ips"]:
            if ip in claimed:
                conflicts.append(f"pod {w['namespace']}/{w['name']}: {ip} is held by pod {claimed[ip]}")
        if not ips:
            continue
        for ip in ips:
            claimed[ip] = f"{w['namespace']}/{w['name']}"
        workloads[w["uid"]] = grant(w, ips)
    return workloads, conflicts


def split_nodes(entries, this_node: str) -> tuple[list[dict], dict | None]:
    """Peer entries (by name) and this node's own."""
    nodes, me = [], None
    for e in entries:
        if e["name"] == this_node:
            me = e
        else:
            nodes.append(e)
    return sorted(nodes, key=lambda e: e["name"]), me


def desired(cache: Cache, this_node: str) -> Desired:
    workloads, conflicts = pod_workloads(cache.objects["pods"].values(), this_node)
    nodes, me = split_nodes(cache.objects["nodes"].values(), this_node)
    by_svc = slices_by_service(cache.objects["endpointslices"])
    services = []
    for key, svc in sorted(cache.objects["services"].items()):
        services += service_entries(svc, by_svc.get(key, []))
    docs = [d for kind in POLICY_KINDS for d in cache.objects[kind].values()]
    docs.sort(key=lambda d: (d["kind"], d["metadata"]["namespace"] or "", d["metadata"]["name"] or ""))
    return Desired(workloads, nodes, services, docs, me, conflicts)
