"""The CA service's configuration file (`hostmesh ca serve --config FILE`): schema,
defaults and the checks that make a file valid. Pure: text in, ``Settings`` or
``ConfigError`` (``path:line: field: message``) out; reading the PEM files it names is
``server.load_authority``'s job.

```yaml
listen: 0.0.0.0:15012              # Istio's CA port
trust_domain: cluster.local
signing: {cert: /etc/hostmesh/ca/root.pem, key: /etc/hostmesh/ca/root.key,
          bundle: /etc/hostmesh/ca/bundle.pem}
server_names: [10.0.0.10, ca.mesh.internal]   # SANs of the service's own TLS certificate
node_credential_roots: /etc/hostmesh/ca/bundle.pem
nodes:                              # the CA's own view: identities with a workload per node
  node-0: [spiffe://cluster.local/ns/shop/sa/web]
```
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent import yamlpos
from agent.config import ConfigError
from agent.identity import spiffe


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Signing(_Model):
    cert: str  # the signing CA certificate (a root, or an intermediate of one)
    key: str
    bundle: str | None = None  # the roots handed out last in every chain; default: cert


class Kubernetes(_Model):
    """Bearer-token callers (TokenReview) and the view from pods in the API, as istiod."""

    api_server: str | None = None  # unset: in-cluster, https://$KUBERNETES_SERVICE_HOST:$..._PORT
    token_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    # Service accounts (ns/sa) of node agents (istiod's CA_TRUSTED_NODE_ACCOUNTS).
    trusted_node_accounts: list[str] = Field(min_length=1)
    audience: str = "istio-ca"
    watch_timeout_s: int = Field(300, ge=1)

    @field_validator("trusted_node_accounts")
    @classmethod
    def _accounts(cls, v: list[str]) -> list[str]:
        for a in v:
            ns, sep, sa = a.partition("/")
            if not sep or not ns or not sa or "/" in sa:
                raise ValueError(f"{a!r} is not <namespace>/<service account>")
        return v


class Settings(_Model):
    listen: str = "0.0.0.0:15012"
    trust_domain: str = "cluster.local"
    signing: Signing
    server_names: list[str] = Field(min_length=1)
    # Roots that issue node credentials (`hostmesh ca issue --node N --credential`);
    # default: the signing bundle.
    node_credential_roots: str | None = None
    # SVID lifetimes: 24 h default as SPEC.md; a request beyond max_ttl_s is refused.
    max_ttl_s: int = Field(24 * 3600, gt=0)
    default_ttl_s: int = Field(24 * 3600, gt=0)
    # Calls in flight at once; more are answered RESOURCE_EXHAUSTED by gRPC at once
    # instead of queueing (a fleet renewing after an outage must not pile up memory).
    max_concurrent: int = Field(64, ge=1, le=10000)
    # Caller connections held at once (each node agent, or worker, keeps one channel open;
    # each costs a thread in the TLS front). Beyond it new connections are closed, counted.
    max_connections: int = Field(1024, ge=1, le=100000)
    # Threads signing at once: signatures are CPU-bound, more than the cores buys nothing.
    signers: int = Field(2, ge=1, le=64)
    audit_log: str = "stderr"  # "stderr" or a file path: one JSON line per issued/refused certificate
    metrics_listen: str | None = None  # host:port for Prometheus text (/metrics)
    # How often the configuration and the files it names are checked for changes.
    watch_interval_s: float = Field(1.0, gt=0)
    nodes: dict[str, list[str]] = {}
    # Kubernetes mode: callers present bearer tokens (no client certificates are asked
    # for) and the view is the pods in the API, plus any static `nodes` entries.
    kubernetes: Kubernetes | None = None

    @field_validator("trust_domain")
    @classmethod
    def _td(cls, v: str) -> str:
        if not spiffe._TD.match(v):
            raise ValueError(f"{v!r} is not a valid SPIFFE trust domain")
        return v

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{v!r} is not host:port")
        return v

    @model_validator(mode="after")
    def _identities(self) -> Settings:
        for node, ids in self.nodes.items():
            for i, uri in enumerate(ids):
                try:
                    sid = spiffe.parse(uri)
                except spiffe.SpiffeError as e:
                    raise ValueError(f"nodes.{node}[{i}]: {e}") from None
                if sid.trust_domain != self.trust_domain:
                    raise ValueError(f"nodes.{node}[{i}]: {uri} is not in trust domain {self.trust_domain}")
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError(f"default_ttl_s {self.default_ttl_s} exceeds max_ttl_s {self.max_ttl_s}")
        return self

    def files(self) -> list[str]:
        """Every file this configuration names (watched for changes)."""
        return [f for f in (self.signing.cert, self.signing.key, self.signing.bundle, self.node_credential_roots) if f]


def parse_settings(text: str, path: str = "<ca config>") -> Settings:
    try:
        return yamlpos.load_model(text, path, Settings, "the CA service configuration")[1]
    except yamlpos.YamlError as e:
        raise ConfigError(str(e)) from None
