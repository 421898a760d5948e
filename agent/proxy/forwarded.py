"""Whether a tunnel peer's ``Forwarded: for=`` claim is believed.

The peer node proves one SPIFFE identity in the handshake; the claimed source address
serves only ``source.ip`` / ``ipBlocks`` and the pod's view of its client. This module
decides whether the claim is consistent with the verified peer; it never changes who
the source is (that comes from the handshake only) and does no I/O.
"""

from __future__ import annotations

import logging

from agent.proxy import plan

logger = logging.getLogger("hostmesh.inbound")


def claimed_source(agent, spiffe_id: str | None, src_node: str, forwarded) -> tuple[str, int, object]:
    """The source address to use, from the peer's ``Forwarded`` claim, and the workload
    it names — only when the claim is consistent with the verified peer. Not believed
    (counted ``tunnel_forwarded_mismatch``, the source is then the peer node itself): an
    address the registry gives to a workload of another identity or to a pod of this
    node, or one inside another node's pod CIDRs than the peer's."""
    if not forwarded:
        return src_node, 0, None
    ip, port = forwarded
    w = agent.registry.by_ip(ip)
    why = None
    if w is not None and w.spiffe_id(agent.config.identity.trust_domain) != spiffe_id:
        why = "names a workload of another identity"
    elif w is not None and w.node is None:
        why = "names a pod of this node"
    else:
        owner = w.node if w is not None else getattr(plan.peer_for(ip, agent.view.peers), "name", None)
        known = _node_addresses(agent, owner) if owner else set()
        if known and src_node not in known:
            why = f"names a pod of node {owner}, not of the peer"
    if why:
        agent.count("tunnel_forwarded_mismatch")
        logger.warning(f"Forwarded {why}; not believed",
                       extra={"peer": src_node, "principal": spiffe_id, "claimed": ip})
        return src_node, 0, None
    return ip, port, w


def _node_addresses(agent, name: str) -> set[str]:
    return {a for n in agent.config.cluster.nodes if n.name == name for a in (n.address, n.address6) if a}
