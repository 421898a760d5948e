"""The tunnel's CONNECT exchange (agent/proxy/connect.py) and the framing of reusable
streams (agent/proxy/frames.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.proxy import frames
from agent.proxy.connect import (
    MAX_HEADER_BYTES,
    ConnectError,
    ConnectRequestParser,
    ConnectResponseParser,
    build_connect,
    build_response,
    new_traceparent,
    traceparent_ids,
)

TP, TRACE = new_traceparent(bytes(range(24)))


def test_connect_round_trip_with_bytes_after_the_head():
    head = build_connect("10.0.1.5", 8080, "10.0.0.4", 51234, TP)
    assert head.startswith(b"CONNECT 10.0.1.5:8080 HTTP/1.1\r\n")
    req = ConnectRequestParser().feed(head + b"early bytes")
    assert (req.target_ip, req.target_port, req.forwarded_for) == ("10.0.1.5", 8080, ("10.0.0.4", 51234))
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


def test_a_malformed_response_is_an_error():
    with pytest.raises(ValueError):
        ConnectResponseParser().feed(b"HTTP/9 nonsense\r\n\r\n")


def test_an_informational_answer_before_the_final_one():
    resp = ConnectResponseParser().feed(b"HTTP/1.1 100 Continue\r\n\r\n" + build_response(403, [("x-hostmesh-policy", "a/b")]))
    assert resp.status == 403 and ("x-hostmesh-policy", "a/b") in resp.headers


def encode(payloads, end=True):
    return b"".join(frames.header(len(p)) + p for p in payloads if p) + (frames.END if end else b"")


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 50), max_size=30), st.binary(max_size=20))
def test_frames_decode_the_same_however_the_bytes_are_split(payloads, cuts, after):
    wire = encode(payloads) + after
    f, got, i = frames.Framing(), b"", 0
    for c in [*cuts, len(wire)]:
        if f.in_done:
            break
        got += b"".join(bytes(v) for v in f.decode(memoryview(wire[i:i + c])))
        i += c
    assert got == b"".join(payloads)
    assert f.in_done and f.carry + wire[i:] == after and not f.done  # out_done not yet
    f.out_done = True
    assert f.done


def test_frames_split_header_and_partial_payload_are_not_done():
    f = frames.Framing()
    assert [bytes(v) for v in f.decode(memoryview(frames.header(5) + b"ab"))] == [b"ab"]
    f.out_done = True
    assert not f.in_done and not f.done
    assert [bytes(v) for v in f.decode(memoryview(b"cde" + frames.END[:2]))] == [b"cde"]
    assert not f.in_done
    f.decode(memoryview(frames.END[2:] + b"CONNECT"))
    assert f.in_done and f.done and f.carry == b"CONNECT"


def test_an_oversized_frame_is_refused():
    with pytest.raises(frames.FrameError):
        frames.Framing().decode(memoryview(frames.header(frames.MAX_FRAME + 1)))
