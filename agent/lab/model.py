"""What a lab is made of: topology -> names and addresses. Pure (no I/O).

Layout (docs/lab.md): an underlay namespace with a bridge joins the nodes and one
external non-mesh host; pods are namespaces on routed veths of their node. Addresses
come from ranges that exist only inside the lab: underlay 198.18.0.0/24 and
fd00:686d:ffff::/64, node i's pods 198.19.i.0/24 and fd00:686d:i::/48.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent import yamlpos

NAME_RE = re.compile(r"^[a-z0-9]{1,12}$")
MAX_NODES = 200
MAX_PODS_PER_NODE = 250


class TopologyError(ValueError):
    """A topology file or lab request that cannot be built; str() is path:line: message."""


_POD_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # an RFC 1123 label


class PodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    namespace: str = "default"
    service_account: str | None = None
    labels: dict[str, str] = {}
    node: int = 0
    http_ports: list[int] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _POD_NAME.match(v):
            raise ValueError(f"{v!r} is not a pod name: 1-63 lower-case letters, digits and '-', "
                             "starting and ending with a letter or digit")
        return v

    @field_validator("http_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 < p < 65536:
                raise ValueError(f"{p} is not a port")
        return v


class ServiceSpec(BaseModel):
    """A virtual IP load-balanced over pods (extends SPEC.md's topology file)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    namespace: str = "default"
    vip: str
    port: int = Field(ge=1, le=65535)
    target_port: int | None = Field(default=None, ge=1, le=65535)
    endpoints: list[str]

    @field_validator("vip")
    @classmethod
    def _vip(cls, v: str) -> str:
        return str(ipaddress.ip_address(v))


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nodes: int = Field(default=2, ge=1, le=MAX_NODES)
    pods: list[PodSpec] = []
    services: list[ServiceSpec] = []
    # Labels per node index, e.g. {1: {topology.kubernetes.io/zone: b}} (locality, docs/traffic.md).
    node_labels: dict[int, dict[str, str]] = {}


def parse_topology(text: str, path: str) -> Topology:
    try:
        doc, topo = yamlpos.load_model(text, path, Topology, "a topology (nodes and pods)")
    except yamlpos.YamlError as e:
        raise TopologyError(str(e).splitlines()[0]) from None
    seen: dict[str, int] = {}
    per_node: dict[int, int] = {}
    for i, p in enumerate(topo.pods):
        if p.name in seen:
            raise TopologyError(f"{doc.where(('pods', i))}: pods[{i}].name: duplicate pod name {p.name!r}")
        seen[p.name] = i
        if not 0 <= p.node < topo.nodes:
            raise TopologyError(f"{doc.where(('pods', i, 'node'))}: pods[{i}].node: {p.node} is not a node "
                                f"(0..{topo.nodes - 1})")
        per_node[p.node] = per_node.get(p.node, 0) + 1
        if per_node[p.node] > MAX_PODS_PER_NODE:
            raise TopologyError(f"{doc.where(('pods', i))}: node {p.node} has more than {MAX_PODS_PER_NODE} pods")
    for i, svc in enumerate(topo.services):
        for ep in svc.endpoints:
            if ep not in seen:
                raise TopologyError(f"{doc.where(('services', i, 'endpoints'))}: services[{i}].endpoints: "
                                    f"no pod named {ep!r}")
    return topo


def default_topology(nodes: int, pods_per_node: int) -> Topology:
    if not 1 <= nodes <= MAX_NODES or not 0 <= pods_per_node <= MAX_PODS_PER_NODE:
        raise TopologyError(f"--nodes must be 1..{MAX_NODES} and --pods-per-node 0..{MAX_PODS_PER_NODE}")
    pods = [PodSpec(name=f"pod-{n}-{i}", labels={"app": f"pod-{n}-{i}"}, node=n)
            for n in range(nodes) for i in range(pods_per_node)]
    return Topology(nodes=nodes, pods=pods)


@dataclass
class NodePlan:
    index: int
    name: str
    netns: str
    ip4: str
    ip6: str
    cidr4: str
    cidr6: str
    dir: str

    @property
    def admin_socket(self) -> str:
        return f"{self.dir}/admin.sock"


@dataclass
class PodPlan:
    name: str
    namespace: str
    service_account: str
    labels: dict[str, str]
    node: int
    http_ports: list[int]
    netns: str
    ip4: str
    ip6: str
    veth: str  # the node-side interface (starts with "h-": capture matches it)

    def identity(self, trust_domain: str = "cluster.local") -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def workload(self, node_name: str | None) -> dict:
        """The agent's workload body (admin API / config shape)."""
        body = {"uid": f"{self.namespace}.{self.name}", "name": self.name, "namespace": self.namespace,
                "service_account": self.service_account, "ip": self.ip4, "ips": [self.ip6],
                "labels": dict(self.labels), "http_ports": list(self.http_ports)}
        if node_name is not None:
            body["node"] = node_name
        return body


@dataclass
class LabPlan:
    name: str
    dir: str
    underlay: str
    ext: str
    nodes: list[NodePlan] = field(default_factory=list)
    pods: list[PodPlan] = field(default_factory=list)
    ext_ip4: str = "198.18.0.254"
    ext_ip6: str = "fd00:686d:ffff::fe"

    @property
    def netns(self) -> list[str]:
        return [self.underlay, self.ext] + [n.netns for n in self.nodes] + [p.netns for p in self.pods]

    def pod(self, name: str) -> PodPlan | None:
        return next((p for p in self.pods if p.name == name), None)

    def node(self, name: str) -> NodePlan | None:
        return next((n for n in self.nodes if n.name == name or str(n.index) == name), None)


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise TopologyError(f"lab name {name!r}: use 1-12 lowercase letters or digits")


def plan(name: str, topo: Topology, run_dir: str) -> LabPlan:
    check_name(name)
    base = f"{run_dir}/{name}"
    lp = LabPlan(name=name, dir=base, underlay=f"hm-{name}-u", ext=f"hm-{name}-ext")
    for i in range(topo.nodes):
        lp.nodes.append(NodePlan(i, f"node-{i}", f"hm-{name}-n{i}", f"198.18.0.{i + 1}", f"fd00:686d:ffff::{i + 1:x}",
                                 f"198.19.{i}.0/24", f"fd00:686d:{i:x}::/48", f"{base}/node-{i}"))
    counters: dict[int, int] = {}
    for p in topo.pods:
        j = counters.get(p.node, 0)
        counters[p.node] = j + 1
        lp.pods.append(PodPlan(
            name=p.name, namespace=p.namespace, service_account=p.service_account or p.name,
            labels=dict(p.labels), node=p.node, http_ports=list(p.http_ports),
            netns=f"hm-{name}-p{p.node}-{j}", ip4=f"198.19.{p.node}.{j + 2}",
            ip6=str(ipaddress.ip_address(f"fd00:686d:{p.node:x}::{j + 2:x}")),
            veth=f"h-{j}"))
    return lp
