"""Capture rule rendering (agent.capture.rules): pure text, checked line by line."""

from pathlib import Path

from agent.capture import rules
from agent.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


def spec(**capture):
    cfg = parse_config("{}")
    for k, v in capture.items():
        setattr(cfg.capture, k, v)
    return rules.spec_from_config(cfg.capture, cfg.ports)


def test_templates_are_the_documented_source():
    for t in ("nftables.nft.tmpl", "iptables.rules.tmpl"):
        assert (ROOT / "iptables" / t).read_text() == (ROOT / "agent/capture/templates" / t).read_text(), t


def test_nft_has_tproxy_to_both_listeners_and_fail_closed():
    text = rules.render_nft(spec(), ["198.19.0.2", "fd00:686d::2"])
    assert "elements = { 198.19.0.2 }" in text and "elements = { fd00:686d::2 }" in text
    assert "tproxy ip to 127.0.0.1:15001 meta mark set 0x1 accept" in text
    assert "tproxy ip6 to [::1]:15006 meta mark set 0x1 accept" in text
    assert "socket transparent 1 meta mark set 0x1 accept" in text
    assert text.count("reject with tcp reset") == 2
    assert "tcp dport 15008 return" in text


def test_fail_open_has_no_reject_and_exclusions_render():
    text = rules.render_nft(spec(fail="open", exclude_ports=[22, 53], exclude_cidrs=["192.0.2.0/24", "2001:db8::/32"]))
    assert "reject" not in text
    assert "elements = { 22, 53 }" in text
    assert "elements = { 192.0.2.0/24 }" in text and "elements = { 2001:db8::/32 }" in text


def test_replace_is_one_idempotent_transaction_and_elements_are_incremental():
    t = rules.nft_replace(spec(), [])
    assert t.startswith("table inet hostmesh\ndelete table inet hostmesh\ntable inet hostmesh {")
    assert rules.nft_elements("add", ["198.19.0.9", "fd00::9"]) == (
        "add element inet hostmesh pods4 { 198.19.0.9 }\nadd element inet hostmesh pods6 { fd00::9 }\n")
    assert rules.nft_elements("delete", []) == ""


def test_iptables_render_per_family():
    v4 = rules.render_iptables(spec(), ["198.19.0.2", "fd00::2"], 4)
    v6 = rules.render_iptables(spec(), ["198.19.0.2", "fd00::2"], 6)
    assert "-A HOSTMESH_PODS -s 198.19.0.2 -j HOSTMESH_OUT" in v4 and "fd00::2" not in v4
    assert "--on-ip ::1 --on-port 15001" in v6 and "-A HOSTMESH_PODS -d fd00::2 -j HOSTMESH_IN" in v6
    assert "REJECT --reject-with tcp-reset" in v4
