"""The node's workload identities: one X.509-SVID per (namespace, service account)
with a pod on this node, minted with the node intermediate (or read from an external
issuer's directory), renewed on schedule, dropped when the last pod leaves.

States: ``initializing`` (no certificate yet), ``available``, ``unavailable`` (renewal
failing and the old certificate expired). The old certificate is used until the new
one is in. TLS contexts are rebuilt when a certificate changes and handed out by
``client_context`` / ``server_context``.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography import x509

from agent.identity import ca, schedule, spiffe, tls

logger = logging.getLogger("hostmesh.identity")


@dataclass
class Svid:
    spiffe_id: str
    cert: x509.Certificate
    chain_pem: bytes
    key_pem: bytes
    client_ctx: ssl.SSLContext
    server_ctx: ssl.SSLContext

    @property
    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc


@dataclass
class _Entry:
    key: tuple[str, str]
    refs: int = 0
    svid: Svid | None = None
    renewal: schedule.Renewal = field(default_factory=lambda: schedule.Renewal(0.0))
    last_error: str | None = None
    renewals: int = 0


class IdentityManager:
    def __init__(self, cfg, node_name: str) -> None:
        self.cfg = cfg
        self.node = node_name
        self.td = cfg.trust_domain
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._sni: dict[str, tuple[str, str]] = {}
        self._wake = trio.Event()
        self.counters: dict[str, int] = {}
        self._load_ca()
        self._server_ctx = tls._base("server")
        self._server_ctx.load_verify_locations(cadata=self.bundle_pem.decode())
        self._server_ctx.sni_callback = self._pick

    def _load_ca(self) -> None:
        c = self.cfg
        self.bundle_pem = Path(c.trust_bundle).read_bytes() if c.trust_bundle else b""
        self.issuer = self.issuer_key = None
        if c.ca_cert and c.ca_key:
            self.issuer = ca.load_certs(Path(c.ca_cert).read_bytes())[0]
            self.issuer_key = ca.load_key(Path(c.ca_key).read_bytes())
            if not self.bundle_pem:
                self.bundle_pem = ca.cert_pem(self.issuer)

    # ---- registry-driven ------------------------------------------------------------
    def ensure(self, ns: str, sa: str) -> None:
        e = self._entries.setdefault((ns, sa), _Entry((ns, sa)))
        e.refs += 1
        self._sni[spiffe.sni_for(ns, sa, self.td)] = (ns, sa)
        if e.svid is None:
            self._renew(e, trio.current_time() if _in_trio() else 0.0)

    def release(self, ns: str, sa: str) -> None:
        e = self._entries.get((ns, sa))
        if e is None:
            return
        e.refs -= 1
        if e.refs <= 0:
            del self._entries[(ns, sa)]
            self._sni.pop(spiffe.sni_for(ns, sa, self.td), None)

    def get(self, ns: str, sa: str) -> Svid | None:
        e = self._entries.get((ns, sa))
        return e.svid if e else None

    # ---- TLS ------------------------------------------------------------------------
    def client_context(self, ns: str, sa: str) -> ssl.SSLContext:
        svid = self.get(ns, sa)
        if svid is None:
            raise tls.HandshakeError("no_certificate", f"no SVID for {ns}/{sa} on this node")
        return svid.client_ctx

    def server_context(self) -> ssl.SSLContext:
        return self._server_ctx

    def _pick(self, sslobj, server_name, _ctx) -> int | None:
        key = self._sni.get(server_name or "")
        svid = self.get(*key) if key else None
        if svid is None:
            self.count("sni_unknown")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = svid.server_ctx
        return None

    # ---- minting and renewal ----------------------------------------------------------
    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _mint(self, ns: str, sa: str) -> Svid:
        sid = spiffe.format_id(self.td, ns, sa)
        if self.cfg.cert_dir:
            d = Path(self.cfg.cert_dir) / ns / sa
            chain_pem, key_pem = (d / "cert.pem").read_bytes(), (d / "key.pem").read_bytes()
            cert = ca.load_certs(chain_pem)[0]
        else:
            if self.issuer is None:
                raise RuntimeError("no CA configured (identity.ca_cert/ca_key) and no cert_dir")
            now = dt.datetime.now(dt.UTC)
            cert, key = ca.make_svid(sid, self.issuer, self.issuer_key, now, dt.timedelta(seconds=self.cfg.ttl_s))
            chain_pem, key_pem = ca.cert_pem(cert, self.issuer), ca.key_pem(key)
        return Svid(sid, cert, chain_pem, key_pem,
                    tls.make_context("client", chain_pem, key_pem, self.bundle_pem),
                    tls.make_context("server", chain_pem, key_pem, self.bundle_pem))

    def _renew(self, e: _Entry, now: float) -> None:
        try:
            svid = self._mint(*e.key)
        except Exception as err:  # noqa: BLE001 - keep the old certificate, retry with backoff
            e.last_error = str(err)
            e.renewal.on_failed(now)
            self.count("renewal_failures")
            logger.warning("certificate renewal failed", extra={"identity": f"{e.key[0]}/{e.key[1]}", "error": str(err)})
            return
        e.svid, e.last_error = svid, None
        e.renewals += 1
        self.count("renewals")
        # half of the lifetime from issue, not from not_before (backdated for clock skew)
        wall = dt.datetime.now(dt.UTC).timestamp()
        at = schedule.renew_at(wall, svid.not_after.timestamp(), self.cfg.renew_fraction, self.cfg.renew_jitter,
                               random.random())
        e.renewal.deadline = now + max(1.0, at - wall)
        e.renewal.failures = 0
        self._wake.set()

    def force_renew_all(self) -> None:
        for e in self._entries.values():
            e.renewal.deadline = 0.0
        self._wake.set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = trio.current_time()
            for e in list(self._entries.values()):
                if e.svid is None or e.renewal.due(now):
                    self._renew(e, now)
            nxt = min((e.renewal.next_deadline() for e in self._entries.values()), default=now + 60)
            self._wake = trio.Event()
            with trio.move_on_at(max(nxt, now + 0.05)):
                await self._wake.wait()

    def status(self) -> list[dict]:
        out = []
        now = dt.datetime.now(dt.UTC)
        for (ns, sa), e in sorted(self._entries.items()):
            s = e.svid
            state = "initializing" if s is None else ("available" if s.not_after > now else "unavailable")
            out.append({
                "identity": spiffe.format_id(self.td, ns, sa), "state": state, "pods": e.refs,
                "serial": format(s.cert.serial_number, "x") if s else None,
                "not_before": s.not_before.isoformat() if s else None,
                "not_after": s.not_after.isoformat() if s else None,
                "issuer": s.cert.issuer.rfc4514_string() if s else None,
                "expires_in_s": round((s.not_after - now).total_seconds()) if s else None,
                "renewals": e.renewals, "last_error": e.last_error,
            })
        return out


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
        return True
    except RuntimeError:
        return False
