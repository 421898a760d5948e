"""Per-request traffic decisions on HTTP ports: which ``http`` route a request takes,
whether a failed attempt is retried, and the retry budget. Pure: the request's method,
path and headers are values, as are the outcomes; nothing here reads a socket or a clock.

- Routes are tried in order; the first whose ``match`` list has a matching entry wins
  (an entry matches when all its conditions do; no ``match`` = every request). No route:
  Envoy's ``404`` with flag ``NR``.
- ``retryOn`` (Istio/Envoy names): ``connect-failure``, ``refused-stream`` and ``reset``
  (the upstream closed or reset before a response), ``5xx``, ``gateway-error``
  (502/503/504), ``retriable-status-codes`` with the listed codes, a bare status code.
- The retry budget (Envoy's ``retry_budget``, defaults 20 % and 3): retries in flight
  never exceed ``budget_percent`` of the requests in flight, with ``min_concurrency``
  allowed at any load, so a failing backend never sees a retry storm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.traffic.model import HttpRoute, Retries, VirtualService

# Envoy's retry_budget defaults (cluster.proto RetryBudget).
BUDGET_PERCENT = 20.0
MIN_RETRY_CONCURRENCY = 3


def match_route(vs: VirtualService, method: str, path: str, headers: Mapping[str, str], port: int) -> HttpRoute | None:
    """The first ``http`` route of ``vs`` for this request (header names lower-case)."""
    for r in vs.http:
        if not r.matches:
            return r
        for m in r.matches:
            if m.port is not None and m.port != port:
                continue
            if m.uri is not None and not m.uri.matches(path):
                continue
            if m.method is not None and not m.method.matches(method):
                continue
            if all(sm.matches(headers.get(name)) for name, sm in m.headers):
                return r
    return None


def retriable(retries: Retries | None, outcome: str | int) -> bool:
    """Whether an attempt that ended with ``outcome`` (a status, or ``connect-failure`` /
    ``reset`` / ``timeout``) may be retried under ``retries``."""
    if retries is None or retries.attempts <= 0:
        return False
    on = retries.retry_on
    if isinstance(outcome, str):
        if outcome == "connect-failure":
            return bool(on & {"connect-failure", "5xx", "gateway-error"})
        if outcome == "reset":
            return bool(on & {"reset", "refused-stream", "5xx"})
        if outcome == "timeout":
            return bool(on & {"5xx", "gateway-error"})
        return False
    if str(outcome) in on:
        return True
    if outcome >= 500 and "5xx" in on:
        return True
    return outcome in (502, 503, 504) and "gateway-error" in on


@dataclass
class RetryBudget:
    """Requests and retries in flight for one cluster."""

    budget_percent: float = BUDGET_PERCENT
    min_concurrency: int = MIN_RETRY_CONCURRENCY
    requests: int = 0
    retries: int = 0
    exhausted: int = 0  # retries refused by the budget

    def allow_retry(self) -> bool:
        """Take one retry from the budget (``done_retry`` gives it back) or count a refusal."""
        limit = max(self.min_concurrency, int(self.requests * self.budget_percent / 100.0))
        if self.retries >= limit:
            self.exhausted += 1
            return False
        self.retries += 1
        return True

    def done_retry(self) -> None:
        self.retries = max(0, self.retries - 1)
