"""The workload registry: which pods exist, where, and with which identity.

Pure state: no sockets, no clock. The admin API, the lab, Kubernetes discovery and the
static config all feed it through ``register``/``remove``; the data plane reads it
through ``by_ip``. A workload with ``node`` None (or equal to this node's name) is local.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

NAME_MAX = 253


class WorkloadError(ValueError):
    """A workload description that cannot be registered (400 at the admin API)."""


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    service_account: str
    ips: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)  # read-only (MappingProxyType)
    http_ports: frozenset[int] = frozenset()
    node: str | None = None  # None: on this node

    @property
    def ip(self) -> str:
        return self.ips[0]

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def identity_key(self) -> tuple[str, str]:
        return (self.namespace, self.service_account)

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "name": self.name,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "ip": self.ip,
            "ips": list(self.ips),
            "labels": dict(self.labels),
            "http_ports": sorted(self.http_ports),
            "node": self.node,
        }


# whitespace (str.isspace's set: the regex engine uses the same test) or a slash
_BAD_NAME = re.compile(r"[\s/]")


def _label(v: Any, what: str) -> str:
    # one C-level scan, not a Python loop per character (the registry validates every
    # discovered pod: this was discovery's largest cost at 20,000 pods)
    if not isinstance(v, str) or not v or len(v) > NAME_MAX or _BAD_NAME.search(v):
        raise WorkloadError(f"{what}: {v!r} is not a valid name")
    return v


# a dotted quad in canonical form: four decimal octets 0-255, no leading zeros
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def canonical_ip(v: Any) -> str:
    """``str(ipaddress.ip_address(v))`` (raises ValueError/TypeError as it does). A
    dotted quad already in canonical form (nearly every pod address) is recognised by
    one regular-expression match, a fraction of the ipaddress module's time; anything
    else is the ipaddress module's to judge."""
    if type(v) is str and _CANONICAL_V4.fullmatch(v):
        return v
    return str(ipaddress.ip_address(v))


_FIELDS = frozenset({"uid", "name", "namespace", "service_account", "ip", "ips", "labels", "http_ports", "node"})
_STR = itertools.repeat(str)  # isinstance's second argument, for map()


def _same_or_valid(v: Any, was: str | None, what: str) -> str:
    """``was`` (a name validated before) when ``v`` equals it, else ``v`` validated."""
    return was if type(v) is str and v == was else _label(v, what)


def workload_from_json(body: Any, *, local_node: str | None = None, known: Workload | None = None) -> Workload:
    """Validate an admin-API / config body into a Workload (raises WorkloadError).
    ``known``: a registered workload (one this function made) that the body is likely to
    repeat, such as the one it replaces; a field equal to ``known``'s is taken from it
    without being checked again (a discovered pod's label change re-checks its labels
    only). The result is the same with or without it."""
    if not isinstance(body, dict):
        raise WorkloadError("body must be a JSON object")
    unknown = body.keys() - _FIELDS
    if unknown:
        raise WorkloadError(f"{sorted(unknown)[0]}: unknown field")
    for req in ("uid", "name", "ip"):
        if req not in body:
            raise WorkloadError(f"{req}: required")
    k = known
    uid = _same_or_valid(body["uid"], k and k.uid, "uid")
    name = _same_or_valid(body["name"], k and k.name, "name")
    ns = _same_or_valid(body.get("namespace", "default"), k and k.namespace, "namespace")
    sa = _same_or_valid(body.get("service_account", "default"), k and k.service_account, "service_account")
    rest = body.get("ips") or []
    if not isinstance(rest, list | tuple):
        raise WorkloadError("ips: must be a list of IP addresses")
    if k is not None and type(rest) is list and body["ip"] == k.ips[0] and tuple(rest) == k.ips:
        ips = k.ips  # canonical and unique already
    else:
        ips = _ips([body["ip"], *rest])
    labels = body.get("labels") or {}
    if k is not None and type(labels) is dict and labels == k.labels:
        held = k.labels  # read-only already
    # C-level scans (every discovered pod's change comes through here)
    elif not isinstance(labels, dict) or not (all(map(isinstance, labels, _STR)) and all(map(isinstance,
                                                                                              labels.values(), _STR))):
        raise WorkloadError("labels: must map strings to strings")
    else:
        held = MappingProxyType(dict(labels))
    ports = body.get("http_ports") or []
    if not isinstance(ports, list) or (ports and not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                                                         for p in ports)):
        raise WorkloadError("http_ports: must be a list of ports 1-65535")
    node = body.get("node")
    if node is not None:
        node = _same_or_valid(node, k and k.node, "node")
        if node == local_node:
            node = None
    return Workload(uid, name, ns, sa, ips, held, frozenset(ports), node)


def _ips(raw: list) -> tuple[str, ...]:
    ips: list[str] = []
    for v in raw:
        if v in ips:  # ``ip`` repeated first in ``ips`` (a canonical string): parsed once
            continue
        try:
            ip = canonical_ip(v)
        except (ValueError, TypeError):
            raise WorkloadError(f"ip: {v!r} is not an IP address") from None
        ip = v if ip == v else ip  # already canonical: keep the caller's string (one copy per pod)
        if ip not in ips:
            ips.append(ip)
    return tuple(ips)


@dataclass
class Change:
    added: Workload | None = None
    removed: Workload | None = None


class Registry:
    """Workloads by uid and by IP. Registering an existing uid replaces it."""

    def __init__(self) -> None:
        self._by_uid: dict[str, Workload] = {}
        self._by_ip: dict[str, Workload] = {}
        self.generation = 0

    def __len__(self) -> int:
        return len(self._by_uid)

    def __iter__(self):
        return iter(list(self._by_uid.values()))

    def get(self, uid: str) -> Workload | None:
        return self._by_uid.get(uid)

    def by_ip(self, ip: str) -> Workload | None:
        return self._by_ip.get(ip)

    def local(self) -> list[Workload]:
        return [w for w in self._by_uid.values() if w.node is None]

    def local_identities(self) -> set[tuple[str, str]]:
        return {w.identity_key for w in self._by_uid.values() if w.node is None}

    def register(self, w: Workload) -> Change:
        """Add or replace; raises WorkloadError if an IP belongs to another uid."""
        for ip in w.ips:
            other = self._by_ip.get(ip)
            if other is not None and other.uid != w.uid:
                raise WorkloadError(f"ip: {ip} already belongs to workload {other.uid}")
        old = self._by_uid.get(w.uid)
        if old is not None:
            for ip in old.ips:
                self._by_ip.pop(ip, None)
        self._by_uid[w.uid] = w
        for ip in w.ips:
            self._by_ip[ip] = w
        self.generation += 1
        return Change(added=w, removed=old)

    def remove(self, uid: str) -> Change:
        w = self._by_uid.pop(uid, None)
        if w is None:
            return Change()
        for ip in w.ips:
            if self._by_ip.get(ip) is w:
                del self._by_ip[ip]
        self.generation += 1
        return Change(removed=w)

    def replace_all(self, workloads: Iterable[Workload]) -> None:
        self._by_uid.clear()
        self._by_ip.clear()
        for w in workloads:
            self.register(w)
