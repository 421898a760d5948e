"""The agent's configuration file: schema, defaults and validation.

Decides what a valid configuration is; never opens sockets or starts anything.
Every error reads ``path:line: field: message`` (see ``yamlpos``). Each section belongs
to one part of the agent; its defaults are the ones an operator gets without writing
anything, with the reason for each where it is not obvious.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from agent import yamlpos
from agent.schema import Range, field, model


class ConfigError(ValueError):
    """Invalid configuration; ``str()`` holds one ``path:line: message`` per problem."""


def _cidr(v: str) -> str:
    try:
        return str(ipaddress.ip_network(v, strict=False))
    except ValueError:
        raise ValueError(f"{v!r} is not a CIDR") from None


def _ip(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None


def _ip_or_none(v: str | None) -> str | None:
    return None if v is None else _ip(v)


def _cidrs(v: list[str]) -> list[str]:
    return [_cidr(c) for c in v]


@model
class NodeConfig:
    # Unset: NODE_NAME / NODE_IP from the environment (a DaemonSet's downward API,
    # deploy/kubernetes/daemonset.yaml), else the host name and loopback.
    name: str = field(factory=lambda: os.environ.get("NODE_NAME") or os.uname().nodename)
    # The underlay address other hosts reach on :15008 (and its IPv6 twin, if any).
    address: str = field(factory=lambda: os.environ.get("NODE_IP") or "127.0.0.1")
    address6: str | None = None
    # Node labels; topology.kubernetes.io/region and /zone place it for locality load balancing.
    labels: dict[str, str] = field(factory=dict)
    # Locality (Kubernetes' topology.kubernetes.io/region and /zone node labels): the
    # metrics' source_/destination_region and _zone for this node's workloads.
    region: str | None = None
    zone: str | None = None

    _checks = {"address": _ip, "address6": _ip_or_none}


@model
class PeerNode:
    """Another host of the mesh: where its pods live and where its tunnel listens."""

    name: str
    address: str
    address6: str | None = None
    pod_cidrs: list[str] = field(factory=list)
    labels: dict[str, str] = field(factory=dict)  # topology.kubernetes.io/region and /zone: locality (docs/traffic.md)
    region: str | None = None
    zone: str | None = None

    _checks = {"address": _ip, "pod_cidrs": _cidrs}


@model
class ServiceConfig:
    """A virtual IP with endpoints (pod IPs or remote addresses) per port."""

    name: str
    namespace: str = "default"
    vip: str
    ports: list[int] = field(factory=list)
    endpoints: list[str] = field(factory=list)
    target_port: int | None = None

    _checks = {"vip": _ip}


@model
class ClusterConfig:
    # The metrics' source_cluster / destination_cluster (Istio's default cluster id) and
    # the DNS domain of service host names (destination_service: <name>.<ns>.svc.<domain>).
    name: str = "Kubernetes"
    domain: str = "cluster.local"
    # This node's pod CIDRs (capture of inbound traffic from outside the node).
    pod_cidrs: list[str] = field(factory=list)
    nodes: list[PeerNode] = field(factory=list)
    services: list[ServiceConfig] = field(factory=list)

    _checks = {"pod_cidrs": _cidrs}


@model
class AdminConfig:
    socket: str = "/run/hostmesh/admin.sock"
    # 0600 by default; with a group the socket is 0660 and that group's members may call.
    group: str | None = None
    allowed_uids: list[int] = field(factory=lambda: [0])
    # Bounds for a request (h11's default header limit; bodies hold policy files).
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 8 * 1024 * 1024


@model
class PortsConfig:
    """SPEC.md fixes these; overridable only so tests can run several agents per netns."""

    outbound: int = 15001
    inbound_plain: int = 15006
    tunnel: int = 15008
    metrics: int = 15020
    readiness: int = 15021
    metrics_bind: str = "127.0.0.1"
    readiness_bind: str = "0.0.0.0"


@model
class CaptureConfig:
    enabled: bool = True
    backend: Literal["nftables", "iptables"] = "nftables"
    # closed: an enrolled pod's TCP is reset while no agent listens; open: it flows direct.
    fail: Literal["closed", "open"] = "closed"
    exclude_ports: list[int] = field(factory=list)
    exclude_cidrs: list[str] = field(factory=list)
    exclude_pods: list[str] = field(factory=list)  # pod IPs that opted out
    # Node-to-pod health probes (kubelet) bypass capture by default, as in ztunnel.
    skip_node_probes: bool = True
    route_table: int = 100
    # Watch pod interfaces over netlink: a vanished one un-registers its workload.
    watch_links: bool = True

    _checks = {"exclude_cidrs": _cidrs}


# Data-plane settings of the Python data plane the native core replaced: naming one is an
# error that says what replaced it (an unknown key would only be "extra inputs").
_REMOVED_DATAPLANE = {
    "tunnel_streams": "hostmesh-streams/1 (reusable tunnel streams) went with the Python data plane: "
                      "HBONE (dataplane.tunnel_protocol: hbone, the default) carries many connections "
                      "on one TLS connection (docs/wire.md); remove the key",
    "buffer_bytes": "the Python socket layer's buffer went with it: the native core's buffers grow "
                    "1 -> 16 -> 256 KiB with use and are released when drained (dataplane/src/limits.rs); "
                    "remove the key",
}


def _removed(name: str):
    def check(v):
        raise ValueError(f"{name} is no longer a setting: {_REMOVED_DATAPLANE[name]}")
    return check


def _one_engine(v):
    if v in ("epoll", "trio"):
        raise ValueError(f"engine {v} was removed with the Python data plane: the native core "
                         "(engine: native, the default) is the one data plane (docs/dataplane.md)")
    return v


def _one_process(v):
    if v != 1:
        raise ValueError("worker processes were removed: the native core's dataplane.threads use the "
                         "host's cores in one process (docs/decisions/0003); set threads instead")
    return v


@model
class DataplaneConfig:
    # The Rust core (dataplane/, agent/proxy/native.py) accepts, terminates the tunnel TLS
    # and moves the bytes; Python decides (docs/dataplane.md). The only engine.
    engine: Literal["native"] = "native"
    # I/O threads of the native core; they replace the worker processes of decisions/0002
    # (decisions/0003). 1 runs one thread of its own; more run tokio's multi-thread runtime.
    threads: Annotated[int, Range(ge=1, le=64)] = 1
    # One process; kept only so that configs written for decisions/0002 with 1 still load.
    workers: int = field(1, exclude=True)
    # Removed (_REMOVED_DATAPLANE): present only to name what replaced them.
    tunnel_streams: None = field(None, exclude=True)
    buffer_bytes: None = field(None, exclude=True)

    # The tunnel between agents (docs/wire.md): `hbone`, HTTP/2 CONNECT streams to the
    # destination pod's :15008 (ztunnel's HBONE, many connections on one TLS connection),
    # or `connect`, one HTTP/1.1 CONNECT per TLS connection to the node's :15008.
    # Either way the node address :15008 keeps answering HTTP/1.1 CONNECT.
    tunnel_protocol: Literal["hbone", "connect"] = "hbone"
    # Answers for repeat tunnel flows kept in the core (decisions/0006, proxy/repeat.py):
    # a stream whose flow Python allowed under the current generation is answered by the
    # core without waking Python, and recorded as if decided. false: Python decides
    # every stream (same records; the cost of one decision each).
    repeat_decisions: bool = True

    # HTTP ports with per-request rules (or observed for HTTP metrics) at the destination:
    # `core`, the Rust core serves HTTP/1.1 (hyper) and asks Python per request head
    # (docs/dataplane.md "L7"); `python`, the core pipes the bytes to the h11 inspector.
    l7: Literal["core", "python"] = "core"
    connect_timeout_s: float = 5.0
    idle_timeout_s: float = 3600.0
    # Passthrough of traffic to addresses outside the mesh.
    egress: Literal["allow", "deny"] = "allow"
    max_connections: int = 100_000

    # read before their types (a removed setting's message, not "Input should be None")
    _before = {"tunnel_streams": _removed("tunnel_streams"), "buffer_bytes": _removed("buffer_bytes"),
               "engine": _one_engine, "workers": _one_process}


def _trust_domain(v: str) -> str:
    from agent.identity.spiffe import is_trust_domain

    if not is_trust_domain(v):  # SPIFFE-ID.md 2.1, exactly (no trailing newline)
        raise ValueError(f"{v!r} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')")
    return v


@model
class IdentityConfig:
    trust_domain: str = "cluster.local"
    # Node intermediate (or root) that mints this node's SVIDs; paths to PEM files.
    ca_cert: str | None = None
    ca_key: str | None = None
    # Trusted roots (may hold several, for rotation).
    trust_bundle: str | None = None
    # Alternatively SVIDs dropped by an external issuer: <dir>/<ns>/<sa>/{cert,key}.pem
    cert_dir: str | None = None
    # Or a CA service (`hostmesh ca serve`, or istiod) signs CSRs for keys made here, so
    # this node holds no signing key (docs/identity.md, "The CA service"): its host:port,
    # the PEM roots that verify its TLS certificate (also the trust bundle unless
    # trust_bundle is set), and the node credential: a client certificate (mutual TLS)
    # and/or a bearer token file (istiod: a projected token with audience istio-ca).
    ca_address: str | None = None
    ca_root: str | None = None
    ca_credential_cert: str | None = None
    ca_credential_key: str | None = None
    ca_token_path: str | None = None
    ca_server_name: str | None = None  # TLS name to expect when not the address's host
    ca_cluster_id: str | None = None  # istiod's "clusterid" call metadata (e.g. Kubernetes)
    ttl_s: float = 24 * 3600
    # Renewal at this fraction of the lifetime, with jitter (SPEC.md: half).
    renew_fraction: float = 0.5
    renew_jitter: float = 0.05
    handshake_timeout_s: float = 5.0

    _checks = {"trust_domain": _trust_domain}

    def _check(self) -> None:
        """One issuer (checked once every field is valid)."""
        if self.ca_address and (self.ca_cert or self.ca_key):
            raise ValueError("ca_address replaces ca_cert/ca_key: a node that asks a CA service holds no signing key")
        if self.ca_address and not self.ca_root:
            raise ValueError("ca_address needs ca_root (the PEM roots that verify the CA service)")
        if self.ca_address and not _host_port(self.ca_address):
            raise ValueError(f"ca_address {self.ca_address!r} is not host:port (e.g. istiod.istio-system.svc:15012, "
                             "10.0.0.5:15012, [fd00::5]:15012)")
        if bool(self.ca_credential_cert) != bool(self.ca_credential_key):
            raise ValueError("ca_credential_cert and ca_credential_key go together")


def _host_port(a: str) -> bool:
    """``host:port`` or ``[v6]:port`` as the CA client dials it (dataplane/src/grpc.rs), not
    a gRPC target URI such as ``dns:///host:port``."""
    host, sep, port = a.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            return False
    elif ":" in host or "[" in host:
        return False
    return bool(sep and host and "/" not in host and not any(c.isspace() for c in host)
                and port.isdigit() and 0 < int(port) < 65536)


@model
class PoliciesConfig:
    dir: str | None = None
    root_namespace: str = "istio-system"
    # DestinationRule/VirtualService hosts: <svc>.<ns>.svc.<cluster_domain> (docs/traffic.md).
    cluster_domain: str = "cluster.local"


@model
class KafkaConfig:
    bootstrap: str
    topic: str = "hostmesh.connections"
    linger_ms: int = 50
    batch_bytes: int = 256 * 1024
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "gzip"
    acks: Literal["0", "1", "all"] = "all"
    idempotence: bool = False
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Bytes held while the broker is away; beyond it records are dropped and counted.
    buffer_bytes: int = 32 * 1024 * 1024


@model
class OtlpConfig:
    # gRPC: "http://collector:4317" (or host:port); HTTP: the base URL, "http://collector:4318"
    # (the sink appends /v1/traces, /v1/logs, /v1/metrics).
    endpoint: str
    protocol: Literal["grpc", "http"] = "grpc"
    insecure: bool = True  # gRPC without TLS; HTTP follows the URL's scheme
    headers: dict[str, str] = field(factory=dict)
    export_interval_s: Annotated[float, Range(gt=0)] = 5.0  # metrics
    timeout_s: Annotated[float, Range(gt=0)] = 5.0  # one export, retries inside it included
    # Records (log + span) waiting for the receiver; beyond, new ones are dropped and counted.
    buffer_records: Annotated[int, Range(ge=1)] = 20000


@model
class TelemetryConfig:
    access_log: str = "stderr"  # "stderr", "off", or a file path
    # Per-worker queue of finished-connection records; overflow is dropped and counted.
    queue_size: int = 65536
    batch_size: int = 512
    flush_interval_s: float = 1.0
    kafka: KafkaConfig | None = None
    otlp: OtlpConfig | None = None
    # Distinct label sets kept per metric before new ones fold into "other".
    max_series: int = 10000
    # HTTP request metrics on workloads' HTTP ports (docs/telemetry.md): "both" parses
    # requests at the destination and at the source (reporter="source", which Istio's
    # mesh dashboard reads), "destination" only there, "off" only where L7 rules need it.
    http_metrics: Literal["both", "destination", "off"] = "both"
    # istio_build{component}: dashboards and Kiali look for ztunnel's node proxies.
    build_component: str = "ztunnel"


@model
class DrainConfig:
    deadline_s: float = 30.0
    # Keep accepting while draining until a replacement listens, at most this long:
    # stopping at once would make capture refuse pods' connections until one starts.
    accept_grace_s: float = 10.0


@model
class WorkloadConfig:
    """A workload known at start (bare metal): same shape as the admin API's POST body."""

    uid: str
    name: str
    namespace: str = "default"
    service_account: str = "default"
    ip: str
    ips: list[str] = field(factory=list)
    labels: dict[str, str] = field(factory=dict)
    http_ports: list[int] = field(factory=list)
    node: str | None = None


@model
class KubernetesConfig:
    """Discovery from the Kubernetes API (DaemonSet mode; agent/k8s, docs/kubernetes.md)."""

    enabled: bool = False
    # This node's Node object name; unset: node.name (itself NODE_NAME by default).
    node_name: str | None = None
    # Unset: in-cluster, https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
    api_server: str | None = None
    token_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    # Server-side watch timeout; the watch is then resumed from the last version seen.
    watch_timeout_s: Annotated[int, Range(ge=1)] = 300
    # Retry after an API error: backoff_initial_s doubling to backoff_max_s, jittered
    # (client-go's reflector: 0.8 s to 30 s); 410 Gone relists at once.
    backoff_initial_s: Annotated[float, Range(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Range(gt=0)] = 30.0
    istio_api_version: str = "v1"  # of security.istio.io AuthorizationPolicy / PeerAuthentication


@model
class Config:
    node: NodeConfig = field(factory=NodeConfig)  # read at load time (NODE_NAME, NODE_IP)
    ports: PortsConfig = field(factory=PortsConfig)
    admin: AdminConfig = field(factory=AdminConfig)
    cluster: ClusterConfig = field(factory=ClusterConfig)
    capture: CaptureConfig = field(factory=CaptureConfig)
    dataplane: DataplaneConfig = field(factory=DataplaneConfig)
    identity: IdentityConfig = field(factory=IdentityConfig)
    policies: PoliciesConfig = field(factory=PoliciesConfig)
    telemetry: TelemetryConfig = field(factory=TelemetryConfig)
    drain: DrainConfig = field(factory=DrainConfig)
    workloads: list[WorkloadConfig] = field(factory=list)
    kubernetes: KubernetesConfig = field(factory=KubernetesConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Where the agent keeps runtime files (minted keys, state).
    state_dir: str = "/run/hostmesh"


def parse_config(text: str, path: str = "<config>") -> Config:
    """The configuration in ``text``, or ConfigError naming every problem with its line."""
    try:
        return yamlpos.load_model(text, path, Config, "the configuration")[1]
    except yamlpos.YamlError as e:
        raise ConfigError(str(e)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    return parse_config(text, str(p))
