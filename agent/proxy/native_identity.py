"""What the native core holds to terminate and originate tunnels, kept equal to the
agent's: each SVID (by SPIFFE ID, with the SNI it answers), the trust bundle, and the
map local pod address -> SPIFFE ID by which the core picks the certificate on a pod's
:15008 (HBONE). Pushes only what changed since the last call (compared by object
identity for SVIDs, by the registry's generation and content for the pod map); it
decides nothing and never blocks (every push is a plain call into the core).
"""

from __future__ import annotations

from agent.identity.spiffe import sni_for
from agent.proxy import hbone


class CoreIdentities:
    def __init__(self, agent, core) -> None:
        self.agent, self.core = agent, core
        self._pushed: dict[str, object] = {}  # spiffe id -> the Svid object the core holds
        self._bundle: bytes | None = None
        self._pod_ids: tuple[int, list] | None = None  # (registry generation, pairs pushed)

    def pushed(self, spiffe_id: str) -> object | None:
        """The SVID object the core holds for ``spiffe_id``, if any."""
        return self._pushed.get(spiffe_id)

    def sync(self) -> None:
        ids = self.agent.identities
        if ids is None:
            return
        td = self.agent.config.identity.trust_domain
        if ids.bundle_pem and ids.bundle_pem != self._bundle:
            self.core.set_trust(ids.bundle_pem, td)
            self._bundle = ids.bundle_pem
        seen = set()
        for (ns, sa), entry in list(ids._entries.items()):
            svid = entry.svid
            if svid is None:
                continue
            seen.add(svid.spiffe_id)
            if self._pushed.get(svid.spiffe_id) is not svid:
                self.core.set_identity(svid.spiffe_id, sni_for(ns, sa, td), svid.chain_pem, svid.key_pem)
                self._pushed[svid.spiffe_id] = svid
        for sid in [s for s in self._pushed if s not in seen]:
            _, _, rest = sid.partition("/ns/")
            ns, _, sa = rest.partition("/sa/")
            self.core.remove_identity(sid, sni_for(ns, sa, td))
            del self._pushed[sid]
        self.sync_pod_identities(td)

    def sync_pod_identities(self, td: str) -> None:
        """Local pod address -> SPIFFE ID (v4 and v6), pushed whole when the registry
        changed: the certificate the core presents on that pod's :15008."""
        reg = self.agent.registry
        if self._pod_ids is not None and self._pod_ids[0] == reg.generation:
            return
        pairs = hbone.pod_identities(reg.local(), td)
        if self._pod_ids is None or self._pod_ids[1] != pairs:
            self.core.set_pod_identities(pairs)
        self._pod_ids = (reg.generation, pairs)
