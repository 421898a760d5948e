"""PEM material into a stdlib ``ssl.SSLContext`` (the CA service's gRPC front).

The tunnel's TLS is the native core's (rustls, dataplane/src/tls.rs); nothing here
handshakes or decides. ``load_chain`` exists because ``SSLContext.load_cert_chain``
only reads files.
"""

from __future__ import annotations

import ssl
import tempfile


def load_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """``ctx.load_cert_chain`` from memory. It only reads files: a private temporary
    directory, removed at once."""
    with tempfile.TemporaryDirectory(prefix="hostmesh-svid-") as d:
        with open(f"{d}/c.pem", "wb") as f:
            f.write(chain_pem)
        with open(f"{d}/k.pem", "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(f"{d}/c.pem", f"{d}/k.pem")
