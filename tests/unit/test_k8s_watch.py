"""The watch reader on the event loop (agent.k8s.watch, h11 over trio): lines exactly as
the body carried them however the reads cut it, bounded; the request a real API server
gets (target, bearer token re-read, TLS verified against the configured CA); an answer
other than 200 as its status and message; a connection cut mid-response raises."""

from __future__ import annotations

import datetime
import json
import ssl

import h11
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from agent.identity.ca import cert_pem, key_pem, make_root, make_server_cert
from agent.k8s.listing import LineSplitter, watch_lines
from agent.k8s.watch import WatchStatus, open_watch, watch_path

# ---- lines --------------------------------------------------------------------------------


@given(lines=st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and b.strip()), max_size=8),
       cuts=st.lists(st.integers(0, 200), max_size=10))
def test_lines_are_the_body_s_lines_however_the_reads_cut_it(lines, cuts):
    body = b"".join(line + b"\n" for line in lines)
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    split, got = LineSplitter(), []
    for a, b in zip(points, points[1:]):
        got += split.feed(body[a:b])
    assert got == lines
    assert [x for batch in watch_lines([body[a:b] for a, b in zip(points, points[1:])]) for x in batch] == lines


def test_an_unfinished_line_over_the_limit_raises():
    split = LineSplitter(limit=10)
    assert split.feed(b'{"a":') == []
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        split.feed(b"1234567")
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        LineSplitter(limit=10).feed(b"{}\n" + b"x" * 11)


def test_watch_paths():
    assert watch_path("pods", None, "v1", {"watch": "1", "resourceVersion": "7"}) == "/api/v1/pods?watch=1&resourceVersion=7"
    assert watch_path("endpointslices", None, "v1", {}) == "/apis/discovery.k8s.io/v1/endpointslices?"
    assert (watch_path("authorizationpolicies", "security.istio.io", "v1beta1", {"watch": "1"})
            == "/apis/security.istio.io/v1beta1/authorizationpolicies?watch=1")


# ---- against a server -----------------------------------------------------------------------


class Conf:
    """The attributes of ``kubernetes.client.Configuration`` the reader uses."""

    def __init__(self, host: str, ca: str | None = None, tokens=("t1",)) -> None:
        self.host, self.ssl_ca_cert, self.verify_ssl = host, ca, True
        self.cert_file = self.key_file = self.tls_server_name = None
        self.tokens = list(tokens)

    def get_api_key_with_prefix(self, name: str) -> str:
        assert name == "authorization"
        return "Bearer " + self.tokens.pop(0)  # the hook re-reads the file: a new token each time


def _cert(tmp_path):
    """A root (the CA file) and the server certificate it signed for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    root, root_key = make_root("cluster.local", now)
    cert, key = make_server_cert(root, root_key, ["127.0.0.1"], now)
    (tmp_path / "ca.pem").write_bytes(cert_pem(root))
    (tmp_path / "cert.pem").write_bytes(cert_pem(cert, root))
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    return str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")


async def _serve(answer, seen: list, tls: ssl.SSLContext | None, task_status=trio.TASK_STATUS_IGNORED):
    """One connection: read the request with h11, record it, send ``answer(conn)``'s bytes."""

    async def handle(stream):
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_side=True)
        conn = h11.Connection(h11.SERVER)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(ev, h11.Request):
                seen.append((ev.target.decode(), dict((k.decode(), v.decode()) for k, v in ev.headers)))
            if isinstance(ev, h11.EndOfMessage):
                break
        for data in answer(conn):
            await stream.send_all(data)
            await trio.sleep(0.01)  # separate reads on the other side
        await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def _events(conn, lines: list[bytes], end=True):
    yield conn.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]))
    body = b"".join(line + b"\n" for line in lines)
    yield conn.send(h11.Data(data=body[:7]))  # a line cut across chunks
    yield conn.send(h11.Data(data=body[7:]))
    if end:
        yield conn.send(h11.EndOfMessage())


def _watch(answer, tls_dir=None, prefix=""):
    """(requests the server saw, the batches read, what the reader raised or None)."""
    seen, got, err = [], [], []

    async def main():
        server_ctx, ca = None, None
        if tls_dir is not None:
            ca, cert, key = _cert(tls_dir)
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(cert, key)
        async with trio.open_nursery() as n:
            port = await n.start(_serve, answer, seen, server_ctx)
            conf = Conf(f"{'https' if tls_dir else 'http'}://127.0.0.1:{port}{prefix}", ca)
            try:
                w = await open_watch(conf, "/api/v1/pods?watch=1", 5)
                try:
                    while (batch := await w.next_lines()) is not None:
                        got.append(batch)
                finally:
                    await w.aclose()
            except Exception as e:  # noqa: BLE001 - the test judges it
                err.append(e)
            finally:
                n.cancel_scope.cancel()

    trio.run(main)
    return seen, got, (err[0] if err else None)


EVENTS = [json.dumps({"type": "MODIFIED", "object": {"metadata": {"name": f"p{i}"}}}).encode() for i in range(3)]


@pytest.mark.parametrize("tls", [False, True])
def test_a_watch_reads_every_line_sends_the_token_and_verifies_the_server(tls, tmp_path):
    seen, got, err = _watch(lambda conn: _events(conn, EVENTS), tmp_path if tls else None)
    assert err is None
    assert [line for batch in got for line in batch] == EVENTS
    ((target, headers),) = seen
    assert target == "/api/v1/pods?watch=1"
    assert headers["authorization"] == "Bearer t1" and headers["accept"] == "application/json"


def test_a_server_url_with_a_path_prefixes_the_request():
    seen, _, err = _watch(lambda conn: _events(conn, EVENTS), prefix="/k8s/")
    assert err is None and seen[0][0] == "/k8s/api/v1/pods?watch=1"


def test_a_server_the_ca_does_not_vouch_for_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    ca, _, _ = _cert(other)  # a CA that did not sign the server's certificate

    err = []

    async def main():
        _, cert, key = _cert(tmp_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        async with trio.open_nursery() as n:
            port = await n.start(_serve, lambda conn: _events(conn, EVENTS), [], ctx)
            try:
                await open_watch(Conf(f"https://127.0.0.1:{port}", ca), "/api/v1/pods?watch=1", 5)
            except trio.BrokenResourceError as e:
                err.append(e)
            finally:
                n.cancel_scope.cancel()

    trio.run(main)
    assert isinstance(err[0].__cause__, ssl.SSLCertVerificationError)


def test_an_answer_other_than_200_is_its_status_and_message():
    def gone(conn):
        body = json.dumps({"kind": "Status", "code": 410, "message": "too old resource version: 5"}).encode()
        yield conn.send(h11.Response(status_code=410, headers=[("Content-Length", str(len(body)))]))
        yield conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())

    _, _, err = _watch(gone)
    assert isinstance(err, WatchStatus) and err.status == 410 and err.reason == "too old resource version: 5"
    assert str(err) == "(410) too old resource version: 5"


def test_a_connection_cut_mid_response_raises_after_the_complete_lines():
    def cut(conn):
        yield from _events(conn, EVENTS, end=False)
        yield conn.send(h11.Data(data=b'{"type":"MOD'))  # then the connection closes

    _, got, err = _watch(cut)
    assert [line for batch in got for line in batch] == EVENTS  # the cut-off rest is no event
    assert isinstance(err, ConnectionError) and str(err) == "watch: the connection closed mid-response"


def test_a_malformed_answer_is_refused():
    def garbage(conn):
        yield b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"

    _, got, err = _watch(garbage)
    assert got == [] and isinstance(err, ConnectionError) and str(err).startswith("watch: malformed response")
