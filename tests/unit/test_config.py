"""Configuration and YAML errors name the file and the line (agent.config, agent.yamlpos)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ConfigError, load_config, parse_config
from agent.yamlpos import YamlError, load_all


def test_defaults_are_the_spec_ports():
    c = parse_config("{}")
    assert (c.ports.outbound, c.ports.inbound_plain, c.ports.tunnel, c.ports.metrics, c.ports.readiness) == (
        15001, 15006, 15008, 15020, 15021)
    assert c.identity.trust_domain == "cluster.local"
    assert c.admin.socket == "/run/hostmesh/admin.sock"
    assert c.capture.fail == "closed"


@pytest.mark.parametrize(
    "text, expect",
    [
        ("node:\n  name: n\n  adress: 1.2.3.4\n", "cfg.yaml:3: node.adress: unknown field"),
        ("capture:\n  backend: pf\n", "cfg.yaml:2: capture.backend: Input should be 'nftables' or 'iptables'"),
        ("cluster:\n  nodes:\n    - name: a\n      address: 1.2.3.4\n      pod_cidrs: [10.0.0.0/33]\n",
         "cfg.yaml:5: cluster.nodes[0].pod_cidrs: '10.0.0.0/33' is not a CIDR"),
        ("node: [1, 2\n", "cfg.yaml:2: not valid YAML"),
        ("- 1\n- 2\n", "cfg.yaml:1: the configuration must be a mapping"),
        ("a: 1\na: 2\n", "cfg.yaml:2: duplicate key 'a'"),
    ],
)
def test_errors_have_path_and_line(text, expect):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "cfg.yaml")
    assert str(e.value).startswith(expect), str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_multi_document_lines():
    docs = load_all("a: 1\n---\nb:\n  c: [1, 2]\n", "f")
    assert [d.line for d in docs] == [1, 3]
    assert docs[1].line_of(("b", "c", 1)) == 4
    assert docs[1].where(("b", "zz")) == "f:3"


@given(st.text(max_size=200))
def test_parse_config_never_crashes(text):
    try:
        parse_config(text, "x.yaml")
    except ConfigError as e:
        assert str(e).startswith("x.yaml:")


@given(st.text(max_size=200))
def test_yaml_loader_errors_carry_a_line(text):
    try:
        load_all(text, "y")
    except YamlError as e:
        head = str(e).split(":")
        assert head[0] == "y" and head[1].isdigit()


def test_node_name_and_address_from_the_downward_api(monkeypatch):
    from agent.config import Config

    monkeypatch.setenv("NODE_NAME", "worker-7")
    monkeypatch.setenv("NODE_IP", "10.0.0.7")
    c = Config.from_obj({})
    assert (c.node.name, c.node.address) == ("worker-7", "10.0.0.7")
    c = Config.from_obj({"node": {"name": "n", "address": "10.0.0.8"}})  # explicit wins
    assert (c.node.name, c.node.address) == ("n", "10.0.0.8")
