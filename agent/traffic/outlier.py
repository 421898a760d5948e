"""Outlier detection for one cluster (service, port, subset), as Envoy does it. Pure.

The data path reports each outcome (``connect_failure``, ``reset``, ``timeout``,
``success`` (a TCP connection connected), ``connect_success`` (an HTTP attempt did),
or an HTTP status) with the time; this module counts consecutive failures
per endpoint and answers whether an endpoint is ejected now. It never sleeps, never
reads a clock and never touches a socket: ``now`` is always passed in.

Envoy's rules (outlier_detection_impl.cc), followed here:
- Without ``splitExternalLocalOriginErrors`` a local-origin failure (connect failure,
  timeout, reset) counts as a 503: it advances both the 5xx and the gateway-error
  counters; a TCP connection that connected counts as a 200 and resets them.
  With the split, local-origin failures only advance ``consecutiveLocalOriginFailures``.
- Reaching a threshold ejects the endpoint for ``baseEjectionTime x times ejected``
  (capped at 300 s), unless that would eject more than ``maxEjectionPercent`` of the
  cluster; one endpoint may always be ejected. Counters restart after an ejection.
- The ejection count decays by one per ``interval`` spent un-ejected.
Un-ejection is exact (at ``ejected_at + duration``) instead of at the next interval tick.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.traffic.model import OutlierDetection

LOCAL_ORIGIN = ("connect_failure", "reset", "timeout")


@dataclass
class HostState:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    consecutive_local: int = 0
    times_ejected: int = 0
    ejected_at: float | None = None
    ejected_until: float | None = None
    unejected_at: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ejection:
    endpoint: str
    reason: str  # "consecutive_5xx" | "consecutive_gateway_errors" | "consecutive_local_origin_failures"
    until: float
    times: int


class Detector:
    def __init__(self, cfg: OutlierDetection) -> None:
        self.cfg = cfg
        self.hosts: dict[str, HostState] = {}
        self._ejected: set[str] = set()  # ejected when last looked at (a few at most)

    def ejected_now(self, now: float) -> set[str]:
        """The endpoints ejected at ``now`` (cheap: only the ejected ones are looked at)."""
        for ep in [e for e in self._ejected if not self.is_ejected(e, now)]:
            self._ejected.discard(ep)
        return self._ejected

    def is_ejected(self, ep: str, now: float) -> bool:
        h = self.hosts.get(ep)
        if h is None or h.ejected_until is None:
            return False
        if now >= h.ejected_until:
            h.ejected_at, h.ejected_until, h.unejected_at = None, None, now
            return False
        return True

    def ejected(self, now: float) -> list[tuple[str, HostState]]:
        return [(ep, h) for ep, h in sorted(self.hosts.items()) if self.is_ejected(ep, now)]

    def report(self, ep: str, outcome: str | int, now: float, cluster_size: int) -> Ejection | None:
        """One outcome for ``ep``; the ejection it caused, if any."""
        h = self.hosts.setdefault(ep, HostState())
        if self.is_ejected(ep, now):
            return None  # outcomes of connections opened before the ejection change nothing
        cfg = self.cfg
        code: int | None = outcome if isinstance(outcome, int) else None
        if outcome in LOCAL_ORIGIN:
            if cfg.split_local_origin:
                h.consecutive_local += 1
                return self._check(ep, h, now, cluster_size)
            code = 503
        elif outcome == "connect_success":
            # an HTTP attempt connected: only the split-out local-origin run ends here
            # (without the split Envoy ignores it; the response decides)
            if cfg.split_local_origin:
                h.consecutive_local = 0
            return None
        elif outcome == "success":
            if cfg.split_local_origin:
                h.consecutive_local = 0
                return None
            code = 200
        if code is None:
            return None
        if code >= 500:
            h.consecutive_5xx += 1
            if code in (502, 503, 504):
                h.consecutive_gateway += 1
            else:
                h.consecutive_gateway = 0
        else:
            h.consecutive_5xx = h.consecutive_gateway = 0
        return self._check(ep, h, now, cluster_size)

    def _check(self, ep: str, h: HostState, now: float, cluster_size: int) -> Ejection | None:
        cfg = self.cfg
        reason = None
        if cfg.consecutive_local_origin and h.consecutive_local >= cfg.consecutive_local_origin:
            reason = "consecutive_local_origin_failures"
        elif cfg.consecutive_gateway and h.consecutive_gateway >= cfg.consecutive_gateway:
            reason = "consecutive_gateway_errors"
        elif cfg.consecutive_5xx and h.consecutive_5xx >= cfg.consecutive_5xx:
            reason = "consecutive_5xx"
        if reason is None:
            return None
        h.consecutive_5xx = h.consecutive_gateway = h.consecutive_local = 0
        active = sum(1 for e in self.hosts if e != ep and self.is_ejected(e, now))
        # Envoy: eject while (ejected + 1) / hosts <= maxEjectionPercent, or when none is
        if active and 100.0 * (active + 1) / max(cluster_size, 1) > cfg.max_ejection_percent:
            return None
        if h.unejected_at is not None and h.times_ejected:
            h.times_ejected = max(0, h.times_ejected - int((now - h.unejected_at) // cfg.interval_s))
        h.times_ejected += 1
        duration = min(cfg.base_ejection_s * h.times_ejected, max(cfg.base_ejection_s, cfg.max_ejection_s))
        h.ejected_at, h.ejected_until, h.reason = now, now + duration, reason
        self._ejected.add(ep)
        return Ejection(ep, reason, h.ejected_until, h.times_ejected)

    def forget(self, keep: set[str]) -> None:
        """Drop endpoints no longer in the cluster (bounded by the endpoint set)."""
        for ep in [e for e in self.hosts if e not in keep]:
            del self.hosts[ep]
            self._ejected.discard(ep)
