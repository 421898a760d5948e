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
    # replies to the agent's transparent sockets, never a new SYN (a SYN on a reused
    # 4-tuple would meet the agent's TIME_WAIT socket: docs/capture.md)
    assert "meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x1 accept" in text
    assert text.count("reject with tcp reset") == 3
    # a pod's :15008 (HBONE) reaches the pod-address tunnel listener, never :15006, and
    # before the exclusions; with no listener it meets the fail rule, not the plaintext port
    pod_in = text.split("chain pod_in {", 1)[1].split("}", 1)[0].strip().splitlines()
    assert [s.strip() for s in pod_in[0:3]] == [
        "meta nfproto ipv4 tcp dport 15008 tproxy ip to 127.0.0.1:15008 meta mark set 0x1 accept",
        "meta nfproto ipv6 tcp dport 15008 tproxy ip6 to [::1]:15008 meta mark set 0x1 accept",
        "tcp dport 15008 jump tunnel_fail"]
    assert pod_in[3].strip() == "tcp dport @skip_ports return"
    fail = text.split("chain tunnel_fail {", 1)[1].split("}", 1)[0]
    assert [s.strip() for s in fail.strip().splitlines()] == [
        "tcp flags & (syn | ack) == syn reject with tcp reset", "accept"]


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
    assert "-A HOSTMESH_PRE -p tcp ! --syn -m socket --transparent -j MARK --set-mark 0x1" in v4  # never a new SYN
    # HBONE to a pod's :15008: the pod-address tunnel listener, before the exclusions
    assert "-A HOSTMESH_IN -p tcp --dport 15008 -j TPROXY --on-ip 127.0.0.1 --on-port 15008 --tproxy-mark 0x1" in v4
    assert "-A HOSTMESH_IN -p tcp --dport 15008 -j TPROXY --on-ip ::1 --on-port 15008 --tproxy-mark 0x1" in v6
    skipped = rules.render_iptables(spec(exclude_ports=[15008, 22]), [], 4).splitlines()
    assert skipped.index("-A HOSTMESH_IN -p tcp --dport 15008 -j TPROXY --on-ip 127.0.0.1 --on-port 15008 "
                         "--tproxy-mark 0x1") < skipped.index("-A HOSTMESH_IN -p tcp --dport 22 -j RETURN")
