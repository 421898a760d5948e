"""What the agent holds per connection and at idle (docs/dataplane.md, Memory): the
connection record is slotted, shares its addresses, principals and label tuple with
every other connection between the same pods, and holds no container until telemetry
opens an account; the agent's process imports only its own command's CLI module."""

import struct
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


def test_trace_ids_are_one_int_and_read_back_as_the_hex_they_were():
    c = make()
    assert (c.trace, c.trace_id, c.span_id, c.parent_span_id) == (None, None, None, None)
    c.set_trace("0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7")  # the source's own span
    assert (c.trace_id, c.span_id, c.parent_span_id) == ("0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7",
                                                          None)
    c.set_trace("0000000000000000000000000000000a", "b7ad6b7169203331", parent=True)  # the destination's
    assert (c.trace_id, c.span_id, c.parent_span_id) == ("0000000000000000000000000000000a", None,
                                                          "b7ad6b7169203331")
    assert isinstance(c.trace, int) and not hasattr(c, "start_mono")


def _cached_pair(n: int):
    """Both agents' glue (fake cores) after ``n`` connections the cores answered from a
    stored answer (the idle-10k shape: one flow, thousands of connections), telemetry
    accounts opened by a flow tick; the tracemalloc bytes of agent/ per connection per
    agent."""
    import tracemalloc

    from agent.proxy import finish
    from tests.unit.test_decision_cost import CLI, Core, drive, engine

    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    class Listing(Core):
        rows: dict = {}

        def live_counts(self):  # as the core packs them: (id, sent, received) u64 triples
            return b"".join(struct.pack("=3Q", cid, *counts) for cid, counts in self.rows.items())

    def run():
        (a1, e1), (a0, e0) = engine("node-1"), engine("node-0")
        for a, e in ((a1, e1), (a0, e0)):
            e.core, a.engine = Listing(), e
            e.core.rows = {}
        e1._on_conn(1, "outbound", ("198.19.1.2", 30000), ("198.19.0.2", 8080), None)
        e0._on_conn(1, "tunnel", ("198.19.1.2", 30000), ("198.19.0.2", 15008),
                    (CLI, ("198.19.0.2", 8080), ("198.19.1.2", 30000), tp, "hbone", None))
        out, out1 = e0.core.calls[-1][2]["remember"][1], e1.core.calls[-1][2]["remember"][1]
        events = [(i, ("198.19.1.2", 30000 + i), f"00-{i:032x}-{i:016x}-01") for i in range(2, n + 2)]
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for i, src, sent in events:
            e1.core.rows[i] = e0.core.rows[i] = (0, 0)
            e1._on_cached(i, out1, 1795345876.25, src, ("198.19.0.2", 8080), None, sent)
            e0._on_cached(i, out, 1795345876.25, src, ("198.19.0.2", 15008),
                          (CLI, ("198.19.0.2", 8080), src, sent, "hbone", None), None)
        finish.flow(a1)
        finish.flow(a0)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        mine = [tracemalloc.Filter(True, "*/agent/*")]
        grown = sum(d.size_diff for d in after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename"))
        return e1, e0, out1, grown / n / 2, (a1, a0)

    return drive(run)


def test_an_idle_cached_connection_holds_its_record_and_nothing_it_can_share():
    e1, e0, entry, per_conn, _ = _cached_pair(400)
    src, dst = e1._live[5], e0._live[5]
    assert e1._retry[5] is e1._repeat.get(entry)  # the stored entry stands in for a plan of its own
    assert src.core_id == 5 and src.in_engine and (src.trace_id, src.span_id) == (f"{5:032x}", f"{5:016x}")
    assert (dst.trace_id, dst.parent_span_id) == (f"{5:032x}", f"{5:016x}")
    assert [type(a).__name__ for a in src.accounts + dst.accounts] == ["TcpAccount", "TcpAccount"]
    assert src.accounts[0].labels is e1._live[6].accounts[0].labels
    # the record, its ids, times, trace and account, two table entries: ~0.5 KB per
    # agent (0.9 KB before the trace int, shared plan and tuple accounts; issue 17)
    assert per_conn < 640, per_conn


def test_the_telemetry_tick_opens_what_the_core_lists_and_moves_its_bytes():
    from agent.proxy import finish
    from tests.unit.test_decision_cost import counter, drive

    e1, e0, _, _, (a1, a0) = _cached_pair(3)
    assert counter(a1, "istio_tcp_connections_opened_total") == 3  # the cached three (the decided one is unlisted)
    e1.core.rows[2] = (100, 7000)
    del e1.core.rows[3]
    drive(lambda: finish.flow(a1))
    assert counter(a1, "istio_tcp_received_bytes_total") == 100
    assert counter(a1, "istio_tcp_sent_bytes_total") == 7000
    drive(lambda: finish.flow(a1))  # counted once, not per tick
    assert counter(a1, "istio_tcp_received_bytes_total") == 100
    assert counter(a1, "istio_tcp_connections_opened_total") == 3
