"""Istio host names -> the service they name, as Istio resolves them. Pure.

``reviews`` in a document of namespace ``shop`` is ``reviews.shop.svc.cluster.local``;
``reviews.bookinfo`` and ``reviews.bookinfo.svc`` name namespace ``bookinfo`` (the
Kubernetes DNS search path); the full form is ``<svc>.<ns>.svc.<cluster domain>``.
Anything else (wildcards, external names that would need a ServiceEntry) is refused
with a message saying so: a host that can never match must not load silently.
"""

from __future__ import annotations

import re

from agent.traffic.model import ServiceKey

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def resolve_host(host: str, namespace: str, domain: str = "cluster.local") -> ServiceKey:
    """``(namespace, name)`` of the service ``host`` names, or ValueError saying why not."""
    h = host.strip().lower().rstrip(".")
    if "*" in h:
        raise ValueError(f"host {host!r}: wildcard hosts are not supported; name one service")
    suffix = f".svc.{domain}"
    if h.endswith(suffix):
        parts = h[: -len(suffix)].split(".")
    elif h.endswith(".svc"):
        parts = h[: -len(".svc")].split(".")
    else:
        parts = h.split(".")
        if len(parts) == 1:
            parts = [parts[0], namespace]
    if len(parts) != 2 or not all(_LABEL.match(p) for p in parts):
        raise ValueError(f"host {host!r} is not a service of cluster domain {domain!r} "
                         f"(<service>, <service>.<namespace> or <service>.<namespace>.svc.{domain})")
    return parts[1], parts[0]


def fqdn(key: ServiceKey, domain: str = "cluster.local") -> str:
    return f"{key[1]}.{key[0]}.svc.{domain}"
