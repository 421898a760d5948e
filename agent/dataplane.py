"""The one door to the native data plane (``agent._dataplane``, the Rust crate in
``dataplane/``): nothing else imports the extension (STYLE.md: one module per foreign
library).

What crosses: ``Core`` (the tokio threads that accept, terminate tunnel TLS and move
bytes; Python answers one command per connection, see agent/proxy/native.py) and
``verify`` (the SPIFFE X.509-SVID checks the core applies in every handshake, with the
reasons of docs/identity.md, for Python callers and the go-spiffe vector table) and
``grpc_unary`` (one unary gRPC call over the core's h2 and rustls: the CA client's
transport, so the agent loads no gRPC library). This module decides nothing; it must
never block on the core.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

try:
    from agent import _dataplane as _dp
except ImportError as e:  # an install without the compiled extension (a bare source tree)
    _dp = None
    _IMPORT_ERROR: str | None = str(e)
else:
    _IMPORT_ERROR = None

__all__ = ["Core", "Verdict", "available", "grpc_unary", "verify"]


def available() -> tuple[bool, str]:
    """Whether the extension is importable, and why not."""
    return (_dp is not None, _IMPORT_ERROR or "")


def Core(*, threads: int = 1, connect_timeout_s: float = 5.0, handshake_timeout_s: float = 5.0,
         idle_timeout_s: float = 3600.0, max_connections: int = 100_000):
    """A running core (its threads start at once); ``shutdown()`` stops it."""
    if _dp is None:
        raise RuntimeError(f"the native data plane is not built (agent._dataplane: {_IMPORT_ERROR}); "
                           "run `pip install -e .` with cargo installed (docs/dataplane.md)")
    return _dp.Core(threads, connect_timeout_s, handshake_timeout_s, idle_timeout_s, max_connections)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    spiffe_id: str | None = None
    reason: str = ""


def verify(chain_pem: bytes, bundle_pem: bytes, trust_domain: str, now: dt.datetime,
           expected_id: str | None = None, role: str = "client") -> Verdict:
    """The core's SPIFFE checks on a PEM chain (leaf first) against a PEM bundle.
    ``role``: whose chain it is, "client" or "server" (the key usage it must allow)."""
    if _dp is None:
        raise RuntimeError(f"the native data plane is not built: {_IMPORT_ERROR}")
    ok, sid, reason = _dp.verify(chain_pem, bundle_pem, trust_domain, now.timestamp(), expected_id, role)
    return Verdict(ok, sid, reason)


def grpc_unary(address: str, roots_pem: bytes, path: str, message: bytes, *, metadata: list[tuple[str, str]],
               timeout_s: float, server_name: str | None = None, cert_pem: bytes | None = None,
               key_pem: bytes | None = None) -> tuple[int, str, bytes]:
    """One unary gRPC call over TLS (the core's grpc.rs): (status code, message, response
    message bytes). Blocking, with the GIL released: call it from a worker thread
    (``trio.to_thread``), never from the trio thread."""
    if _dp is None:
        raise RuntimeError(f"the native data plane is not built: {_IMPORT_ERROR}")
    return _dp.grpc_unary(address, roots_pem, path, message, metadata, timeout_s, server_name, cert_pem, key_pem)
