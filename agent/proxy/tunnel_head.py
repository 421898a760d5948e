"""The parts of a tunnel command that depend only on the two workloads: the source and
expected destination SPIFFE IDs, the SNI and the HBONE ``baggage`` header.

Pure and cached: workloads are immutable (a registry change registers a new object), so
an entry is found only for the very objects it was derived from (identity, not equality)
and the same trust domain and cluster name; anything else derives it afresh. It decides
nothing: the glue (native.py) still plans, checks identities and builds the per-connection
values (addresses, ``forwarded``, ``traceparent``) each time. Must never: hold more than
``MAX_ENTRIES`` (cleared when full) or answer for a workload it was not derived from.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.identity.spiffe import sni_for
from agent.proxy import hbone
from agent.state.workloads import Workload

MAX_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class Head:
    src: Workload
    dst: Workload
    trust_domain: str
    cluster: str | None
    src_id: str
    dst_id: str
    sni: str
    baggage: str


def derive(src: Workload, dst: Workload, trust_domain: str, cluster: str | None) -> Head:
    return Head(src, dst, trust_domain, cluster, src.spiffe_id(trust_domain), dst.spiffe_id(trust_domain),
                sni_for(dst.namespace, dst.service_account, trust_domain),
                hbone.baggage(src.namespace, src.name, src.labels, cluster))


class Heads:
    """``derive`` with a bounded cache keyed on the workloads' identities."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._cache: dict[tuple[int, int], Head] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, src: Workload, dst: Workload, trust_domain: str, cluster: str | None) -> Head:
        key = (id(src), id(dst))
        h = self._cache.get(key)
        if (h is not None and h.src is src and h.dst is dst and h.trust_domain == trust_domain
                and h.cluster == cluster):
            return h
        if len(self._cache) >= self._max:
            self._cache.clear()
        h = self._cache[key] = derive(src, dst, trust_domain, cluster)
        return h
