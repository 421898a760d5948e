"""agent/schema.py: what each document converts to, and each refusal's exact line."""

import pytest

from agent.config import (
    Config,
    ConfigError,
    DataplaneConfig,
    IdentityConfig,
    NodeConfig,
    PeerNode,
    parse_config,
)
from agent.rbac.loader import PolicyError, load_documents
from agent.schema import Invalid


@pytest.mark.parametrize("text, get, want", [
    ("ports: {outbound: '15101'}", lambda c: c.ports.outbound, 15101),  # lax: a numeric string
    ("ports: {outbound: 15101.0}", lambda c: c.ports.outbound, 15101),
    ("drain: {deadline_s: 3}", lambda c: c.drain.deadline_s, 3.0),
    ("capture: {enabled: 'off'}", lambda c: c.capture.enabled, False),
    ("capture: {exclude_cidrs: [10.1.2.3/8]}", lambda c: c.capture.exclude_cidrs, ["10.0.0.0/8"]),  # normalised
    ("node: {address: '::0001'}", lambda c: c.node.address, "::1"),
    ("cluster: {nodes: [{name: b, address: 10.0.0.2, pod_cidrs: [10.2.0.1/24]}]}",
     lambda c: (c.cluster.nodes[0].name, c.cluster.nodes[0].pod_cidrs), ("b", ["10.2.0.0/24"])),
    ("dataplane: {workers: 1}", lambda c: c.dataplane.to_dict().get("workers"), None),  # kept out of dumps
    ("{}", lambda c: (c.admin.allowed_uids, c.telemetry.kafka, c.identity.ttl_s), ([0], None, 86400.0)),
])
def test_accepted(text, get, want):
    assert get(parse_config(text, "c.yaml")) == want


@pytest.mark.parametrize("text, want", [
    ("ports:\n  outbound: x\n", "c.yaml:2: ports.outbound: Input should be a valid integer, unable to parse string "
                                "as an integer"),
    ("ports: {outbound: 1.5}\n", "c.yaml:1: ports.outbound: Input should be a valid integer, got a number with a "
                                 "fractional part"),
    ("node: {name: 7}\n", "c.yaml:1: node.name: Input should be a valid string"),
    ("capture: {enabled: maybe}\n", "c.yaml:1: capture.enabled: Input should be a valid boolean, unable to interpret "
                                    "input"),
    ("dataplane: {threads: 65}\n", "c.yaml:1: dataplane.threads: Input should be less than or equal to 64"),
    ("telemetry: {otlp: {endpoint: x, export_interval_s: 0}}\n",
     "c.yaml:1: telemetry.otlp.export_interval_s: Input should be greater than 0"),
    ("telemetry: {kafka: {}}\n", "c.yaml:1: telemetry.kafka.bootstrap: Field required"),
    ("cluster:\n  nodes:\n  - name: a\n    address: 10.0.0.1\n    colour: red\n  - 7\n",
     "c.yaml:5: cluster.nodes[0].colour: unknown field\nc.yaml:6: cluster.nodes[1]: must be a mapping, not int 7"),
    ("cluster: {pod_cidrs: 10.0.0.0/8}\n", "c.yaml:1: cluster.pod_cidrs: Input should be a valid list"),
    ("node:\n  labels: [a]\n", "c.yaml:2: node.labels: must be a mapping, not list ['a']"),
    ("identity:\n  ca_address: ca:15012\n  ca_root: /r.pem\n  ca_key: /k.pem\n",
     "c.yaml:1: identity: ca_address replaces ca_cert/ca_key: a node that asks a CA service holds no signing key"),
    ("identity: {trust_domain: Cluster.local, ttl_s: x}\n",  # a field's problem and the next field's, both
     "c.yaml:1: identity.trust_domain: 'Cluster.local' is not a SPIFFE trust domain (lowercase letters, digits, "
     "'.', '-', '_')\nc.yaml:1: identity.ttl_s: Input should be a valid number, unable to parse string as a number"),
    ("dataplane: {buffer_bytes: 1}\n", "c.yaml:1: dataplane.buffer_bytes: buffer_bytes is no longer a setting: "),
])
def test_refused(text, want):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml")
    assert str(e.value).startswith(want), str(e.value)
    assert str(e.value) == want or want.endswith(": ")


POLICY = "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: p, namespace: shop}}\nspec:\n"


@pytest.mark.parametrize("kind, spec, want", [
    ("PeerAuthentication", "  mtls: {mode: strict}\n",
     "p.yaml:5: spec.mtls.mode: Input should be 'STRICT', 'PERMISSIVE', 'DISABLE' or 'UNSET'"),
    ("AuthorizationPolicy", "  rules:\n  - to:\n    - operation: {ports: [80, 1.5]}\n",
     "p.yaml:7: spec.rules[0].to[0].operation.ports[1]: Input should be a valid string or integer"),
    ("AuthorizationPolicy", "  rules:\n  - when:\n    - values: [a]\n",
     "p.yaml:7: spec.rules[0].when[0].key: Field required"),
    ("AuthorizationPolicy", "  selector: {matchLabels: {app: 7}}\n",
     "p.yaml:5: spec.selector.matchLabels.app: Input should be a valid string"),
])
def test_policy_refused(kind, spec, want):
    with pytest.raises(PolicyError) as e:
        load_documents(POLICY.format(kind=kind) + spec, "p.yaml")
    assert str(e.value) == want


def test_a_metadata_name_is_bounded():
    with pytest.raises(PolicyError) as e:
        load_documents(POLICY.format(kind="PeerAuthentication").replace("name: p", "name: ''") + "  {}\n", "p.yaml")
    assert str(e.value) == "p.yaml:3: metadata.name: String should have at least 1 character"


def test_constructed_models_are_checked_too():
    assert PeerNode(name="b", address="::0001").address == "::1"
    with pytest.raises(Invalid) as e:
        PeerNode(name="b", address="10.0.0.300", pod_cidrs=["x"])
    assert str(e.value) == "address: '10.0.0.300' is not an IP address\npod_cidrs: 'x' is not a CIDR"
    with pytest.raises(Invalid, match="^ca_address needs ca_root"):
        IdentityConfig(ca_address="ca:15012")


def test_environment_defaults_are_not_the_files_to_refuse(monkeypatch):
    # as under pydantic: a default is not validated, so a bad NODE_IP is not blamed on the file
    monkeypatch.setenv("NODE_IP", "not-an-ip")
    assert Config.from_obj({}).node.address == "not-an-ip"
    assert Config.from_obj({"node": {"address": "10.0.0.9"}}).node.address == "10.0.0.9"
    monkeypatch.setenv("NODE_IP", "10.0.0.7")
    assert NodeConfig.from_obj({}).address == "10.0.0.7"


def test_to_dict_loads_back_to_an_equal_config():
    c = parse_config("cluster: {nodes: [{name: b, address: 10.0.0.2}]}\ndataplane: {threads: 4}\n")
    assert Config.from_obj(c.to_dict()) == c
    assert "workers" not in DataplaneConfig().to_dict()
