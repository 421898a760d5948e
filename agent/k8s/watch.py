"""One Kubernetes watch request on the event loop: an HTTP/1.1 ``GET`` (made by h11,
the answer parsed by httptools) over a trio stream (TLS for ``https``), its body cut
into event lines.

Why not the API client's thread, as the lists use: a watch event is small and rare,
and reading it in a thread costs two wake-ups (the thread's, then the loop's through
the hand-over) and urllib3's chunk reader: measured at 5,000 pods, the reader thread
took ~0.28 ms of an isolated event's ~0.7 (docs/kubernetes.md). Here one wake-up of the
loop reads, parses and applies it. Lists (pages of megabytes) stay in threads.

It decides nothing about the events: it connects with the API client's configuration
(host, CA, client certificate, the bearer token re-read per request), raises
``WatchStatus`` with the HTTP status for an answer other than 200 (the caller tells
410 from the rest), and gives, per read, the complete lines that read finished. It
must never block the loop (every wait is a trio wait, bounded by the timeouts given)
nor hold more than ``LINE_MAX`` bytes of one unfinished line.
"""

from __future__ import annotations

import json
import ssl
from urllib.parse import urlencode, urlsplit

import h11
import httptools
import trio

from agent.k8s.listing import LineSplitter

READ_SIZE = 256 * 1024  # bytes per read: a burst of events arrives in few reads
LINE_MAX = 8 * 1024 * 1024  # one event's JSON; etcd caps an object at 1.5 MiB
ERROR_BODY_MAX = 64 * 1024  # of a non-200 answer, for its message
HEAD_MAX = 64 * 1024  # the answer's status line and headers (the API server's are a few hundred bytes)
CORE = {"pods": "/api/v1/pods", "nodes": "/api/v1/nodes", "services": "/api/v1/services",
        "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices"}


class WatchStatus(Exception):
    """The API server answered the watch with ``status`` (not 200)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason = status, reason


def watch_path(kind: str, group: str | None, version: str, params: dict) -> str:
    """The request target of a watch of ``kind`` (a core kind, or an Istio kind of
    ``group``/``version``) with the query ``params``."""
    base = CORE.get(kind) or f"/apis/{group}/{version}/{kind}"
    return f"{base}?{urlencode(params)}"


def _tls_context(conf) -> ssl.SSLContext:
    """What the API client would verify with: its CA file (else certifi's, as urllib3),
    its client certificate if any, or no verification when it is told so."""
    if not conf.verify_ssl:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        cafile = conf.ssl_ca_cert
        if cafile is None:
            import certifi

            cafile = certifi.where()
        ctx = ssl.create_default_context(cafile=cafile)
    if conf.cert_file:
        ctx.load_cert_chain(conf.cert_file, conf.key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _Response:
    """httptools' callbacks for one response: the head's status and reason, the body's
    pieces as they are parsed, whether it is complete."""

    def __init__(self) -> None:
        self.reason, self.head, self.done = b"", False, False
        self.body: list[bytes] = []

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_headers_complete(self) -> None:
        self.head = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class Watch:
    """One watch response, opened by ``open_watch``: ``next_lines()`` until None. The
    caller bounds the whole response with one deadline (the server was asked to end it
    by ``timeoutSeconds``, so a connection still open well after is dead): no cancel
    scope per read. The response is parsed by httptools (llhttp, the parser of Node.js):
    measured, h11's two ``next_event`` calls per event were ~0.07 ms of an isolated
    event's CPU here, llhttp's is a C call per read."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.response = _Response()
        self.parser = httptools.HttpResponseParser(self.response)
        self.lines = LineSplitter(LINE_MAX)
        self.fed = 0  # bytes fed before the head completed (bounded: HEAD_MAX)

    async def _read(self) -> None:
        """One read into the parser. A close before the response is complete raises."""
        data = await self.stream.receive_some(READ_SIZE)
        if not data:
            raise ConnectionError("watch: the connection closed mid-response")
        if not self.response.head:
            self.fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            raise ConnectionError(f"watch: malformed response: {e}") from None
        if not self.response.head and self.fed > HEAD_MAX:
            raise ConnectionError(f"watch: a response head over {HEAD_MAX} bytes")

    async def head(self) -> int:
        while not self.response.head:
            await self._read()
        return self.parser.get_status_code()

    async def next_lines(self) -> list[bytes] | None:
        """The complete lines the next read(s) finished; None once the server ended the
        response. A cut connection raises (what was cut off is no event)."""
        r = self.response
        while True:
            if r.body:
                pieces, r.body = r.body, []
                out = [line for piece in pieces for line in self.lines.feed(piece)]
                if out:
                    return out
            if r.done:
                return None
            await self._read()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def open_watch(conf, target: str, timeout: float) -> Watch:
    """Connect, send the request (made by h11) and read the answer's head within
    ``timeout``; a ``Watch`` for a 200, else ``WatchStatus``."""
    u = urlsplit(conf.host)
    https = u.scheme == "https"
    port = u.port or (443 if https else 80)
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(u.hostname, port)
        try:
            if https:
                stream = trio.SSLStream(stream, _tls_context(conf), server_hostname=conf.tls_server_name or u.hostname,
                                        https_compatible=True)
                await stream.do_handshake()
            conn = h11.Connection(h11.CLIENT)
            headers = [("Host", u.netloc), ("Accept", "application/json"), ("User-Agent", "hostmesh")]
            token = conf.get_api_key_with_prefix("authorization")  # re-reads the rotated token
            if token:
                headers.append(("Authorization", token))
            # a server URL with a path (behind a proxy) prefixes every request, as in the client
            await stream.send_all(conn.send(h11.Request(method="GET", target=u.path.rstrip("/") + target,
                                                        headers=headers))
                                  + conn.send(h11.EndOfMessage()))
            w = Watch(stream)
            status = await w.head()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    if status == 200:
        return w
    try:
        with trio.move_on_after(timeout):
            while not w.response.done and sum(map(len, w.response.body)) < ERROR_BODY_MAX:
                await w._read()
    except (ConnectionError, OSError, trio.BrokenResourceError):
        pass
    finally:
        await w.aclose()
    raise WatchStatus(status, _message(b"".join(w.response.body)) or w.response.reason.decode("latin-1"))


def _message(body: bytes) -> str:
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    return str(status.get("message") or "") if isinstance(status, dict) else ""
