"""TLS for the tunnel: contexts per identity, and handshakes driven from trio.

TLS 1.3 only, mutual. The server presents the destination workload's SVID, chosen
from the SNI before the handshake completes; the client presents the source
workload's SVID and checks the server is exactly the identity it expected. OpenSSL
verifies chains against the trust bundle during the handshake (its verify codes map
to named reasons); the SPIFFE leaf rules follow in ``validate.validate_leaf``.
Handshakes run on NON-BLOCKING ``ssl.SSLSocket`` objects (not trio's SSLStream): the
socket layer later reads and writes these same objects from its epoll thread.
"""

from __future__ import annotations

import socket
import ssl
import tempfile

import trio
from cryptography import x509

from agent.identity import spiffe
from agent.identity.validate import PeerVerdict, reason_from_tls_error, validate_leaf


class HandshakeError(ValueError):
    """A handshake that failed, with a named reason (``validate.REASONS``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _base(purpose) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose == "server" else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    if purpose != "server":
        ctx.check_hostname = False  # SPIFFE: identity is the URI SAN, checked after the handshake
    return ctx


def make_context(purpose: str, chain_pem: bytes, key_pem: bytes, bundle_pem: bytes,
                 alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A context presenting ``chain_pem`` (leaf + intermediate) and trusting ``bundle_pem``;
    ``alpn``: protocols offered (client) or accepted (server), e.g. reusable streams."""
    ctx = _base(purpose)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    ctx.load_verify_locations(cadata=bundle_pem.decode())
    load_chain(ctx, chain_pem, key_pem)
    return ctx


def load_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """``ctx.load_cert_chain`` from memory. It only reads files: a private temporary
    directory, removed at once."""
    with tempfile.TemporaryDirectory(prefix="hostmesh-svid-") as d:
        with open(f"{d}/c.pem", "wb") as f:
            f.write(chain_pem)
        with open(f"{d}/k.pem", "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(f"{d}/c.pem", f"{d}/k.pem")


def peer_leaf(sock: ssl.SSLSocket) -> x509.Certificate | None:
    der = sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


async def _drive(tls: ssl.SSLSocket, timeout: float) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(tls)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(tls)


def _classify(e: BaseException) -> HandshakeError:
    if isinstance(e, trio.TooSlowError):
        return HandshakeError("handshake_timeout")
    if isinstance(e, ssl.SSLCertVerificationError):
        return HandshakeError(reason_from_tls_error(e.verify_code, str(e)), e.verify_message or str(e))
    if isinstance(e, ssl.SSLError):
        return HandshakeError(reason_from_tls_error(None, f"{e.reason} {e}"), str(e.reason or e))
    return HandshakeError("handshake_failed", str(e))


async def tls_handshake_client(sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str, timeout: float,
                               expected_id: str | None = None, trust_domain: str | None = None,
                               session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    """Client handshake; raises HandshakeError (a ValueError) with a named reason."""
    sock.setblocking(False)
    tls = ctx.wrap_socket(sock, server_side=False, server_hostname=server_hostname,
                          do_handshake_on_connect=False, session=session)
    try:
        await _drive(tls, timeout)
    except (ssl.SSLError, OSError, trio.TooSlowError) as e:
        tls.close()
        raise _classify(e) from None
    if expected_id is not None or trust_domain is not None:
        td = trust_domain or spiffe.parse_id(expected_id)[0]
        v = validate_leaf(peer_leaf(tls), td, expected_id)
        if not v.ok:
            tls.close()
            raise HandshakeError(v.reason, "server identity")
    return tls


async def tls_handshake_server(sock: socket.socket, ctx: ssl.SSLContext, timeout: float,
                               trust_domain: str = "cluster.local") -> tuple[ssl.SSLSocket, PeerVerdict]:
    """Server handshake; a rejected peer yields a verdict with a named reason (and the
    socket closed) rather than an exception, so callers count and log it."""
    sock.setblocking(False)
    tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        await _drive(tls, timeout)
    except (ssl.SSLError, OSError, trio.TooSlowError) as e:
        err = _classify(e)
        try:
            tls.close()
        except OSError:
            pass
        return tls, PeerVerdict(False, None, err.reason)
    return tls, validate_leaf(peer_leaf(tls), trust_domain)
