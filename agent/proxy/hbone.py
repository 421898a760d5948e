"""HBONE's Python-side decisions (docs/wire.md "HBONE"), pure: no I/O, no core.

Decides what the native core cannot know: the ``baggage`` header a source workload
sends (ztunnel's keys), what an inbound stream's baggage says (bounded, malformed
parts skipped), the map local pod address -> SPIFFE ID the core picks server
certificates by, and which source address and workload an inbound stream is judged
as. ztunnel takes the source from the **outer TCP connection** (the client binds it to
the source pod's address) and ignores ``forwarded``; hostmesh does the same and
cross-checks: a ``forwarded`` naming another address, or an outer address that belongs
to a workload of another identity than the verified one, is counted and not believed.
It must never parse HTTP/2 (the core does) nor trust a header over the handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote, unquote

from agent.state.workloads import Workload
from agent.telemetry.istio import CANONICAL_NAME_LABELS, CANONICAL_REVISION_LABELS, canonical

# ztunnel's baggage keys (its outbound builder and inbound parser); k8s.<kind>.name's
# kind: a hostmesh workload is a pod.
WORKLOAD_KEYS = ("k8s.deployment.name", "k8s.pod.name", "k8s.job.name", "k8s.cronjob.name")
# An inbound baggage header longer than this is not read (the core bounds the header
# block at 64 KiB; the labels it feeds are a handful of short names).
BAGGAGE_MAX = 4096


# After an HBONE attempt that got no HTTP/2 answer from a pod's :15008, that pod's node is
# dialled with HTTP/1.1 CONNECT on its node address for this long: a node whose agent does
# not speak HBONE (an epoll/trio engine, or capture from before HBONE) stays reachable
# during a rollout, and only one connection per interval pays for finding out.
FALLBACK_S = 60.0
# The core's reasons for a failure before any HTTP/2 answer (connect, TLS, h2 handshake);
# a reset of a working connection or a peer's status is not one.
_NO_ANSWER = ("connect_failed", "tls", "h2 handshake")


def falls_back(status: int, reason: str) -> bool:
    """Whether a failed HBONE attempt means the pod's :15008 is no HBONE endpoint, so the
    same route is tried again over CONNECT (mutual TLS with the same expected identity)."""
    return status in (502, 504) and reason.startswith(_NO_ANSWER)


def baggage(namespace: str, name: str, labels, cluster: str | None = None) -> str:
    """The ``baggage`` header of a stream from this workload (W3C, values escaped)."""
    service, revision = canonical(labels, name)
    items = [("k8s.cluster.name", cluster)] if cluster else []
    items += [("k8s.namespace.name", namespace), ("k8s.pod.name", name), ("service.name", service),
              ("service.version", revision)]
    return ",".join(f"{k}={quote(v, safe='')}" for k, v in items)


@dataclass(frozen=True)
class Baggage:
    cluster: str | None = None
    namespace: str | None = None
    workload: str | None = None
    service: str | None = None
    revision: str | None = None


def parse_baggage(header: str | None) -> Baggage:
    """What a peer's baggage says; unknown keys, properties and malformed members skipped."""
    if not header or len(header) > BAGGAGE_MAX:
        return Baggage()
    got: dict[str, str] = {}
    for member in header.split(","):
        key, eq, value = member.split(";", 1)[0].partition("=")
        key, value = key.strip(), unquote(value.strip())
        if eq and key and value:
            got.setdefault(key, value)
    return Baggage(got.get("k8s.cluster.name"), got.get("k8s.namespace.name"),
                   next((got[k] for k in WORKLOAD_KEYS if k in got), None), got.get("service.name"),
                   got.get("service.version"))


def baggage_workload(bag: Baggage, principal: str | None, ip: str) -> Workload | None:
    """A stand-in for a source this node's registry does not know (a ztunnel peer's
    pod), from its baggage, so its metrics and records carry its workload and canonical
    service as ztunnel's would. Telemetry only: policy reads the verified principal."""
    if not (bag.namespace and bag.workload):
        return None
    sa = principal.rsplit("/sa/", 1)[1] if principal and "/sa/" in principal else "default"
    labels = {}
    if bag.service:
        labels[CANONICAL_NAME_LABELS[0]] = bag.service
    if bag.revision:
        labels[CANONICAL_REVISION_LABELS[0]] = bag.revision
    return Workload(uid=f"baggage:{ip}", name=bag.workload, namespace=bag.namespace, service_account=sa,
                    ips=(ip,), labels=MappingProxyType(labels), node=f"peer:{bag.cluster or 'unknown'}")


def pod_identities(local_workloads, trust_domain: str) -> list[tuple[str, str]]:
    """(pod address, SPIFFE ID) for every address of every local pod, v4 and v6, sorted."""
    return sorted((ip, w.spiffe_id(trust_domain)) for w in local_workloads for ip in w.ips)


@dataclass(frozen=True)
class Source:
    ip: str
    port: int
    workload: object | None  # the registry's workload at that address, when believed
    mismatch: str | None = None  # what was not believed (counted, logged), or None


def stream_source(by_ip, trust_domain: str, identity: str | None, peer, forwarded) -> Source:
    """The source an HBONE stream is judged as: the outer TCP peer. ``by_ip``: the
    registry's lookup. A ``forwarded`` for another address is ignored (ztunnel's rule);
    a workload at the peer address with another identity than the handshake's is not
    attributed (the address stays: it is where the bytes come from)."""
    ip, port = peer[0], peer[1]
    w = by_ip(ip)
    if w is not None and w.spiffe_id(trust_domain) != identity:
        return Source(ip, port, None, "outer address belongs to a workload of another identity")
    if forwarded and forwarded[0] != ip:
        return Source(ip, port, w, "forwarded names another address than the outer connection")
    return Source(ip, port, w)
