"""When to renew a certificate, as pure arithmetic on floats (aioquic-style timers).

SPEC.md: renew at half of the lifetime, jittered so a fleet does not renew at once;
on failure retry with capped exponential backoff; the old certificate stays in use
until the new one is in.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 60.0
# Asking a CA service: ztunnel's caclient backoff (from ~1 s, x2, +-20 %, capped at
# 150 s), so a fleet that lost its CA does not come back in lock-step.
CA_BACKOFF_CAP_S = 150.0
CA_BACKOFF_JITTER = 0.2


def renew_at(not_before: float, not_after: float, fraction: float, jitter: float, u: float) -> float:
    """``u`` in [0, 1) is the caller's random draw (kept out so tests are exact)."""
    life = max(0.0, not_after - not_before)
    j = (u * 2 - 1) * jitter * life
    return not_before + fraction * life + j


def backoff(failures: int) -> float:
    return min(BACKOFF_CAP_S, BACKOFF_FIRST_S * (2 ** max(0, failures - 1)))


def ca_backoff(failures: int, u: float) -> float:
    """Delay before the next call to an unreachable CA service; ``u`` in [0, 1)."""
    base = min(CA_BACKOFF_CAP_S, BACKOFF_FIRST_S * (2 ** min(30, max(0, failures - 1))))
    return base * (1 + (u * 2 - 1) * CA_BACKOFF_JITTER)


@dataclass
class Renewal:
    """Renewal state of one identity: ``next_deadline()``, ``on_renewed``, ``on_failed``."""

    deadline: float
    failures: int = 0

    def next_deadline(self) -> float:
        return self.deadline

    def due(self, now: float) -> bool:
        return now >= self.deadline

    def on_renewed(self, not_before: float, not_after: float, fraction: float, jitter: float, u: float) -> None:
        self.failures = 0
        self.deadline = renew_at(not_before, not_after, fraction, jitter, u)

    def on_failed(self, now: float, u: float | None = None) -> None:
        """``u`` given: the CA service's jittered, longer-capped backoff."""
        self.failures += 1
        self.deadline = now + (backoff(self.failures) if u is None else ca_backoff(self.failures, u))
