"""The policy models as pydantic validated them before agent/schema.py (agent/rbac/loader.py
at 9c86884, verbatim): the reference tests/unit/test_schema_reference.py compares the new
models against. Not imported by the agent."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _cidr(v: str) -> str:
    try:
        if "/" in v:
            ipaddress.ip_network(v, strict=False)
        else:
            ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a CIDR or IP address") from None
    return v


def _port(v: str | int) -> str:
    s = str(v)
    if not s.isdigit() or not 0 < int(s) < 65536:
        raise ValueError(f"{v!r} is not a port")
    return s


class SourceM(_M):
    principals: list[str] = Field(default_factory=list)
    notPrincipals: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    notNamespaces: list[str] = Field(default_factory=list)
    serviceAccounts: list[str] = Field(default_factory=list)
    notServiceAccounts: list[str] = Field(default_factory=list)
    ipBlocks: list[str] = Field(default_factory=list)
    notIpBlocks: list[str] = Field(default_factory=list)
    remoteIpBlocks: list[str] = Field(default_factory=list)
    notRemoteIpBlocks: list[str] = Field(default_factory=list)
    requestPrincipals: list[str] = Field(default_factory=list)
    notRequestPrincipals: list[str] = Field(default_factory=list)

    @field_validator("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")
    @classmethod
    def _ips(cls, v: list[str]) -> list[str]:
        return [_cidr(x) for x in v]


class OperationM(_M):
    ports: list[str | int] = Field(default_factory=list)
    notPorts: list[str | int] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    notMethods: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    notPaths: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    notHosts: list[str] = Field(default_factory=list)

    @field_validator("ports", "notPorts")
    @classmethod
    def _ports(cls, v: list) -> list[str]:
        return [_port(x) for x in v]


class FromM(_M):
    source: SourceM = Field(default_factory=SourceM)


class ToM(_M):
    operation: OperationM = Field(default_factory=OperationM)


class WhenM(_M):
    key: str
    values: list[str] = Field(default_factory=list)
    notValues: list[str] = Field(default_factory=list)



class RuleM(_M):
    from_: list[FromM] = Field(default_factory=list, alias="from")
    to: list[ToM] = Field(default_factory=list)
    when: list[WhenM] = Field(default_factory=list)


class SelectorM(_M):
    matchLabels: dict[str, str] = Field(default_factory=dict)


class AuthzSpecM(_M):
    selector: SelectorM | None = None
    targetRef: dict | None = None
    targetRefs: list[dict] | None = None
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: dict | None = None
    rules: list[RuleM] = Field(default_factory=list)

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, v: Any) -> Any:
        # the Literal keeps CUSTOM so that it gets its own "not supported" line below
        if v in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
            return v
        hint = f" (upper case: {v.upper()})" if isinstance(v, str) and v.upper() in ("ALLOW", "DENY", "AUDIT") else ""
        raise ValueError(f"{v!r} is not an action: use ALLOW, DENY or AUDIT{hint}")


class PortMtlsM(_M):
    mode: Literal["STRICT", "PERMISSIVE", "DISABLE", "UNSET"] = "UNSET"


class PeerSpecM(_M):
    selector: SelectorM | None = None
    mtls: PortMtlsM | None = None
    portLevelMtls: dict[str, PortMtlsM] = Field(default_factory=dict)

    @field_validator("portLevelMtls")
    @classmethod
    def _ports(cls, v: dict) -> dict:
        for k in v:
            _port(k)
        return v


class MetaM(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=253)
    namespace: str = "default"
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class DocM(_M):
    apiVersion: str
    kind: Literal["AuthorizationPolicy", "PeerAuthentication"]
    metadata: MetaM
    spec: dict[str, Any] | None = None
    status: dict | None = None

    @field_validator("apiVersion")
    @classmethod
    def _api(cls, v: str) -> str:
        if v not in API_VERSIONS:
            raise ValueError(f"apiVersion {v!r} is not one of {', '.join(API_VERSIONS)}")
        return v


class AuthzDocM(DocM):
    """An AuthorizationPolicy validated in one call (the common case: one validator run
    instead of two). Whatever it refuses is validated again by ``DocM`` and the spec's
    model apart, whose errors are the ones reported, so messages never depend on it."""

    kind: Literal["AuthorizationPolicy"]
    spec: AuthzSpecM | None = None


