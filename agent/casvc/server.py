"""The CA service's gRPC shell: ``IstioCertificateService/CreateCertificate`` behind the
TLS front (``front``: node client certificates asked for, chains checked by OpenSSL,
then by ``decide``; or, in Kubernetes mode, bearer tokens through TokenReview and the
view from pods); an audit
line per issued and per refused certificate; counters; reload on SIGHUP and when the
configuration or a file it names changes. Decides nothing itself (``decide`` does) and
never holds a lock while signing.

Threads, not trio: grpcio's server is a thread pool (the TLS front a thread per
connection); ``max_concurrent`` bounds calls in flight (more get RESOURCE_EXHAUSTED at
once), ``signers`` bounds signatures, ``max_connections`` the front's connections.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from cryptography import x509

from agent.casvc import decide, protocol
from agent.casvc.authority import Authority, load_authority
from agent.config import ConfigError

logger = logging.getLogger("hostmesh.casvc")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Audit:
    """One JSON line per issued or refused certificate (stderr or an append-only file)."""

    def __init__(self, target: str) -> None:
        self._f = sys.stderr if target == "stderr" else open(target, "a", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, rec: dict) -> None:
        line = json.dumps({"type": "ca_audit", "time": _now().isoformat(timespec="milliseconds"), **rec})
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()


class CaService:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.authority: Authority = load_authority(config_path, _now())
        self.audit = Audit(self.authority.settings.audit_log)
        self._signers = threading.BoundedSemaphore(self.authority.settings.signers)
        self.counters: dict[str, int] = {}
        self._clock = threading.Lock()
        self.front = None  # set by build_server
        self._stamp = self._stamps()
        self.kube = None
        k = self.authority.settings.kubernetes
        if k is not None:
            from agent.casvc.kube import KubeError, KubeSource

            try:
                self.kube = KubeSource(k, self.authority.settings.trust_domain)
            except KubeError as e:
                raise ConfigError(f"{config_path}: kubernetes: {e}") from None
            self.kube.start()

    def count(self, name: str) -> None:
        with self._clock:
            self.counters[name] = self.counters.get(name, 0) + 1

    # ---- the call ------------------------------------------------------------------
    def create_certificate(self, raw: bytes, context: grpc.ServicerContext):
        a = self.authority  # one consistent snapshot for the whole call
        now = _now()
        peer = context.peer()
        caller = self._caller(context, a, now)
        try:
            msg = protocol.parse_request(raw)
            req = decide.Request(msg.csr, msg.validity_duration,
                                 protocol.metadata_string(msg, protocol.IMPERSONATED_IDENTITY))
        except Exception as e:  # noqa: BLE001 - DecodeError and friends: the bytes are not the message
            d = caller if isinstance(caller, decide.Decision) else decide.refuse(
                "malformed_request", f"not an IstioCertificateRequest: {e}", caller.node)
            return self._refuse(context, d, peer, caller)
        d = decide.authorize(req, caller, self._view(a))
        if not d.ok:
            return self._refuse(context, d, peer, caller)
        with self._signers:
            leaf, chain = a.sign(d, now)
        self.count("issued")
        self.audit.write({"verdict": "issued", "node": d.node, "via": _via(caller), "peer": peer,
                          "identity": d.spiffe_id, "serial": format(leaf.serial_number, "x"),
                          "not_after": leaf.not_valid_after_utc.isoformat()})
        return protocol.Response(cert_chain=chain)

    def _view(self, a: Authority) -> decide.View:
        if self.kube is None:
            return a.view
        on = dict(self.kube.current()[0])
        for node, ids in a.view.identities_on.items():  # static entries add to the pods
            on[node] = on.get(node, frozenset()) | ids
        return decide.View(a.view.trust_domain, on, a.view.max_ttl_s, a.view.default_ttl_s)

    def _caller(self, context, a: Authority, now: dt.datetime) -> decide.Caller | decide.Decision:
        through, der = self.front.peer_certificate(context.peer()) if self.front else (False, None)
        if not through:  # someone on this host reached the loopback hand-over port directly
            return decide.refuse("no_credential", "not through the CA service's TLS listener")
        if der is None and self.kube is not None:
            return self._token_caller(context, a)
        chain = [x509.load_der_x509_certificate(der)] if der else []
        return decide.authenticate_certificate(chain, a.node_roots, a.view.identities_on.keys(), now)

    def refused_in_handshake(self, reason: str, message: str, peer: str) -> None:
        """The TLS front's report of a certificate OpenSSL refused (expired, foreign)."""
        self.count(f"refused_{reason}")
        self.audit.write({"verdict": "refused", "node": None, "via": "certificate", "peer": peer,
                          "reason": reason, "code": "UNAUTHENTICATED", "message": message})

    def _token_caller(self, context, a: Authority) -> decide.Caller | decide.Decision:
        from agent.casvc.kube import KubeError

        md = {k.lower(): v for k, v in context.invocation_metadata()}
        scheme, _, token = (md.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return decide.refuse("no_credential", "no bearer token in the authorization metadata")
        try:
            review = self.kube.review(token.strip())
        except KubeError as e:
            return decide.refuse("token_review_unavailable", str(e))
        trusted = frozenset(a.settings.kubernetes.trusted_node_accounts)
        return decide.authenticate_token(review, trusted, self.kube.current()[1])

    def _refuse(self, context, d: decide.Decision, peer: str, caller):
        self.count(f"refused_{d.reason}")
        self.audit.write({"verdict": "refused", "node": d.node, "via": _via(caller), "peer": peer,
                          "reason": d.reason, "code": d.code, "message": d.message})
        context.abort(getattr(grpc.StatusCode, d.code), f"{d.reason}: {d.message}")

    # ---- reload --------------------------------------------------------------------
    def _stamps(self) -> tuple:
        out = []
        for f in [self.config_path, *self.authority.settings.files()]:
            try:
                st = os.stat(f)
                out.append((f, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((f, None))
        return tuple(out)

    def reload(self, why: str) -> bool:
        """All or nothing: a file that does not load keeps what is in force (logged, counted)."""
        try:
            new = load_authority(self.config_path, _now())
        except ConfigError as e:
            self.count("reload_failures")
            logger.error("CA configuration not reloaded (%s): %s", why, e)
            self._stamp = self._stamps()
            return False
        if self.front is not None and new.node_roots_pem != self.authority.node_roots_pem:
            self.front.ctx = self._tls_context(new)
        self.authority = new
        self._stamp = self._stamps()
        self.count("reloads")
        logger.info("CA configuration reloaded", extra={"why": why, "nodes": len(new.view.identities_on)})
        return True

    def changed_on_disk(self) -> bool:
        return self._stamps() != self._stamp

    @staticmethod
    def _tls_context(a: Authority):
        from agent.casvc.front import server_context

        return server_context(a.server_cert_pem, a.server_key_pem, a.node_roots_pem)

    def metrics_text(self) -> str:
        with self._clock:
            items = sorted({**self.counters, **(self.front.counters if self.front else {})}.items())
        lines = ["# HELP hostmesh_ca_events_total CA service events: issued, refused_<reason>, reloads.",
                 "# TYPE hostmesh_ca_events_total counter"]
        lines += [f'hostmesh_ca_events_total{{event="{k}"}} {v}' for k, v in items]
        return "\n".join(lines) + "\n"


def _via(caller) -> str | None:
    return caller.via if isinstance(caller, decide.Caller) else None


class _Server:
    """The gRPC server with its TLS front, started and stopped together."""

    def __init__(self, grpc_server: grpc.Server, front) -> None:
        self.grpc, self.front = grpc_server, front

    def start(self) -> None:
        self.grpc.start()
        self.front.start()

    def stop(self, grace):
        self.front.close()
        return self.grpc.stop(grace)


def build_server(svc: CaService) -> tuple[_Server, int]:
    from agent.casvc.front import TlsFront

    s = svc.authority.settings
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=min(32, s.max_concurrent)),
                         maximum_concurrent_rpcs=s.max_concurrent)
    handler = grpc.unary_unary_rpc_method_handler(svc.create_certificate, request_deserializer=None,
                                                  response_serializer=protocol.serialize_response)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        protocol.SERVICE, {"CreateCertificate": handler}),))
    # plaintext gRPC on loopback only, behind the TLS front (which tells calls apart by
    # the front's own source port: front.peer_certificate)
    upstream = server.add_insecure_port("127.0.0.1:0")
    host, _, port = s.listen.rpartition(":")
    try:
        front = TlsFront(host, int(port), svc._tls_context(svc.authority), upstream, svc.refused_in_handshake,
                         s.max_connections)
    except OSError as e:
        raise ConfigError(f"listen: cannot bind {s.listen}: {e.strerror}") from None
    svc.front = front
    return _Server(server, front), front.port


def _serve_metrics(svc: CaService, hostport: str) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = svc.metrics_text().encode() if self.path == "/metrics" else b"not found\n"
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    host, _, port = hostport.rpartition(":")
    httpd = ThreadingHTTPServer((host, int(port)), H)
    threading.Thread(target=httpd.serve_forever, daemon=True, name="ca-metrics").start()
    return httpd


@contextlib.contextmanager
def _blocked(sigs: set):
    """``sigs`` blocked in this thread while threads are started (they inherit the mask)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)


def serve(config_path: str) -> int:
    """`hostmesh ca serve`: until SIGTERM/SIGINT; SIGHUP or a changed file reloads."""
    stop, hup, wake = threading.Event(), threading.Event(), threading.Event()

    def on(flag: threading.Event):
        def handler(*_):
            flag.set()
            wake.set()
        return handler

    # Python runs handlers in this thread, and a signal the kernel hands to another thread
    # would not wake it from wake.wait(): every thread started below (grpcio's, the TLS
    # front's, one per caller connection) inherits these signals blocked, so they come here.
    sigs = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    for sig in sigs:
        signal.signal(sig, on(hup if sig == signal.SIGHUP else stop))
    with _blocked(sigs):
        svc = CaService(config_path)
    if svc.kube is not None and not svc.kube.synced.wait(30):
        logger.warning("no pod list from the Kubernetes API yet: every request is refused until one arrives")
    with _blocked(sigs):
        server, port = build_server(svc)
        server.start()
        if svc.authority.settings.metrics_listen:
            _serve_metrics(svc, svc.authority.settings.metrics_listen)
    logger.info("CA service listening", extra={"listen": svc.authority.settings.listen, "port": port,
                                               "nodes": len(svc.authority.view.identities_on)})
    while not stop.is_set():
        wake.wait(svc.authority.settings.watch_interval_s)
        wake.clear()
        if stop.is_set():
            break
        if hup.is_set():
            hup.clear()
            svc.reload("SIGHUP")
        elif svc.changed_on_disk():
            time.sleep(0.05)  # let a writer finish the file
            svc.reload("file changed")
    server.stop(grace=2).wait()
    if svc.kube is not None:
        svc.kube.stop()
    logger.info("CA service stopped")
    return 0
