"""The tunnel's request/response exchange (agent/proxy/connect.py), both forms: the
SPEC.md CONNECT and the reusable stream negotiated with ALPN hostmesh-streams/1."""

import h11
import pytest

from agent.proxy.connect import (
    MAX_HEADER_BYTES,
    ConnectError,
    ConnectRequestParser,
    ConnectResponseParser,
    build_connect,
    build_response,
    build_stream_request,
    client_connection,
    new_traceparent,
    traceparent_ids,
)

TP, TRACE = new_traceparent(bytes(range(24)))


def test_connect_round_trip_with_bytes_after_the_head():
    head = build_connect("10.0.1.5", 8080, "10.0.0.4", 51234, TP)
    assert head.startswith(b"CONNECT 10.0.1.5:8080 HTTP/1.1\r\n")
    req = ConnectRequestParser().feed(head + b"early bytes")
    assert (req.target_ip, req.target_port, req.forwarded_for, req.stream) == ("10.0.1.5", 8080, ("10.0.0.4", 51234), False)
    assert req.leftover == b"early bytes" and traceparent_ids(req.traceparent) == (TRACE, TP.split("-")[2])
    resp = ConnectResponseParser().feed(build_response(200) + b"first reply bytes")
    assert resp.status == 200 and resp.leftover == b"first reply bytes"


def test_ipv6_target_and_forwarded():
    req = ConnectRequestParser().feed(build_connect("fd00::5", 80, "fd00::4", 1000, TP))
    assert (req.target_ip, req.forwarded_for) == ("fd00::5", ("fd00::4", 1000))


@pytest.mark.parametrize("raw, status", [
    (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 400),
    (b"CONNECT example.com:80 HTTP/1.1\r\nhost: x\r\n\r\n", 400),
    (b"CONNECT 10.0.0.1:0 HTTP/1.1\r\nhost: x\r\n\r\n", 400),
    (b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nhost: x\r\nforwarded: by=me\r\n\r\n", 400),
    (b"garbage\r\n\r\n", 400),
    (b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nhost: x\r\nx: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n", 431),
])
def test_bad_requests_get_their_status(raw, status):
    out = ConnectRequestParser().feed(raw)
    assert isinstance(out, ConnectError) and out.status == status, out


def test_a_stream_is_refused_where_streams_were_not_negotiated():
    head = build_stream_request(client_connection(), "10.0.1.5", 80, "10.0.0.4", 1, TP)
    out = ConnectRequestParser(streams=False).feed(head)
    assert isinstance(out, ConnectError) and out.status == 400 and "not CONNECT" in out.message


def test_a_stream_without_a_chunked_body_is_refused():
    raw = b"POST /hostmesh/v1/stream HTTP/1.1\r\nhost: 10.0.1.5:80\r\ncontent-length: 3\r\n\r\nabc"
    out = ConnectRequestParser(streams=True).feed(raw)
    assert isinstance(out, ConnectError) and out.status == 400


def test_streams_one_after_another_on_one_connection():
    client, server = client_connection(), None
    for n in range(3):
        head = build_stream_request(client, "10.0.1.5", 8080 + n, "10.0.0.4", 40000 + n, TP)
        assert head.startswith(b"POST /hostmesh/v1/stream HTTP/1.1\r\n") and b"transfer-encoding: chunked" in head.lower()
        body = client.send(h11.Data(data=b"up%d" % n)) + client.send(h11.EndOfMessage())
        parser = ConnectRequestParser(server, streams=True)
        req = parser.feed(head + body)  # the body's bytes stay in the parser's h11 state
        server = parser.conn
        assert (req.stream, req.target_port, req.forwarded_for, req.leftover) == (True, 8080 + n, ("10.0.0.4", 40000 + n), b"")
        answer = build_response(200, [], server)
        assert b"transfer-encoding: chunked" in answer.lower()
        reply = answer + server.send(h11.Data(data=b"down")) + server.send(h11.EndOfMessage())
        resp = ConnectResponseParser(client).feed(reply)
        assert resp.status == 200 and resp.leftover == b""
        events = []
        while (ev := server.next_event()) is not h11.NEED_DATA and ev is not h11.PAUSED:
            events.append(ev)
        assert [type(e) for e in events] == [h11.Data, h11.EndOfMessage] and events[0].data == b"up%d" % n
        assert isinstance(client.next_event(), h11.Data) and isinstance(client.next_event(), h11.EndOfMessage)
        client.start_next_cycle()
        server.start_next_cycle()


def test_a_stream_error_answer_closes_the_connection():
    client = client_connection()
    parser = ConnectRequestParser(streams=True)
    parser.feed(build_stream_request(client, "10.0.1.5", 80, "10.0.0.4", 1, TP))
    answer = build_response(403, [("x-hostmesh-policy", "ns/deny-all")], parser.conn)
    assert b"content-length: 0" in answer.lower() and b"connection: close" in answer.lower()
    resp = ConnectResponseParser(client).feed(answer)
    assert resp.status == 403 and ("x-hostmesh-policy", "ns/deny-all") in resp.headers


def test_a_malformed_response_is_an_error():
    with pytest.raises(ValueError):
        ConnectResponseParser().feed(b"HTTP/9 nonsense\r\n\r\n")
