"""What the agent holds per connection and at idle (docs/dataplane.md, Memory): the
connection record is slotted, shares its addresses, principals and label tuple with
every other connection between the same pods, and holds no container until telemetry
opens an account; the agent's process imports only its own command's CLI module."""

import sys
from dataclasses import replace

from agent.proxy.conns import Conn, ConnTable
from agent.telemetry import account
from agent.telemetry.metrics import Metrics
from tests.unit.test_istio_metrics import CTX, WEB, conn


def fresh(s: str) -> str:
    """An equal string that is a different object (as each core event makes one)."""
    return "".join(list(s))


def make(principal: str = "spiffe://cluster.local/ns/bench/sa/cli") -> Conn:
    c = Conn("outbound", "tunnel", fresh("198.19.1.2"), 40000, fresh("198.19.0.2"), 9000, 0.0, 0.0)
    c.src_principal, c.dst_principal = fresh(principal), fresh("spiffe://cluster.local/ns/bench/sa/srv")
    return c


def test_the_record_has_no_instance_dict_and_stays_small():
    c = make()
    assert not hasattr(c, "__dict__")
    assert c.accounts == ()  # no list per idle connection
    # 33 slots and the object header; the __dict__ it replaced was 1.3 KB alone
    assert sys.getsizeof(c) <= 320


def test_equal_addresses_and_principals_are_one_object_across_connections():
    table = ConnTable()
    a, b = table.add(make()), table.add(make())
    assert a is not b and a.id != b.id
    assert a.src_ip is b.src_ip and a.dst_ip is b.dst_ip
    assert a.src_principal is b.src_principal and a.dst_principal is b.dst_principal
    assert a.src_principal == "spiffe://cluster.local/ns/bench/sa/cli"


def test_a_record_without_principals_is_listed_unchanged():
    c = Conn("inbound", "plaintext", "198.19.1.2", 1, "198.19.0.2", 2, 0.0, 0.0)
    assert ConnTable().add(c).src_principal is None
    assert c.to_json()["src"] == {"ip": "198.19.1.2", "port": 1, "workload": None, "namespace": None,
                                  "principal": None}


def test_accounts_of_one_series_share_their_labels_and_count_as_before():
    m = Metrics()
    accts = [account.opened(m, conn(), CTX) for _ in range(3)]
    assert accts[0].labels is accts[1].labels is accts[2].labels
    assert not hasattr(accts[0], "__dict__")
    assert m.counters["istio_tcp_connections_opened_total"] == {accts[0].labels: 3}
    assert m.gauges["istio_tcp_sockets_open"] == {accts[0].labels[:1]: 3}


def test_the_shared_label_table_is_bounded(monkeypatch):
    monkeypatch.setattr(account, "_TCP_LABELS_CACHE_MAX", 2)
    monkeypatch.setattr(account, "_TCP_LABELS_CACHE", {})
    recs = [conn(dst=replace(WEB, workload=f"web-{i}")) for i in range(5)]  # five series
    for r in recs:
        assert account.cached_tcp_labels(r, CTX) == account.tcp_labels(r, CTX)
        assert len(account._TCP_LABELS_CACHE) <= 2
    # still shared after starting over
    assert account.cached_tcp_labels(recs[4], CTX) is account.cached_tcp_labels(recs[4], CTX)


def test_the_agent_imports_only_its_own_command():
    from agent.cli.main import command_of

    assert command_of(["--log-format", "json", "run", "--config", "c.yaml"]) == "run"
    assert command_of(["--log-level=debug", "ctl", "stats"]) == "ctl"
    assert command_of(["--log-level", "info", "--log-format", "text"]) is None
    assert command_of(["--version"]) is None
