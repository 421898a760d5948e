"""Bounded parsing (agent.yamlpos): aliases, size, depth and document count are refused
with ``path:line: message`` before anything is expanded; the same bounds hold for
policy files, the admin API body, the configuration and the Kubernetes source."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import yamlpos
from agent.config import ConfigError, load_config
from agent.rbac.loader import PolicyError, load_documents

HEAD = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\n"


def laughs(levels: int = 8, width: int = 9) -> str:
    """The issue's document: 8 levels of 9 aliases each (9**8 = 43 million values)."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.fixture
def no_expansion(monkeypatch):
    """Fails the test if any value is built: the refusal must come from the node graph."""
    def boom(*a, **kw):
        raise AssertionError("a value was expanded before the bounds were checked")

    monkeypatch.setattr(yamlpos, "_convert", boom)


def test_billion_laughs_is_refused_before_expansion(no_expansion):
    text = laughs()
    assert len(text.encode()) < 450
    with pytest.raises(yamlpos.YamlError) as e:
        yamlpos.load_all(text, "laughs.yaml")
    assert str(e.value) == ("laughs.yaml:4: excessive aliasing: more than 10000 values reached through aliases")


def test_billion_laughs_as_a_policy_body_and_file():
    with pytest.raises(PolicyError, match=r"^admin-api:\d+: excessive aliasing"):
        load_documents(HEAD + "spec:\n" + "".join("  " + line + "\n" for line in laughs().splitlines()), "admin-api")
    with pytest.raises(PolicyError, match=r"^p.yaml:\d+: excessive aliasing"):
        load_documents(laughs(), "p.yaml")


def test_billion_laughs_as_a_config(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("node: {name: n}\nx:\n" + "".join("  " + line + "\n" for line in laughs().splitlines()))
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: excessive aliasing"):
        load_config(str(f))


def test_merge_keys_cannot_amplify(no_expansion):
    lines = ["m0: &m0 {k: v}"]
    for i in range(1, 8):
        lines.append(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}")
    with pytest.raises(yamlpos.YamlError, match="excessive aliasing"):
        yamlpos.load_all("\n".join(lines), "m.yaml")


def test_shared_fragments_through_anchors_still_load():
    text = HEAD + ("spec:\n  action: DENY\n  rules:\n  - from: &src [{source: {namespaces: [evil]}}]\n"
                   "    to: [{operation: {ports: ['80']}}]\n  - from: *src\n    to: [{operation: {ports: ['81']}}]\n")
    (pol,) = load_documents(text, "anchors.yaml")
    assert [r.sources[0].namespaces for r in pol.rules] == [("evil",), ("evil",)]


@pytest.mark.parametrize("text, message", [
    ("x: &a [*a]\n", "r.yaml:1: recursive alias"),
    ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 80)), "r.yaml:65: nesting deeper than 64 levels"),
    ("[" * 70 + "]" * 70, "r.yaml:1: nesting deeper than 64 levels"),
    ("---\n{}\n" * 20001, "r.yaml:40002: more than 20000 documents"),
])
def test_bounds_each_with_its_line(text, message):
    with pytest.raises(yamlpos.YamlError) as e:
        yamlpos.load_documents(text, "r.yaml", lines=True)
    assert str(e.value) == message


def test_size_bound(monkeypatch):
    monkeypatch.setattr(yamlpos, "MAX_BYTES", 1000)
    with pytest.raises(PolicyError, match=r"^big.yaml:1: 1001 bytes, more than the limit of 1000 bytes$"):
        load_documents("#" * 1001, "big.yaml")
    with pytest.raises(PolicyError, match="more than the limit"):
        load_documents("[" + " " * 1000 + "]", "big.json")


def test_json_lists_are_bounded_and_keep_lines():
    with pytest.raises(PolicyError, match=r"^j.json:1: nesting deeper than 64 levels$"):
        load_documents("[" * 200000, "j.json")
    with pytest.raises(PolicyError, match=r"^j.json:1: nesting deeper than 64 levels$"):
        load_documents(json.dumps([{"a": "[" * 70 + "]" * 70}]).replace('"[', "[").replace(']"', "]"), "j.json")
    with pytest.raises(PolicyError, match=r"^j.json:3: not valid JSON: expected ',' or ']'"):
        load_documents('[{"a": 1},\n\n {"a": 2} x]', "j.json")
    docs = yamlpos.load_json('[\n{"a": 1},\n\n{"b": 2}\n]', "j.json")
    assert [(d.data, d.line) for d in docs] == [({"a": 1}, 2), ({"b": 2}, 4)]


def test_fast_path_defers_anchors_and_odd_markers_to_the_bounded_composer():
    assert yamlpos.load_fast("a: &x 1\nb: *x\n", "f") is None
    assert yamlpos.load_fast("--- {a: 1}\n", "f") is None
    assert [d.data for d in yamlpos.load_fast("a: 1\n---\nb: '*x'\n---\n", "f")] == [{"a": 1}, {"b": "*x"}]


@given(st.text(alphabet="ab:-&*[]{}, \n'\"#!|>%.0", max_size=60))
def test_any_text_parses_or_is_refused_with_a_line(text):
    try:
        yamlpos.load_documents(text, "h.yaml", lines=True)
    except yamlpos.YamlError as e:
        assert str(e).startswith("h.yaml:")
