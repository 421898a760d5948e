"""Authorization documents as values: Istio ``AuthorizationPolicy`` and
``PeerAuthentication`` after validation (``loader`` builds them). No I/O.

Values are never changed after the loader builds them. They are slotted dataclasses with
a hash rather than ``frozen=True`` ones: a frozen dataclass pays one
``object.__setattr__`` per field at construction, which was a third of the time to load
10,000 policies."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True, unsafe_hash=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[Net, ...] = ()
    not_ip_blocks: tuple[Net, ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class Operation:
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()

    @property
    def is_http(self) -> bool:
        return bool(self.methods or self.not_methods or self.paths or self.not_paths or self.hosts or self.not_hosts)


@dataclass(slots=True, unsafe_hash=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    @property
    def is_http(self) -> bool:
        return self.key.startswith("request.")


@dataclass(slots=True, unsafe_hash=True)
class Rule:
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()

    @property
    def is_http(self) -> bool:
        return any(o.is_http for o in self.operations) or any(c.is_http for c in self.conditions)


@dataclass(slots=True, unsafe_hash=True)
class AuthorizationPolicy:
    namespace: str
    name: str
    action: str = "ALLOW"  # ALLOW | DENY | AUDIT
    selector: tuple[tuple[str, str], ...] | None = None
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False
    kind: str = field(default="AuthorizationPolicy", compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(slots=True, unsafe_hash=True)
class PeerAuthentication:
    namespace: str
    name: str
    mode: str = "UNSET"  # STRICT | PERMISSIVE | DISABLE | UNSET
    selector: tuple[tuple[str, str], ...] | None = None
    port_modes: tuple[tuple[int, str], ...] = ()
    kind: str = field(default="PeerAuthentication", compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"
