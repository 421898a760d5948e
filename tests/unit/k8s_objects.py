"""Kubernetes API objects shaped as the API server returns them (only the fields
discovery reads, plus a few it must ignore), for the discovery tests."""

from __future__ import annotations

NODE = "node-a"


def pod(name, ip, node=NODE, uid=None, rv="1", labels=None, sa="web", ns="shop", **kw):
    ips = kw.pop("ips", [ip] if ip else [])
    meta = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "resourceVersion": rv,
            "creationTimestamp": kw.pop("created", "2026-11-23T07:00:00Z"),
            "labels": {"app": name} if labels is None else labels, "annotations": kw.pop("annotations", {})}
    if "deleting" in kw:
        meta["deletionTimestamp"] = kw.pop("deleting")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "serviceAccountName": sa, "hostNetwork": kw.pop("host_network", False),
                     "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": kw.pop("phase", "Running"), "podIP": ip, "podIPs": [{"ip": i} for i in ips],
                       "hostIP": "192.0.2.1", "conditions": [{"type": "Ready", "status": "True"}]}}


def node(name, ip, cidr, rv="1", ip6=None):
    addrs = [{"type": "Hostname", "address": name}, {"type": "ExternalIP", "address": "203.0.113.9"},
             {"type": "InternalIP", "address": ip}]
    if ip6:
        addrs.append({"type": "InternalIP", "address": ip6})
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": rv},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}, "status": {"addresses": addrs}}


def service(name, vip, ports, ns="shop", rv="1"):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "ports": ports}}


def endpointslice(service_name, addresses, ports, ns="shop", rv="1", ready=True):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-x1", "namespace": ns, "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": ports,
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses]}


def authz(name, ns="shop", rv="1", **spec):
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "generation": 1,
                         "uid": f"uid-ap-{name}"}, "spec": spec}


def lst(kind, items, rv):
    return {"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}
