"""The node's workload identities: one X.509-SVID per (namespace, service account)
with a pod on this node — signed by a CA service for a key made here (``ca_address``:
the node holds no signing key), or minted with the node intermediate (single-host
installs), or read from an external issuer's directory — renewed on schedule, dropped
when the last pod leaves.

With a CA service, calls run in worker threads (at most ``CA_CALLS_IN_FLIGHT`` at once),
never on the trio thread; while the CA is unreachable each identity retries with
jittered backoff (1 s doubling to 150 s, +-20 %) and keeps its certificate until it
expires.

States: ``initializing`` (no certificate yet), ``available``, ``unavailable`` (renewal
failing and the old certificate expired). The old certificate is used until the new
one is in. The native core terminates the tunnel TLS: agent/proxy/native.py pushes each
SVID's chain and key, and the bundle, into it when they change.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.identity import ca, pem, schedule, spiffe, validate

logger = logging.getLogger("hostmesh.identity")
_SHA256 = hashes.SHA256()
# How often an external issuer's directory (identity.cert_dir) is checked for new files.
CERT_DIR_POLL_S = 2.0
# Calls to the CA service at once: a node with 100 identities must not open 100 calls
# (the CA bounds its own concurrency too; a few in flight hide its latency).
CA_CALLS_IN_FLIGHT = 4


@dataclass
class Svid:
    spiffe_id: str
    cert: x509.Certificate
    chain_pem: bytes
    key_pem: bytes

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
    in_flight: bool = False  # a CA service call for it is running
    denied: bool = False  # the CA service answered PERMISSION_DENIED (not in its view)


class IdentityManager:
    def __init__(self, cfg, node_name: str) -> None:
        self.cfg = cfg
        self.node = node_name
        self.td = cfg.trust_domain
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._wake = trio.Event()
        self.counters: dict[str, int] = {}
        self._dir_seen: dict[tuple[str, str], tuple] = {}  # cert_dir: (mtime_ns, size) per file
        self.bundle_pem, self.issuer, self.issuer_key = self._read_ca(cfg)
        self.ca_client = self._ca_client(cfg)

    @staticmethod
    def _ca_client(c):
        if not c.ca_address:
            return None
        from agent.identity.caclient import CaClient, CaTarget

        try:
            return CaClient(CaTarget.from_config(c))
        except OSError as e:
            raise ValueError(f"CA service credentials: {e}") from None

    @staticmethod
    def _read_ca(c) -> tuple[bytes, x509.Certificate | None, object]:
        """(trust bundle, node intermediate, its key) from the configured files, checked:
        the key must match the certificate, and the certificate chain to a root of the
        bundle — otherwise a reload would leave the node minting SVIDs nobody trusts."""
        bundle = Path(c.trust_bundle).read_bytes() if c.trust_bundle else b""
        if not bundle and c.ca_address and c.ca_root:
            bundle = Path(c.ca_root).read_bytes()  # the CA service's roots are the mesh's
        issuer = issuer_key = None
        if c.ca_cert and c.ca_key:
            issuer = ca.load_certs(Path(c.ca_cert).read_bytes())[0]
            issuer_key = ca.load_key(Path(c.ca_key).read_bytes())
            if issuer_key.public_key().public_numbers() != issuer.public_key().public_numbers():
                raise ValueError(f"{c.ca_key} is not the key of {c.ca_cert}")
            if not bundle:
                bundle = ca.cert_pem(issuer)
            roots = ca.load_certs(bundle)
            if not any(r == issuer or ca.issued_by(issuer, r) for r in roots):
                raise ValueError(f"{c.ca_cert} ({issuer.subject.rfc4514_string()}) is not issued by a root in "
                                 f"{c.trust_bundle}")
        if bundle:
            try:
                ca.load_certs(bundle)
            except ValueError as e:
                raise ValueError(f"{c.trust_bundle}: {e}") from None
        return bundle, issuer, issuer_key

    def reload_ca(self, cfg=None) -> dict:
        """Re-read the trust bundle and node CA (SIGHUP, ``POST /v1/reload``) and, when they
        changed, re-issue every SVID at once with the new chain and trust. All or nothing:
        an unreadable or inconsistent set raises ValueError and keeps what is in force.
        Established connections keep their sessions; new handshakes use the new material.
        Root rotation: distribute a bundle with both roots, reload; issue intermediates
        from the new root, reload; drop the old root, reload (docs/identity.md)."""
        cfg = cfg or self.cfg
        try:
            bundle, issuer, key = self._read_ca(cfg)
            client = self._ca_client(cfg)
        except (OSError, ValueError) as e:
            raise ValueError(f"CA material not reloaded: {e}") from None
        same_issuer = (issuer is None and self.issuer is None) or (
            issuer is not None and self.issuer is not None and issuer.fingerprint(_SHA256) == self.issuer.fingerprint(_SHA256))
        same_client = (client.target if client else None) == (self.ca_client.target if self.ca_client else None)
        if bundle == self.bundle_pem and same_issuer and same_client:
            if client is not None:
                client.close()
            return {"ca_changed": False, "reissued": 0}
        self.cfg = cfg
        if self.ca_client is not None:
            self.ca_client.close()
        self.ca_client = client
        self.bundle_pem, self.issuer, self.issuer_key = bundle, issuer, key
        now = trio.current_time() if _in_trio() else 0.0
        for e in list(self._entries.values()):
            self._renew(e, now)
        self.count("ca_reloads")
        logger.info("CA material reloaded", extra={"roots": len(ca.load_certs(bundle)) if bundle else 0,
                                                    "reissued": len(self._entries)})
        return {"ca_changed": True, "reissued": len(self._entries), "roots": len(ca.load_certs(bundle)) if bundle else 0}

    # ---- registry-driven ------------------------------------------------------------
    def ensure(self, ns: str, sa: str) -> None:
        e = self._entries.setdefault((ns, sa), _Entry((ns, sa)))
        e.refs += 1
        if e.svid is None:
            self._renew(e, trio.current_time() if _in_trio() else 0.0)

    def all_issued(self) -> bool:
        """Every identity has an SVID — or the CA service answered that it has no
        workload on this node in its view (one misplaced pod must not keep the whole
        node unready; it is logged and shows in /v1/certs). An unreachable CA counts as
        no answer."""
        return all(e.svid is not None or e.denied for e in self._entries.values())

    async def wait_first_certificates(self) -> None:
        """Readiness waits for this (``all_issued``)."""
        while not self.all_issued():
            await trio.sleep(0.05)

    def release(self, ns: str, sa: str) -> None:
        e = self._entries.get((ns, sa))
        if e is None:
            return
        e.refs -= 1
        if e.refs <= 0:
            del self._entries[(ns, sa)]

    def get(self, ns: str, sa: str) -> Svid | None:
        e = self._entries.get((ns, sa))
        return e.svid if e else None

    # ---- minting and renewal ----------------------------------------------------------
    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _mint(self, ns: str, sa: str) -> Svid:
        sid = spiffe.format_id(self.td, ns, sa)
        if self.cfg.cert_dir:
            d = Path(self.cfg.cert_dir) / ns / sa
            self._dir_seen[(ns, sa)] = self._dir_stamp(ns, sa)  # bad files are retried on change or backoff
            chain_pem, key_pem = (d / "cert.pem").read_bytes(), (d / "key.pem").read_bytes()
            cert = _check_issued_files(d, chain_pem, key_pem, sid, self.bundle_pem, self.td)
        elif self.ca_client is not None:
            chain_pem, key_pem, cert = self.ca_client.fetch(sid, int(self.cfg.ttl_s))
        else:
            if self.issuer is None:
                raise RuntimeError("no CA configured (identity.ca_cert/ca_key) and no cert_dir")
            now = dt.datetime.now(dt.UTC)
            cert, key = ca.make_svid(sid, self.issuer, self.issuer_key, now, dt.timedelta(seconds=self.cfg.ttl_s))
            chain_pem, key_pem = ca.cert_pem(cert, self.issuer), ca.key_pem(key)
        return Svid(sid, cert, chain_pem, key_pem)

    def _renew(self, e: _Entry, now: float) -> None:
        if self.ca_client is not None:  # a network call: the run loop makes it in a thread
            e.renewal.deadline = 0.0
            self._wake.set()
            return
        try:
            svid = self._mint(*e.key)
        except Exception as err:  # noqa: BLE001 - keep the old certificate, retry with backoff
            self._failed(e, err, now)
            return
        self._installed(e, svid, now)

    async def _fetch(self, e: _Entry, limiter: trio.CapacityLimiter) -> None:
        """One CA service call for ``e`` in a worker thread; the result is installed only
        if the identity is still wanted (its last pod may have left meanwhile)."""
        try:
            svid = await trio.to_thread.run_sync(self._mint, *e.key, limiter=limiter, abandon_on_cancel=True)
        except Exception as err:  # noqa: BLE001 - unreachable or refused: keep the old certificate
            if self._entries.get(e.key) is e:
                self._failed(e, err, trio.current_time())
            return
        finally:
            e.in_flight = False
            self._wake.set()
        if self._entries.get(e.key) is e:
            self._installed(e, svid, trio.current_time())

    def _failed(self, e: _Entry, err: Exception, now: float) -> None:
        e.last_error = str(err)
        e.denied = getattr(err, "code", None) == "PERMISSION_DENIED"
        e.renewal.on_failed(now, random.random() if self.ca_client is not None else None)
        self.count("renewal_failures")
        logger.warning("certificate renewal failed", extra={"identity": f"{e.key[0]}/{e.key[1]}", "error": str(err),
                                                             "retry_in_s": round(e.renewal.deadline - now, 1)})

    def _installed(self, e: _Entry, svid: Svid, now: float) -> None:
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

    def _dir_stamp(self, ns: str, sa: str) -> tuple:
        d = Path(self.cfg.cert_dir) / ns / sa
        out = []
        for name in ("cert.pem", "key.pem"):
            try:
                st = (d / name).stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def _changed_in_dir(self) -> list[_Entry]:
        """Identities whose files in ``cert_dir`` changed since they were read (an external
        issuer — cert-manager, SPIRE — rewrote them): re-read at once, not at half-life."""
        return [e for e in self._entries.values()
                if e.svid is not None and self._dir_seen.get(e.key) != self._dir_stamp(*e.key)]

    def force_renew_all(self) -> None:
        for e in self._entries.values():
            e.renewal.deadline = 0.0
        self._wake.set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        limiter = trio.CapacityLimiter(CA_CALLS_IN_FLIGHT)
        async with trio.open_nursery() as calls:
            task_status.started()
            await self._loop(calls, limiter)

    async def _loop(self, calls: trio.Nursery, limiter: trio.CapacityLimiter) -> None:
        while True:
            now = trio.current_time()
            for e in list(self._entries.values()):
                if self.ca_client is not None:
                    if e.renewal.due(now) and not e.in_flight:
                        e.in_flight = True
                        calls.start_soon(self._fetch, e, limiter)
                elif e.svid is None or e.renewal.due(now):
                    self._renew(e, now)
            if self.cfg.cert_dir:
                for e in self._changed_in_dir():
                    logger.info("certificate files changed", extra={"identity": f"{e.key[0]}/{e.key[1]}"})
                    self._renew(e, now)
            nxt = min((e.renewal.next_deadline() for e in self._entries.values() if not e.in_flight), default=now + 60)
            if self.cfg.cert_dir:
                nxt = min(nxt, now + CERT_DIR_POLL_S)
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
                "issuer": (f"ca-service {self.cfg.ca_address}" if self.ca_client is not None
                           else s.cert.issuer.rfc4514_string()) if s else None,
                "issuer_name": s.cert.issuer.rfc4514_string() if s else None,
                "expires_in_s": round((s.not_after - now).total_seconds()) if s else None,
                "renewals": e.renewals, "last_error": e.last_error,
            })
        return out


def _check_issued_files(d: Path, chain_pem: bytes, key_pem: bytes, sid: str, bundle_pem: bytes,
                        trust_domain: str) -> x509.Certificate:
    """An external issuer's files, checked as a peer's certificate would be (X509-SVID
    5, RFC 5280 6.1: leaf rules, chain to the bundle, every certificate on the path in
    its window) and for the identity and key: anything wrong raises ValueError, and the
    SVID in force stays (a renewal failure)."""
    try:
        chain, _key = pem.parse_svid(chain_pem, key_pem, f"{d}/cert.pem + key.pem")
        roots = pem.parse_bundle(bundle_pem, "trust bundle")
    except pem.PemError as e:
        raise ValueError(f"{e} ({e.reason})") from None
    uris = ca.uri_sans(chain[0])
    if uris != [sid]:
        raise ValueError(f"{d}/cert.pem is for {uris or 'no URI SAN'}, not {sid}")
    v = validate.validate_peer(chain, roots, trust_domain, dt.datetime.now(dt.UTC), expected_id=sid)
    if not v.ok:
        raise ValueError(f"{d}/cert.pem refused: {v.reason}: {v.detail}")
    return chain[0]


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
        return True
    except RuntimeError:
        return False
