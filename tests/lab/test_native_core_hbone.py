"""The native core's HBONE server driven directly over loopback by Python's own HTTP/2
(the `h2` library) and TLS (OpenSSL) as the peer: ALPN h2, no SNI, the certificate
chosen by the pod address, several CONNECT streams on one TLS connection byte-exact
both ways with half-close, the tunnel event's HBONE fields, 401 with the policy.
The lab interoperability tests (two agents, capture) are tests/lab's HBONE suites."""

from __future__ import annotations

import hashlib
import socket

import h2.config
import h2.connection
import h2.events

from tests.lab.test_native_core import (
    BACK,
    CLIENT,
    SID,
    Node,
    client_ctx,
    next_event,
    pki,  # noqa: F401  (the module's fixture)
    pytestmark,  # noqa: F401  (root: SO_MARK)
    sink_server,
    source_core,
    wait,
)


def h2_client(node, pki_):
    ctx = client_ctx(pki_, pki_.svid(CLIENT))
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", node.port), 5)
    tls = ctx.wrap_socket(raw, server_hostname=None)  # HBONE sends no SNI
    assert tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    return tls, conn


def pump(tls, conn, streams: dict, until) -> None:
    """Read frames into ``streams[id]`` = {"headers", "data", "ended"} until ``until()``."""
    while not until():
        data = tls.recv(1 << 20)
        assert data, "connection closed"
        for ev in conn.receive_data(data):
            s = streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                s["headers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                s["data"] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                s["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                s["reset"] = ev.error_code
        tls.sendall(conn.data_to_send())


def connect(conn, authority: str, extra=()) -> int:
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority), *extra])
    return sid


def test_streams_on_one_connection_byte_exact_with_half_close(pki):  # noqa: F811
    payloads = [bytes([i]) * (200_000 + 50_000 * i) for i in range(3)]
    sinks = [sink_server(len(p)) for p in payloads]
    node = Node(pki, lambda ev: ("connect", (*ev[5][1],)) if ev[0] == "conn" else None)
    node.core.set_pod_identities([("127.0.0.1", SID)])
    try:
        tls, conn = h2_client(node, pki)
        streams = {}
        for (_ls, port), _p in zip(sinks, payloads):
            hs = [("forwarded", 'for="10.9.9.9:1234"'), ("baggage", "k8s.namespace.name=front")]
            streams[connect(conn, f"127.0.0.1:{port}", hs)] = {"headers": None, "data": b"", "ended": False}
        tls.sendall(conn.data_to_send())
        pump(tls, conn, streams, lambda: all(s["headers"] for s in streams.values()))
        assert [s["headers"][":status"] for s in streams.values()] == ["200"] * 3
        for sid, p in zip(streams, payloads):
            sent = 0
            while sent < len(p):  # within the stream's window, as h2 grants it
                n = min(len(p) - sent, conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if n == 0:
                    pump(tls, conn, streams, lambda sid=sid: conn.local_flow_control_window(sid) > 0)
                    continue
                conn.send_data(sid, p[sent:sent + n])
                sent += n
                tls.sendall(conn.data_to_send())
            conn.end_stream(sid)  # half-close: the upstream reads EOF
            tls.sendall(conn.data_to_send())
        pump(tls, conn, streams, lambda: all(s["ended"] for s in streams.values()))
        for s, p in zip(streams.values(), payloads):
            assert s["data"] == hashlib.sha256(p).hexdigest().encode() + BACK
        evs = [e for e in node.events if e[0] == "conn"]
        assert len(evs) == 3
        identity, _target, forwarded, _tp, protocol, baggage = evs[0][5]
        assert (identity, forwarded, protocol, baggage) == \
            (CLIENT, ("10.9.9.9", 1234), "hbone", "k8s.namespace.name=front")
        st = node.stats()
        assert (st["hbone_connections_opened"], st["hbone_streams_opened"], st["server_handshakes"]) == (1, 3, 1)
        assert wait(lambda: sum(e[0] == "finished" for e in node.events) == 3)
        tls.close()
    finally:
        node.close()
        for ls, _ in sinks:
            ls.close()


def test_a_denied_stream_gets_401_with_the_policy_and_the_connection_goes_on(pki):  # noqa: F811
    node = Node(pki, lambda ev: ("refuse", ("denied", 401, "shop/deny-front")) if ev[0] == "conn" else None)
    node.core.set_pod_identities([("127.0.0.1", SID)])
    try:
        tls, conn = h2_client(node, pki)
        streams = {}
        for _ in range(2):
            streams[connect(conn, "127.0.0.1:8080")] = {"headers": None, "data": b"", "ended": False}
        # the authority names another address than the pod's: 400 from the core itself
        streams[connect(conn, "10.1.1.1:8080")] = {"headers": None, "data": b"", "ended": False}
        tls.sendall(conn.data_to_send())
        pump(tls, conn, streams, lambda: all(s["ended"] for s in streams.values()))
        got = [(s["headers"][":status"], s["headers"].get("x-hostmesh-policy")) for s in streams.values()]
        assert got == [("401", "shop/deny-front")] * 2 + [("400", None)]
        assert node.stats()["hbone_refused_authority_mismatch"] == 1
        tls.close()
    finally:
        node.close()


def test_core_to_core_streams_share_one_pooled_connection_and_a_denial_is_401(pki):  # noqa: F811
    """Two cores: captured connections on one ride HBONE streams to the other (tunnel
    with protocol="hbone"); four at once share one TLS connection; a denied one comes
    back as a failed attempt with the peer's 401 and its policy."""
    ls, port = sink_server(5)

    def decide(ev):
        if ev[0] != "conn":
            return None
        if ev[5][1][1] == 7:
            return ("refuse", ("denied", 401, "shop/deny"))
        return ("connect", (*ev[5][1],))

    dst = Node(pki, decide)
    dst.core.set_pod_identities([("127.0.0.1", SID)])
    src, out = source_core(pki)
    hs = [("forwarded", 'for="127.0.0.1:1"'), ("baggage", "k8s.namespace.name=front")]
    try:
        clients = []
        for _ in range(4):
            c = socket.create_connection(out.getsockname(), 5)
            ev = next_event(src, "conn")
            assert src.tunnel(ev[1], "127.0.0.1", dst.port, CLIENT, SID, "", f"127.0.0.1:{port}", hs,
                              protocol="hbone", bind=None)
            clients.append(c)
        assert wait(lambda: len(src.connections()) == 4)
        assert {c[2] for c in src.connections()} == {"hbone"}
        for c in clients:  # all first: the sink serves its connections one at a time
            c.sendall(b"hello")
        for c in clients:
            got = b""
            while d := c.recv(65536):
                got += d
            assert got == hashlib.sha256(b"hello").hexdigest().encode() + BACK
            c.close()
        assert (src.stats()["hbone_connections_opened"], dst.stats()["hbone_connections_opened"]) == (1, 1)
        assert dst.stats()["hbone_streams_opened"] == 4
        c = socket.create_connection(out.getsockname(), 5)
        ev = next_event(src, "conn")
        src.tunnel(ev[1], "127.0.0.1", dst.port, CLIENT, SID, "", "127.0.0.1:7", hs, protocol="hbone")
        failed = next_event(src, "failed")
        assert failed[1:] == (ev[1], 401, "tunnel_status_401", "shop/deny")
        src.refuse(ev[1], "denied")
        c.close()
        assert src.stats()["hbone_pooled"] == 1
    finally:
        src.shutdown()
        dst.close()
        out.close()
        ls.close()
